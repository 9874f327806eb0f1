"""Which engine classifies with a model, decided once per model by measurement.

The model is exported to ONNX once (cached, :mod:`carnet_core.inference.export`) and every candidate is checked
against torch fp32 before it is timed at batch 1 (:mod:`carnet_core.inference.parity`):

- fp32 paths: softmax probabilities within ``PARITY_ATOL`` (random inputs, and the real photos when given:
  ``photos=`` or the folder ``$CARNET_PARITY_PHOTOS``);
- reduced precision (torch bf16, ONNX Runtime int8, OpenVINO bf16 where the CPU has bf16 instructions): the
  accuracy gate (:func:`carnet_core.inference.parity.accuracy_gate`, MLPerf's rule) on a labelled set
  (``calibration=``, or ``$CARNET_CALIBRATION``: :mod:`carnet_core.inference.gate_set`).
  Without a labelled set they are not tried. int8 is calibrated on every 4th photo and gated on the others.

The fastest candidate that passes is used; torch is always available as the reference and for Grad-CAM; on a GPU it
is torch. ``CARNET_ENGINE=torch`` (or any engine name) forces that engine everywhere.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from PIL import Image

from carnet_core._io import atomic_write_json, file_lock, read_json
from carnet_core.config import cache_dir, forced_engine
from carnet_core.data.images import ImageSource, load_image
from carnet_core.errors import CarNetError, ImageError, count
from carnet_core.inference.engines import (
    OnnxInt8Engine,
    OnnxRuntimeEngine,
    OpenVinoBF16Engine,
    TorchBF16Engine,
    TorchEngine,
    missing_here,
)
from carnet_core.inference.export import _export_path, export_path_for
from carnet_core.inference.gate_set import env_gate_set
from carnet_core.inference.parity import (
    ENGINES,
    FP32_ENGINES,
    MIN_GATE_PHOTOS,
    REDUCED_ENGINES,
    AccuracyGate,
    LabelledPhotos,
    ParityReport,
    accuracy_gate,
    median_ms,
    parity,
    parity_photos,
)
from carnet_core.inference.serving import ServedEngine, ServedModel
from carnet_core.models.classifier import Classifier

if TYPE_CHECKING:
    import torch


@dataclass
class Candidate:
    """One engine tried by :func:`select_engine`: its parity report (fp32) or accuracy gate (reduced precision),
    batch-1 latency (ms) and verdict."""

    name: str
    parity: ParityReport | None = None
    ms: float | None = None
    note: str = ""
    gate: AccuracyGate | None = None

    @property
    def passed(self) -> bool:
        return self.gate.passed if self.gate is not None else bool(self.parity and self.parity.passed)

    def verdict(self) -> str:
        return self.gate.summary() if self.gate is not None else self.parity.summary() if self.parity else ""


@dataclass
class EngineChoice:
    """What :func:`select_engine` decided, and why (shown in the UI, the CLI and the benchmark)."""

    engine: object
    reason: str
    torch_ms: float | None = None
    candidate_ms: float | None = None
    max_abs_diff: float | None = None
    candidates: list[Candidate] = field(default_factory=list)
    pending: bool = False  # torch for now: the fastest engine is being measured in the background

    def table(self) -> str:
        """One line per candidate: name, batch-1 ms, verdict, parity."""
        lines = [f"{'engine':<17} {'batch-1 ms':>10}  {'verdict':<16} gate (fp32: parity with torch; bf16/int8: "
                 f"accuracy on a labelled set)"]
        for c in self.candidates:
            ms = f"{c.ms:10.1f}" if c.ms is not None else f"{'-':>10}"
            lines.append(f"{c.name:<17} {ms}  {c.note:<16} {c.verdict()}".rstrip())
        return "\n".join(lines)

    def gate_text(self) -> str:
        """The used engine's gate in words: the accuracy gate's summary for reduced precision, else its parity."""
        used = next((c for c in self.candidates if c.name == self.engine.name), None)
        return used.verdict() if used is not None else ""

    def to_dict(self) -> dict:
        """The choice as stored beside an export and shown by ``models``: engine, reason, each candidate's ms and
        gate."""
        return {"engine": self.engine.name, "reason": self.reason, "torch_ms": self.torch_ms,
                "engine_ms": self.candidate_ms,
                "candidates": [{"name": c.name, "ms": c.ms, "note": c.note,
                                "gate": c.gate.to_dict() if c.gate else None,
                                "parity": c.parity.summary() if c.parity else None} for c in self.candidates]}


def select_engine(model: Classifier, engine: str = "auto", photos: Sequence[ImageSource] | None = None,
                  calibration: LabelledPhotos | None = None, among: Sequence[str] | None = None) -> EngineChoice:
    """The engine for ``model``, decided once per model object and remembered (passing ``photos`` or
    ``calibration`` decides again, with them).

    ``engine``: ``"auto"`` — on the CPU, every candidate that passes its gate is timed at batch 1 (median of 15) and
    the fastest is used; torch fp32 is the reference and the fallback. fp32 candidates pass :func:`parity` on random
    inputs and on the real ``photos`` (default: :func:`parity_photos`, i.e. ``$CARNET_PARITY_PHOTOS``). The
    reduced-precision candidates (``torch-bf16``, ``onnxruntime-int8``, ``openvino-bf16``) are tried only with a
    labelled set (``calibration``, default ``$CARNET_CALIBRATION``) and must pass :func:`accuracy_gate` on it. On a
    GPU: torch.
    Or an engine name from :data:`ENGINES` to use that engine (``$CARNET_ENGINE`` overrides the argument).

    ``among``: the engines an automatic choice may end on (default: any); torch is measured as the reference
    whatever it says. The serving bundle passes :data:`~carnet_core.inference.serving.SERVED_ENGINES`, the engines
    its tier can run. Such a choice is neither remembered on the model nor stored with the export.

    A served model (:class:`~carnet_core.inference.serving.ServedModel`, the serving tier) has one engine, chosen when
    its bundle was made: it is returned as it is, whatever ``engine`` says, and nothing is measured.

    Raises:
        CarNetError: unknown engine; a named engine that is unavailable, fails its gate, or (reduced precision) has
            no labelled set to be gated on.
    """
    if isinstance(model, ServedModel):  # the serving tier: the engine was chosen when the bundle was made
        stored = model.extra.get("engine") or {}
        return EngineChoice(ServedEngine(model), f"chosen when the bundle was made: {stored.get('reason') or 'fp32'}",
                            stored.get("torch_ms"), stored.get("engine_ms"))
    engine = forced_engine() or engine
    if engine not in ("auto", *ENGINES):
        raise CarNetError(f"unknown engine {engine!r}; choose auto, {', '.join(ENGINES)}")
    if engine == "torch":
        return EngineChoice(TorchEngine(model), "asked for torch")

    def remembered() -> EngineChoice | None:  # kept on the model, so it goes when the model goes (not in a global)
        known = model._engine_choice
        if (known is not None and photos is None and calibration is None and among is None
                and (engine == "auto" or known.engine.name == engine)):
            return known
        return None

    if (known := remembered()) is not None:
        return known
    if among is not None:  # a choice for elsewhere (the serving bundle): this model's own is left as it is
        return _measure(model, engine, photos, calibration, among)
    if _background and engine == "auto" and photos is None and calibration is None and model.device.type == "cpu":
        return _in_background(model)
    return _decide(model, engine, photos, calibration, remembered)


#: Whether an automatic choice is measured in a background thread, with torch answering meanwhile (the app, a
#: server: its first visitor does not wait ~15 s for the export and the timings). Off for the CLI and the library.
_background = False
#: What a page says while the measurement runs.
PENDING_REASON = ("torch for now: CarNet is measuring the fastest engine for this model in the background (an ONNX "
                  "export and timings, about 10–20 s once per model); later photos use it")


def measure_in_background(on: bool = True) -> None:
    """Make :func:`select_engine`'s automatic choice non-blocking in this process: a model's first call returns torch
    (:attr:`EngineChoice.pending`) and starts the measurement in a daemon thread; later calls get its result once it
    is there. For servers (``app.py`` calls it); a measurement that fails leaves torch, with the reason."""
    global _background
    _background = on


def _in_background(model: Classifier) -> EngineChoice:
    with _starting:
        if model._engine_thread is None:
            def run() -> None:
                try:
                    _decide(model, "auto", None, None, lambda: model._engine_choice)
                except Exception as exc:  # noqa: BLE001 - a failed measurement must not leave the model pending
                    model._engine_choice = EngineChoice(TorchEngine(model), f"torch (measuring the other engines "
                                                                            f"failed: {type(exc).__name__}: {exc})")

            model._engine_thread = threading.Thread(target=run, name=f"engine-{model.name}", daemon=True)
            model._engine_thread.start()
    return model._engine_choice or EngineChoice(TorchEngine(model), PENDING_REASON, pending=True)


_starting = threading.Lock()


def _decide(model: Classifier, engine: str, photos: Sequence[ImageSource] | None,
            calibration: LabelledPhotos | None, remembered) -> EngineChoice:
    # one decision per model at a time; other models are not held up while this one is exported and measured, and
    # this model's predictions are not either (its torch calls take ``model.lock`` one at a time)
    with model._engine_lock:
        if (known := remembered()) is not None:
            return known
        if model.device.type != "cpu" and engine == "auto":
            choice = EngineChoice(TorchEngine(model), f"torch on {model.device.type}")
        elif engine == "auto" and calibration is None and (known := _stored_reduced(model)) is not None:
            choice = known
        else:
            choice = _measure(model, engine, photos, calibration)
        model._engine_choice = choice
        return choice


def choice_path(model: Classifier, weights_fingerprint: str | None = None) -> Path:
    """Where the engine choice measured on a labelled set is stored: beside the model's cached ONNX export.
    ``weights_fingerprint``: the model's :func:`~carnet_core.inference.export.fingerprint` when already known (a
    model card carries it), so that the weights are not hashed again."""
    if weights_fingerprint is None:
        return _export_path(model).with_suffix(".choice.json")
    return export_path_for(model.arch, weights_fingerprint).with_suffix(".choice.json")


def stored_choice(model: Classifier, weights_fingerprint: str | None = None) -> dict[str, Any] | None:
    """The engine choice last measured for ``model`` (these weights) on a labelled set, as stored beside its export
    (:meth:`EngineChoice.to_dict` plus ``measured``, a local time, and ``int8_file``), or None."""
    data = read_json(choice_path(model, weights_fingerprint), None)
    return data if isinstance(data, dict) and data.get("engine") in ENGINES else None


def stored_engine_text(model: Classifier, weights_fingerprint: str | None = None) -> str | None:
    """The stored engine choice in one line (Markdown) for the Models page: engine, when measured, its gate; None
    when none was measured on a labelled set for these weights (``weights_fingerprint``: see :func:`choice_path`). A
    served model: the choice made when its bundle was made, from its export's metadata."""
    if isinstance(model, ServedModel):  # chosen when the bundle was made, stored in its export's metadata
        stored = model.extra.get("engine") or None
        if not stored or not stored.get("candidates"):
            return None
        stored = {**stored, "measured": stored.get("measured", "when bundled")}
    else:
        stored = stored_choice(model, weights_fingerprint)
    if stored is None:
        return None
    used = next((c for c in stored.get("candidates", []) if c.get("name") == stored["engine"]), {})
    gate = AccuracyGate(**used["gate"]).summary() if used.get("gate") else used.get("parity") or ""
    ms = f", {stored['engine_ms']:.1f} ms at batch 1" if stored.get("engine_ms") else ""
    labelled = any(c.get("gate") for c in stored.get("candidates", []))
    return (f"Engine **{stored['engine']}**{ms} (chosen {stored.get('measured', '?')}"
            f"{' on a labelled set' if labelled else ''}): {gate}")


