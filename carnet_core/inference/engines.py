"""Inference engines for classification: plain torch (the reference), ONNX Runtime on the exported model
(:mod:`carnet_core.inference.export`), and three reduced-precision candidates (torch bf16 autocast, ONNX Runtime int8
with static QDQ quantization, OpenVINO bf16 on the same export) that are used only when they pass their gate
(:mod:`carnet_core.inference.parity`).
Which one a model uses is decided in :mod:`carnet_core.inference.selection`.

Every engine has ``logits(batch)`` and ``probabilities(batch)`` (both (N, C) float32 on the CPU, from a batch
(N, 3, H, W)); classification uses the probabilities, which ONNX Runtime computes inside the exported graph (its
``probabilities`` output). ONNX Runtime runs single images on a session specialised to batch 1, and batches as
batch-1 calls or in one call, whichever its first batch measured faster (:class:`OnnxRuntimeEngine`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from carnet_core._io import atomic_write, temp_path
from carnet_core.errors import CarNetError
from carnet_core.inference.export import _export_path, _touch, _write_export, cached_export, prune_cache
from carnet_core.inference.parity import PARITY_ATOL, median_ms, parity
from carnet_core.models.classifier import Classifier

if TYPE_CHECKING:
    import onnxruntime
    import torch



def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities (N, C) float32 from logits (N, C) on the CPU, computed in NumPy (max-subtracted exponentials).

    Not ``torch.softmax``: on a batch it wakes torch's OpenMP threads, whose busy-waiting afterwards slows the next
    ONNX Runtime call (measured in docs/measurements.md).
    """
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    x = logits.detach().float().cpu().numpy()
    e = np.subtract(x, x.max(axis=1, keepdims=True))
    np.exp(e, out=e)
    e /= e.sum(axis=1, keepdims=True)
    return torch.from_numpy(e)


class TorchEngine:
    """The reference: the torch module in eval mode under ``inference_mode``, fp32."""

    name = "torch"

    def __init__(self, model: Classifier):
        self.model = model

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (N, C) float32 on the CPU for a preprocessed batch (N, 3, H, W)."""
        import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
        with self.model.lock, torch.inference_mode():
            return self.model.module(batch.to(self.model.device)).float().cpu()

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, C) float32 on the CPU for a preprocessed batch (N, 3, H, W)."""
        return softmax(self.logits(batch))

    def prepare(self, batch: torch.Tensor) -> None:
        """Nothing to choose before a batch (see :meth:`OnnxRuntimeEngine.prepare`)."""


class TorchBF16Engine(TorchEngine):
    """The torch module under bf16 autocast (oneDNN bf16 kernels on CPUs with AVX-512-BF16 or AMX; on GPUs)."""

    name = "torch-bf16"

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
        device = self.model.device
        with self.model.lock, torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            return self.model.module(batch.to(device)).float().cpu()


