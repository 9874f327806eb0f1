"""How the app's pickers, caches and model cards name a model: a registered model's name, or a checkpoint file as
``checkpoint:<path>`` — parsed here only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKPOINT_PREFIX = "checkpoint:"


@dataclass(frozen=True)
class ModelRef:
    """A registered model (``name``) or a fine-tuned checkpoint file (``checkpoint``), never both."""

    name: str | None = None
    checkpoint: Path | None = None

    @classmethod
    def parse(cls, key: str) -> ModelRef:
        """``"efficientnet_lite0"`` → a registered model; ``"checkpoint:/runs/x/best.safetensors"`` → a checkpoint."""
        if key.startswith(CHECKPOINT_PREFIX):
            return cls(checkpoint=Path(key[len(CHECKPOINT_PREFIX):]))
        return cls(name=key)

    @classmethod
    def of_checkpoint(cls, path: str | os.PathLike) -> ModelRef:
        """The reference to a checkpoint file."""
        return cls(checkpoint=Path(path))

    @property
    def is_checkpoint(self) -> bool:
        """True for a checkpoint file, False for a registered model."""
        return self.checkpoint is not None

    @property
    def key(self) -> str:
        """The string form :meth:`parse` reads back (a widget's option, a cache key)."""
        return f"{CHECKPOINT_PREFIX}{self.checkpoint}" if self.checkpoint is not None else str(self.name)

    def load_args(self) -> dict[str, Any]:
        """Keyword arguments of :func:`carnet_core.models.loading.load_model` for this model."""
        return {"checkpoint": str(self.checkpoint)} if self.checkpoint is not None else {"name": self.name}

    def stamp(self) -> float:
        """The checkpoint file's modification time (0.0 for a registered model or a missing file): part of a cache
        key, so a rewritten checkpoint is loaded again."""
        try:
            return self.checkpoint.stat().st_mtime if self.checkpoint is not None else 0.0
        except OSError:
            return 0.0
