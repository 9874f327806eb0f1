"""The fine-tuned checkpoints on disk, listed beside the registered models (read from metadata only: listing never
loads tensors)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from carnet_core.config import jobs_dir, weights_dir
from carnet_core.errors import CarNetError
from carnet_core.models.checkpoints import read_metadata, read_state_dict
from carnet_core.models.registry import HEADS
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
    problem: str | None = None
    where: str = ""

    @property
    def label(self) -> str:
        """E.g. ``"efficientnet_lite0-cars-e7 (20261121-101500-ab12cd)"``: the checkpoint's name and where it is —
        its run folder (``weights`` for one in the weights folder), which tells apart two runs that stopped at the
        same epoch; its path under the folder searched where even that is shared (:func:`list_checkpoints`)."""
        return f"{self.name} ({self.where or self.path.parent.name})"

    @property
    def title(self) -> str:
        """E.g. ``"efficientnet_lite0-e7 (20261121-101500-ab12cd) · linear · 40 classes of cars · top-1 81.2 %"``:
        the checkpoint's :attr:`label`, head, label-set size, the dataset it was fine-tuned on (two runs on two
        datasets differ by more than a run id) and validation top-1 — or why it cannot be used."""
        top1 = self.metrics.get("top1") if self.metrics else None
        if self.problem:
            return f"{self.label} · unusable: {self.problem}"
        of = f" of {Path(self.dataset).name}" if self.dataset else ""
        return " · ".join([self.label, self.head, f"{len(self.class_names)} classes{of}"]
                          + ([f"top-1 {top1 * 100:.1f} %"] if top1 is not None else []))


#: Classifier weights of the linear heads CarNet builds (timm's names): their rows are the classes.
_HEAD_WEIGHTS = ("classifier.weight", "fc.weight", "head.fc.weight", "head.weight")


def checkpoint_problem(path: Path, meta: dict) -> str | None:
    """Why a CarNet checkpoint cannot be loaded, from its metadata and tensor shapes only (no values read), or None:
    an architecture timm does not know, a head CarNet does not build, or a classifier with another number of rows
    than the metadata has class names."""
    import timm  # lazy: timm (and torchvision) load on first use, as in carnet_core.models.classifier

    if not timm.is_model(meta["arch"]):
        return f"architecture {meta['arch']!r} is not one timm knows"
    head = meta.get("head", "linear")
    if head not in HEADS:
        return f"head {head!r} is not one CarNet builds ({', '.join(HEADS)})"
    try:
        shapes = read_state_dict(path, shapes_only=True)
    except CarNetError as exc:
        return str(exc)
    rows = next((tuple(shapes[k].shape)[0] for k in _HEAD_WEIGHTS if k in shapes), None)
    if head == "linear" and rows is not None and rows != len(meta["class_names"]):
        return f"its classifier has {rows} outputs but it names {len(meta['class_names'])} classes"
    return None


def list_checkpoints(folders: list[Path | str] | None = None) -> list[CheckpointEntry]:
    """CarNet checkpoints under ``folders`` (default: the fine-tune jobs folder and the weights folder), newest
    first. In a folder of one training run only its best checkpoint is listed (``best-eNNN-top1-XX.X``; else
    ``last``). Unreadable or foreign files are skipped; a CarNet checkpoint that cannot be loaded is listed with its
    :attr:`~CheckpointEntry.problem`. Labels are unique: where two would read alike, each names its path.
    """
    if folders is None:
        folders = [jobs_dir(), weights_dir()]
    found: dict[Path, tuple[Path, Path]] = {}  # run folder (or the file itself) -> (chosen file, folder searched)
    for folder in map(Path, folders):
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.safetensors")):
            if path.name.startswith("."):
                continue
            if is_run_checkpoint(path):
                current = found.get(path.parent)
                if current is None or run_rank(path) > run_rank(current[0]):
                    found[path.parent] = (path, folder)
            else:
                found[path] = (path, folder)
    entries = []
    for path, root in found.values():
        try:
            meta = read_metadata(path)
        except CarNetError:
            continue
        if not meta or "arch" not in meta or "class_names" not in meta:
            continue
        entries.append(CheckpointEntry(path, meta.get("name", path.stem), meta["arch"], meta.get("head", "linear"),
                                       meta.get("label_set", ""), tuple(meta["class_names"]), meta.get("metrics") or {},
                                       meta.get("dataset"), meta.get("recipe"), checkpoint_problem(path, meta)))
    labels = Counter(e.label for e in entries)  # two files of one name in folders of one name: their paths tell apart
    roots = {path: root for path, root in found.values()}
    entries = [replace(e, where=str(e.path.relative_to(roots[e.path].parent))) if labels[e.label] > 1 else e
               for e in entries]
    return sorted(entries, key=lambda e: e.path.stat().st_mtime, reverse=True)
