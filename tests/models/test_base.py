"""The torch-free eval preprocessing (carnet_core.models.base) against timm's transform, which the full install runs:
the same pixels, so the serving tier's probabilities can equal the full install's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
from PIL import Image

from carnet_core.data.images import load_image
from carnet_core.models.base import eval_resize_crop, normalise

GALLERY = Path(__file__).resolve().parents[2] / "gallery"

CONFIGS = [
    # registry-like: crop_pct 1 (CarNet's inference crop), bicubic and bilinear
    {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
     "std": (0.229, 0.224, 0.225), "crop_pct": 1.0, "crop_mode": "center"},
    {"input_size": (3, 260, 260), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
     "crop_pct": 1.0, "crop_mode": "center"},
    # timm's ImageNet default: the central 87.5 %
    {"input_size": (3, 240, 240), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
     "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"},
    # squash, square and not
    {"input_size": (3, 224, 224), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
     "std": (0.229, 0.224, 0.225), "crop_pct": 0.9, "crop_mode": "squash"},
    {"input_size": (3, 192, 256), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
     "std": (0.229, 0.224, 0.225), "crop_pct": 1.0, "crop_mode": "squash"},
]


def photos() -> list[Image.Image]:
    real = [load_image(p) for p in sorted(GALLERY.glob("*.jpg"))[:4]]
    rng = np.random.default_rng(0)
    odd = [Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)) for h, w in ((224, 224), (97, 403), (601, 150))]
    return real + odd


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['crop_mode']}-{c['input_size'][1]}x"
                         f"{c['input_size'][2]}-{c['interpolation']}-{c['crop_pct']}")
def test_eval_preprocessing_equals_timms_bit_for_bit(config):
    theirs = timm.data.create_transform(**config, is_training=False)
    steps = eval_resize_crop(config)
    assert steps is not None
    images = photos()
    ours = normalise(images, steps, config)
    expected = np.stack([theirs(im).numpy() for im in images])
    assert ours.shape == expected.shape
    assert np.array_equal(ours, expected)


def test_configs_it_does_not_cover_are_refused_not_approximated():
    base = dict(CONFIGS[0])
    assert eval_resize_crop({**base, "crop_mode": "border"}) is None
    assert eval_resize_crop({**base, "input_size": (3, 192, 256)}) is None  # a non-square shorter-side resize
    assert eval_resize_crop({**base, "interpolation": "random"}) is None


def test_input_views_made_elsewhere_normalise_to_the_same_batch():
    """Evaluate's loading threads make each photo's input view; normalising the views (``cropped=True``) gives
    bitwise the batch that preprocessing the photos does. A view of another size is refused."""
    from carnet_core.models.base import ClassifierBase
    from carnet_core.models.weights import WeightsSource

    config = dict(CONFIGS[4])  # 192 x 256: height and width not swapped
    model = ClassifierBase(name="m", arch="a", family="f", head="linear", class_names=("x",), data_config=config,
                           weights=WeightsSource("random"), label_set="s")
    images = photos()
    views = [model.input_view(im) for im in images]
    assert np.array_equal(model.preprocess_array(views, cropped=True), model.preprocess_array(images))
    with pytest.raises(Exception, match="an input view is not 256x192 px"):
        model.preprocess_array(images[:1], cropped=True)
