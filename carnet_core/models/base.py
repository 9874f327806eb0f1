"""What every CarNet classifier has, whatever runs it — torch (:class:`~carnet_core.models.classifier.Classifier`) or
ONNX Runtime alone (:class:`~carnet_core.inference.serving.ServedModel`, the torch-free serving tier): class names, a
data config and the eval preprocessing it implies, where the model looks in a photo, and class lookup.

Nothing here imports torch: the serving tier runs these same functions.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from carnet_core.errors import CarNetError, CheckpointError
from carnet_core.models.labels import close_classes, find_class
from carnet_core.models.weights import WeightsSource

DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
#: No margin crop (timm's ImageNet configs keep the central 87.5 %): shorter side resized to the input size, centre
#: square kept.
#: Car photos are framed tight; the 87.5 % crop cuts the car's edges off and turns "sports car" into "grille".
#: Measured on the 274 Stanford Cars val photos in ../shared, vehicle class at top-1: EfficientNet-Lite0
#: 93.8 % -> 95.3 %, MobileNetV2 91.2 % -> 93.1 %.
INFERENCE_CROP_PCT = 1.0


#: A model input's side, px, at most: EfficientNet-B7 takes 600 px; a checkpoint asking for 12000 px would allocate
#: gigabytes per image.
MAX_INPUT_PX = 1024


def check_data_config(data_config: dict[str, Any], source: str) -> None:
    """Refuse a data config (a checkpoint's metadata, say) that cannot be used, naming ``source`` and the field:
    ``input_size`` not (3, H, W) with 16 ≤ H, W ≤ :data:`MAX_INPUT_PX`, ``mean`` / ``std`` not three finite numbers,
    a ``std`` of 0 or less (a division by zero: NaN probabilities), a ``crop_pct`` outside (0, 1].

    Raises:
        CheckpointError: the first field that is out of bounds.
    """
    def bad(key: str, why: str) -> CheckpointError:
        return CheckpointError(f"{source}: its data config's {key} {why}")

    try:
        size = [int(v) for v in data_config["input_size"]]
    except (KeyError, TypeError, ValueError):
        raise bad("input_size", f"is {data_config.get('input_size')!r}, not (3, H, W)") from None
    if len(size) != 3 or size[0] != 3 or not all(16 <= v <= MAX_INPUT_PX for v in size[1:]):
        raise bad("input_size", f"{size} is not (3, H, W) with H and W from 16 to {MAX_INPUT_PX} px")
    for key in ("mean", "std"):
        try:
            values = [float(v) for v in data_config[key]]
        except (KeyError, TypeError, ValueError):
            raise bad(key, f"is {data_config.get(key)!r}, not three numbers") from None
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise bad(key, f"{values} is not three finite numbers")
        if key == "std" and min(values) <= 0:
            raise bad(key, f"{values} has a value of 0 or less (images would be divided by it)")
    crop = data_config.get("crop_pct", 1.0)
    if not isinstance(crop, (int, float)) or not 0 < float(crop) <= 1:
        raise bad("crop_pct", f"{crop!r} is not in (0, 1]")


@dataclass(frozen=True)
class InputView:
    """Where a model looks in a photo: the part of it that its input covers, and how much it is scaled.

    Attributes:
        size: the photo, (W, H) px.
        box: (left, top, right, bottom) of the part the model's input covers, in the photo's px.
        scale: input px per photo px along the more enlarged side (above 1: the photo is enlarged).
        input_px: the model's input side, px (the longer one for a non-square input).
    """
    size: tuple[int, int]
    box: tuple[float, float, float, float]
    scale: float
    input_px: int

    @property
    def fraction(self) -> float:
        """Share of the photo's area the model sees, 0-1."""
        left, top, right, bottom = self.box
        return (right - left) * (bottom - top) / (self.size[0] * self.size[1])

    @property
    def cuts_off(self) -> bool:
        """Whether more than 1 % of the photo lies outside the model's input (rounding aside)."""
        return self.fraction < 0.99

    def note(self, min_fraction: float = 0.6, max_scale: float = 2.0) -> str | None:
        """A sentence for the user when the model sees less than ``min_fraction`` of the photo, or the photo is
        enlarged more than ``max_scale`` times to fill the input; None otherwise."""
        notes = []
        if self.fraction < min_fraction:
            left, top, right, bottom = self.box
            notes.append(f"The model sees the middle {right - left:.0f}×{bottom - top:.0f} px, "
                         f"{self.fraction * 100:.0f}% of the photo: the rest is cut off to fit its {self.input_px} px "
                         "input, so crop around the car if it is not in the middle.")
        if self.scale > max_scale:
            notes.append(f"The photo is {self.size[0]}×{self.size[1]} px, enlarged {self.scale:.1f}× to the model's "
                         f"{self.input_px} px input: the detail it needs to tell cars apart is not there.")
        return " ".join(notes) or None


def input_view_geometry(data_config: dict[str, Any], size: tuple[int, int]) -> InputView:
    """The part of a W×H px photo that timm's eval transform for ``data_config`` keeps, computed from the
    geometry of timm's ``transforms_imagenet_eval``: the photo resized to cover the input size / ``crop_pct``
    (``crop_mode`` "center"; "border": fitted inside it; "squash": each side on its own), then the input size cut
    from the middle. Exact to within a pixel of rounding.

    Raises:
        ValueError: ``size`` has a side of 0 px.
    """
    w, h = size
    if w <= 0 or h <= 0:
        raise ValueError(f"a photo of {w}×{h} px has no pixels")
    in_h, in_w = data_config["input_size"][1:]
    crop_pct = data_config.get("crop_pct") or 0.875  # timm's DEFAULT_CROP_PCT
    scaled_h, scaled_w = int(in_h / crop_pct), int(in_w / crop_pct)
    mode = data_config.get("crop_mode") or "center"
    if mode == "squash":
        kx, ky = scaled_w / w, scaled_h / h
    else:
        k = (min if mode == "border" else max)(scaled_w / w, scaled_h / h)
        kx = ky = k
    box_w, box_h = min(w, in_w / kx), min(h, in_h / ky)
    left, top = (w - box_w) / 2, (h - box_h) / 2
    return InputView((w, h), (left, top, left + box_w, top + box_h), max(kx, ky), max(in_w, in_h))


#: timm's interpolation names → PIL's resampling filters (what torchvision's ``Resize`` on a PIL image uses).
_PIL_FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS,
                "box": Image.Resampling.BOX, "hamming": Image.Resampling.HAMMING}


