"""The parity gate an engine passes before it is used: its probabilities against torch fp32's on the same inputs,
and the timing helper the engine choice measures with."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from PIL import Image

from carnet_core.config import parity_photos_dir
from carnet_core.data.images import IMAGE_EXTENSIONS

#: The engines CarNet can classify with: fp32 ones must match torch fp32's probabilities; reduced-precision
#: ones are held to the gate for them (:func:`parity`).
FP32_ENGINES: tuple[str, ...] = ("torch", "onnxruntime")
REDUCED_ENGINES: tuple[str, ...] = ("torch-bf16", "onnxruntime-int8", "openvino-bf16")
ENGINES: tuple[str, ...] = FP32_ENGINES + REDUCED_ENGINES

if TYPE_CHECKING:
    import torch


#: Largest allowed difference of any softmax probability between an fp32 engine and torch fp32.
PARITY_ATOL = 1e-4


#: Reduced precision without labels (report only, never enough to be chosen): the reference top-1 class's probability
#: difference a photo may have and still count as "kept".
TOP1_PROB_ATOL = 0.01

#: The accuracy gate for reduced precision (MLPerf Inference's rule: ≥ 99 % of the fp32 reference's top-1 accuracy on
#: the validation set; ONNX Runtime's and Intel Neural Compressor's quantization tools default to ≤ 1 % relative
#: loss), plus two per-photo rules of ours: the same top-1 class on ≥ 98 % of the photos, and the top-1 probability
#: within 0.05 on average.
MIN_ACCURACY_RATIO = 0.99
MIN_TOP1_AGREEMENT = 0.98
MAX_MEAN_TOP1_PROB_DIFF = 0.05
#: Fewest photos the accuracy gate is applied on (after the int8 calibration photos are set aside).
MIN_GATE_PHOTOS = 8


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




@dataclass
class LabelledPhotos:
    """A labelled set of real photos for the accuracy gate (built by
    :func:`carnet_core.evaluation.gate_set.labelled_photos` from a folder of class folders).

    Attributes:
        images: the RGB photos, in a fixed order.
        correct: (probabilities (N, C), the indices of those N photos in ``images``) → (N,) bool: top-1 right.
        name: the set as people read it ("tiny_vehicles_6/val, mapped to the model's classes (400 photos)").
        measure: what ``correct`` counts: ``"top-1 accuracy"`` or ``"vehicle at top-1"``.
    """

    images: list[Image.Image]
    correct: Callable[[torch.Tensor, list[int]], torch.Tensor]
    name: str
    measure: str = "top-1 accuracy"

    def split(self, every: int = 4) -> tuple[list[int], list[int]]:
        """(calibration indices, gate indices): every ``every``-th photo calibrates int8; the rest, disjoint, gate."""
        calibration = list(range(0, len(self.images), every))
        return calibration, [i for i in range(len(self.images)) if i % every]


@dataclass
class AccuracyGate:
    """How a reduced-precision engine did against the fp32 engine on a labelled set (:func:`accuracy_gate`).

    Accuracies, agreement in [0, 1]; ``mean_top1_prob_diff``: mean |p - p_ref| of the reference's top-1 class."""

    engine: str
    set_name: str
    measure: str
    photos: int
    reference_accuracy: float
    accuracy: float
    agreement: float
    mean_top1_prob_diff: float
    passed: bool

    @property
    def rule(self) -> str:
        return (f"≥ {MIN_ACCURACY_RATIO:.0%} of fp32's {self.measure}, same top-1 on ≥ {MIN_TOP1_AGREEMENT:.0%} of "
                f"photos, top-1 probability within {MAX_MEAN_TOP1_PROB_DIFF} on average")

    def summary(self) -> str:
        return (f"{'passes' if self.passed else 'FAILS'} the accuracy gate on {self.photos} photos of {self.set_name}: "
                f"{self.measure} {self.accuracy:.1%} vs fp32 {self.reference_accuracy:.1%}, same top-1 on "
                f"{self.agreement:.1%}, top-1 probability off by {self.mean_top1_prob_diff:.3f} on average")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("engine", "set_name", "measure", "photos", "reference_accuracy",
                                               "accuracy", "agreement", "mean_top1_prob_diff", "passed")}


def accuracy_gate(reference: Any, candidate: Any, correct: Any, reference_correct: Any, engine: str, set_name: str,
                  measure: str = "top-1 accuracy") -> AccuracyGate:
    """The reduced-precision gate on a labelled set: ``candidate`` probabilities (N, C) against the fp32
    ``reference`` (N, C); ``correct`` / ``reference_correct`` (N,) bool — each engine's top-1 right per photo (NumPy
    arrays or CPU torch tensors).

    Passes when the candidate keeps ≥ :data:`MIN_ACCURACY_RATIO` of the reference's accuracy (MLPerf Inference's
    rule), agrees on the top-1 class for ≥ :data:`MIN_TOP1_AGREEMENT` of the photos, and its probability of the
    reference's top-1 class differs by ≤ :data:`MAX_MEAN_TOP1_PROB_DIFF` on average."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    ref_top1 = reference.argmax(axis=1)
    agreement = float((candidate.argmax(axis=1) == ref_top1).mean())
    rows = np.arange(len(reference))
    prob_diff = float(np.abs(reference[rows, ref_top1] - candidate[rows, ref_top1]).mean())
    ref_acc, acc = float(np.asarray(reference_correct, bool).mean()), float(np.asarray(correct, bool).mean())
    passed = (acc >= MIN_ACCURACY_RATIO * ref_acc and agreement >= MIN_TOP1_AGREEMENT
              and prob_diff <= MAX_MEAN_TOP1_PROB_DIFF)
    return AccuracyGate(engine, set_name, measure, len(reference), ref_acc, acc, agreement, prob_diff, passed)


def parity(reference: torch.Tensor, candidate: torch.Tensor, engine: str, inputs: str) -> ParityReport:
    """Compare probabilities (N, C) of ``candidate`` with the torch fp32 ``reference``. fp32 engines pass when every
    probability is within :data:`PARITY_ATOL`. Reduced-precision engines (:data:`REDUCED_ENGINES`) never pass on
    unlabelled inputs: they are chosen only by :func:`accuracy_gate` on a labelled set; the report says how close
    they came (top-5 identical, top-1 probability within :data:`TOP1_PROB_ATOL`)."""
    k = min(5, reference.shape[1])
    ref_top, cand_top = reference.topk(k, dim=1).indices, candidate.topk(k, dim=1).indices
    top5 = float((ref_top == cand_top).all(dim=1).float().mean())
    top1 = float((reference.gather(1, ref_top[:, :1]) - candidate.gather(1, ref_top[:, :1])).abs().max())
    diff = float((reference - candidate).abs().max())
    if engine in REDUCED_ENGINES:
        rule = "reduced precision needs the accuracy gate on a labelled set"
        passed = False
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
