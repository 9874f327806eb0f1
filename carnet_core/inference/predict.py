"""Top-k prediction for a batch of images, with measured latency and the vehicle view of ImageNet."""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image

from carnet_core.data.images import DECODING, ImageSource, dim_outside, fit_within, jpeg_bytes, load_image, peek_size
from carnet_core.errors import ImageError
from carnet_core.inference.selection import select_engine
from carnet_core.models.classifier import Classifier, InputView
from carnet_core.models.labels import vehicle_indices

if TYPE_CHECKING:
    import torch


@dataclass
class Prediction:
    """The top-k classes of one image.

    Attributes:
        class_names: top-k class names, most probable first.
        probabilities: their softmax probabilities in [0, 1].
        indices: their class indices.
        vehicle_class_names / vehicle_probabilities: the top-k among the road-vehicle classes
            (:data:`carnet_core.models.labels.VEHICLE_CLASSES`), same probabilities as above (not renormalised);
            empty for label sets without vehicle classes.
        vehicle_share: total probability on the vehicle classes.
    """
    class_names: list[str]
    probabilities: list[float]
    indices: list[int]
    vehicle_class_names: list[str] = field(default_factory=list)
    vehicle_probabilities: list[float] = field(default_factory=list)
    vehicle_share: float = 0.0

    @property
    def top1(self) -> str:
        return self.class_names[0]

    @property
    def heading(self) -> str:
        """A chart's title for these bars: ``"Top-5: sports car"``, ``"Top-3: red"`` for a model of 3 classes."""
        return f"Top-{len(self.class_names)}: {self.top1}"

    def to_dict(self) -> dict:
        return {
            "topk": [{"class": c, "probability": round(p, 6)} for c, p in zip(self.class_names, self.probabilities)],
            "vehicle_topk": [{"class": c, "probability": round(p, 6)}
                             for c, p in zip(self.vehicle_class_names, self.vehicle_probabilities)],
            "vehicle_share": round(self.vehicle_share, 6),
        }


@dataclass
class PredictionBatch:
    """Predictions for a batch, with timings.

    Attributes:
        predictions: one :class:`Prediction` per input image, in input order.
        preprocess_ms: wall time of decoding-free preprocessing (resize, crop, normalise), ms.
        latency_ms: wall time of the forward pass and softmax for the whole batch, ms.
    """
    predictions: list[Prediction]
    preprocess_ms: float
    latency_ms: float

    def __len__(self) -> int:
        return len(self.predictions)

    def __getitem__(self, i: int) -> Prediction:
        return self.predictions[i]

    @property
    def per_image_ms(self) -> float:
        """Model and preprocessing time per image of the batch, ms: a row's ``latency_ms`` in a predictions CSV."""
        return (self.latency_ms + self.preprocess_ms) / max(len(self), 1)

    def timing(self) -> str:
        """The timings in words: "<M> ms model time + <P> ms preprocessing" for one image; for N > 1, "N images in
        X ms model time (X/N ms per image) + P ms preprocessing"."""
        n, ms = len(self), self.latency_ms
        model = f"{ms:.0f} ms model time"
        if n > 1:
            model = f"{n} images in {model} ({ms / n:.0f} ms per image)"
        return f"{model} + {self.preprocess_ms:.0f} ms preprocessing"


@dataclass
class ClassifiedPhoto:
    """One photo of :func:`classify_files`.

    Attributes:
        name: its file name.
        prediction: its top-k, None when it could not be read.
        view: where the model looks in it (:meth:`Classifier.view_of`), None when it could not be read.
        preview: a JPEG of it for display, at most ``preview_px`` on its longer side, the parts the model does not
            see dimmed (:func:`~carnet_core.data.images.dim_outside`); None when it could not be read.
        error: why it could not be read (the :class:`~carnet_core.errors.ImageError` message), else None.
    """
    name: str
    prediction: Prediction | None = None
    view: InputView | None = None
    preview: bytes | None = None
    error: str | None = None


#: Longer side of :attr:`ClassifiedPhoto.preview`, px: a third of a wide page on a 2x screen.
PREVIEW_PX = 800


#: Pixels one request may decode (a Classify run): 32 photos of 12 MP, or 8 of 50 MP. Photos are decoded while the
#: run's total is under it (so at most one photo past it); the rest are skipped with their reason.
REQUEST_PIXEL_BUDGET = 400_000_000


