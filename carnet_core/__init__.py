"""CarNet core library: models, weights, checkpoints, images, prediction, explanations, evaluation and training.
Never imports streamlit.

The package is layered (docs/architecture.md; import-linter checks it): ``config``/``errors`` ← ``data`` ←
``models`` ← ``inference`` ← ``explain`` ← ``evaluation`` ← ``training`` ← ``cli``. The names below are its public
API, imported on first use (PEP 562), so ``import carnet_core.config`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "CarNetError": "carnet_core.errors", "CheckpointError": "carnet_core.errors", "ImageError": "carnet_core.errors",
    "UnknownModelError": "carnet_core.errors", "WeightsNotFoundError": "carnet_core.errors",
    "IMAGE_EXTENSIONS": "carnet_core.data.images", "load_image": "carnet_core.data.images",
    "VEHICLE_CLASSES": "carnet_core.models.labels", "imagenet_class_names": "carnet_core.models.labels",
    "Classifier": "carnet_core.models.classifier", "default_device": "carnet_core.models.classifier",
    "load_model": "carnet_core.models.loading",
    "Prediction": "carnet_core.inference.predict", "PredictionBatch": "carnet_core.inference.predict",
    "predict": "carnet_core.inference.predict",
    "ModelSpec": "carnet_core.models.registry", "get_spec": "carnet_core.models.registry",
    "list_models": "carnet_core.models.registry",
    "WeightsSource": "carnet_core.models.weights", "resolve_weights": "carnet_core.models.weights",
}
_RENAMED = {"resolve_weights": "resolve"}

__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'carnet_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