def _store(model: Classifier, choice: EngineChoice) -> None:
    data = {**choice.to_dict(), "measured": time.strftime("%Y-%m-%d %H:%M")}
    if isinstance(choice.engine, OnnxInt8Engine):
        data["int8_file"] = choice.engine.path.name
    try:
        atomic_write_json(choice_path(model), data)
        with file_lock(_index_path().with_suffix(".lock")):  # by model name, for `models`, which loads no model
            index = read_json(_index_path(), {}) or {}
            index[model.name] = {"engine": choice.engine.name, "gate": choice.gate_text(), "measured": data["measured"]}
            atomic_write_json(_index_path(), index)
    except OSError:  # a full or read-only cache: the choice holds for this process, and is measured again next time
        pass


def _index_path() -> Path:
    return cache_dir() / "onnx" / "engine_choices.json"


def stored_engines() -> dict[str, dict[str, str]]:
    """Model name → {engine, gate, measured} of the engine choices measured on a labelled set on this machine (the
    latest per name), for listings that load no model (``python -m carnet_core models``)."""
    index = read_json(_index_path(), {})
    return index if isinstance(index, dict) else {}


def write_engine_choice(export: str | os.PathLike, choice: EngineChoice) -> None:
    """Add the engine choice (:meth:`EngineChoice.to_dict`, the measured numbers and the labelled set) to the
    ``<export>.json`` that :func:`~carnet_core.inference.export.export_onnx` wrote beside ``export``.

    Raises:
        CarNetError: the file cannot be written."""
    meta_path = Path(str(export) + ".json")
    meta = read_json(meta_path, {}) or {}
    meta["engine"] = {**choice.to_dict(), "measured": time.strftime("%Y-%m-%d %H:%M")}
    try:
        atomic_write_json(meta_path, meta)
    except OSError as exc:
        raise CarNetError(f"cannot write {meta_path}: {exc.strerror or exc}") from None


