"""The Fine-tune page's recipe choices and the numbers people read (durations), decided in the library."""

import pytest

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


@pytest.mark.slow
def test_the_estimate_counts_what_a_run_does_before_its_first_epoch(colour_folder):
    """The estimate said "about 0:01 per epoch … 0:02 for 2 epochs" of a run that then spent about 30 s preparing:
    starting its worker, checking every image, fitting the linear probe. Preparation is counted now, the probe's pass
    over the train images only when it is asked for."""
    from carnet_core.data.images import list_images
    from carnet_core.training.estimate import WORKER_START_S, estimate_epoch_seconds

    photos = list_images(colour_folder, recursive=True)
    plain = estimate_epoch_seconds("efficientnet_lite0", "linear", 64, 4, 600, 200, device="cpu",
                                   sample_images=photos)
    probed = estimate_epoch_seconds("efficientnet_lite0", "linear", 64, 4, 600, 200, device="cpu", probe=True,
                                    sample_images=photos)
    for est in (plain, probed):
        assert est["prepare_s"] == pytest.approx(WORKER_START_S + est["decode_s"] + est["probe_s"])
        assert est["decode_s"] > 0  # 800 images decoded once by the dataset check
    assert plain["probe_s"] == 0 and probed["probe_s"] >= probed["val_s"] / 200 * 600  # a pass over the 600 train
