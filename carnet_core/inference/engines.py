"""Inference engines for classification: plain torch (the reference), ONNX Runtime on exported models, and two
reduced-precision candidates (torch bf16 autocast, ONNX Runtime int8) that are used only when they pass a parity gate.

The fast path is chosen per model by measurement (:func:`select_engine`). The model is exported to ONNX once
(cached on disk under a fingerprint of its architecture and weights, so a changed checkpoint gets a new file; the
cache is bounded, least recently used first: :func:`prune_cache`) and every candidate is checked against torch fp32
before it is timed at batch 1:

- fp32 paths: softmax probabilities within :data:`PARITY_ATOL` (random inputs, and the real photos when given);
- reduced precision (bf16, int8): on real photos (``photos=`` or the folder ``$CARNET_PARITY_PHOTOS``), the top-5
  classes identical, in order, on every photo and the top-1 probability within :data:`TOP1_PROB_ATOL`. Without
  real photos they are not tried; int8 is calibrated on half of the photos and checked on the other half.

The fastest candidate that passes is used; torch is always available as the reference and for Grad-CAM.
``CARNET_ENGINE=torch`` (or any engine name) forces that engine everywhere. ONNX Runtime runs single images on a
session specialised to batch 1, and batches as batch-1 calls or in one call, whichever its first batch measured
faster (:class:`OnnxRuntimeEngine`).

Every engine has ``logits(batch)`` and ``probabilities(batch)`` (both (N, C) float32 on the CPU); classification uses
the probabilities, which ONNX Runtime computes inside the exported graph (its ``probabilities`` output).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import statistics
import threading
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from carnet_core._io import atomic_write, temp_path
from carnet_core.config import cache_dir, cache_max_mb, forced_engine, parity_photos_dir
from carnet_core.data.images import IMAGE_EXTENSIONS, ImageSource, load_image
from carnet_core.errors import CarNetError, ImageError, count
from carnet_core.models.classifier import Classifier

if TYPE_CHECKING:
    import onnxruntime

FP32_ENGINES: tuple[str, ...] = ("torch", "onnxruntime")
REDUCED_ENGINES: tuple[str, ...] = ("torch-bf16", "onnxruntime-int8")
ENGINES: tuple[str, ...] = FP32_ENGINES + REDUCED_ENGINES
#: Largest allowed difference of any softmax probability between an fp32 engine and torch fp32.
PARITY_ATOL = 1e-4
#: Reduced precision: largest allowed difference of the reference top-1 class's probability, per photo.
TOP1_PROB_ATOL = 0.01
ONNX_OPSET = 17
#: Part of the cache key: bumped when the export itself changes, so files from an older export are not reused.
EXPORT_VERSION = 4
#: Photos used by the reduced-precision gate, at most (evenly spaced over the sorted folder).
MAX_PARITY_PHOTOS = 64


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Probabilities (N, C) float32 from logits (N, C) on the CPU, computed in NumPy (max-subtracted exponentials).

    Not ``torch.softmax``: on a batch it wakes torch's OpenMP threads, and their busy-waiting afterwards slowed the
    next ONNX Runtime call by up to 1.4x on a 2-core CPU (MobileNetV2, batches of 8: 182 against 257 images/s).
    """
    x = logits.detach().float().cpu().numpy()
    e = np.subtract(x, x.max(axis=1, keepdims=True))
    np.exp(e, out=e)
    e /= e.sum(axis=1, keepdims=True)
    return torch.from_numpy(e)


