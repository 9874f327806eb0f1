"""The Fine-tune page's recipe choices and the numbers people read (durations), decided in the library."""

from carnet_core.errors import duration_text
from carnet_core.training.config import (
    CUTMIX_ALPHA,
    MIXUP_ALPHA,
    RANDAUGMENT,
    TrainConfig,
    default_img_size,
    loader_workers,
    page_recipe,
)


def test_durations_read_as_minutes_and_hours():
    assert [duration_text(s) for s in (None, 0, 5.9, 65, 3599, 3600, 3725)] == \
        ["–", "0:00", "0:05", "1:05", "59:59", "1:00:00", "1:02:05"]


def test_the_pages_form_becomes_the_recipe():
    cfg = page_recipe("data/cars", "efficientnet_lite0", "ml_decoder", 160.0, 3.0, 16.0, 2e-4, True, 0, True, True)
    assert isinstance(cfg, TrainConfig) and cfg.problems() == []
    assert (cfg.img_size, cfg.epochs, cfg.batch_size, cfg.head) == (160, 3, 16, "ml_decoder")
    assert (cfg.randaugment, cfg.mixup, cfg.cutmix) == (RANDAUGMENT, MIXUP_ALPHA, CUTMIX_ALPHA)
    plain = page_recipe("data/cars", "efficientnet_lite0", "linear", 224, 1, 8, 1e-3, False, 1, False, False)
    assert (plain.randaugment, plain.mixup, plain.cutmix, plain.probe_init, plain.freeze_epochs) == \
        (None, 0.0, 0.0, False, 1)
    assert plain.workers == loader_workers() and 0 <= loader_workers() <= 8
    assert TrainConfig(data="x").randaugment == RANDAUGMENT  # the page's RandAugment is the recipe's default
    assert (default_img_size(True), default_img_size(False)) == (224, 160)
