"""Validation report before training: images per class, unreadable files, small classes, and exact or near
duplicates across train and val (perceptual hash, the `imagehash` library's pHash; Zauner 2010).

A split that leaks val images into train reports inflated accuracy; this check finds such leaks before training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from carnet_core.data.datasets import DatasetSplits, ImageDataset
from carnet_core.errors import ImageError, count

#: pHash Hamming distance (of 64 bits) up to which two images count as near duplicates.
NEAR_DUPLICATE_BITS = 4


@dataclass
class DataReport:
    """What :func:`validate_splits` found.

    Attributes:
        counts: class name → {"train": n, "val": n}.
        unreadable: (path, reason) of files that cannot be decoded (skipped by training, never fatal).
        small_classes: classes with fewer than ``min_per_class`` train images, or no val image.
        duplicates: for each val image with a near copy in train, (the closest train item, val item, Hamming
            distance), 0 = identical pixels' hash; one row per val image, however many train copies it has.
        duplicate_pairs: every (train, val) pair within the distance, counted (4,000 identical images: 4 M pairs,
            which are counted, not listed).
    """

    counts: dict[str, dict[str, int]]
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    small_classes: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str, int]] = field(default_factory=list)
    duplicate_pairs: int = 0

    @property
    def ok(self) -> bool:
        return not (self.unreadable or self.small_classes or self.duplicates or self.untrainable)

    @property
    def untrainable(self) -> str | None:
        """Why no classifier can be fine-tuned on these classes (:func:`too_few_classes`), or ``None``."""
        return too_few_classes(list(self.counts))

    def to_dict(self) -> dict:
        return {"counts": self.counts, "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable],
                "small_classes": self.small_classes,
                "duplicates": [{"train": a, "val": b, "distance": d} for a, b, d in self.duplicates],
                "duplicate_pairs": self.duplicate_pairs}

    def summary(self) -> str:
        n_train = sum(c["train"] for c in self.counts.values())
        n_val = sum(c["val"] for c in self.counts.values())
        lines = [f"{count(len(self.counts), 'class', 'classes')}, {n_train} train and {n_val} val images"]
        if self.untrainable:
            lines.append(f"cannot fine-tune: {self.untrainable}")
        lines.append(f"unreadable files: {len(self.unreadable)}" + "".join(f"\n  {p}: {r}" for p, r in self.unreadable[:10]))
        lines.append(f"classes with too few images: {len(self.small_classes)}"
                     + (f" ({', '.join(self.small_classes[:10])})" if self.small_classes else ""))
        lines.append(f"val images with a copy in train (pHash distance <= {NEAR_DUPLICATE_BITS}): {len(self.duplicates)}"
                     + (f" ({self.duplicate_pairs} train/val pairs)" if self.duplicate_pairs > len(self.duplicates) else "")
                     + "".join(f"\n  {a} ~ {b} (distance {d})" for a, b, d in self.duplicates[:10]))
        return "\n".join(lines)


def too_few_classes(class_names: Sequence[str]) -> str | None:
    """Why a fine-tune cannot be made on ``class_names``, or ``None``: a classifier learns to tell classes apart, and
    with one class it reaches 100 % at once (softmax over one logit) and has learnt nothing."""
    if len(class_names) >= 2:
        return None
    return (f"only one class ({class_names[0]}): a classifier learns to tell classes apart; add a folder of images of "
            f"at least one more class" if class_names else "no classes")


def _hashes(dataset: ImageDataset) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """64-bit pHashes (as uint64) of the readable items, their indices, and the unreadable ones."""
    import imagehash  # lazy: only the duplicate check needs it

    values, kept, bad = [], [], []
    for i in range(len(dataset)):
        try:
            h = imagehash.phash(dataset.load(i)).hash.flatten()
        except ImageError as exc:
            bad.append((str(dataset.items[i][0]), str(exc)))
            continue
        values.append(int("".join("1" if b else "0" for b in h), 2))
        kept.append(i)
    return np.array(values, dtype=np.uint64), kept, bad


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between uint64 hashes, elementwise (broadcasting)."""
    x = np.bitwise_xor(a, b)
    return _POPCOUNT[x.view(np.uint8).reshape(*x.shape, 8)].sum(-1)


def near_duplicates(queries: np.ndarray, hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int, int]]:
    """For each of ``queries`` (uint64 hashes) with a hash of ``hashes`` within ``max_distance`` bits: (query row,
    row of the closest such hash, its distance, how many of ``hashes`` are within the distance).

    Multi-index hashing (Norouzi, Punjani & Fleet 2012): two 64-bit hashes at most ``max_distance`` bits apart agree
    exactly on at least one of ``max_distance + 1`` disjoint blocks of their bits, so only hashes sharing a block value
    are compared. Memory grows with the number of images and time nearly so for distinct images; identical images
    share one entry (``np.unique``), so 50,000 copies of one photo cost no more than one. A BK-tree (``pybktree``)
    would serve too; it is one more dependency for what NumPy and a dict do here.
    """
    if not len(queries) or not len(hashes):
        return []
    distinct, first, counts = np.unique(hashes, return_index=True, return_counts=True)
    edges = np.linspace(0, 64, max_distance + 2).astype(int)
    blocks = [(int(lo), (1 << int(hi - lo)) - 1) for lo, hi in zip(edges[:-1], edges[1:])]
    tables: list[dict[int, list[int]]] = [{} for _ in blocks]
    for k, value in enumerate(distinct.tolist()):
        for table, (shift, mask) in zip(tables, blocks):
            table.setdefault((value >> shift) & mask, []).append(k)
    found = []
    for row, value in enumerate(queries.tolist()):
        candidates = {k for table, (shift, mask) in zip(tables, blocks) for k in table.get((value >> shift) & mask, ())}
        if not candidates:
            continue
        keys = np.fromiter(candidates, dtype=np.int64, count=len(candidates))
        d = hamming(distinct[keys], np.uint64(value))
        near = d <= max_distance
        if near.any():
            best = int(np.argmin(np.where(near, d, 65)))
            found.append((row, int(first[keys[best]]), int(d[best]), int(counts[keys[near]].sum())))
    return found


def validate_splits(splits: DatasetSplits, min_per_class: int = 5, max_distance: int = NEAR_DUPLICATE_BITS,
                    progress: Callable[[float], None] | None = None) -> DataReport:
    """Check a dataset before training (decodes every image once).

    Returns:
        A :class:`DataReport`; unreadable files are listed, not raised.
    """
    counts = {name: {"train": t, "val": splits.val.class_counts()[name]}
              for name, t in splits.train.class_counts().items()}
    train_h, train_idx, bad_train = _hashes(splits.train)
    if progress:
        progress(0.5)
    val_h, val_idx, bad_val = _hashes(splits.val)
    matches = near_duplicates(val_h, train_h, max_distance)
    duplicates = [(str(splits.train.items[train_idx[ti]][0]), str(splits.val.items[val_idx[vi]][0]), d)
                  for vi, ti, d, _ in matches]
    if progress:
        progress(1.0)
    small = [c for c, n in counts.items() if n["train"] < min_per_class or n["val"] == 0]
    return DataReport(counts, bad_train + bad_val, small, sorted(duplicates, key=lambda t: t[2]),
                      sum(n for *_, n in matches))


def without_unreadable(dataset: ImageDataset, report: DataReport) -> ImageDataset:
    """``dataset`` without the files the report found unreadable."""
    bad = {p for p, _ in report.unreadable}
    return dataset.subset([i for i, (item, _) in enumerate(dataset.items) if str(item) not in bad])
