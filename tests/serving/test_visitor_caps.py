"""What one visitor of a hosted demo may spend: CAM methods per comparison, photos per evaluation or folder
comparison, the expensive CAMs left out, and heavy actions one at a time per server."""

import dataclasses
import threading

import pytest
from conftest import colour_image

from carnet_core import CarNetError
from carnet_core._io import heavy_action
from carnet_core.config import HOSTED_CAM_METHODS, HOSTED_FOLDER_PHOTOS, cam_methods_cap, folder_photos_cap
from carnet_core.evaluation.scoring import check_photo_count


def test_caps_hold_in_hosted_mode_only(monkeypatch):
    monkeypatch.delenv("CARNET_HOSTED", raising=False)
    assert (cam_methods_cap(), folder_photos_cap()) == (None, None)
    monkeypatch.setenv("CARNET_HOSTED", "1")
    assert (cam_methods_cap(), folder_photos_cap()) == (HOSTED_CAM_METHODS, HOSTED_FOLDER_PHOTOS)
    check_photo_count(HOSTED_FOLDER_PHOTOS, "cars", HOSTED_FOLDER_PHOTOS)  # at the cap: scored
    with pytest.raises(CarNetError, match="cars has 2,001 photos; this demo scores folders of up to 2,000"):
        check_photo_count(2001, "cars", 2000)


def test_a_folder_over_the_cap_is_refused_before_a_photo_is_read(tmp_path, lite0, monkeypatch):
    from carnet_core.data.readers import open_dataset
    from carnet_core.evaluation.compare import compare_on_folder
    from carnet_core.evaluation.evaluate import evaluate

    for name in ("sports car", "pickup"):
        (tmp_path / "cars" / name).mkdir(parents=True)
        for i in range(3):
            colour_image((200, 40, 40), i).save(tmp_path / "cars" / name / f"{i}.png")
    read = []
    for module in ("evaluate", "compare"):
        monkeypatch.setattr(f"carnet_core.evaluation.{module}.score_images", lambda *a, **k: read.append(1))
    with pytest.raises(CarNetError, match="has 6 photos; this demo scores folders of up to 5"):
        evaluate(lite0, open_dataset(tmp_path / "cars").part("all"), max_photos=5)
    with pytest.raises(CarNetError, match="cars has 6 photos"):
        compare_on_folder([lite0, dataclasses.replace(lite0, name="other")], tmp_path / "cars", max_photos=5)
    assert read == []


def test_the_expensive_cams_are_not_offered_on_a_hosted_demo(lite0, monkeypatch):
    from carnet_core.explain.cams import EXPENSIVE_METHODS, METHODS, methods_for

    monkeypatch.delenv("CARNET_HOSTED", raising=False)
    assert methods_for(lite0) == METHODS
    monkeypatch.setenv("CARNET_HOSTED", "1")
    assert methods_for(lite0) == tuple(m for m in METHODS if m not in EXPENSIVE_METHODS)


def test_heavy_actions_take_turns_when_exclusive():
    inside, release, waited, order = threading.Event(), threading.Event(), [], []

    def first():
        with heavy_action(True):
            order.append("first in")
            inside.set()
            release.wait(30)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(30)

    def second():
        with heavy_action(True, busy=lambda: (waited.append(True), release.set())):
            order.append("second in")

    second()
    thread.join(30)
    assert waited == [True] and order == ["first in", "first out", "second in"]  # told it waited, then its turn
    with heavy_action(False, busy=lambda: waited.append("never")):  # not exclusive: never waits, never told
        with heavy_action(False, busy=lambda: waited.append("never")):
            pass
    assert waited == [True]
