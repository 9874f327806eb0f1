"""Grad-CAM explanations on pytorch-grad-cam (https://github.com/jacobgil/pytorch-grad-cam); no CAM math here. In the
torch-free serving tier, a :class:`~carnet_core.inference.serving.ServedModel`'s CAMs are the closed forms of
:mod:`carnet_core.explain.closed_form` at its last feature map, equal to pytorch-grad-cam's there.

``explain(model, image, method="gradcam")`` returns the heatmap aligned with the image as the model sees it
(after its resize and center crop), the target class and its probability, and a faithfulness number from
pytorch-grad-cam's metrics, so users learn that a heatmap can be wrong.

Concurrency: models are shared by all app sessions. pytorch-grad-cam hooks the target layer for the length of a
call, so every call holds the model's lock (:attr:`Classifier.lock`, also held by :func:`predict`), and the hooks
are released and gradients freed before the lock is let go.
"""

from __future__ import annotations

import functools
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from PIL import Image

from carnet_core.config import hosted_mode
from carnet_core.data.images import ImageSource, load_image
from carnet_core.errors import CarNetError
from carnet_core.explain.closed_form import CLOSED_FORM_METHODS, closed_form_cam
from carnet_core.inference.serving import ServedModel
from carnet_core.models.classifier import Classifier

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class CamMethod:
    """One CAM method: its key (CLI and page), its name in the UI (its paper's and pytorch-grad-cam's), the
    pytorch-grad-cam class that computes it, its source, and whether it is expensive (one forward pass per channel of
    the target layer: slow, show an estimate first)."""

    key: str
    name: str
    cls: str
    source: str
    expensive: bool = False


#: The CAM methods, in the order the pickers offer them: the one table the CLI and the Explain page read.
METHOD_TABLE: tuple[CamMethod, ...] = (
    CamMethod("gradcam", "GradCAM", "GradCAM", "Selvaraju et al. 2017"),
    CamMethod("gradcam++", "GradCAM++", "GradCAMPlusPlus", "Chattopadhyay et al. 2018"),
    CamMethod("hirescam", "HiResCAM", "HiResCAM", "Draelos & Carin 2020"),
    CamMethod("xgradcam", "XGradCAM", "XGradCAM", "Fu et al. 2020"),
    CamMethod("layercam", "LayerCAM", "LayerCAM", "Jiang et al. 2021"),
    CamMethod("eigencam", "EigenCAM", "EigenCAM", "Muhammad & Yeasin 2020 (class-agnostic: first principal component)"),
    CamMethod("scorecam", "ScoreCAM", "ScoreCAM", "Wang et al. 2020", expensive=True),
    CamMethod("ablationcam", "AblationCAM", "AblationCAM", "Desai & Ramaswamy 2020", expensive=True),
    CamMethod("finercam", "FinerCAM", "FinerCAM", "Zhang et al. 2025: target class vs its most similar classes"),
)
METHODS: tuple[str, ...] = tuple(m.key for m in METHOD_TABLE)
#: The floor a faithfulness ranking measures the methods against: random channel weights (pytorch-grad-cam's
#: RandomCAM). Not offered as an explanation.
FLOOR_METHOD = CamMethod("randomcam", "RandomCAM", "RandomCAM", "pytorch-grad-cam: random channel weights")
#: How the methods are written in the UI.
METHOD_NAMES: dict[str, str] = {m.key: m.name for m in METHOD_TABLE}
#: Methods that run one forward pass per channel of the target layer: slow, show an estimate first.
EXPENSIVE_METHODS: frozenset[str] = frozenset(m.key for m in METHOD_TABLE if m.expensive)


def _methods() -> dict[str, type]:
    """Method key → the pytorch-grad-cam class (:data:`METHOD_TABLE`)."""
    import pytorch_grad_cam as pgc  # lazy: pytorch-grad-cam brings OpenCV, SciPy, Matplotlib (180 MB)

    return {m.key: getattr(pgc, m.cls) for m in (*METHOD_TABLE, FLOOR_METHOD)}


#: What a served model's Explain page cannot do, in one line (:func:`methods_for`).
SERVED_CAM_NOTE = ("This demo computes heatmaps without PyTorch, at the model's last feature map: ScoreCAM, AblationCAM, "
                   "other layers, augmentation smoothing and ROAD need CarNet's full install.")