def classify_files(model: Classifier, files: Sequence[tuple[str, bytes | ImageSource]], topk: int = 5,
                   preview_px: int = PREVIEW_PX, pixel_budget: int = REQUEST_PIXEL_BUDGET,
                   session_pixels_left: int | None = None) -> tuple[list[ClassifiedPhoto], PredictionBatch | None]:
    """Decode and classify uploaded files in one batch, each with a small preview to show: what the Classify page
    does with a set of photos. A file that cannot be read is kept with its reason and the rest are classified.

    Memory: each photo is decoded, previewed and turned into its model input (3×H×W float32, 0.6 MB at 224 px)
    before the next is decoded, holding its pixels in the process's :data:`~carnet_core.data.images.DECODING` budget
    (concurrent sessions' big photos take turns), so a request holds one decoded photo at a time, not all of them (32 GIFs of
    7000×7000 px took a server from 1.2 to 5.3 GB); photos past ``pixel_budget`` decoded pixels in all — or past
    ``session_pixels_left``, what the app session may still decode — are skipped with their reason. The previews (tens of kB, :data:`PREVIEW_PX`) let a page keep the result and redraw it
    without decoding and scaling the photos again.

    Returns:
        (one :class:`ClassifiedPhoto` per file, in order; the :class:`PredictionBatch` of the readable ones, None
        when there are none).

    Raises:
        CarNetError: from :func:`predict` (e.g. an engine forced by ``$CARNET_ENGINE`` that this model cannot use).
    """
    photos, inputs, decoded, preprocess_ms = [], [], 0, 0.0
    for name, data in files:
        if decoded >= pixel_budget:
            photos.append(ClassifiedPhoto(name, error=f"{name}: skipped — this run already decoded "
                                                      f"{decoded / 1e6:,.0f} MP of photos (the limit is "
                                                      f"{pixel_budget / 1e6:,.0f} MP); classify it in another run"))
            continue
        if session_pixels_left is not None and decoded >= session_pixels_left:
            photos.append(ClassifiedPhoto(name, error=f"{name}: skipped — this session has classified as many "
                                                      "megapixels of photos as one session may; reload the page to "
                                                      "start a new one"))
            continue
        size = peek_size(data)
        with DECODING.hold(size[0] * size[1] if size else 0):  # other sessions' big photos wait their turn
            try:
                image = load_image(data, name=name)
            except ImageError as exc:
                photos.append(ClassifiedPhoto(name, error=str(exc)))
                continue
            decoded += image.width * image.height
            view = model.view_of(image.size)
            shown = fit_within(image, preview_px)
            if view.cuts_off:
                scale = min(1.0, preview_px / max(image.size))  # fit_within's
                shown = dim_outside(shown, tuple(v * scale for v in view.box))
            photos.append(ClassifiedPhoto(name, view=view, preview=jpeg_bytes(shown)))
            t0 = time.perf_counter()
            inputs.append(model.preprocess([image]))
            preprocess_ms += (time.perf_counter() - t0) * 1e3
            del image, shown  # before the next photo is decoded, and before other threads' may be
    if not inputs:
        return photos, None
    batch = predict_preprocessed(model, concat(inputs), topk, preprocess_ms=preprocess_ms)
    readable = iter(batch.predictions)
    for photo in photos:
        if photo.error is None:
            photo.prediction = next(readable)
    return photos, batch


def predict_preprocessed(model: Classifier, batch: torch.Tensor, topk: int = 5, engine: str = "auto",
                         preprocess_ms: float = 0.0) -> PredictionBatch:
    """:func:`predict` of a batch already preprocessed by :meth:`Classifier.preprocess` (N, 3, H, W), which took
    ``preprocess_ms``. The engine is chosen first, outside the model timer, as in :func:`timed_probabilities`."""
    chosen = select_engine(model, engine).engine
    chosen.prepare(batch)
    t0 = time.perf_counter()
    probs = chosen.probabilities(batch)
    model_ms = (time.perf_counter() - t0) * 1e3
    return PredictionBatch(topk_predictions(probs, model.class_names, topk), preprocess_ms, model_ms)


def concat(batches: Sequence[Any]) -> Any:
    """Preprocessed batches (each (n, 3, H, W)) as one: NumPy arrays (a served model's) or torch tensors."""
    if isinstance(batches[0], np.ndarray):
        return np.concatenate(batches)
    import torch  # lazy: the serving tier has no torch

    return torch.cat(list(batches))


def _sync(device: Any) -> None:
    if device.type == "cuda":
        import torch  # lazy: only a GPU needs it, and the serving tier has none

        torch.cuda.synchronize(device)


def predict_probabilities(model: Classifier, batch: torch.Tensor, engine: str = "auto") -> torch.Tensor:
    """Softmax probabilities (N, num_classes) float32 on the CPU for a preprocessed batch (N, 3, H, W).

    ``engine``: ``"auto"`` (the fastest engine that matches torch, see :mod:`carnet_core.inference.engines`), ``"torch"``
    (the reference) or ``"onnxruntime"``.
    """
    return select_engine(model, engine).engine.probabilities(batch)


