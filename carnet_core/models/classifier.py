"""Loaded models: a timm network with its class names, data config and weights provenance.

Like torchvision's weights API, a :class:`Classifier` carries its categories and its preprocessing, so pages
and the CLI never guess how to prepare an image for it.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from PIL import Image

from carnet_core.config import device_name
from carnet_core.errors import CarNetError
from carnet_core.models.base import (  # noqa: F401 (the names callers import from here)
    DATA_CONFIG_KEYS,
    INFERENCE_CROP_PCT,
    MAX_INPUT_PX,
    ClassifierBase,
    InputView,
    check_data_config,
    eval_resize_crop,
    input_view_geometry,
)
from carnet_core.models.checkpoints import (
    save_checkpoint,
)
from carnet_core.models.registry import HEADS

if TYPE_CHECKING:
    import torch

def default_device() -> torch.device:
    """``$CARNET_DEVICE`` if set, else the first CUDA GPU, else the CPU.

    Raises:
        CarNetError: ``$CARNET_DEVICE`` is not a device name torch knows, or names a GPU that is not there (torch's
            own errors for these come only later, from deep inside the first ``.to(device)``).
    """
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
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
    head.decoder = _decoder_layers(head.decoder.layers)
    return module


def _decoder_layers(layers: torch.nn.ModuleList) -> torch.nn.Module:
    """``nn.TransformerDecoder`` without a final norm: each layer(tgt, memory) in turn (defined here, not at module
    level, so that importing this module does not import torch)."""
    import torch  # lazy: the serving tier has no torch

    class DecoderLayers(torch.nn.Module):
        def __init__(self, layers: torch.nn.ModuleList):
            super().__init__()
            self.layers = layers

        def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                tgt = layer(tgt, memory)
            return tgt

    return DecoderLayers(layers)


def _data_config(module: torch.nn.Module) -> dict[str, Any]:
    import timm  # lazy: timm and torchvision load on first model build

    cfg = dict(timm.data.resolve_model_data_config(module), crop_pct=INFERENCE_CROP_PCT)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in DATA_CONFIG_KEYS}


@dataclass(kw_only=True)
class Classifier(ClassifierBase):
    """A ready-to-use image classifier (eval mode): the fields of :class:`ClassifierBase` (name, architecture, class
    names, data config, weights, label set, metrics, lock) and the network.

    Attributes:
        module: the ``torch.nn.Module``; input (N, 3, H, W) normalised float, output logits (N, num_classes).
    """
    module: torch.nn.Module
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

    @cached_property
    def num_params(self) -> int:
        """Number of parameters (weights and biases, not buffers)."""
        return sum(p.numel() for p in self.module.parameters())

    @cached_property
    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """timm's eval transform for this model's data config: resize, center crop, to tensor, normalise."""
        import timm  # lazy: timm and torchvision load on first model build

        cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in self.data_config.items()}
        return timm.data.create_transform(**cfg, is_training=False)

    def _resize_crop(self) -> Callable[[Image.Image], Image.Image]:
        """timm's PIL steps of :attr:`transform` (resize and center crop): :func:`eval_resize_crop` where it covers
        the data config, else taken from timm's transform itself."""
        steps = eval_resize_crop(self.data_config)
        if steps is not None:
            return steps
        from torchvision.transforms import Compose  # lazy: torchvision, with timm

        return Compose([t for t in self.transform.transforms
                        if type(t).__name__ not in ("ToTensor", "MaybeToTensor", "Normalize")])

    def preprocess(self, images: Sequence[Image.Image], cropped: bool = False) -> torch.Tensor:
        """RGB PIL images → a normalised batch (N, 3, H, W) float32 on this model's device (``cropped``: they are
        already its input views, see :meth:`preprocess_array`).

        Exactly :attr:`transform` (timm's resize and center crop in PIL, then to-tensor and normalise), with the last
        two done in NumPy (:meth:`preprocess_array`): the same float32 operations in the same order, so bitwise the
        same tensor, but without waking torch's OpenMP threads, whose busy-waiting after a torch op slows the ONNX
        Runtime call that follows (measured in docs/measurements.md).
        """
        import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
        return torch.from_numpy(self.preprocess_array(images, cropped)).to(self.device)

    def backbone_and_head(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """(backbone parameters, head parameters): the head is timm's classifier module (``fc``, ``classifier``,
        or the ML-Decoder that replaced it)."""
        head = self.module.get_classifier()
        head_ids = {id(p) for p in head.parameters()}
        backbone = [p for p in self.module.parameters() if id(p) not in head_ids]
        return backbone, list(head.parameters())

    def unnormalize(self, batch: torch.Tensor) -> torch.Tensor:
        """Invert the normalisation: (N, 3, H, W) model input → RGB in [0, 1], the image as the model sees it."""
        import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
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


