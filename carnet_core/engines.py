"""Inference engines for classification: plain torch (the reference) and ONNX Runtime on exported models.

The fast path is chosen per model by measurement (:func:`select_engine`): the model is exported to ONNX once
(cached on disk under a fingerprint of its architecture and weights, so a changed checkpoint gets a new file),
checked against torch fp32 (softmax probabilities within :data:`PARITY_ATOL`), and timed against torch at batch 1.
ONNX Runtime is used only when it is both equal and faster. Grad-CAM always uses the torch module.
``CARNET_ENGINE=torch`` forces the reference path everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import CarNetError
from .model import Classifier

ENGINES: tuple[str, ...] = ("torch", "onnxruntime")
#: Largest allowed difference of any softmax probability between an engine and torch fp32.
PARITY_ATOL = 1e-4
ONNX_OPSET = 17


def cache_dir() -> Path:
    """Where exported models are cached: ``$CARNET_CACHE_DIR`` or ``~/.cache/carnet``."""
    return Path(os.environ.get("CARNET_CACHE_DIR", Path.home() / ".cache" / "carnet"))


def fingerprint(model: Classifier) -> str:
    """SHA-256 of the architecture, input size and every tensor of the model (changes when the weights change)."""
    h = hashlib.sha256(f"{model.arch}|{model.head}|{model.data_config['input_size']}|{torch.__version__}".encode())
    for name, tensor in model.module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_onnx(model: Classifier, path: str | os.PathLike) -> Path:
    """Export ``model`` to ONNX (fp32, dynamic batch; input ``input`` (N, 3, H, W), output ``logits`` (N, C)),
    with a ``<path>.json`` beside it holding the class names, data config and provenance.

    Uses torch's TorchScript-based exporter (``dynamo=False``), which handles every timm CNN here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(1, *model.data_config["input_size"])
    module = model.module
    device = model.device
    tmp = path.with_suffix(".tmp.onnx")
    with model.lock, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module.to("cpu")
            torch.onnx.export(module, (x,), str(tmp), input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=ONNX_OPSET,
                              dynamo=False)
        finally:
            module.to(device)
    os.replace(tmp, path)
    meta = {"name": model.name, "arch": model.arch, "class_names": list(model.class_names),
            "data_config": model.data_config, "weights": model.weights.to_dict(), "input": "input", "output": "logits"}
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=1))
    return path


class TorchEngine:
    """The reference: the torch module in eval mode under ``inference_mode``."""

    name = "torch"

    def __init__(self, model: Classifier):
        self.model = model

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        with self.model.lock, torch.inference_mode():
            return self.model.module(batch.to(self.model.device)).float().cpu()


def onnxruntime_session(path: str | os.PathLike):
    """An ONNX Runtime CPU session with CarNet's settings: all graph optimisations, no busy-waiting threads (on a
    small CPU, spinning threads compete with torch's for the cores and made batch-1 latency ~1.5x worse here)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeEngine:
    """ONNX Runtime (CPU execution provider, all graph optimisations) on the model's cached ONNX export."""

    name = "onnxruntime"

    def __init__(self, model: Classifier):
        self.path = cache_dir() / "onnx" / f"{model.arch}-{fingerprint(model)[:20]}.onnx"
        if not self.path.is_file():
            export_onnx(model, self.path)
        self.session = onnxruntime_session(self.path)

    def logits(self, batch: torch.Tensor) -> torch.Tensor:  # InferenceSession.run is thread-safe
        return torch.from_numpy(self.session.run(None, {"input": batch.detach().cpu().numpy()})[0])


@dataclass
class EngineChoice:
    """What :func:`select_engine` decided, and why (shown in the UI and the benchmark)."""

    engine: object
    reason: str
    torch_ms: float | None = None
    candidate_ms: float | None = None
    max_abs_diff: float | None = None


_choices: dict[int, EngineChoice] = {}
_choice_lock = threading.Lock()


def median_ms(fn, repeats: int = 15, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in ms over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def select_engine(model: Classifier, engine: str = "auto") -> EngineChoice:
    """The engine for ``model``: ``"torch"``, ``"onnxruntime"`` (raises if it fails parity), or ``"auto"``:
    ONNX Runtime when the model is on the CPU, its probabilities are within :data:`PARITY_ATOL` of torch on a random
    batch and it is faster at batch 1; else torch. Decided once per model object and remembered.

    Raises:
        CarNetError: unknown engine, or ``"onnxruntime"`` asked for and unavailable or not equal to torch.
    """
    engine = os.environ.get("CARNET_ENGINE", engine)
    if engine not in ("auto", *ENGINES):
        raise CarNetError(f"unknown engine {engine!r}; choose auto, {', '.join(ENGINES)}")
    if engine == "torch":
        return EngineChoice(TorchEngine(model), "asked for torch")
    key = id(model.module)
    with _choice_lock:
        if key in _choices and (engine == "auto" or _choices[key].engine.name == engine):
            return _choices[key]
        reference = TorchEngine(model)
        if model.device.type != "cpu" and engine == "auto":
            choice = EngineChoice(reference, f"torch on {model.device.type}")
        else:
            choice = _try_onnx(model, reference, required=engine == "onnxruntime")
        _choices[key] = choice
        return choice


def _try_onnx(model: Classifier, reference: TorchEngine, required: bool) -> EngineChoice:
    try:
        candidate = OnnxRuntimeEngine(model)
    except Exception as exc:  # export or runtime problems: fall back to the reference
        if required:
            raise CarNetError(f"ONNX Runtime is not available for {model.name}: {exc}") from None
        return EngineChoice(reference, f"torch (ONNX export failed: {type(exc).__name__})")
    x = torch.randn(4, *model.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    diff = float((torch.softmax(candidate.logits(x), 1) - torch.softmax(reference.logits(x), 1)).abs().max())
    if diff > PARITY_ATOL:
        if required:
            raise CarNetError(f"ONNX Runtime differs from torch by {diff:.2e} > {PARITY_ATOL} for {model.name}")
        return EngineChoice(reference, f"torch (ONNX Runtime differs by {diff:.1e})", max_abs_diff=diff)
    x1 = x[:1]
    torch_ms = median_ms(lambda: reference.logits(x1))
    onnx_ms = median_ms(lambda: candidate.logits(x1))
    if onnx_ms < torch_ms or required:
        return EngineChoice(candidate, f"onnxruntime ({onnx_ms:.1f} ms vs torch {torch_ms:.1f} ms at batch 1)",
                            torch_ms, onnx_ms, diff)
    return EngineChoice(reference, f"torch ({torch_ms:.1f} ms vs onnxruntime {onnx_ms:.1f} ms at batch 1)",
                        torch_ms, onnx_ms, diff)
