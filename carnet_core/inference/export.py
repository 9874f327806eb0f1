"""ONNX export of a classifier (logits and probabilities as outputs, a JSON sidecar with class names, data
config and provenance), the export cache keyed by a fingerprint of the weights, and its bound."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from carnet_core._io import atomic_write
from carnet_core.config import cache_dir, cache_max_mb
from carnet_core.errors import CarNetError
from carnet_core.models.classifier import Classifier

if TYPE_CHECKING:
    import torch


ONNX_OPSET = 17


#: Part of the cache key: bumped when the export itself changes, so files from an older export are not reused.
EXPORT_VERSION = 4


def fingerprint(model: Classifier) -> str:
    """SHA-256 of the architecture, input size and every tensor of the model (changes when the weights change)."""
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    h = hashlib.sha256(f"{model.arch}|{model.head}|{model.data_config['input_size']}|{torch.__version__}".encode())
    for name, tensor in model.module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def export_onnx(model: Classifier, path: str | os.PathLike) -> Path:
    """Export ``model`` to ONNX (fp32, dynamic batch; input ``input`` (N, 3, H, W); outputs ``logits`` and
    ``probabilities`` (softmax over classes), both (N, C)), with a ``<path>.json`` beside it holding the class names,
    data config and provenance.

    Uses torch's TorchScript-based exporter (``dynamo=False``), which handles every timm CNN here.

    Raises:
        CarNetError: ``path`` cannot be written (its folder cannot be created, no permission, disk full).
    """
    path = Path(path)
    meta = _export_meta(model)
    write = _onnx_writer(model, "probabilities", ("logits", "probabilities"))

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
        Path(str(path) + ".json").write_text(json.dumps(meta, indent=1))
    except OSError as exc:  # a folder that cannot be created or written, a full disk
        raise CarNetError(f"cannot write the ONNX export to {path}: {exc.strerror or exc}") from None
    return path


#: The serving export's outputs, in order.
SERVING_OUTPUTS: tuple[str, ...] = ("logits", "probabilities", "features")


def export_serving_onnx(model: Classifier, path: str | os.PathLike) -> Path:
    """Export ``model`` for the torch-free serving tier: ONNX (fp32, dynamic batch; input ``input`` (N, 3, H, W);
    outputs ``logits`` and ``probabilities`` (N, C) and ``features`` (N, D, h, w), the map the head pools), with
    ``<path>.npz`` beside it holding the linear classifier's ``weight`` (C, D) and ``bias`` (C,) — all a closed-form
    CAM needs (:func:`carnet_core.explain.closed_form.closed_form_cam`) — and ``<path>.json`` (class names, data
    config, provenance, and the ``cam_layer`` those features are: the model's default target layer).

    Raises:
        CarNetError: the head is not global average pooling + a linear layer (ML-Decoder: no closed-form CAM), or
            the files cannot be written."""
    import numpy as np  # lazy: only the serving export writes the classifier as .npz
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)

    head = model.module.get_classifier()
    if model.head != "linear" or not isinstance(head, torch.nn.Linear):
        raise CarNetError(f"{model.name} has a {model.head} head: the serving export needs global average pooling "
                          f"and a linear classifier (its CAMs are computed from them)")
    path = Path(path)
    write = _onnx_writer(model, "features", SERVING_OUTPUTS)

    meta = {**_export_meta(model), "outputs": list(SERVING_OUTPUTS), "classifier": path.name + ".npz",
            "cam_layer": _pooled_layer(model)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, write)
        with open(str(path) + ".npz", "wb") as out:
            np.savez(out, weight=head.weight.detach().cpu().float().numpy(),
                     bias=head.bias.detach().cpu().float().numpy())
        Path(str(path) + ".json").write_text(json.dumps(meta, indent=1))
    except OSError as exc:
        raise CarNetError(f"cannot write the serving export to {path}: {exc.strerror or exc}") from None
    return path


def _pooled_layer(model: Classifier) -> str:
    """The name of the module whose output ``forward_features`` returns (the last one it runs)."""
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    seen: list[str] = []
    handles = [m.register_forward_hook(lambda _m, _i, _o, n=n: seen.append(n))
               for n, m in model.module.named_modules() if n and not list(m.children())]
    try:
        with model.lock, torch.inference_mode():
            model.module.forward_features(torch.zeros(1, *model.data_config["input_size"], device=model.device))
    finally:
        for h in handles:
            h.remove()
    last = seen[-1] if seen else ""
    # a leaf inside a block (bn2.act) stands for the block whose output it is (bn2): the name a CAM targets
    parents = [n for n, _ in model.module.named_modules() if n and last.startswith(n + ".")]
    return parents[0] if parents and parents[0].count(".") == 0 else last


def _wrapper(returns: str) -> type[torch.nn.Module]:
    """The network wrapped to return what an export outputs: ``"probabilities"`` — (logits, softmax probabilities),
    both (N, C): exported so, ONNX Runtime computes the probabilities in the same call, faster than a softmax after it
    (measured in docs/measurements.md); ``"features"`` — (logits, probabilities, features): ``features`` (N, D, h, w)
    is the map the head pools (timm's ``forward_features``), which the torch-free CAMs read
    (:mod:`carnet_core.explain.closed_form`). Made on demand: torch is imported only to export."""
    import torch  # lazy: the serving tier has no torch

    class WithProbabilities(torch.nn.Module):
        def __init__(self, module: torch.nn.Module):
            super().__init__()
            self.module = module

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.module(x)
            return logits, logits.softmax(dim=1)

    class WithFeatures(WithProbabilities):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            features = self.module.forward_features(x)
            logits = self.module.forward_head(features)
            return logits, logits.softmax(dim=1), features

    return WithFeatures if returns == "features" else WithProbabilities


def _onnx_writer(model: Classifier, returns: str, outputs: Sequence[str]):
    """A function writing the network wrapped by :func:`_wrapper` (``returns``) as ONNX to a path (input ``input``,
    ``outputs``, dynamic batch), with torch's TorchScript-based exporter, holding the model's lock and running it on
    the CPU meanwhile."""
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    wrapper = _wrapper(returns)
    x = torch.zeros(1, *model.data_config["input_size"])
    module, device = model.module, model.device

    def write(tmp: Path) -> None:
        with model.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module.to("cpu")
                # the wrapper in the module's mode: the exporter restores the wrapper's mode, recursively, after export
                wrapped = wrapper(module).train(module.training)
                torch.onnx.export(wrapped, (x,), str(tmp), input_names=["input"], output_names=list(outputs),
                                  dynamic_axes={k: {0: "batch"} for k in ("input", *outputs)},
                                  opset_version=ONNX_OPSET, dynamo=False)
            finally:
                module.to(device)

    return write


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
    return export_path_for(model.arch, fingerprint(model))


def export_path_for(arch: str, weights_fingerprint: str) -> Path:
    """Where the cached export of an ``arch`` network with weights of :func:`fingerprint` ``weights_fingerprint`` is
    (or will be): for callers that already know the fingerprint and need not hash the weights again."""
    return cache_dir() / "onnx" / f"{arch}-{weights_fingerprint[:20]}-v{EXPORT_VERSION}.onnx"


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