def methods_for(model: Classifier | ServedModel) -> tuple[str, ...]:
    """The CAM methods ``model`` can be explained with: all of :data:`METHODS`, or for a served model the closed
    forms (:data:`~carnet_core.explain.closed_form.CLOSED_FORM_METHODS`); on a hosted demo, not the expensive ones
    (:data:`EXPENSIVE_METHODS`: minutes of a shared server's CPU per photo)."""
    if isinstance(model, ServedModel):
        return tuple(m for m in METHODS if m in CLOSED_FORM_METHODS)
    return tuple(m for m in METHODS if m not in EXPENSIVE_METHODS) if hosted_mode() else METHODS


#: Default target layer per architecture family: the last block with spatial output.
DEFAULT_LAYERS: dict[str, str] = {
    "resnet": "layer4",          # torchvision/timm ResNet: last stage (7×7 at 224 px)
    "seresnet": "layer4",
    "mobilenetv2": "bn2",        # timm MobileNetV2/EfficientNet: conv_head → bn2 (BN + activation), 7×7
    "efficientnet": "bn2",
}
COLORMAPS: tuple[str, ...] = ("jet", "turbo", "inferno", "viridis", "magma", "hot")
#: pytorch-grad-cam's test-time augmentation for ``aug_smooth``: horizontal flip × brightness 0.9, 1, 1.1.
AUG_SMOOTH_PASSES = 6


_FAITHFULNESS_VERDICTS = {
    "supports": "the highlighted region alone supports the class",
    "most": "the highlighted region carries much of the evidence, not all",
    "outside": "most of the evidence lies outside the highlighted region: do not read this heatmap alone",
}


