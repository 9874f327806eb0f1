"""Errors CarNet raises on bad input. Each message is meant to be shown to a user as it is."""

from __future__ import annotations

import logging
import secrets
from typing import Sequence


class CarNetError(Exception):
    """Base class: a problem with the user's input or setup, with a message fit for the UI and CLI."""


class ImageError(CarNetError, ValueError):
    """An uploaded or given file cannot be used as an image (empty, truncated, not an image, too large)."""


class UnknownModelError(CarNetError, KeyError):
    """A model name that is not in the registry. ``name``: the name given."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class WeightsNotFoundError(CarNetError, FileNotFoundError):
    """No pretrained weights could be found for a model, and random weights were not asked for."""


class CheckpointError(CarNetError, ValueError):
    """A checkpoint or weights file that cannot be loaded safely or does not fit the model."""


class ClassNamesNeededError(CheckpointError):
    """A weights file whose head holds classes of its own (not the registry model's label set) and no names for
    them. ``path``: the file; ``model``: the registry name it was loaded as (for the message that says what to run);
    ``looked_in``: the class-map files or dataset folders its timm training options point to, not found here or not
    of its classes.
    """

    def __init__(self, message: str, path: str, model: str, looked_in: tuple[str, ...] = ()):
        super().__init__(message)
        self.path, self.model, self.looked_in = path, model, looked_in


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun`` in agreement, for messages: "1 photo", "4 photos", "1 class", "40 classes" (``plural``:
    the plural when it is not ``noun`` + s)."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def listed(names: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` of ``names`` for a message, and how many more there are: ``"a, b, c and 37 more"``;
    ``"—"`` when there are none."""
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more if names else "—"


def duration_text(seconds: float | None) -> str:
    """A duration for people: ``"2:05"`` (minutes:seconds), ``"1:02:03"`` from an hour on, ``"–"`` when unknown."""
    if seconds is None:
        return "–"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def log_unexpected(exc: BaseException) -> str:
    """Log an exception CarNet did not expect (a bug) with its traceback to the server's log, under a short id that
    a page shows instead of the traceback, for a visitor to quote. Returns the id (8 hex digits)."""
    error_id = secrets.token_hex(4)
    logging.getLogger("carnet").error("unexpected error %s", error_id, exc_info=exc)
    return error_id
