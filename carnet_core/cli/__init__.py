"""``python -m carnet_core`` — the command line. Bad input gives a one-line message and exit code 2, never a traceback."""

from __future__ import annotations

import os
import sys
from typing import Sequence

from carnet_core.cli.inputs import checkpoint_hint, one_checkpoint, rejoin_split_paths
from carnet_core.cli.parser import build_parser
from carnet_core.errors import CarNetError, UnknownModelError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 some inputs failed, 2 error, 130 interrupted, 141 the reader of
    its output went away)."""
    args = build_parser().parse_args(rejoin_split_paths(sys.argv[1:] if argv is None else list(argv)))
    if isinstance(getattr(args, "devices", None), str) and args.devices.isdigit():
        args.devices = int(args.devices)
    if getattr(args, "topk", 1) < 1:
        print("error: --topk must be at least 1", file=sys.stderr)
        return 2
    try:
        if hasattr(args, "checkpoint_dest"):
            one_checkpoint(args)
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit: a reader that has gone (`| head`) is seen below
        return code
    except BrokenPipeError:  # the reader of our output went away (`... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe
    except UnknownModelError as exc:
        print(f"error: {exc}{checkpoint_hint(exc.name)}", file=sys.stderr)
        return 2
    except CarNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path given on the command line that cannot be read or written
        print(f"error: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
