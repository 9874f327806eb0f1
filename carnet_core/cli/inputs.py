"""What the commands share: reading models, checkpoints and image paths from the command line, and writing CSV
files, each failure a one-line message."""

from __future__ import annotations

import argparse
import csv
import shlex
import sys
from pathlib import Path
from typing import Sequence

from PIL import Image

from carnet_core.data.images import IMAGE_EXTENSIONS, image_entries
from carnet_core.errors import CarNetError, ClassNamesNeededError, count
from carnet_core.models.catalog import list_checkpoints
from carnet_core.models.checkpoints import WEIGHT_SUFFIXES, weights_in
from carnet_core.models.loading import load_model
from carnet_core.models.registry import list_models


def model_or_checkpoint(args: argparse.Namespace):
    """``--model`` and/or ``--checkpoint``: a checkpoint without ``--model`` builds the architecture it describes
    (CarNet metadata, or the model a timm train.py checkpoint names); neither gives the default model."""
    name = args.model or (None if args.checkpoint else "efficientnet_lite0")
    if args.classes is not None and args.checkpoint is None:
        raise CarNetError("--classes names the classes of a --checkpoint file; give one")
    try:
        return load_model(name, checkpoint=args.checkpoint, use_hub=not args.no_hub, class_names=args.classes)
    except ClassNamesNeededError as exc:
        raise what_to_give(exc) from None


def image_paths(args: Sequence[str]) -> list[str]:
    """The arguments with each folder replaced by what is named like an image under it (sub-folders included: a
    class-folder dataset is classified whole), so that a pipe, a link to nothing or a folder named like a photo gets
    its reason rather than silence; the other files are counted in a note on stderr. A folder without images stays,
    for its message."""
    out = []
    for arg in args:
        named, other = image_entries(arg) if Path(arg).is_dir() else ([], [])
        out += [str(p) for p in named] or [arg]
        if other:
            kinds = sorted({p.suffix.lower() or "(no extension)" for p in other})
            print(f"note: {count(len(other), 'file')} in {arg} skipped, not image files by their names "
                  f"({', '.join(kinds[:8])}{', …' if len(kinds) > 8 else ''}); formats read: "
                  f"{', '.join(IMAGE_EXTENSIONS)}", file=sys.stderr)
    return out


def rejoin_split_paths(args: Sequence[str], longest: int = 16) -> list[str]:
    """The command line, with a path that the shell split at its spaces (``cars/AM General Hummer`` typed without
    quotes) put back together, said on stderr: an argument that names nothing is joined with the ones after it when
    together (up to ``longest`` pieces) they name a file or folder, the longest such run."""
    out, i = [], 0
    while i < len(args):
        end = i + 1
        if not args[i].startswith("-") and not path_exists(args[i]):
            end = next((j for j in range(min(len(args), i + longest), i + 1, -1) if path_exists(" ".join(args[i:j]))), end)
        if end > i + 1:
            print(f"note: {' '.join(map(repr, args[i:end]))} read as one path, {' '.join(args[i:end])!r}: put quotes "
                  "around a path with spaces", file=sys.stderr)
        out.append(" ".join(args[i:end]))
        i = end
    return out


def path_exists(path: str) -> bool:
    """Whether ``path`` names a file or folder; False, not an error, for a name too long for the system."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def check_image_out(path: Path) -> None:
    """Said before the work: ``--out`` must name an image file of a format PIL can write (the overlay is a picture;
    HEIC is read, not written)."""
    if path.is_dir():
        raise CarNetError(f"--out {path}: is a folder; give the image file to write, e.g. {path / 'overlay.png'}")
    if Image.registered_extensions().get(path.suffix.lower()) not in Image.SAVE:
        raise CarNetError(f"--out {path}: the overlay is an image; give a file name ending in .png, .jpg or .webp")


def load_member(spec: str, use_hub: bool, arch: str | None = None, classes: str | None = None,
                 compare: bool = False):
    """A registry name, or a checkpoint file (``arch``: the registry name a plain state dict is for; ``classes``:
    where its class names are, for a file trained on classes of its own; ``compare``: for ``compare``, which has
    no ``--classes``)."""
    if Path(spec).is_file():
        try:
            return load_model(arch, checkpoint=spec, use_hub=use_hub, class_names=classes)
        except ClassNamesNeededError as exc:
            raise what_to_give(exc, compare) from None
    if spec not in {s.name for s in list_models()}:
        if Path(spec).is_dir():
            raise CarNetError(f"{spec}: is a folder, not a checkpoint file or a model name; "
                              f"{weights_in(Path(spec))}")
        if "/" in spec or "\\" in spec or Path(spec).suffix in WEIGHT_SUFFIXES:
            raise CarNetError(f"{spec}: no such checkpoint file")
    if classes is not None:
        raise CarNetError(f"--classes names the classes of a checkpoint file; {spec} is a registry model")
    return load_model(spec, use_hub=use_hub)


def what_to_give(exc: ClassNamesNeededError, compare: bool = False) -> CarNetError:
    """``exc`` with the option that names the classes — or, for ``compare``, which has none, the export to run."""
    if compare:
        return CarNetError(f"{exc}. Compare reads class names from CarNet checkpoints: make one with python -m "
                           f"carnet_core export {shlex.quote(exc.path)} --model {exc.model} --classes FILE_OR_FOLDER "
                           f"--format safetensors, and compare that file")
    return CarNetError(f"{exc} (--classes FILE_OR_FOLDER)")


def numbers(text: str) -> list[float]:
    """``"0.7,0.3"`` → ``[0.7, 0.3]`` (argparse type: a bad value is a usage message, not a traceback)."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.7,0.3, not {text!r}") from None


def check_csv_folder(path: Path | None, what: str, example: str) -> None:
    """Said before the work, not after it: the folder a --csv table goes in must exist, and the path not be one."""
    if path and path.is_dir():
        raise CarNetError(f"{path}: is a folder; give the file to write the {what} in, e.g. {path / example}")
    if path and not path.resolve().parent.is_dir():
        raise CarNetError(f"{path}: no folder {path.resolve().parent} to write the {what} in")


def write_csv(path: Path, fieldnames: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def one_checkpoint(args: argparse.Namespace) -> None:
    """Put the checkpoint given as ``--checkpoint`` where the command reads the CHECKPOINT argument.

    Raises:
        CarNetError: neither or both given.
    """
    dest = args.checkpoint_dest
    given = [v for v in (getattr(args, dest), args.checkpoint_option) if v is not None]
    if not given:
        raise CarNetError(f"no model given: a checkpoint or weights file, or a registry model name, as "
                          f"the first argument (python -m carnet_core {args.command} CHECKPOINT ...) or as "
                          f"--checkpoint FILE")
    if len(given) == 2:
        raise CarNetError(f"two checkpoints given ({given[0]} and --checkpoint {given[1]}): give one")
    setattr(args, dest, given[0])


def checkpoint_hint(name: str | None) -> str:
    """For an unknown model name that is a fine-tuned checkpoint's (what the app's pickers and ``models`` show):
    the path to give instead."""
    paths = [str(c.path) for c in list_checkpoints() if name and c.name == name]
    return (f". {name} is a fine-tuned checkpoint: give its path instead (with --checkpoint for predict and explain): "
            f"{paths[0]}" if paths else "")