#: The engine candidates that open from the model alone (int8 needs its calibration photos, or its stored file).
_OPENED_BY_NAME = {"onnxruntime": OnnxRuntimeEngine, "torch-bf16": TorchBF16Engine,
                   "openvino-bf16": OpenVinoBF16Engine}


def _stored_reduced(model: Classifier) -> EngineChoice | None:
    """A reduced-precision engine that passed the accuracy gate for these weights before (:func:`stored_choice`),
    opened without measuring again; None when there is none or its int8 file is gone (then CarNet measures)."""
    stored = stored_choice(model)
    if stored is None or stored["engine"] not in REDUCED_ENGINES:
        return None
    try:
        if stored["engine"] in _OPENED_BY_NAME:
            engine = _OPENED_BY_NAME[stored["engine"]](model)
        else:
            engine = OnnxInt8Engine.from_file(model, choice_path(model).with_name(str(stored.get("int8_file"))))
    except CarNetError:
        return None
    candidates = [Candidate(c["name"], ms=c.get("ms"), note=c.get("note", ""),
                            gate=AccuracyGate(**c["gate"]) if c.get("gate") else None)
                  for c in stored.get("candidates", [])]
    return EngineChoice(engine, f"{stored['reason']} (measured {stored.get('measured', '?')}, stored with the export)",
                        stored.get("torch_ms"), stored.get("engine_ms"), None, candidates)


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