def fingerprint(model: Classifier) -> str:
    """SHA-256 of the architecture, input size and every tensor of the model (changes when the weights change)."""
    h = hashlib.sha256(f"{model.arch}|{model.head}|{model.data_config['input_size']}|{torch.__version__}".encode())
    for name, tensor in model.module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class _WithProbabilities(torch.nn.Module):
    """The network, returning (logits, softmax probabilities), both (N, C): exported so, ONNX Runtime computes the
    probabilities in the same call. Done in NumPy after the call, the softmax took 0.1-0.3 ms here (its code and data
    cold after the network had run): MobileNetV2's model time in ``predict()`` was 1.11-1.14x a bare ORT call."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.module(x)
        return logits, logits.softmax(dim=1)


def export_onnx(model: Classifier, path: str | os.PathLike) -> Path:
    """Export ``model`` to ONNX (fp32, dynamic batch; input ``input`` (N, 3, H, W); outputs ``logits`` and
    ``probabilities`` (softmax over classes), both (N, C)), with a ``<path>.json`` beside it holding the class names,
    data config and provenance.

    Uses torch's TorchScript-based exporter (``dynamo=False``), which handles every timm CNN here.

    Raises:
        CarNetError: ``path`` cannot be written (its folder cannot be created, no permission, disk full).
    """
    path = Path(path)
    x = torch.zeros(1, *model.data_config["input_size"])
    module = model.module
    device = model.device
    meta = _export_meta(model)

    def write(tmp: Path) -> None:
        with model.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module.to("cpu")
                # the wrapper in the module's mode: the exporter restores the wrapper's mode, recursively, after export
                wrapper = _WithProbabilities(module).train(module.training)
                torch.onnx.export(wrapper, (x,), str(tmp), input_names=["input"],
                                  output_names=["logits", "probabilities"],
                                  dynamic_axes={k: {0: "batch"} for k in ("input", "logits", "probabilities")},
                                  opset_version=ONNX_OPSET, dynamo=False)
            finally:
                module.to(device)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
        Path(str(path) + ".json").write_text(json.dumps(meta, indent=1))
    except OSError as exc:  # a folder that cannot be created or written, a full disk
        raise CarNetError(f"cannot write the ONNX export to {path}: {exc.strerror or exc}") from None
    return path


def _export_meta(model: Classifier) -> dict:
    """What goes beside an ONNX export (``<file>.json``): class names, data config, provenance, input and outputs."""
    return {"name": model.name, "arch": model.arch, "class_names": list(model.class_names),
            "data_config": model.data_config, "weights": model.weights.to_dict(), "input": "input",
            "outputs": ["logits", "probabilities"]}


def cached_export(model: Classifier) -> Path:
    """The model's ONNX export in :func:`cache_dir`, written on first use (keyed by :func:`fingerprint`). A reused
    file has its modification time set to now, so :func:`prune_cache` drops the least recently used first."""
    path = _export_path(model)
    if path.is_file():
        _touch(path)
    else:
        _write_export(model, path)
    return path


def _export_path(model: Classifier) -> Path:
    return cache_dir() / "onnx" / f"{model.arch}-{fingerprint(model)[:20]}-v{EXPORT_VERSION}.onnx"


def _write_export(model: Classifier, path: Path) -> None:
    export_onnx(model, path)
    prune_cache(keep=(path,))


def export_bundle(model: Classifier) -> bytes:
    """A zip for deploying ``model`` elsewhere, as ``python -m carnet_core export`` writes it: ``<name>.onnx`` (fp32,
    input ``input`` (N, 3, H, W); outputs ``logits`` and ``probabilities``, (N, C)) and ``<name>.onnx.json`` (class
    names, data config, provenance), from the model's cached export (:func:`cached_export`), whose probabilities the
    engine checks against torch before using it (:func:`select_engine`).

    Raises:
        CarNetError: the export cannot be written.
    """
    path = cached_export(model)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.name)
    meta = _export_meta(model)  # this model's, whichever model with the same weights wrote the cached file
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:  # ONNX weights hardly compress
        bundle.write(path, f"{name}.onnx")
        bundle.writestr(f"{name}.onnx.json", json.dumps(meta, indent=1))
    return buffer.getvalue()


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:  # a read-only cache still works, it just is not pruned by use
        pass


#: A leftover ``*.tmp`` (an export or quantization interrupted by a crash) older than this is removed.
STALE_TMP_S = 3600


def prune_cache(max_mb: float | None = None, keep: Sequence[Path] = ()) -> list[Path]:
    """Bound the ONNX export cache (``cache_dir()/onnx``) to ``max_mb`` MB (default ``$CARNET_CACHE_MAX_MB`` or
    :data:`CACHE_MAX_MB`): remove models least recently used first (modification time, refreshed on every reuse), each
    with its ``.json`` sidecar, never one in ``keep``; and temporary files older than :data:`STALE_TMP_S`. Every file
    here can be made again from its model (each checkpoint and each random-weight model gets its own export, so
    without a bound the folder only grows). Runs after each new export or quantized model. Returns what was removed.
    """
    folder = cache_dir() / "onnx"
    limit = (cache_max_mb() if max_mb is None else max_mb) * 2**20
    keep = {Path(k).resolve() for k in keep}
    removed: list[Path] = []
    try:
        files = [(p, p.stat()) for p in folder.iterdir() if p.is_file()]
    except OSError:
        return removed
    now = time.time()
    for p, st in files:
        if p.name.endswith(".tmp") and now - st.st_mtime > STALE_TMP_S:
            removed.append(p)
    sizes = {p: st.st_size for p, st in files}
    total = sum(size for p, size in sizes.items() if p not in removed)
    for p, st in sorted(((p, st) for p, st in files if p.suffix == ".onnx"), key=lambda f: f[1].st_mtime):
        if total <= limit:
            break
        if p.resolve() in keep:
            continue
        sidecar = p.with_name(p.name + ".json")
        removed += [p] + ([sidecar] if sidecar in sizes else [])
        total -= sizes[p] + sizes.get(sidecar, 0)
    for p in removed:
        try:
            p.unlink()
        except OSError:  # another process removed it or holds it: not an error for a cache
            pass
    return removed


class TorchEngine:
    """The reference: the torch module in eval mode under ``inference_mode``, fp32."""

    name = "torch"

    def __init__(self, model: Classifier):
        self.model = model

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits (N, C) float32 on the CPU for a preprocessed batch (N, 3, H, W)."""
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
        device = self.model.device
        with self.model.lock, torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            return self.model.module(batch.to(device)).float().cpu()