def onnxruntime_session(path: str | os.PathLike, batch: int | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session: all graph optimisations, one intra-op thread per core, ONNX Runtime's default
    thread spinning (faster at batch 1 than without (measured in docs/measurements.md)).

    ``batch``: fix the export's dynamic ``batch`` dimension for this session (ONNX Runtime's free-dimension override).
    With every shape known, ONNX Runtime constant-folds the shape arithmetic of TF-"SAME" padding and fuses the pads
    into the convolutions, which is faster for EfficientNet-Lite0 (measured in docs/measurements.md).
    """
    import onnxruntime as ort  # lazy: ONNX Runtime loads only when an engine is built

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 4  # a failing run raises its error, with the same text, to the caller: no log line
    if batch is not None:
        options.add_free_dimension_override_by_name("batch", batch)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeEngine:
    """ONNX Runtime (CPU execution provider, all graph optimisations) on the model's cached fp32 ONNX export.

    Single images run on a session specialised to batch 1 (see :func:`onnxruntime_session`). Batches run as batch-1
    calls on it, unless the first batch this engine gets shows that one call on a dynamic-batch session is faster and
    passes the same parity rule against torch fp32 on that batch (:meth:`choose_batching`). Batch-1 calls keep memory
    flat, and on a 2-core CPU they win for the depthwise-convolution models (measured in docs/measurements.md).
    """

    name = "onnxruntime"

    def __init__(self, model: Classifier):
        path = _export_path(model)
        self._open_cached(path, model, make=lambda: _write_export(model, path))

    def _open_cached(self, path: Path, model: Classifier, make: Callable[[], None]) -> None:
        """Open ``path`` from the cache, written by ``make()`` when it is not there. A cached file that ONNX Runtime
        cannot load (damaged on disk) is made again, once; a file just made that cannot be loaded raises."""
        if path.is_file():
            _touch(path)
            try:
                self._open(path, model)
                return
            except Exception:  # noqa: BLE001 - damaged on disk: made again, below
                pass
        make()
        self._open(path, model)

    def _open(self, path: Path, model: Classifier) -> None:
        self.path = path
        self.reference = TorchEngine(model)
        self.session = onnxruntime_session(path, batch=1)
        self.num_classes = len(model.class_names)
        self.batched_session = None  # opened by choose_batching when one call is faster
        self.batching: str | None = None  # what choose_batching measured; None until the first batch
        self._lock = threading.Lock()

    def logits(self, batch: torch.Tensor) -> torch.Tensor:  # InferenceSession.run is thread-safe
        """Logits (N, C) float32 for a preprocessed batch (N, 3, H, W)."""
        return self._run(batch, "logits")

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, C) float32 for a preprocessed batch (N, 3, H, W), computed by ONNX Runtime in
        the same call as the logits (the export's second output)."""
        return self._run(batch, "probabilities")

    def prepare(self, batch: torch.Tensor) -> None:
        """Make the one-off choice of how batches run (:meth:`choose_batching`, about a second) on the first batch
        of more than one image, ``batch`` (N, 3, H, W), so that :func:`~carnet_core.inference.predict.timed_probabilities`
        does not count it as that batch's model time. Later calls return at once."""
        if len(batch) > 1 and self.batching is None:
            with self._lock:
                if self.batching is None:
                    self.batching = self.choose_batching(batch.detach().cpu().float().numpy()[:8])

    def _run(self, batch: torch.Tensor, output: str) -> torch.Tensor:
        import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
        x = batch.detach().cpu().float().numpy()
        if len(x) == 1:  # the classify path: no step between the call and its result that is not needed
            return torch.from_numpy(self.session.run([output], {"input": x})[0])
        if len(x) > 1:
            self.prepare(batch)
            if self.batched_session is not None:
                return torch.from_numpy(self.batched_session.run([output], {"input": x})[0])
        return self.one_by_one(x, output)

    def one_by_one(self, x: np.ndarray, output: str = "probabilities") -> torch.Tensor:
        """``output`` (``"logits"`` or ``"probabilities"``, (N, C)) of ``x`` (N, 3, H, W) as N calls on the batch-1
        session."""
        import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
        if len(x) == 0:
            return torch.zeros(0, self.num_classes)
        return torch.from_numpy(np.concatenate([self.session.run([output], {"input": x[i:i + 1]})[0]
                                                for i in range(len(x))]))

    def choose_batching(self, x: np.ndarray, repeats: int = 5) -> str:
        """Time ``x`` (N, 3, H, W) as N batch-1 calls and as one call on a dynamic-batch session (median of
        ``repeats``, ms per image); keep that session for later batches only if it is faster and its probabilities
        pass :func:`parity` against torch fp32 on ``x``. Returns what was measured."""
        import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
        n = len(x)
        try:
            session = onnxruntime_session(self.path)
        except Exception as exc:  # the file left the cache (prune_cache) since this engine opened it
            self.batched_session = None
            return f"batches run as batch-1 calls (no dynamic-batch session: {type(exc).__name__})"
        single = median_ms(lambda: self.one_by_one(x), repeats, warmup=1) / n
        whole = median_ms(lambda: session.run(["probabilities"], {"input": x}), repeats, warmup=1) / n
        # fp32: against torch; int8: against its own batch-1 calls (the accuracy gate measured those)
        reference = (self.reference.probabilities(torch.from_numpy(x)) if self.name == "onnxruntime"
                     else self.one_by_one(x))
        report = parity(reference, torch.from_numpy(session.run(["probabilities"], {"input": x})[0]), "onnxruntime",
                        f"a batch of {n}")
        self.batched_session = session if whole < single and report.passed else None
        how = "in one call" if self.batched_session is not None else "as batch-1 calls"
        return (f"batches run {how} (batch {n}: {single:.1f} ms/image as batch-1 calls, {whole:.1f} in one call"
                + ("" if report.passed else "; one call fails parity") + ")")


