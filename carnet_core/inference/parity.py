"""The parity gate an engine passes before it is used: its probabilities against torch fp32's on the same inputs,
and the timing helper the engine choice measures with."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from carnet_core.config import parity_photos_dir
from carnet_core.data.images import IMAGE_EXTENSIONS

#: The engines CarNet can classify with: fp32 ones must match torch fp32's probabilities; reduced-precision
#: ones are held to the gate for them (:func:`parity`).
FP32_ENGINES: tuple[str, ...] = ("torch", "onnxruntime")
REDUCED_ENGINES: tuple[str, ...] = ("torch-bf16", "onnxruntime-int8")
ENGINES: tuple[str, ...] = FP32_ENGINES + REDUCED_ENGINES

if TYPE_CHECKING:
    pass


#: Largest allowed difference of any softmax probability between an fp32 engine and torch fp32.
PARITY_ATOL = 1e-4


#: Reduced precision: largest allowed difference of the reference top-1 class's probability, per photo.
TOP1_PROB_ATOL = 0.01


#: Photos used by the reduced-precision gate, at most (evenly spaced over the sorted folder).
MAX_PARITY_PHOTOS = 64


@dataclass
class ParityReport:
    """How a candidate engine's probabilities compare with torch fp32 (the reference) on the same inputs."""

    engine: str
    inputs: str                    # "random" or "N photos"
    max_abs_diff: float            # largest |p - p_ref| over all classes and inputs
    top5_identical: float          # fraction of inputs whose top-5 classes are the same, in the same order
    max_top1_prob_diff: float      # largest |p[ref top-1] - p_ref[ref top-1]|
    passed: bool
    rule: str                      # the rule that was applied

    def summary(self) -> str:
        return (f"{'passes' if self.passed else 'FAILS'} ({self.rule}) on {self.inputs}: top-5 identical on "
                f"{self.top5_identical:.0%}, top-1 probability off by up to {self.max_top1_prob_diff:.3f}, any "
                f"probability by up to {self.max_abs_diff:.1e}")




def parity(reference: torch.Tensor, candidate: torch.Tensor, engine: str, inputs: str) -> ParityReport:
    """Compare probabilities (N, C) of ``candidate`` with the torch fp32 ``reference``. fp32 engines pass when every
    probability is within :data:`PARITY_ATOL`; reduced-precision engines (:data:`REDUCED_ENGINES`) when the top-5
    classes are identical (in order) on every input and the top-1 probability is within :data:`TOP1_PROB_ATOL`."""
    k = min(5, reference.shape[1])
    ref_top, cand_top = reference.topk(k, dim=1).indices, candidate.topk(k, dim=1).indices
    top5 = float((ref_top == cand_top).all(dim=1).float().mean())
    top1 = float((reference.gather(1, ref_top[:, :1]) - candidate.gather(1, ref_top[:, :1])).abs().max())
    diff = float((reference - candidate).abs().max())
    if engine in REDUCED_ENGINES:
        rule = f"top-5 identical on every photo, top-1 probability within {TOP1_PROB_ATOL}"
        passed = top5 == 1.0 and top1 <= TOP1_PROB_ATOL
    else:
        rule = f"every probability within {PARITY_ATOL:g}"
        passed = diff <= PARITY_ATOL
    return ParityReport(engine, inputs, diff, top5, top1, passed, rule)


def parity_photos(folder: str | os.PathLike | None = None, limit: int = MAX_PARITY_PHOTOS) -> list[Path]:
    """Real photos for the reduced-precision gate: image files anywhere under ``folder`` (default
    ``$CARNET_PARITY_PHOTOS``; none if unset), at most ``limit``, evenly spaced over the sorted list."""
    folder = folder or parity_photos_dir()
    if not folder or not Path(folder).is_dir():
        return []
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)
    step = max(1, len(files) / limit) if files else 1
    return [files[int(i * step)] for i in range(min(limit, len(files)))]


def median_ms(fn: Callable[[], object], repeats: int = 15, warmup: int = 2, pause_s: float = 0.05) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls, after a pause (threads that another engine left
    busy-waiting go to sleep) and ``warmup`` untimed calls."""
    time.sleep(pause_s)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)
