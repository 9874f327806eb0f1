"""Which engine classifies with a model, decided once per model by measurement.

The model is exported to ONNX once (cached, :mod:`carnet_core.inference.export`) and every candidate is checked
against torch fp32 before it is timed at batch 1 (:mod:`carnet_core.inference.parity`):

- fp32 paths: softmax probabilities within ``PARITY_ATOL`` (random inputs, and the real photos when given);
- reduced precision (bf16, int8): on real photos (``photos=`` or the folder ``$CARNET_PARITY_PHOTOS``), the gate of
  :func:`carnet_core.inference.parity.parity`. Without real photos they are not tried; int8 is calibrated on half of
  the photos and checked on the other half.

The fastest candidate that passes is used; torch is always available as the reference and for Grad-CAM; on a GPU it
is torch. ``CARNET_ENGINE=torch`` (or any engine name) forces that engine everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from PIL import Image

from carnet_core.config import forced_engine
from carnet_core.data.images import ImageSource, load_image
from carnet_core.errors import CarNetError, ImageError, count
from carnet_core.inference.engines import OnnxInt8Engine, OnnxRuntimeEngine, TorchBF16Engine, TorchEngine
from carnet_core.inference.parity import (
    ENGINES,
    FP32_ENGINES,
    REDUCED_ENGINES,
    ParityReport,
    median_ms,
    parity,
    parity_photos,
)
from carnet_core.models.classifier import Classifier


@dataclass
class Candidate:
    """One engine tried by :func:`select_engine`: its parity report, batch-1 latency (ms) and verdict."""

    name: str
    parity: ParityReport | None = None
    ms: float | None = None
    note: str = ""


@dataclass
class EngineChoice:
    """What :func:`select_engine` decided, and why (shown in the UI, the CLI and the benchmark)."""

    engine: object
    reason: str
    torch_ms: float | None = None
    candidate_ms: float | None = None
    max_abs_diff: float | None = None
    candidates: list[Candidate] = field(default_factory=list)

    def table(self) -> str:
        """One line per candidate: name, batch-1 ms, verdict, parity."""
        lines = [f"{'engine':<17} {'batch-1 ms':>10}  {'verdict':<16} parity with torch fp32"]
        for c in self.candidates:
            ms = f"{c.ms:10.1f}" if c.ms is not None else f"{'-':>10}"
            lines.append(f"{c.name:<17} {ms}  {c.note:<16} {c.parity.summary() if c.parity else ''}".rstrip())
        return "\n".join(lines)


def select_engine(model: Classifier, engine: str = "auto",
                  photos: Sequence[ImageSource] | None = None) -> EngineChoice:
    """The engine for ``model``, decided once per model object and remembered (passing ``photos`` decides again,
    with them).

    ``engine``: ``"auto"`` — on the CPU, every candidate that passes its parity gate (see :func:`parity`) is timed at
    batch 1 (median of 15) and the fastest is used; torch fp32 is the reference and the fallback. The
    reduced-precision candidates (``torch-bf16``, ``onnxruntime-int8``) are tried only with real ``photos`` (default:
    :func:`parity_photos`, i.e. ``$CARNET_PARITY_PHOTOS``). On a GPU: torch. Or an engine name from
    :data:`ENGINES` to use that engine (``$CARNET_ENGINE`` overrides the argument).

    Raises:
        CarNetError: unknown engine; a named engine that is unavailable, fails its parity gate, or (reduced
            precision) has no photos to be checked on.
    """
    engine = forced_engine() or engine
    if engine not in ("auto", *ENGINES):
        raise CarNetError(f"unknown engine {engine!r}; choose auto, {', '.join(ENGINES)}")
    if engine == "torch":
        return EngineChoice(TorchEngine(model), "asked for torch")

    def remembered() -> EngineChoice | None:  # kept on the model, so it goes when the model goes (not in a global)
        known = model._engine_choice
        if known is not None and photos is None and (engine == "auto" or known.engine.name == engine):
            return known
        return None

    if (known := remembered()) is not None:
        return known
    # one decision per model at a time; other models are not held up while this one is exported and measured
    with model.lock:
        if (known := remembered()) is not None:
            return known
        if model.device.type != "cpu" and engine == "auto":
            choice = EngineChoice(TorchEngine(model), f"torch on {model.device.type}")
        else:
            choice = _measure(model, engine, photos)
        model._engine_choice = choice
        return choice


def _load_photos(photos: Sequence[ImageSource] | None) -> list[Image.Image]:
    """The readable ones of ``photos`` (default :func:`parity_photos`) as RGB images."""
    paths = parity_photos() if photos is None else photos
    images = []
    for p in paths:
        try:
            images.append(load_image(p))
        except ImageError:  # an unreadable file in the folder is not a reason to refuse a fast path
            continue
    return images


def _measure(model: Classifier, engine: str, photos: Sequence[ImageSource] | None) -> EngineChoice:
    reference = TorchEngine(model)
    names = FP32_ENGINES if engine == "auto" else ("torch", engine)
    images = _load_photos(photos) if (engine == "auto" or engine in REDUCED_ENGINES) else []
    if engine in REDUCED_ENGINES and len(images) < 4:
        raise CarNetError(f"{engine} is used only after a parity check on real photos: pass photos= or set "
                          f"CARNET_PARITY_PHOTOS to a folder with at least 4 photos")
    if engine == "auto" and len(images) >= 4:
        names = ENGINES
    x_random = torch.randn(4, *model.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    x_photos = model.preprocess(images).cpu() if images else None
    ref_random = reference.probabilities(x_random)
    ref_photos = reference.probabilities(x_photos) if x_photos is not None else None
    x1 = x_random[:1]
    candidates = [Candidate("torch", ms=median_ms(lambda: reference.probabilities(x1)), note="reference")]
    engines = {"torch": reference}
    for name in names[1:]:
        cand = Candidate(name)
        candidates.append(cand)
        try:
            if name == "onnxruntime":
                eng = OnnxRuntimeEngine(model)
            elif name == "torch-bf16":
                eng = TorchBF16Engine(model)
            else:
                eng = OnnxInt8Engine(model, x_photos[0::2])  # calibrated on the even photos, checked on the odd
            if name in REDUCED_ENGINES:
                x, ref = (x_photos[1::2], ref_photos[1::2]) if name == "onnxruntime-int8" else (x_photos, ref_photos)
                cand.parity = _check(eng, ref, x, count(len(x), "photo"))
            else:
                cand.parity = _check(eng, ref_random, x_random, "random inputs")
                if cand.parity.passed and ref_photos is not None:
                    cand.parity = _check(eng, ref_photos, x_photos, count(len(images), "photo"))
        except Exception as exc:  # export, quantization or runtime problems (ONNX Runtime refusing to run the int8
            # graph its quantizer made of an ML-Decoder head: a Reshape of the attention's keys): not a candidate
            cand.parity = None
            cand.note = f"unavailable ({type(exc).__name__}: {str(exc)[:160]})"
            if engine == name:
                raise CarNetError(f"{name} is not available for {model.name}: {exc}") from None
            continue
        if not cand.parity.passed:
            if engine == name:
                raise CarNetError(f"{name} fails the parity gate for {model.name}: {cand.parity.summary()}")
            cand.note = "not used"
        cand.ms = median_ms(lambda: eng.probabilities(x1))  # timed either way: what a failed gate would have saved
        if cand.parity.passed:
            engines[name] = eng
    if engine == "auto" and len(images) < 4:  # the table says why bf16 / int8 are missing
        why = (f"not tried: their parity check needs at least 4 real photos ({len(images)} readable given)"
               if photos is not None or images else
               "not tried: their parity check needs real photos (--photos or $CARNET_PARITY_PHOTOS)")
        candidates += [Candidate(name, note=why) for name in REDUCED_ENGINES]
    usable = [c for c in candidates if c.name in engines]
    best = usable[-1] if engine != "auto" else min(usable, key=lambda c: c.ms)
    for c in usable:
        c.note = ("reference, " if c.name == "torch" else "") + ("used" if c is best else "slower")
    others = ", ".join(f"{c.name} {c.ms:.1f} ms" for c in usable if c is not best)
    tried = [c.name for c in candidates if c.parity is not None and not c.parity.passed]
    missing = [f"{c.name} {c.note}" for c in candidates if c.note.startswith("unavailable")]  # say why it is slower
    reason = (f"{best.name} ({best.ms:.1f} ms at batch 1" + (f"; {others}" if others else "") + ")"
              + (f"; failed parity: {', '.join(tried)}" if tried else "") + "".join(f"; {m}" for m in missing))
    if engine != "auto":
        reason = f"asked for {engine}: " + reason
    torch_ms = candidates[0].ms
    diff = best.parity.max_abs_diff if best.parity else 0.0
    return EngineChoice(engines[best.name], reason, torch_ms, best.ms, diff, candidates)

def _check(engine, reference: torch.Tensor, x: torch.Tensor, inputs: str) -> ParityReport:
    """:func:`parity` of ``engine``'s probabilities on ``x`` (N, 3, H, W); an ONNX Runtime engine on its batch-1
    session, which single images use (its batched session is checked when it is first considered:
    :meth:`OnnxRuntimeEngine.choose_batching`)."""
    probs = engine.one_by_one(x.numpy()) if isinstance(engine, OnnxRuntimeEngine) else engine.probabilities(x)
    return parity(reference, probs, engine.name, inputs)