class OnnxInt8Engine(OnnxRuntimeEngine):
    """ONNX Runtime on an int8 model: static post-training quantization of the fp32 export (onnxruntime.quantization:
    QDQ format, per-channel signed int8 weights, unsigned int8 activations, min-max calibration on ``calibration``
    photos). Unsigned activations with signed weights (U8S8) are what ONNX Runtime's x86 int8 kernels (AVX-512 VNNI)
    are fast for; signed activations ran no faster than fp32 (measured in docs/measurements.md).
    Cached on disk per model fingerprint and calibration set."""

    name = "onnxruntime-int8"

    def __init__(self, model: Classifier, calibration: torch.Tensor):
        """``calibration``: preprocessed photos (N, 3, H, W), fed to the calibrator one at a time."""
        fp32 = cached_export(model)
        batches = [x[None].numpy() for x in calibration.cpu()]
        h = hashlib.sha256(b"".join(b.tobytes() for b in batches)).hexdigest()[:12]
        path = fp32.with_name(f"{fp32.stem}-u8s8-{h}.onnx")  # fp32.stem carries EXPORT_VERSION

        def make() -> None:
            _quantize(fp32, path, batches)
            prune_cache(keep=(path, fp32))

        self._open_cached(path, model, make)

    @classmethod
    def from_file(cls, model: Classifier, path: Path) -> "OnnxInt8Engine":
        """The int8 engine on an int8 file made before (a stored engine choice).

        Raises:
            CarNetError: the file is gone or cannot be loaded."""
        engine = cls.__new__(cls)
        try:
            engine._open(path, model)
        except Exception as exc:  # noqa: BLE001 - pruned from the cache or damaged: measured again
            raise CarNetError(f"the int8 model {path.name} cannot be opened ({type(exc).__name__})") from None
        return engine


@functools.cache
def _openvino_core():
    import openvino  # lazy: OpenVINO loads only when its engine is tried (the serving tier has none)
    return openvino.Core()


def openvino_bf16_missing() -> str | None:
    """Why :class:`OpenVinoBF16Engine` cannot run on this machine, or None when it can: OpenVINO is not installed, or
    the CPU has no bf16 instructions (AMX or AVX-512-BF16; OpenVINO's CPU plugin lists ``BF16`` in its
    ``OPTIMIZATION_CAPABILITIES`` when it has)."""
    try:
        core = _openvino_core()
    except ImportError:
        return "OpenVINO is not installed"
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return "this CPU has no bf16 instructions (AMX or AVX-512-BF16)"
    return None


def missing_here(name: str) -> str | None:
    """Why engine ``name`` cannot run on this machine at all (not a failed gate: missing hardware or package), or None.
    Only ``openvino-bf16`` depends on the machine (:func:`openvino_bf16_missing`); the others run on any CPU."""
    return openvino_bf16_missing() if name == OpenVinoBF16Engine.name else None


