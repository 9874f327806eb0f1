"""The one pipeline that scores labelled images: decode them in batches, skip (and report) the unreadable ones,
score each batch, and collect probabilities, labels and names. Evaluating one model
(:func:`carnet_core.evaluation.evaluate.evaluate`) and comparing several with their ensembles
(:func:`carnet_core.evaluation.compare.compare_on_folder`) differ only in the scoring function."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from carnet_core.errors import CarNetError, ImageError


@dataclass
class Scored:
    """What :func:`score_images` collected: ``probs`` (…, N, C) float32 — the batches' scores concatenated along
    ``dim`` —, ``labels`` (N,) int64, the ``names`` of the N images scored, and ``unreadable`` (name, reason) pairs;
    NumPy arrays (the serving tier has no torch)."""

    probs: np.ndarray
    labels: np.ndarray
    names: list[str]
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def score_images(items: Sequence[tuple[str, int]], load: Callable[[int], Image.Image],
                 score: Callable[[list[Image.Image]], Any], batch_size: int = 32, dim: int = 0,
                 progress: Callable[[float], None] | None = None) -> Scored | None:
    """Score labelled images in batches of ``batch_size``.

    Args:
        items: (name, label index) of each image, in order.
        load: index → RGB image; an :class:`~carnet_core.errors.ImageError` skips the image, reported with its name.
        score: a batch of images → scores with the batch along ``dim`` (e.g. (n, C), or (M, n, C) for M models): a
            NumPy array or a CPU torch tensor.
        progress: called with the fraction done (0–1) after each batch.

    Returns:
        The :class:`Scored` images, or None when none could be read.
    """
    probs, labels, names, unreadable = [], [], [], []
    for start in range(0, len(items), batch_size):
        images = []
        for i in range(start, min(start + batch_size, len(items))):
            name, label = items[i]
            try:
                images.append(load(i))
            except ImageError as exc:
                unreadable.append((name, str(exc)))
                continue
            labels.append(label)
            names.append(name)
        if images:
            probs.append(score(images))
        if progress:
            progress(min(1.0, (start + batch_size) / len(items)))
    if not probs:
        return None
    return Scored(np.concatenate([np.asarray(p, np.float32) for p in probs], axis=dim), np.asarray(labels, np.int64),
                  names, unreadable)


def check_photo_count(count: int, what: str, cap: int | None) -> None:
    """Refuse to score ``count`` photos of ``what`` when that is more than ``cap`` (a hosted demo's per-request cap,
    :func:`carnet_core.config.folder_photos_cap`; None: no cap).

    Raises:
        CarNetError: over the cap, saying both numbers.
    """
    if cap is not None and count > cap:
        raise CarNetError(f"{what} has {count:,} photos; this demo scores folders of up to {cap:,}")