def eval_resize_crop(data_config: dict[str, Any]) -> Callable[[Image.Image], Image.Image] | None:
    """timm's eval resize and center crop (``transforms_imagenet_eval``) for ``data_config``, in PIL alone: an RGB
    photo → the model's H×W px input, pixel for pixel what timm's transform gives (torchvision's ``Resize`` and
    ``CenterCrop`` on a PIL image call the same PIL operations, with the same rounding). None for the configs it does
    not cover — ``crop_mode`` "border", or "center" for a non-square resize — which only the full install runs, with
    timm's own transform.

    Why not timm's transform itself: it builds on torchvision and torch, which the serving tier does not install.
    """
    in_h, in_w = (int(v) for v in data_config["input_size"][1:])
    crop_pct = data_config.get("crop_pct") or 0.875  # timm's DEFAULT_CROP_PCT
    scale_h, scale_w = math.floor(in_h / crop_pct), math.floor(in_w / crop_pct)
    mode = data_config.get("crop_mode") or "center"
    resample = _PIL_FILTERS.get(str(data_config.get("interpolation") or "bilinear"))
    if resample is None or mode == "border" or (mode == "center" and scale_h != scale_w):
        return None

    def resize_crop(image: Image.Image) -> Image.Image:
        w, h = image.size
        if mode == "squash":
            new_w, new_h = scale_w, scale_h
        else:  # torchvision's shorter-side resize (_compute_resized_output_size)
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = scale_h, int(scale_h * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), resample)
        if (new_w, new_h) == (in_w, in_h):
            return image
        top, left = int(round((new_h - in_h) / 2.0)), int(round((new_w - in_w) / 2.0))
        return image.crop((left, top, left + in_w, top + in_h))

    return resize_crop


