"""CarNet core library: registry, weights, checkpoints, images, prediction. Never imports streamlit."""

from .errors import CarNetError, CheckpointError, ImageError, UnknownModelError, WeightsNotFoundError
from .images import IMAGE_EXTENSIONS, load_image
from .labels import VEHICLE_CLASSES, imagenet_class_names
from .model import Classifier, default_device, load_model
from .predict import Prediction, PredictionBatch, predict
from .registry import ModelSpec, get_spec, list_models
from .weights import WeightsSource, resolve as resolve_weights

__all__ = [
    "CarNetError", "CheckpointError", "ImageError", "UnknownModelError", "WeightsNotFoundError",
    "IMAGE_EXTENSIONS", "load_image", "VEHICLE_CLASSES", "imagenet_class_names", "Classifier", "default_device",
    "load_model", "Prediction", "PredictionBatch", "predict", "ModelSpec", "get_spec", "list_models",
    "WeightsSource", "resolve_weights",
]
__version__ = "0.1.0"