def predict(model: Classifier, images: Sequence[ImageSource | Image.Image], topk: int = 5,
            engine: str = "auto") -> PredictionBatch:
    """Classify a batch of images.

    Preprocessing comes from the model's data config (timm), never from the caller.

    Args:
        model: a loaded :class:`~carnet_core.models.classifier.Classifier`.
        images: RGB PIL images, or anything :func:`~carnet_core.data.images.load_image` accepts.
        topk: how many classes to return per image (clipped to the number of classes).
        engine: inference engine (see :func:`predict_probabilities`).

    Returns:
        A :class:`PredictionBatch` with top-k names and probabilities and the measured latency (ms).

    Raises:
        ImageError: an input that is not a PIL image cannot be decoded.
        ValueError: ``images`` is empty or ``topk`` < 1.
    """
    if len(images) == 0:
        raise ValueError("predict() needs at least one image")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    probs, preprocess_ms, model_ms = timed_probabilities(model, images, engine)
    return PredictionBatch(topk_predictions(probs, model.class_names, topk), preprocess_ms, model_ms)


def timed_probabilities(model: Classifier, images: Sequence[ImageSource | Image.Image],
                        engine: str = "auto", cropped: bool = False) -> tuple[torch.Tensor, float, float]:
    """(probabilities (N, C) float32 on the CPU, preprocessing ms, model ms) for ``images`` (RGB PIL images, or
    anything :func:`~carnet_core.data.images.load_image` accepts). The engine is chosen first (a model's first call exports
    and measures, see :func:`~carnet_core.inference.engines.select_engine`), outside both timers, and so is ONNX Runtime's
    one-off choice of how batches run (:meth:`~carnet_core.inference.engines.OnnxRuntimeEngine.prepare`); decoding is not timed
    either. ``cropped``: ``images`` are already the model's input views (:meth:`~carnet_core.models.base.ClassifierBase.input_view`,
    made by a folder's loading threads): they are only normalised.

    Raises:
        ImageError: an input that is not a PIL image cannot be decoded.
    """
    chosen = select_engine(model, engine).engine
    pil = [im if isinstance(im, Image.Image) and im.mode == "RGB" else load_image(im) for im in images]
    t0 = time.perf_counter()
    batch = model.preprocess(pil, cropped)
    _sync(model.device)
    t1 = time.perf_counter()
    chosen.prepare(batch)  # ONNX Runtime's one-off choice of how batches run: not this batch's model time
    t2 = time.perf_counter()
    probs = chosen.probabilities(batch)
    t3 = time.perf_counter()
    return probs, (t1 - t0) * 1e3, (t3 - t2) * 1e3


def topk_predictions(probs: Any, class_names: Sequence[str], topk: int = 5) -> list[Prediction]:
    """Turn probabilities (N, C) (a NumPy array, or a CPU torch tensor) into :class:`Prediction` objects, with the
    vehicle view when the labels have one. Ties keep the lower class index first."""
    probs = np.asarray(probs, dtype=np.float32)
    k = min(topk, probs.shape[1])
    vidx = vehicle_indices(class_names)
    out = []
    for row in probs:
        i = _top(row, k)
        pred = Prediction([class_names[j] for j in i], row[i].tolist(), i.tolist())
        if vidx:
            vprobs = row[vidx]
            vi = _top(vprobs, min(k, len(vidx)))
            pred.vehicle_class_names = [class_names[vidx[j]] for j in vi.tolist()]
            pred.vehicle_probabilities = vprobs[vi].tolist()
            pred.vehicle_share = float(vprobs.sum())
        out.append(pred)
    return out


def _top(row: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest values of ``row``, largest first (a stable sort: ties by index)."""
    return np.argsort(-row, kind="stable")[:k]


def prediction_table(results: Sequence[dict]) -> tuple[list[str], list[dict]]:
    """One row per image, as timm's ``inference.py`` writes them (``image``, ``class_1``, ``probability_1``, ...,
    then ``latency_ms`` and ``error``), from ``results``: ``{"image": name, **Prediction.to_dict()}`` (with
    ``latency_ms`` when known) or ``{"image": name, "error": message}`` for an image that could not be read.

    Returns:
        (column names, rows as dicts), for :class:`csv.DictWriter`.
    """
    k = max([len(r["topk"]) for r in results if "topk" in r], default=0)
    columns = ["image"] + [f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "probability")]
    rows = [{"image": r["image"], "latency_ms": r.get("latency_ms"), "error": r.get("error", ""),
             **{f"{c}_{i}": t[c] for i, t in enumerate(r.get("topk", []), 1) for c in ("class", "probability")}}
            for r in results]
    return columns + ["latency_ms", "error"], rows


def prediction_csv(results: Sequence[dict]) -> str:
    """:func:`prediction_table` as CSV text."""
    columns, rows = prediction_table(results)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
