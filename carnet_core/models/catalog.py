"""The fine-tuned checkpoints on disk, listed beside the registered models (read from metadata only: listing never
loads tensors)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from carnet_core.config import jobs_dir, weights_dir
from carnet_core.errors import CarNetError
from carnet_core.models.checkpoints import read_metadata
from carnet_core.models.runs import is_run_checkpoint, run_rank


@dataclass(frozen=True)
class CheckpointEntry:
    """A fine-tuned CarNet checkpoint found on disk, listed next to the registered models (read from its metadata
    only: listing never loads tensors)."""

    path: Path
    name: str
    arch: str
    head: str
    label_set: str
    class_names: tuple[str, ...]
    metrics: dict
    dataset: str | None
    recipe: dict | None

    @property
    def label(self) -> str:
        """E.g. ``"efficientnet_lite0-cars-e7 (20261121-101500-ab12cd)"``: the checkpoint's name and its run folder
        (``weights`` for one in the weights folder), which tells apart two runs that stopped at the same epoch."""
        return f"{self.name} ({self.path.parent.name})"

    @property
    def title(self) -> str:
        """E.g. ``"efficientnet_lite0-cars-e7 (20261121-101500-ab12cd) · linear · 40 classes · top-1 81.2 %"``: the
        checkpoint's :attr:`label`, head, label-set size and validation top-1."""
        top1 = self.metrics.get("top1") if self.metrics else None
        return " · ".join([self.label, self.head, f"{len(self.class_names)} classes"]
                          + ([f"top-1 {top1 * 100:.1f} %"] if top1 is not None else []))


def list_checkpoints(folders: list[Path | str] | None = None) -> list[CheckpointEntry]:
    """CarNet checkpoints under ``folders`` (default: the fine-tune jobs folder and the weights folder), newest
    first. In a folder of one training run only its best checkpoint is listed (``best-eNNN-top1-XX.X``; else
    ``last``). Unreadable or foreign files are skipped.
    """
    if folders is None:
        folders = [jobs_dir(), weights_dir()]
    found: dict[Path, Path] = {}  # run folder (or the file itself) -> chosen file
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.safetensors")):
            if path.name.startswith("."):
                continue
            if is_run_checkpoint(path):
                current = found.get(path.parent)
                if current is None or run_rank(path) > run_rank(current):
                    found[path.parent] = path
            else:
                found[path] = path
    entries = []
    for path in found.values():
        try:
            meta = read_metadata(path)
        except CarNetError:
            continue
        if not meta or "arch" not in meta or "class_names" not in meta:
            continue
        entries.append(CheckpointEntry(path, meta.get("name", path.stem), meta["arch"], meta.get("head", "linear"),
                                       meta.get("label_set", ""), tuple(meta["class_names"]), meta.get("metrics") or {},
                                       meta.get("dataset"), meta.get("recipe")))
    return sorted(entries, key=lambda e: e.path.stat().st_mtime, reverse=True)