def onnxruntime_session(path: str | os.PathLike, batch: int | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime CPU session: all graph optimisations, one intra-op thread per core, ONNX Runtime's default
    thread spinning (turning it off cost 25-35 % at batch 1 in ``predict()`` here; what had made it look harmful was
    torch's OpenMP threads busy-waiting after torch preprocessing, which :meth:`Classifier.preprocess` now avoids).

    ``batch``: fix the export's dynamic ``batch`` dimension for this session (ONNX Runtime's free-dimension override).
    With every shape known, ONNX Runtime constant-folds the shape arithmetic of TF-"SAME" padding and fuses the pads
    into the convolutions: EfficientNet-Lite0 at batch 1 here 4.1 ms against 5.8 ms on the dynamic-batch session.
    """
    import onnxruntime as ort

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
    passes the same parity rule against torch fp32 on that batch (:meth:`choose_batching`). Here batch-1 calls win for
    the depthwise-convolution models (one image's activations stay in cache), and they keep memory flat: for
    EfficientNet-Lite0 one call of 32 images left the process about 470 MB larger than one call of 4.
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
        if len(x) == 0:
            return torch.zeros(0, self.num_classes)
        return torch.from_numpy(np.concatenate([self.session.run([output], {"input": x[i:i + 1]})[0]
                                                for i in range(len(x))]))

    def choose_batching(self, x: np.ndarray, repeats: int = 5) -> str:
        """Time ``x`` (N, 3, H, W) as N batch-1 calls and as one call on a dynamic-batch session (median of
        ``repeats``, ms per image); keep that session for later batches only if it is faster and its probabilities
        pass :func:`parity` against torch fp32 on ``x``. Returns what was measured."""
        n = len(x)
        try:
            session = onnxruntime_session(self.path)
        except Exception as exc:  # the file left the cache (prune_cache) since this engine opened it
            self.batched_session = None
            return f"batches run as batch-1 calls (no dynamic-batch session: {type(exc).__name__})"
        single = median_ms(lambda: self.one_by_one(x), repeats, warmup=1) / n
        whole = median_ms(lambda: session.run(["probabilities"], {"input": x}), repeats, warmup=1) / n
        report = parity(self.reference.probabilities(torch.from_numpy(x)),
                        torch.from_numpy(session.run(["probabilities"], {"input": x})[0]), self.name, f"a batch of {n}")
        self.batched_session = session if whole < single and report.passed else None
        how = "in one call" if self.batched_session is not None else "as batch-1 calls"
        return (f"batches run {how} (batch {n}: {single:.1f} ms/image as batch-1 calls, {whole:.1f} in one call"
                + ("" if report.passed else "; one call fails parity") + ")")


class OnnxInt8Engine(OnnxRuntimeEngine):
    """ONNX Runtime on an int8 model: static post-training quantization of the fp32 export (onnxruntime.quantization:
    QDQ format, per-channel signed int8 weights, unsigned int8 activations, min-max calibration on ``calibration``
    photos). Unsigned activations with signed weights (U8S8) are what ONNX Runtime's x86 int8 kernels (AVX-512 VNNI)
    are fast for: MobileNetV2 here 1.4 ms against 3.0 ms with signed activations, which ran no faster than fp32.
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


def _quantize(src: Path, dst: Path, batches: list) -> None:
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


def _check(engine, reference: torch.Tensor, x: torch.Tensor, inputs: str) -> ParityReport:
    """:func:`parity` of ``engine``'s probabilities on ``x`` (N, 3, H, W); an ONNX Runtime engine on its batch-1
    session, which single images use (its batched session is checked when it is first considered:
    :meth:`OnnxRuntimeEngine.choose_batching`)."""
    probs = engine.one_by_one(x.numpy()) if isinstance(engine, OnnxRuntimeEngine) else engine.probabilities(x)
    return parity(reference, probs, engine.name, inputs)


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