@dataclass
class Explanation:
    """One CAM.

    Attributes:
        heatmap: (H, W) float32 in [0, 1], H×W = the model's input size, aligned with ``image``.
        image: (H, W, 3) float32 RGB in [0, 1]: the photo after the model's resize and center crop.
        class_name / class_index: the explained class.
        probability: the model's softmax probability for that class.
        method / layer: what produced the heatmap.
        faithfulness: change in the class probability when the image is multiplied by the heatmap (keeps
            the highlighted region, darkens the rest): pytorch-grad-cam's ``CamMultImageConfidenceChange``.
            Positive or near zero: the highlighted region alone supports the class; strongly negative: it
            does not, and the heatmap should not be trusted.
        latency_ms: wall time of the CAM computation, ms.
        aug_smooth / eigen_smooth: the smoothing asked for (see :func:`explain`).
    """

    heatmap: np.ndarray
    image: np.ndarray
    class_name: str
    class_index: int
    probability: float
    method: str
    layer: str
    faithfulness: float
    latency_ms: float
    aug_smooth: bool = False
    eigen_smooth: bool = False

    def faithfulness_text(self) -> str:
        """:attr:`faithfulness` in words (Markdown), for a page or a report: the class probability before and after
        keeping only the highlighted region, and what that says of the heatmap: it supports the class (the
        probability does not fall), carries much of the evidence (it keeps over half), or misses most of it."""
        before, after = self.probability, min(max(self.probability + self.faithfulness, 0.0), 1.0)
        if f"{after:.1%}" == f"{before:.1%}":
            change, verdict = f"keeps the probability of **{self.class_name}** at {before:.1%}", "supports"
        else:
            change = (f"{'raises' if after > before else 'lowers'} the probability of **{self.class_name}** from "
                      f"{before:.1%} to {after:.1%}")
            verdict = "supports" if after > before else "outside" if after < before / 2 else "most"
        return (f"keeping only the highlighted region {change} ({self.faithfulness * 100:+.1f} points): "
                + _FAITHFULNESS_VERDICTS[verdict])

    def overlay(self, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
        """The heatmap over the image as an RGB PIL image; ``alpha`` in [0, 1] is the heatmap's weight."""
        return overlay(self.image, self.heatmap, alpha, colormap)

    def heatmap_image(self, colormap: str = "jet") -> Image.Image:
        """The heatmap alone, colour-mapped, as an RGB PIL image."""
        return overlay(self.image, self.heatmap, 1.0, colormap)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
    """Blend a [0, 1] heatmap (H, W) over an RGB [0, 1] image (H, W, 3): pytorch-grad-cam's ``show_cam_on_image``
    (``use_rgb=True``, ``image_weight = 1 - alpha``), the same arithmetic, with OpenCV's colormaps read from a table
    (``colormaps.npz``: ``cv2.applyColorMap`` of 0…255, RGB). Written out because pytorch-grad-cam and OpenCV are not
    in the serving tier; ``tests/explain`` checks it equals ``show_cam_on_image`` pixel for pixel.

    Raises:
        CarNetError: unknown colormap or alpha outside [0, 1].
    """
    if colormap not in COLORMAPS:
        raise CarNetError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    if not 0.0 <= alpha <= 1.0:
        raise CarNetError(f"alpha must be between 0 and 1, got {alpha}")
    image_weight = 1.0 - alpha
    heat = np.float32(_colormaps()[colormap][np.uint8(255 * heatmap)]) / 255
    cam = (1 - image_weight) * heat + image_weight * image.astype(np.float32)
    cam = cam / np.max(cam)
    return Image.fromarray(np.uint8(255 * cam))


@functools.cache
def _colormaps() -> dict[str, np.ndarray]:
    """{colormap: (256, 3) uint8 RGB}: OpenCV's colormaps, as ``cv2.applyColorMap`` gives them."""
    with np.load(Path(__file__).with_name("colormaps.npz")) as data:
        return {name: data[name] for name in COLORMAPS}


_layer_cache: "weakref.WeakKeyDictionary[torch.nn.Module, dict[str, tuple[int, ...]]]" = weakref.WeakKeyDictionary()


def spatial_layers(model: Classifier) -> dict[str, tuple[int, ...]]:
    """Layers whose output has spatial extent (N, C, H, W with H·W > 1), name → (C, H, W) at the model's input size.

    Computed once per model with one forward pass, in network order. A served model: its last feature map only
    (the layer its export outputs).
    """
    if isinstance(model, ServedModel):
        return {model.cam_layer or "features": model.feature_shape}
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    module = model.module
    if module in _layer_cache:
        return _layer_cache[module]
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, sub in module.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[2] * out.shape[3] > 1:
                shapes.setdefault(name, tuple(out.shape[1:]))

        handles.append(sub.register_forward_hook(hook))
    try:
        with model.lock, torch.inference_mode():
            module(torch.zeros(1, *model.data_config["input_size"], device=model.device))
    finally:
        for h in handles:
            h.remove()
    _layer_cache[module] = shapes
    return shapes


def default_layer(model: Classifier) -> str:
    """The documented default target layer for the model's family, else the last layer with spatial output."""
    layers = spatial_layers(model)
    name = DEFAULT_LAYERS.get(model.family)
    if name in layers:
        return name
    return list(layers)[-1]


def stage_layers(model: Classifier, n: int = 3) -> list[str]:
    """A short list of meaningful target layers, in network order: the outputs of the last ``n`` stages (timm's
    ``feature_info``: where each stage's resolution ends), then the default layer (:func:`default_layer`). For a
    classroom picker; :func:`spatial_layers` lists them all (261 modules for EfficientNet-Lite0)."""
    layers = spatial_layers(model)
    info = getattr(getattr(model, "module", None), "feature_info", None)
    stages = [f["module"] for f in info] if isinstance(info, list) else []
    stages = [name for name in stages if name in layers]
    default = default_layer(model)
    short = [name for name in stages[-n:] if name != default] + [default]
    return short if len(short) > 1 else list(layers)[-n:]


def resolve_layer(model: Classifier, layer: str | None) -> tuple[str, torch.nn.Module]:
    """(name, module) of the target layer; ``None`` → :func:`default_layer`.

    Raises:
        CarNetError: no such layer, or its output has no spatial extent; the message names valid choices.
    """
    layers = spatial_layers(model)
    name = layer or default_layer(model)
    if name not in layers:
        modules = dict(model.module.named_modules())
        last = ", ".join(list(layers)[-6:])
        if name in modules:
            raise CarNetError(f"layer {name!r} of {model.name} has no spatial output (a CAM needs a C×H×W feature "
                              f"map); choose a convolutional layer such as: {last}")
        raise CarNetError(f"{model.name} has no layer {name!r}; layers with spatial output include: {last} "
                          f"({len(layers)} in all, see spatial_layers())")
    return name, dict(model.module.named_modules())[name]


def estimate_seconds(model: Classifier, method: str, layer: str | None = None, batch_size: int = 32,
                     aug_smooth: bool = False) -> float:
    """Rough CAM duration on this machine, s, from one measured forward pass.

    Gradient methods: about 1.5 forward passes (the forward pass, then a backward pass that stops at the target
    layer). ScoreCAM / AblationCAM: one forward pass per channel of the target layer, run in batches of
    ``batch_size``, the per-image cost measured at that batch size. ``aug_smooth``: all of it
    :data:`AUG_SMOOTH_PASSES` times. How close the estimate comes: docs/measurements.md. A served model: two
    forward passes (the photo, and the photo times its map for the faithfulness number), timed once.
    """
    if isinstance(model, ServedModel):
        t = time.perf_counter()
        model.run(np.zeros((1, *model.data_config["input_size"]), np.float32), ("features",))
        return 2 * (time.perf_counter() - t)
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    expensive = method in EXPENSIVE_METHODS
    n = batch_size if expensive else 1
    x = torch.zeros(n, *model.data_config["input_size"], device=model.device)
    with model.lock, torch.inference_mode():
        t = time.perf_counter()
        model.module(x)
        per_image_s = (time.perf_counter() - t) / n
    passes = AUG_SMOOTH_PASSES if aug_smooth else 1
    if expensive:
        channels = spatial_layers(model)[resolve_layer(model, layer)[0]][0]
        return passes * channels * per_image_s
    return passes * 1.5 * per_image_s


def aug_smooth_refusal(method: str, eigen_smooth: bool = False, model: Classifier | ServedModel | None = None
                       ) -> str | None:
    """Why augmentation smoothing cannot go with ``method`` / ``eigen_smooth`` (or ``model``: a served model has none),
    or None when it can. FinerCAM does not take it. A principal component's sign is arbitrary, so EigenCAM's and eigen-smoothed maps of the flipped photo
    come out inverted on some photos (correlation -0.5 to -0.75 with the unflipped map on 3 of 6 Stanford Cars photos
    here), and the mean washes out to a flat map."""
    if isinstance(model, ServedModel):
        return "augmentation smoothing is not available in this demo (it runs the network on altered copies of the photo)"
    if method == "finercam":
        return "FinerCAM has no augmentation smoothing (pytorch-grad-cam's FinerCAM takes eigen smoothing only)"
    if method == "eigencam" or eigen_smooth:
        what = "EigenCAM" if method == "eigencam" else "eigen smoothing"
        return (f"augmentation smoothing does not go with {what}: a principal component's sign is arbitrary, so the "
                f"map of the flipped photo can come out inverted and the mean washes out")
    return None


def usable_smoothing(method: str, aug_smooth: bool, eigen_smooth: bool) -> dict[str, bool]:
    """:func:`explain`'s smoothing arguments for ``method`` from what was asked for all methods at once (the Explain
    page's method grid): augmentation smoothing only where it goes with the method (:func:`aug_smooth_refusal`)."""
    return {"aug_smooth": aug_smooth and aug_smooth_refusal(method, eigen_smooth) is None, "eigen_smooth": eigen_smooth}


def cut_graph_at(layer: torch.nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Make ``layer``'s output a new autograd leaf (with ``requires_grad``), copied so that later in-place ops are
    allowed, for as long as the returned handle is not removed. A backward pass from the logits then stops at that
    output instead of running through every layer before it: the gradient there, all a gradient CAM reads, is
    unchanged. The hook is prepended, so pytorch-grad-cam's own forward hook on the layer sees the leaf's copy.
    """
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)

    def hook(_module, _inputs, output):
        if isinstance(output, torch.Tensor):
            return output.detach().requires_grad_(True).clone()
        return None

    return layer.register_forward_hook(hook, prepend=True)


def explain(model: Classifier, image: ImageSource | Image.Image, method: str = "gradcam",
            class_name: str | None = None, layer: str | None = None, batch_size: int = 32,
            progress: Callable[[float], None] | None = None, aug_smooth: bool = False,
            eigen_smooth: bool = False) -> Explanation:
    """Compute a class activation map for one image.

    Args:
        model: a loaded classifier (its module is shared; this call holds ``model.lock``).
        image: an RGB PIL image or anything :func:`load_image` accepts.
        method: one of :data:`METHODS`.
        class_name: class to explain; default: the model's top-1 class.
        layer: target layer name (see :func:`spatial_layers`); default: :func:`default_layer`.
        batch_size: batch size of the per-channel forward passes of ScoreCAM / AblationCAM.
        progress: called with 0.0 before and 1.0 after the computation.
        aug_smooth: pytorch-grad-cam's test-time augmentation smoothing: the mean CAM over the photo flipped and
            brightened by 0.9, 1 and 1.1 (:data:`AUG_SMOOTH_PASSES` CAMs, each mapped back onto the photo), for the
            class chosen on the photo itself; centres the map on the object. Not with FinerCAM, EigenCAM or
            ``eigen_smooth`` (:func:`aug_smooth_refusal`).
        eigen_smooth: pytorch-grad-cam's eigen smoothing: the first principal component of the weighted
            activations instead of their sum; less noise.

    Returns:
        An :class:`Explanation`.

    Raises:
        CarNetError: unknown method, class or layer (the message names the valid choices); ``aug_smooth`` where it
            cannot be used (:func:`aug_smooth_refusal`).
        ImageError: the image cannot be decoded.
    """
    if isinstance(model, ServedModel):
        return _explain_served(model, image, method, class_name, layer, progress, aug_smooth, eigen_smooth)
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)

    # lazy: pytorch-grad-cam (see _methods)
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    if method not in METHODS and method != FLOOR_METHOD.key:
        raise CarNetError(f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}")
    why_not = aug_smooth_refusal(method, eigen_smooth) if aug_smooth else None
    if why_not:
        raise CarNetError(why_not)
    pil = image if isinstance(image, Image.Image) and image.mode == "RGB" else load_image(image)
    x = model.preprocess([pil])
    layer_name, target_layer = resolve_layer(model, layer)
    if progress:
        progress(0.0)
    with model.lock:
        t0 = time.perf_counter()
        index = model.index_of(class_name) if class_name is not None else None
        photo_logits = None
        if aug_smooth:  # each augmented pass would pick its own top-1: the class and probability are the photo's
            with torch.inference_mode():
                photo_logits = model.module(x).float()
            index = int(photo_logits.argmax()) if index is None else index
        grayscale, logits, index = _run_cam(model, method, x, target_layer, index, photo_logits, batch_size,
                                            aug_smooth, eigen_smooth)
        probs = torch.softmax(logits.detach().float(), dim=1)[0]
        heatmap = grayscale[0].astype(np.float32)  # pytorch-grad-cam scales each CAM to [0, 1]
        latency_ms = (time.perf_counter() - t0) * 1e3
        # The metric's probability of the photo times the heatmap, less the CAM's own probability of the photo (the
        # metric would run a second forward pass for that; return_diff=False skips it).
        after = CamMultImageConfidenceChange()(x, heatmap[None], [ClassifierOutputSoftmaxTarget(index)], model.module,
                                               return_diff=False)
        change = float(np.asarray(after).ravel()[0]) - float(probs[index])
    if progress:
        progress(1.0)
    view = model.unnormalize(x)[0].permute(1, 2, 0).cpu().numpy().astype(np.float32)
    return Explanation(heatmap=heatmap, image=view, class_name=model.class_names[index], class_index=index,
                       probability=float(probs[index]), method=method, layer=layer_name,
                       faithfulness=change, latency_ms=latency_ms, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)


def _explain_served(model: ServedModel, image: ImageSource | Image.Image, method: str, class_name: str | None,
                    layer: str | None, progress: Callable[[float], None] | None, aug_smooth: bool,
                    eigen_smooth: bool) -> Explanation:
    """:func:`explain` for a served model: the closed-form CAM (:func:`~carnet_core.explain.closed_form.closed_form_cam`)
    from its export's features, logits and classifier; the faithfulness number as pytorch-grad-cam's
    ``CamMultImageConfidenceChange`` computes it — the softmax probability of the class for the model input times the
    map, less the photo's — with ONNX forward passes."""
    if method not in methods_for(model):
        raise CarNetError(f"{METHOD_NAMES.get(method, method)} is not available in this demo; choose one of "
                          f"{', '.join(METHOD_NAMES[m] for m in methods_for(model))}")
    if aug_smooth:
        raise CarNetError(aug_smooth_refusal(method, eigen_smooth, model))
    layer_name = next(iter(spatial_layers(model)))
    if layer not in (None, layer_name):
        raise CarNetError(f"this demo explains {model.name} at its last feature map ({layer_name}) only")
    pil = image if isinstance(image, Image.Image) and image.mode == "RGB" else load_image(image)
    x = model.preprocess([pil])
    index = model.index_of(class_name) if class_name is not None else None
    if progress:
        progress(0.0)
    t0 = time.perf_counter()
    logits, probs, features = model.run(x, ("logits", "probabilities", "features"), fp32=True)
    heatmap, index = closed_form_cam(method, features[0], model.classifier[0], logits[0], index,
                                     size=tuple(x.shape[2:]), eigen_smooth=eigen_smooth)
    latency_ms = (time.perf_counter() - t0) * 1e3
    after = model.run(x * heatmap[None, None], ("probabilities",), fp32=True)[0][0, index]
    if progress:
        progress(1.0)
    mean = np.asarray(model.data_config["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(model.data_config["std"], np.float32).reshape(3, 1, 1)
    view = np.clip(x[0] * std + mean, 0, 1).transpose(1, 2, 0).astype(np.float32)
    return Explanation(heatmap=heatmap, image=view, class_name=model.class_names[index], class_index=index,
                       probability=float(probs[0, index]), method=method, layer=layer_name,
                       faithfulness=float(after) - float(probs[0, index]), latency_ms=latency_ms,
                       aug_smooth=False, eigen_smooth=eigen_smooth)


def _run_cam(model: Classifier, method: str, x: torch.Tensor, target_layer: torch.nn.Module, index: int | None,
             photo_logits: torch.Tensor | None, batch_size: int, aug_smooth: bool,
             eigen_smooth: bool) -> tuple[np.ndarray, torch.Tensor, int]:
    """pytorch-grad-cam's ``method`` on ``x`` (1, 3, H, W) for class ``index`` (None: the top-1): (grayscale CAM
    (1, H, W) in [0, 1], logits (1, C), the class index). The caller holds ``model.lock``; hooks are released and
    gradients freed before it returns."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # lazy: pytorch-grad-cam (see _methods)

    cls = _methods()[method]
    kwargs = {"batch_size": batch_size} if method == "ablationcam" else {}
    cam = cls(model.module, [target_layer], **kwargs)
    # A CAM needs d(score)/d(target layer's output) only. The backward pass stops there: that output enters
    # the rest of the network as a fresh autograd leaf (cut_graph_at, run before pytorch-grad-cam's hook), and no
    # parameter asks for a gradient. Parameters are restored in `finally`; other callers wait on the lock.
    trainable = [p for p in model.module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    cut = cut_graph_at(target_layer)
    try:
        if method == "scorecam":
            cam.batch_size = batch_size
        if method == "finercam":  # FinerCAM finds the top-1 class itself; the logits are caught on the way out
            caught: list[torch.Tensor] = []
            grab = model.module.register_forward_hook(lambda _m, _i, out: caught.append(out.detach()))
            try:
                grayscale = cam(x, targets=None, target_idx=index, eigen_smooth=eigen_smooth)
            finally:
                grab.remove()
            logits = caught[0]
            index = int(logits.argmax()) if index is None else index
        else:  # the CAM's own forward pass gives the logits; targets=None means top-1
            grayscale = cam(x, targets=None if index is None else [ClassifierOutputTarget(index)],
                            aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
            logits = cam.outputs if photo_logits is None else photo_logits  # the last pass saw an augmented photo
            index = int(logits.argmax()) if index is None else index
    finally:
        base = cam.base_cam if method == "finercam" else cam
        base.activations_and_grads.release()
        cut.remove()
        if hasattr(base, "outputs"):
            base.outputs = None
        for p in trainable:
            p.requires_grad_(True)
        model.module.zero_grad(set_to_none=True)
    return grayscale, logits, index
