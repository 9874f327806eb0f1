"""The one pipeline that scores labelled images: decode them in batches, skip (and report) the unreadable ones,
score each batch, and collect probabilities, labels and names. Evaluating one model
(:func:`carnet_core.evaluation.evaluate.evaluate`) and comparing several with their ensembles
(:func:`carnet_core.evaluation.compare.compare_on_folder`) differ only in the scoring function."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
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


#: Threads that decode the next batch while one is scored (:func:`score_images`).
LOAD_WORKERS = 2


def score_images(items: Sequence[tuple[str, int]], load: Callable[[int], Image.Image],
                 score: Callable[[list[Image.Image]], Any], batch_size: int = 32, dim: int = 0,
                 progress: Callable[[float], None] | None = None, workers: int | None = None) -> Scored | None:
    """Score labelled images in batches of ``batch_size``.

    While a batch is scored, the next one is loaded by ``workers`` threads (Pillow releases the GIL while it decodes
    and resizes; the decoding memory stays under :data:`carnet_core.data.images.DECODING`'s budget), so decoding
    overlaps the model (measured in docs/measurements.md, "Evaluate: loading threads, and bf16").
    ``concurrent.futures`` is enough for one batch ahead; a data-loader library (torch's ``DataLoader``) would
    bring worker processes and torch into the serving tier.

    Args:
        items: (name, label index) of each image, in order.
        load: index → RGB image, called from the worker threads (it must be thread-safe: reading files is); an
            :class:`~carnet_core.errors.ImageError` skips the image, reported with its name.
        score: a batch of images → scores with the batch along ``dim`` (e.g. (n, C), or (M, n, C) for M models): a
            NumPy array or a CPU torch tensor. Runs in the calling thread, as ``progress`` does.
        progress: called with the fraction done (0–1) after each batch.
        workers: loading threads (default :data:`LOAD_WORKERS`; 0: none — each batch is loaded in the calling thread
            when its turn comes, nothing ahead).

    Returns:
        The :class:`Scored` images, or None when none could be read.
    """
    probs, labels, names, unreadable = [], [], [], []
    workers = LOAD_WORKERS if workers is None else workers
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="carnet-load") if workers else None

    def loading(start: int) -> list[tuple[int, Future]]:
        """The batch from ``start``: each image's loading in the pool, or (no pool) loaded here and now."""
        return [(i, pool.submit(load, i) if pool else _done(load, i))
                for i in range(start, min(start + batch_size, len(items)))]

    try:
        ahead = loading(0) if pool else []
        for start in range(0, len(items), batch_size):
            # with a pool, this batch was loaded while the one before was scored, and the next one starts now
            current, ahead = (ahead, loading(start + batch_size)) if pool else (loading(start), [])
            images = []
            for i, future in current:
                name, label = items[i]
                try:
                    images.append(future.result())
                except ImageError as exc:
                    unreadable.append((name, str(exc)))
                    continue
                labels.append(label)
                names.append(name)
            if images:
                probs.append(score(images))
            if progress:
                progress(min(1.0, (start + batch_size) / len(items)))
    finally:  # after a failed score (or a stop) the batch ahead is dropped: only the images being loaded finish
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    if not probs:
        return None
    return Scored(np.concatenate([np.asarray(p, np.float32) for p in probs], axis=dim), np.asarray(labels, np.int64),
                  names, unreadable)


def _done(fn: Callable[[int], Any], i: int) -> Future:
    """A finished future of ``fn(i)``: its result, or the exception it raised."""
    future: Future = Future()
    try:
        future.set_result(fn(i))
    except Exception as exc:  # noqa: BLE001 - handed on, as a pool's future would
        future.set_exception(exc)
    return future


def check_photo_count(count: int, what: str, cap: int | None) -> None:
    """Refuse to score ``count`` photos of ``what`` when that is more than ``cap`` (a hosted demo's per-request cap,
    :func:`carnet_core.config.folder_photos_cap`; None: no cap).

    Raises:
        CarNetError: over the cap, saying both numbers.
    """
    if cap is not None and count > cap:
        raise CarNetError(f"{what} has {count:,} photos; this demo scores folders of up to {cap:,}")