def normalise(images: Sequence[Image.Image], resize_crop: Callable[[Image.Image], Image.Image],
              data_config: dict[str, Any]) -> np.ndarray:
    """RGB PIL images → the model's input batch (N, 3, H, W) float32: ``resize_crop`` each, then timm's to-tensor
    and normalise ((x / 255 - mean) / std), the same float32 operations in the same order as torchvision's."""
    mean = np.asarray(data_config["mean"], np.float32).reshape(3, 1, 1)
    std = np.asarray(data_config["std"], np.float32).reshape(3, 1, 1)
    batch = np.empty((len(images), 3, *data_config["input_size"][1:]), np.float32)
    for x, im in zip(batch, images):
        np.divide(np.asarray(resize_crop(im), np.float32).transpose(2, 0, 1), np.float32(255), out=x)
        x -= mean
        x /= std
    return batch


@dataclass(eq=False)
class ClassifierBase:
    """The part of a classifier that does not depend on what runs it.

    Attributes:
        name: registry name or checkpoint name.
        arch: timm architecture.
        family: architecture family (see :class:`~carnet_core.models.registry.ModelSpec`).
        head: ``linear`` or ``ml_decoder``.
        class_names: one name per output logit.
        data_config: timm data config (input_size, interpolation, mean, std, crop_pct, crop_mode).
        weights: where the weights came from.
        label_set: label set name (``imagenet-1k`` or a dataset name for fine-tuned models).
        metrics: validation metrics stored with a checkpoint (empty for pretrained models).
        extra: more metadata (a fine-tune's ``dataset`` and ``recipe``; a served model's cost and engine).
        lock: held while the model runs. A cached model is shared by all app sessions, and Grad-CAM hooks a layer for
            the length of one call: a concurrent forward pass would feed its activations into that call.
    """

    name: str
    arch: str
    family: str
    head: str
    class_names: tuple[str, ...]
    data_config: dict[str, Any]
    weights: WeightsSource
    label_set: str
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_random(self) -> bool:
        return self.weights.source == "random"  # type: ignore[attr-defined]

    def _resize_crop(self) -> Callable[[Image.Image], Image.Image]:
        """The PIL steps of the eval transform (:func:`eval_resize_crop`)."""
        steps = eval_resize_crop(self.data_config)
        if steps is None:
            raise CarNetError(f"{self.name}'s data config ({self.data_config.get('crop_mode')} crop, input "
                              f"{self.data_config['input_size']}) needs timm's transform, which needs PyTorch")
        return steps

    def input_view(self, image: Image.Image) -> Image.Image:
        """``image`` (RGB) as the model sees it, before normalisation: resized and center-cropped by the data config,
        H x W px of ``input_size``."""
        return self._resize_crop()(image)

    def view_of(self, size: tuple[int, int]) -> InputView:
        """Where this model looks in a W×H px photo: :func:`input_view_geometry` for its data config."""
        return input_view_geometry(self.data_config, size)

    def preprocess_array(self, images: Sequence[Image.Image], cropped: bool = False) -> np.ndarray:
        """RGB PIL images → a normalised batch (N, 3, H, W) float32 NumPy array (:func:`normalise`).

        ``cropped``: the images are already this model's input views (:meth:`input_view`, made elsewhere — in the
        threads that decode a folder): they are only normalised, to bitwise the same batch.

        Raises:
            CarNetError: ``cropped`` and an image is not H x W px of ``input_size``.
        """
        if not cropped:
            return normalise(images, self._resize_crop(), self.data_config)
        size = tuple(self.data_config["input_size"][:0:-1])  # (W, H), as PIL gives sizes
        if any(im.size != size for im in images):
            raise CarNetError(f"{self.name}: an input view is not {size[0]}x{size[1]} px")
        return normalise(images, lambda im: im, self.data_config)

    def index_of(self, class_name: str) -> int:
        """Index of ``class_name``; written in another case or with extra spaces ("Sports Car ") it is found when
        exactly one class matches it so.

        Raises:
            CarNetError: the model has no such class (the message lists a few close names).
        """
        index = find_class(self.class_names, class_name)
        if index is None:
            close = close_classes(self.class_names, class_name)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise CarNetError(f"{self.name} has no class {class_name!r}{hint}")
        return index