def _measure(model: Classifier, engine: str, photos: Sequence[ImageSource] | None,
             calibration: LabelledPhotos | None, among: Sequence[str] | None = None) -> EngineChoice:
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    if calibration is None and (engine == "auto" or engine in REDUCED_ENGINES):
        calibration = env_gate_set(model)
    reference = TorchEngine(model)
    cal_idx, gate_idx = calibration.split() if calibration is not None else ([], [])
    labelled = len(gate_idx) >= MIN_GATE_PHOTOS
    if engine in REDUCED_ENGINES and not labelled:
        raise CarNetError(f"{engine} is used only after the accuracy gate on a labelled set of real photos: pass "
                          f"calibration= (the CLI's --calibration FOLDER) or set CARNET_CALIBRATION to a folder of "
                          f"class folders with at least {2 * MIN_GATE_PHOTOS} photos")
    names = (ENGINES if labelled else FP32_ENGINES) if engine == "auto" else ("torch", engine)
    names = tuple(n for n in names if among is None or n == "torch" or n in among)
    images = _load_photos(photos) if engine in ("auto", "onnxruntime") else []
    x_random = torch.randn(4, *model.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    x_photos = model.preprocess(images).cpu() if images else None
    ref_random = reference.probabilities(x_random)
    ref_photos = reference.probabilities(x_photos) if x_photos is not None else None
    if labelled and any(n in REDUCED_ENGINES for n in names):
        x_set = model.preprocess(calibration.images).cpu()
        x_gate, ref_gate = x_set[gate_idx], reference.probabilities(x_set[gate_idx])
        ref_correct = calibration.correct(ref_gate, gate_idx)
    x1 = x_random[:1]
    candidates = [Candidate("torch", ms=median_ms(lambda: reference.probabilities(x1)), note="reference")]
    engines = {"torch": reference}
    for name in names[1:]:
        cand = Candidate(name)
        candidates.append(cand)
        if engine == "auto" and (missing := missing_here(name)):
            cand.note = f"not on this machine: {missing}"  # not a failure: nothing to say in the reason
            continue
        try:
            if name in _OPENED_BY_NAME:
                eng = _OPENED_BY_NAME[name](model)
            else:
                eng = OnnxInt8Engine(model, x_set[cal_idx])  # calibrated on photos the gate does not use
            if name in REDUCED_ENGINES:
                probs = _probabilities(eng, x_gate)
                cand.gate = accuracy_gate(ref_gate, probs, calibration.correct(probs, gate_idx), ref_correct, name,
                                          calibration.name, calibration.measure)
            else:
                cand.parity = _check(eng, ref_random, x_random, "random inputs")
                if cand.parity.passed and ref_photos is not None:
                    cand.parity = _check(eng, ref_photos, x_photos, count(len(images), "photo"))
        except Exception as exc:  # export, quantization or runtime problems (ONNX Runtime refusing to run the int8
            # graph its quantizer made of an ML-Decoder head: a Reshape of the attention's keys): not a candidate
            cand.parity = cand.gate = None
            cand.note = f"unavailable ({type(exc).__name__}: {str(exc)[:160]})"
            if engine == name:
                raise CarNetError(f"{name} is not available for {model.name}: {exc}") from None
            continue
        if not cand.passed:
            if engine == name:
                raise CarNetError(f"{name} fails its gate for {model.name}: {cand.verdict()}")
            cand.note = "not used"
        cand.ms = median_ms(lambda: eng.probabilities(x1))  # timed either way: what a failed gate would have saved
        if cand.passed:
            engines[name] = eng
    if engine == "auto" and not labelled:  # the table says why bf16 / int8 are missing
        why = ("not tried: the accuracy gate needs a labelled set (--calibration FOLDER or $CARNET_CALIBRATION)"
               if calibration is None else
               f"not tried: the accuracy gate needs at least {2 * MIN_GATE_PHOTOS} labelled photos")
        candidates += [Candidate(name, note=why) for name in REDUCED_ENGINES if among is None or name in among]
    usable = ([c for c in candidates if c.name in engines and (among is None or c.name in among)]
              or [c for c in candidates if c.name in engines])  # none of ``among`` passed: torch, as always
    best = usable[-1] if engine != "auto" else min(usable, key=lambda c: c.ms)
    for c in usable:
        c.note = ("reference, " if c.name == "torch" else "") + ("used" if c is best else "slower")
    others = ", ".join(f"{c.name} {c.ms:.1f} ms" for c in usable if c is not best)
    tried = [c.name for c in candidates if (c.parity is not None or c.gate is not None) and not c.passed]
    missing = [f"{c.name} {c.note}" for c in candidates if c.note.startswith("unavailable")]  # say why it is slower
    reason = (f"{best.name} ({best.ms:.1f} ms at batch 1" + (f"; {others}" if others else "") + ")"
              + (f"; failed its gate: {', '.join(tried)}" if tried else "") + "".join(f"; {m}" for m in missing))
    if engine != "auto":
        reason = f"asked for {engine}: " + reason
    torch_ms = candidates[0].ms
    diff = best.parity.max_abs_diff if best.parity else 0.0
    choice = EngineChoice(engines[best.name], reason, torch_ms, best.ms, diff, candidates)
    if labelled and engine == "auto" and among is None:
        _store(model, choice)
    return choice


def _probabilities(engine, x: torch.Tensor) -> torch.Tensor:
    """``engine``'s probabilities (N, C) of ``x``; an ONNX Runtime engine one photo at a time (batch-1 session)."""
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    if isinstance(engine, OnnxRuntimeEngine):
        return engine.one_by_one(x.numpy())
    return torch.cat([engine.probabilities(x[i:i + 32]) for i in range(0, len(x), 32)]) if len(x) else x


def _check(engine, reference: torch.Tensor, x: torch.Tensor, inputs: str) -> ParityReport:
    """:func:`parity` of ``engine``'s probabilities on ``x`` (N, 3, H, W); an ONNX Runtime engine on its batch-1
    session, which single images use (its batched session is checked when it is first considered:
    :meth:`OnnxRuntimeEngine.choose_batching`)."""
    return parity(reference, _probabilities(engine, x), engine.name, inputs)
