"""The serving tier's models: a bundle's ONNX exports (:func:`carnet_core.inference.export.export_serving_onnx`) run
by ONNX Runtime, with no PyTorch.

A :class:`ServedModel` has what the pages use of a :class:`~carnet_core.models.classifier.Classifier` — name, class
names, data config, provenance, preprocessing (the same code: :class:`~carnet_core.models.base.ClassifierBase`),
parameters and GMACs — and one engine, chosen when the bundle was made (fp32 ONNX Runtime, or int8 that passed its
accuracy gate), so :func:`carnet_core.inference.selection.select_engine` returns it without measuring anything.
Its CAMs come from the export's ``features`` output and the classifier in the ``.npz``
(:mod:`carnet_core.explain.closed_form`).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from carnet_core.config import served_models_dir
from carnet_core.errors import CarNetError
from carnet_core.inference.engines import onnxruntime_session
from carnet_core.inference.export import fingerprint
from carnet_core.inference.parity import median_ms
from carnet_core.models.base import ClassifierBase, check_data_config, eval_resize_crop
from carnet_core.models.weights import WeightsSource

#: The engines the serving tier can run (its requirements have ONNX Runtime, not torch or OpenVINO): what a bundle's
#: engine choice is made among.
SERVED_ENGINES: tuple[str, ...] = ("onnxruntime", "onnxruntime-int8")


class _Device:
    """What ``model.device`` answers for a served model: the CPU (``.type == "cpu"``, as a ``torch.device`` has)."""

    type = "cpu"

    def __str__(self) -> str:
        return "cpu"


@dataclass(eq=False, kw_only=True)
class ServedModel(ClassifierBase):
    """A model of a serving bundle (see the module's docstring): the fields of
    :class:`~carnet_core.models.base.ClassifierBase`, and

    Attributes:
        path: the serving export (``.onnx``; ``.onnx.json`` and ``.onnx.npz`` beside it).
        cam_layer: the layer whose output the ``features`` output is (the model's default CAM target layer).

    Its ``extra`` holds the rest of the export's metadata: ``params``, ``gmacs``, ``file_mb``, ``engine`` (the choice
    made when bundling, :meth:`carnet_core.inference.selection.EngineChoice.to_dict`), ``layers`` (the model card's
    layer table), and a fine-tune's ``dataset`` and ``recipe``.
    """

    path: Path
    cam_layer: str = ""
    device = _Device()

    @property
    def num_params(self) -> int:
        return int(self.extra.get("params") or 0)

    @property
    def engine_name(self) -> str:
        """``onnxruntime`` or ``onnxruntime-int8``: the engine chosen when the bundle was made."""
        return str((self.extra.get("engine") or {}).get("engine") or "onnxruntime")

    def preprocess(self, images: Sequence[Image.Image], cropped: bool = False) -> np.ndarray:
        """RGB PIL images → the input batch (N, 3, H, W) float32 (:meth:`preprocess_array`)."""
        return self.preprocess_array(images, cropped)

    @cached_property
    def _session(self):
        return onnxruntime_session(self.path, batch=1)

    @cached_property
    def _int8_session(self):
        return onnxruntime_session(self.path.with_name(self.path.stem + "-int8.onnx"), batch=1)

    def run(self, batch: np.ndarray, outputs: Sequence[str] = ("probabilities",), fp32: bool = False) -> list[np.ndarray]:
        """The export's ``outputs`` (``logits``, ``probabilities`` (N, C); ``features`` (N, D, h, w)) for a batch
        (N, 3, H, W) float32, one image per ONNX Runtime call (a session specialised to batch 1). The int8 file runs
        when that was the engine chosen, unless ``fp32`` (the CAMs read the fp32 export's features).

        Raises:
            CarNetError: the int8 file asked for is not in the bundle.
        """
        batch = np.ascontiguousarray(batch, np.float32)
        int8 = self.engine_name == "onnxruntime-int8" and not fp32 and "features" not in outputs
        try:
            session = self._int8_session if int8 else self._session
        except Exception as exc:  # ONNX Runtime raises its own types for a missing or damaged file
            raise CarNetError(f"{self.name}: its {'int8 ' if int8 else ''}ONNX file cannot be loaded") from exc
        runs = [session.run(list(outputs), {"input": batch[i:i + 1]}) for i in range(len(batch))]
        return [np.concatenate([r[k] for r in runs]) if runs else np.zeros((0,)) for k in range(len(outputs))]

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the ONNX file: what caches of this model's results (evaluations, features) are keyed by."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    @cached_property
    def latency_ms(self) -> float:
        """Batch-1 classify latency on this server, ms (:func:`measure_latency`), measured once."""
        return measure_latency(self)

    @cached_property
    def feature_shape(self) -> tuple[int, int, int]:
        """(D, h, w) of the ``features`` output at the model's input size (one forward pass, once)."""
        return tuple(self.run(np.zeros((1, *self.data_config["input_size"]), np.float32), ("features",))[0].shape[1:])

    @cached_property
    def classifier(self) -> tuple[np.ndarray, np.ndarray]:
        """The linear classifier: (weight (C, D), bias (C,)) float32, from the export's ``.npz``."""
        with np.load(str(self.path) + ".npz") as data:
            return data["weight"].astype(np.float32), data["bias"].astype(np.float32)


class ServedEngine:
    """A served model's engine for :func:`carnet_core.inference.predict.predict`: probabilities and logits (N, C)
    float32 NumPy arrays from its ONNX file; ``name`` is the engine chosen when bundling."""

    def __init__(self, model: ServedModel):
        self.model = model
        self.name = model.engine_name

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self.model.run(batch, ("probabilities",))[0]

    def logits(self, batch: np.ndarray) -> np.ndarray:
        return self.model.run(batch, ("logits",))[0]

    def prepare(self, batch: np.ndarray) -> None:
        """Nothing to choose before a batch."""


def load_served(path: str | Path) -> ServedModel:
    """The served model whose serving export is ``path`` (``.onnx``, with its ``.json`` and ``.npz``).

    Raises:
        CarNetError: a file missing, or metadata that is not a serving export's (no ``features`` output, no class
            names, a data config the torch-free preprocessing does not cover).
    """
    path = Path(path)
    try:
        meta = json.loads(Path(str(path) + ".json").read_text())
    except (OSError, ValueError) as exc:
        raise CarNetError(f"{path.name}: its metadata (.json) cannot be read ({exc})") from None
    if "features" not in meta.get("outputs", ()) or not meta.get("class_names"):
        raise CarNetError(f"{path.name} is not a serving export (python -m carnet_core bundle writes them)")
    if not path.is_file() or not Path(str(path) + ".npz").is_file():
        raise CarNetError(f"{path.name}: the ONNX file or its classifier (.npz) is missing")
    data_config = meta["data_config"]
    check_data_config(data_config, path.name)
    if eval_resize_crop(data_config) is None:
        raise CarNetError(f"{path.name}: its data config needs timm's transform (PyTorch), which the serving tier "
                          "does not have")
    return ServedModel(
        path=path, name=meta["name"], arch=meta.get("arch", ""), family=meta.get("family", ""),
        head=meta.get("head", "linear"), class_names=tuple(meta["class_names"]), data_config=data_config,
        weights=WeightsSource.from_dict(meta.get("weights") or {"source": "checkpoint"}),
        label_set=meta.get("label_set", ""), metrics=meta.get("metrics") or {},
        extra={k: meta[k] for k in ("params", "gmacs", "file_mb", "engine", "layers", "dataset", "recipe") if k in meta},
        cam_layer=meta.get("cam_layer", ""))


def served_model_files(folder: str | Path | None = None) -> dict[str, Path]:
    """{model name: serving export} for every serving export in ``folder`` (default:
    :func:`~carnet_core.config.served_models_dir`), in the order the bundle lists them (else by file name); int8
    files and files that are not serving exports are left out."""
    folder = Path(folder) if folder is not None else served_models_dir()
    found = {}
    for path in sorted(folder.glob("*.onnx")) if folder.is_dir() else ():
        try:
            meta = json.loads(Path(str(path) + ".json").read_text())
        except (OSError, ValueError):
            continue
        if "features" in meta.get("outputs", ()) and meta.get("name"):
            found[str(meta["name"])] = path
    return found


_LOADED: dict[tuple[str, int], ServedModel] = {}
_LOADING = threading.Lock()


def cached_served(path: str | Path) -> ServedModel:
    """The served model of ``path``, loaded once per process and file version (its modification time) and shared:
    by all app sessions and by :func:`warm_up`.

    Raises:
        CarNetError: as :func:`load_served`; the file is gone.
    """
    path = Path(path)
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        raise CarNetError(f"{path.name} is no longer there") from None
    with _LOADING:  # one load per file, however many sessions ask at once
        if key not in _LOADED:
            for old in [k for k in _LOADED if k[0] == key[0]]:  # an older version of the file
                del _LOADED[old]
            _LOADED[key] = load_served(path)
        return _LOADED[key]


def warm_up(folder: str | Path | None = None) -> threading.Thread:
    """Load every served model of ``folder`` (default: the bundle's) and measure its batch-1 latency
    (:attr:`ServedModel.latency_ms`) in a background thread, so that a server has its models ready and the Models
    page its numbers before the first visitor asks. Errors are left for the pages to say when a model is used."""

    def run() -> None:
        for path in served_model_files(folder).values():
            try:
                cached_served(path).latency_ms
            except Exception:  # noqa: BLE001 - any failure is said by the page that uses the model
                continue

    thread = threading.Thread(target=run, name="carnet-warm-up", daemon=True)
    thread.start()
    return thread


def measure_latency(model: ServedModel, repeats: int = 20) -> float:
    """Batch-1 classify latency of ``model``, ms: the median of ``repeats`` ONNX Runtime calls on a preprocessed
    photo-sized input, after two warm-up calls (as the full install's Models page measures, but in this process:
    the serving tier has one engine per model and nothing to keep apart)."""
    x = model.preprocess([Image.new("RGB", (320, 240), (120, 130, 140))])
    return median_ms(lambda: model.run(x), repeats=repeats)


def served_zip(model: ServedModel) -> bytes:
    """A zip of ``model``'s serving export for deploying elsewhere: ``<name>.onnx`` (input ``input`` (N, 3, H, W);
    outputs ``logits``, ``probabilities`` (N, C) and ``features``), ``<name>.onnx.json`` and ``<name>.onnx.npz`` (the
    classifier, for CAMs)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as out:
        for suffix in ("", ".json", ".npz"):
            out.write(str(model.path) + suffix, model.path.name + suffix)
    return buffer.getvalue()


def weights_fingerprint(model: Any) -> str:
    """What caches of a model's results are keyed by: a served model's :attr:`ServedModel.fingerprint`, else the
    full install's :func:`carnet_core.inference.export.fingerprint` (its weights hashed)."""
    return model.fingerprint if isinstance(model, ServedModel) else fingerprint(model)


def pooled_features(model: ServedModel, batch: np.ndarray) -> np.ndarray:
    """The features a served model's classifier reads, (N, D) float32: its ``features`` output averaged over the map
    (the global average pooling of its linear head), from a preprocessed batch (N, 3, H, W)."""
    return model.run(batch, ("features",), fp32=True)[0].mean(axis=(2, 3)).astype(np.float32)