class OpenVinoBF16Engine:
    """OpenVINO's CPU plugin running the model's cached fp32 ONNX export in bf16 (``INFERENCE_PRECISION_HINT``
    ``bf16``: its AMX / AVX-512-BF16 kernels; the latency hint). ONNX Runtime's CPU provider has no bf16
    convolutions on x86, and torch's bf16 autocast is slower than fp32 on depthwise convolutions
    (docs/measurements.md), so bf16 comes from OpenVINO. Used only after the accuracy gate, like every
    reduced-precision engine.

    Single images run on a model compiled for batch 1. Batches run as batch-1 calls, or — when a batch measures
    faster that way and gives the batch-1 calls' probabilities within ``PARITY_ATOL`` — on a model compiled for that
    batch size (:meth:`choose_batching`; a batch of another size runs in chunks of it, the rest as batch-1 calls).
    The choice is measured again when a larger batch comes, up to :data:`OPENVINO_MAX_BATCH` images (a Classify of
    three photos does not fix the size Evaluate's batches of 32 run at). AMX's tiles are used better by a batch.

    Raises (on construction):
        CarNetError: OpenVINO is not installed, or this CPU has no bf16 instructions (OpenVINO would silently run
            fp32 under the bf16 hint): :func:`openvino_bf16_missing`.
    """

    name = "openvino-bf16"

    def __init__(self, model: Classifier):
        if (missing := openvino_bf16_missing()) is not None:
            raise CarNetError(f"{self.name} cannot run here: {missing}")
        self.path = cached_export(model)
        self.input_size = tuple(model.data_config["input_size"])
        self.num_classes = len(model.class_names)
        self._single = self._compile(1)
        self._batched = None  # (batch size, request), made by choose_batching when one call is faster
        self._measured = 1  # the largest batch size choose_batching has measured
        self.batching: str | None = None  # what choose_batching measured last; None until the first batch
        self._lock = threading.Lock()  # an infer request runs one call at a time
        self._choosing = threading.Lock()  # held while choose_batching measures (its calls take _lock)

    def _compile(self, n: int):
        """An infer request and its output ports on the export compiled for batch ``n``."""
        network = _openvino_core().read_model(str(self.path))
        network.reshape({"input": [n, *self.input_size]})
        compiled = _openvino_core().compile_model(network, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                                   "INFERENCE_PRECISION_HINT": "bf16"})
        return compiled.create_infer_request(), {name: compiled.output(name) for name in ("logits", "probabilities")}

    @property
    def precision(self) -> str:
        """The precision OpenVINO compiled the model in (``"bf16"``), as its CPU plugin reports it."""
        return self._single[0].get_compiled_model().get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def _call(self, compiled, x: np.ndarray, output: str) -> np.ndarray:
        request, ports = compiled
        with self._lock:  # the input is read in place (share_inputs); the output is copied before the next call
            return np.array(request.infer({0: x}, share_inputs=True)[ports[output]], np.float32)

    def one_by_one(self, x: np.ndarray, output: str = "probabilities") -> torch.Tensor:
        """``output`` (``"logits"`` or ``"probabilities"``, (N, C)) of ``x`` (N, 3, H, W) as N calls at batch 1 (as
        :meth:`OnnxRuntimeEngine.one_by_one`)."""
        import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
        return torch.from_numpy(self._rows(x, output))

    def _rows(self, x: np.ndarray, output: str = "probabilities") -> np.ndarray:
        out = np.empty((len(x), self.num_classes), np.float32)
        for i in range(len(x)):
            out[i] = self._call(self._single, x[i:i + 1], output)[0]
        return out

    def _run(self, batch: torch.Tensor, output: str) -> torch.Tensor:
        import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), np.float32)
        if len(x) > 1:
            self.prepare(batch)
        if self._batched is None or len(x) < self._batched[0]:
            return torch.from_numpy(self._rows(x, output))
        n, compiled = self._batched
        whole = len(x) - len(x) % n
        parts = [self._call(compiled, x[s:s + n], output) for s in range(0, whole, n)]
        return torch.from_numpy(np.concatenate(parts + [self._rows(x[whole:], output)]))

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (N, C) float32 for a preprocessed batch (N, 3, H, W)."""
        return self._run(batch, "logits")

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, C) float32 for a preprocessed batch (N, 3, H, W) (the export's second output)."""
        return self._run(batch, "probabilities")

    def prepare(self, batch: torch.Tensor) -> None:
        """Choose how batches run (:meth:`choose_batching`, on the first :data:`OPENVINO_MAX_BATCH` images of
        ``batch`` (N, 3, H, W)) when it is larger than any batch measured before; otherwise return at once."""
        n = min(len(batch), OPENVINO_MAX_BATCH)
        if n > self._measured:
            with self._choosing:
                if n > self._measured:
                    self.batching = self.choose_batching(
                        np.ascontiguousarray(batch[:n].detach().cpu().numpy(), np.float32))
                    self._measured = n

    def choose_batching(self, x: np.ndarray, repeats: int = 5) -> str:
        """Time ``x`` (N, 3, H, W) as N batch-1 calls and as one call on a model compiled for batch N (median of
        ``repeats``, ms per image); use that model for later batches if it is faster and its probabilities are the
        batch-1 calls' within ``PARITY_ATOL`` (the accuracy gate measured batch-1 calls), else keep what was used.
        Returns what was measured."""
        n = len(x)
        batched = self._compile(n)
        single = median_ms(lambda: self._rows(x), repeats, warmup=1) / n
        whole = median_ms(lambda: self._call(batched, x, "probabilities"), repeats, warmup=1) / n
        diff = float(np.abs(self._call(batched, x, "probabilities") - self._rows(x)).max())
        same = diff <= PARITY_ATOL
        if whole < single and same:
            self._batched = (n, batched)
        how = f"in calls of {self._batched[0]}" if self._batched is not None else "as batch-1 calls"
        return (f"batches run {how} (batch {n}: {single:.1f} ms/image as batch-1 calls, {whole:.1f} in one call"
                + ("" if same else f"; one call differs from batch-1 calls by up to {diff:.1e}") + ")")


#: The largest batch :class:`OpenVinoBF16Engine` compiles a model for (Evaluate's batch size); a longer batch runs in
#: chunks of the size chosen.
OPENVINO_MAX_BATCH = 32


def _quantize(src: Path, dst: Path, batches: list) -> None:
    # lazy: the ONNX tools load only to quantize
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"input": b} for b in batches)

        def get_next(self):
            return next(self.it, None)

    pre = temp_path(dst.with_suffix(".pre"))
    # the quantizer's notes go through logging.warning(), which would give the root logger a stderr handler
    # (logging.basicConfig) for the rest of the process: a handler that drops them is there while it runs
    quiet = logging.NullHandler()
    logging.getLogger().addHandler(quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            softmax_nodes = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Softmax"]
            atomic_write(dst, lambda tmp: quantize_static(
                str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=softmax_nodes))  # probabilities in uint8 steps of 1/255: no
    finally:
        logging.getLogger().removeHandler(quiet)
        pre.unlink(missing_ok=True)


