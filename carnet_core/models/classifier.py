"""Loaded models: a timm network with its class names, data config and weights provenance.

Like torchvision's weights API, a :class:`Classifier` carries its categories and its preprocessing, so pages
and the CLI never guess how to prepare an image for it.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from carnet_core.config import device_name
from carnet_core.errors import CarNetError, CheckpointError
from carnet_core.models.checkpoints import (
    save_checkpoint,
)
from carnet_core.models.labels import close_classes, find_class
from carnet_core.models.registry import HEADS
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
    def bad(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{source}: its data config's {field} {why}")

    try:
        size = [int(v) for v in data_config["input_size"]]
    except (KeyError, TypeError, ValueError):
        raise bad("input_size", f"is {data_config.get('input_size')!r}, not (3, H, W)") from None
    if len(size) != 3 or size[0] != 3 or not all(16 <= v <= MAX_INPUT_PX for v in size[1:]):
        raise bad("input_size", f"{size} is not (3, H, W) with H and W from 16 to {MAX_INPUT_PX} px")
    for field in ("mean", "std"):
        try:
            values = [float(v) for v in data_config[field]]
        except (KeyError, TypeError, ValueError):
            raise bad(field, f"is {data_config.get(field)!r}, not three numbers") from None
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise bad(field, f"{values} is not three finite numbers")
        if field == "std" and min(values) <= 0:
            raise bad(field, f"{values} has a value of 0 or less (images would be divided by it)")
    crop = data_config.get("crop_pct", 1.0)
    if not isinstance(crop, (int, float)) or not 0 < float(crop) <= 1:
        raise bad("crop_pct", f"{crop!r} is not in (0, 1]")


def default_device() -> torch.device:
    """``$CARNET_DEVICE`` if set, else the first CUDA GPU, else the CPU.

    Raises:
        CarNetError: ``$CARNET_DEVICE`` is not a device name torch knows, or names a GPU that is not there (torch's
            own errors for these come only later, from deep inside the first ``.to(device)``).
    """
    name = device_name()
    if not name:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CarNetError(f"CARNET_DEVICE={name!r} is not a device name (cpu, cuda, cuda:1, mps)") from None
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and (device.index or 0) >= found:
        raise CarNetError(f"CARNET_DEVICE={name!r}, but this machine has {found} CUDA GPU{'s' * (found != 1)}; "
                          "unset it to use " + ("the first GPU" if found else "the CPU"))
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CarNetError(f"CARNET_DEVICE={name!r}, but Apple's MPS is not available here; unset it to use the CPU")
    return device


def build_module(arch: str, head: str = "linear", num_classes: int = 1000) -> torch.nn.Module:
    """A randomly initialised timm network ``arch`` with a ``head`` for ``num_classes`` classes.

    Raises:
        CarNetError: unknown head, or an architecture timm does not know.
    """
    import timm  # lazy: timm and torchvision load on first model build

    if head not in HEADS:
        raise CarNetError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    try:
        module = timm.create_model(arch, pretrained=False, num_classes=num_classes)
    except RuntimeError as exc:  # timm: "Unknown model (...)"
        raise CarNetError(f"timm cannot build architecture {arch!r}: {exc}") from None
    return add_ml_decoder(module) if head == "ml_decoder" else module


def add_ml_decoder(module: torch.nn.Module) -> torch.nn.Module:
    """Replace a timm CNN's pooling + linear classifier with an ML-Decoder head (Ridnik et al. 2021, "ML-Decoder:
    Scalable and Versatile Classification Head"), using ``timm.layers.ml_decoder``.

    timm's ``add_ml_decoder_head`` calls ``exit()`` on architectures it does not support; this checks first and raises.

    Raises:
        CarNetError: the architecture has neither ``global_pool`` + ``fc`` (ResNet family) nor ``global_pool`` +
            ``classifier`` (EfficientNet, MobileNet).
    """
    from timm.layers.ml_decoder import add_ml_decoder_head  # lazy: timm (see build_module)

    if not hasattr(module, "global_pool") or not (hasattr(module, "fc") or hasattr(module, "classifier")):
        raise CarNetError(f"the ML-Decoder head supports timm CNNs with global_pool and fc/classifier "
                          f"(ResNet, SE-ResNet, EfficientNet, MobileNet), not {type(module).__name__}")
    module = add_ml_decoder_head(module)
    head = module.get_classifier()
    # timm's decoder layer predates the arguments torch's nn.TransformerDecoder now passes to its layers; run the
    # same layers (same parameters, same state-dict keys) in a plain loop instead.
    head.decoder = _DecoderLayers(head.decoder.layers)
    return module


class _DecoderLayers(torch.nn.Module):
    """``nn.TransformerDecoder`` without a final norm: each layer(tgt, memory) in turn."""
    def __init__(self, layers: torch.nn.ModuleList):
        super().__init__()
        self.layers = layers

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            tgt = layer(tgt, memory)
        return tgt


def _data_config(module: torch.nn.Module) -> dict[str, Any]:
    import timm  # lazy: timm and torchvision load on first model build

    cfg = dict(timm.data.resolve_model_data_config(module), crop_pct=INFERENCE_CROP_PCT)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in DATA_CONFIG_KEYS}


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


@dataclass
class Classifier:
    """A ready-to-use image classifier (eval mode).

    Attributes:
        module: the ``torch.nn.Module``; input (N, 3, H, W) normalised float, output logits (N, num_classes).
        name: registry name or checkpoint name.
        arch: timm architecture.
        family: architecture family (see :class:`~carnet_core.models.registry.ModelSpec`).
        head: ``linear`` or ``ml_decoder``.
        class_names: one name per output logit.
        data_config: timm data config (input_size, interpolation, mean, std, crop_pct, crop_mode).
        weights: where the weights came from.
        label_set: label set name (``imagenet-1k`` or a dataset name for fine-tuned models).
        metrics: validation metrics stored with a checkpoint (empty for pretrained models).
    """
    module: torch.nn.Module
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
    #: Held while the module runs. A cached model is shared by all app sessions, and Grad-CAM hooks a layer
    #: for the length of one call: a concurrent forward pass would feed its activations into that call.
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    #: The inference engine :func:`carnet_core.inference.engines.select_engine` chose for this model (kept here, not in a
    #: module-level table, so that a model the app's cache drops is freed with its ONNX Runtime sessions).
    _engine_choice: Any = field(default=None, init=False, repr=False, compare=False)
    #: Held while an engine is decided for this model (one decision at a time; predictions meanwhile run on torch when
    #: the decision runs in the background, see :func:`carnet_core.inference.selection.measure_in_background`).
    _engine_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _engine_thread: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def num_params(self) -> int:
        """Number of parameters (weights and biases, not buffers)."""
        return sum(p.numel() for p in self.module.parameters())

    @property
    def is_random(self) -> bool:
        return self.weights.source == "random"

    @cached_property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """timm's eval transform for this model's data config: resize, center crop, to tensor, normalise."""
        import timm  # lazy: timm and torchvision load on first model build

        cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.data_config.items()}
        return timm.data.create_transform(**cfg, is_training=False)

    @cached_property
    def _pil_steps(self) -> tuple[Callable[[Image.Image], Image.Image], np.ndarray, np.ndarray]:
        """(timm's PIL steps of :attr:`transform`: resize and center crop; mean (3, 1, 1); std (3, 1, 1))."""
        from torchvision.transforms import Compose  # lazy: torchvision, with timm

        steps = [t for t in self.transform.transforms
                 if type(t).__name__ not in ("ToTensor", "MaybeToTensor", "Normalize")]
        mean = np.asarray(self.data_config["mean"], np.float32).reshape(3, 1, 1)
        std = np.asarray(self.data_config["std"], np.float32).reshape(3, 1, 1)
        return Compose(steps), mean, std

    def input_view(self, image: Image.Image) -> Image.Image:
        """``image`` (RGB) as the model sees it, before normalisation: resized and center-cropped by the data config
        (timm's PIL steps of :attr:`transform`), H x W px of ``input_size``."""
        return self._pil_steps[0](image)

    def view_of(self, size: tuple[int, int]) -> InputView:
        """Where this model looks in a W×H px photo: :func:`input_view_geometry` for its data config."""
        return input_view_geometry(self.data_config, size)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB PIL images → a normalised batch (N, 3, H, W) float32 on this model's device.

        Exactly :attr:`transform` (timm's resize and center crop in PIL, then to-tensor and normalise), with the last
        two done in NumPy: the same float32 operations in the same order, so bitwise the same tensor, but without
        waking torch's OpenMP threads, whose busy-waiting after a torch op slows the ONNX Runtime call that follows
        (measured in docs/measurements.md).
        """
        pil, mean, std = self._pil_steps
        batch = np.empty((len(images), 3, *self.data_config["input_size"][1:]), np.float32)
        for x, im in zip(batch, images):
            np.divide(np.asarray(pil(im), np.float32).transpose(2, 0, 1), np.float32(255), out=x)
            x -= mean
            x /= std
        return torch.from_numpy(batch).to(self.device)

    def backbone_and_head(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """(backbone parameters, head parameters): the head is timm's classifier module (``fc``, ``classifier``,
        or the ML-Decoder that replaced it)."""
        head = self.module.get_classifier()
        head_ids = {id(p) for p in head.parameters()}
        backbone = [p for p in self.module.parameters() if id(p) not in head_ids]
        return backbone, list(head.parameters())

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

    def unnormalize(self, batch: torch.Tensor) -> torch.Tensor:
        """Invert the normalisation: (N, 3, H, W) model input → RGB in [0, 1], the image as the model sees it."""
        mean = torch.tensor(self.data_config["mean"], device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.data_config["std"], device=batch.device).view(1, 3, 1, 1)
        return (batch * std + mean).clamp(0, 1)

    def to(self, device: torch.device | str) -> "Classifier":
        self.module.to(device)
        return self

    def describe(self) -> dict[str, Any]:
        """The metadata stored in checkpoints and shown in model tables."""
        return {
            "name": self.name, "arch": self.arch, "family": self.family, "head": self.head,
            "label_set": self.label_set, "class_names": list(self.class_names), "data_config": self.data_config,
            "weights": self.weights.to_dict(), "metrics": self.metrics, "num_params": self.num_params, **self.extra,
        }

    def save(self, path: str | os.PathLike, metrics: dict[str, Any] | None = None, **extra: Any) -> Path:
        """Save as a self-describing CarNet checkpoint (safetensors + JSON metadata); see :mod:`.checkpoint`."""
        meta = self.describe()
        if metrics is not None:
            meta["metrics"] = metrics
        meta.update(extra)
        return save_checkpoint(path, self.module.state_dict(), meta)


