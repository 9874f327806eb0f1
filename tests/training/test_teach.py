"""Teach in 20 seconds: a linear probe on the backbone's features, fitted from photos added class by class."""

import pytest
import torch
from conftest import SHARED, colour_image, need

from carnet_core import CarNetError, load_model
from carnet_core.models.catalog import list_checkpoints
from carnet_core.training.teach import QuickTeacher, save_quick_model

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def test_a_quick_model_from_a_few_photos_a_class(lite0, tmp_path, monkeypatch):
    monkeypatch.setenv("CARNET_JOBS_DIR", str(tmp_path / "jobs"))
    teacher = QuickTeacher(lite0)
    assert "at least 2 classes (0 classes so far)" in teacher.problem()
    for name, rgb in COLOURS.items():
        assert teacher.add(name, [colour_image(rgb, i, size=64) for i in range(6)]) == []
    assert teacher.add("red", [b"not a photo"])[0][1]  # refused, with the reason; the rest kept
    assert teacher.counts() == {"red": 6, "green": 6, "blue": 6} and teacher.problem() is None
    result = teacher.fit("colours")
    assert result.train_top1 == 1.0 and result.fit_s < 5
    model = result.model
    assert model.class_names == ("red", "green", "blue") and model.num_classes == 3
    assert lite0.num_classes == 1000  # the backbone is untouched
    x = model.preprocess([colour_image(rgb, 100 + i, size=64) for i, rgb in enumerate(COLOURS.values())])
    with torch.no_grad():
        assert model.module(x).argmax(1).tolist() == [0, 1, 2]  # new photos of each colour
    path = save_quick_model(result)
    listed = {e.path: e for e in list_checkpoints()}
    assert path in listed and listed[path].class_names == ("red", "green", "blue")
    again = load_model(checkpoint=path, device="cpu")
    with torch.no_grad():
        assert torch.allclose(again.module(x), model.module(x), atol=1e-5)
    two = QuickTeacher(lite0)
    two.add("red", [colour_image(COLOURS["red"], i, size=64) for i in range(3)])
    two.add("blue", [colour_image(COLOURS["blue"], i, size=64) for i in range(3)])
    with torch.no_grad():  # two classes: scikit-learn's single row becomes two logits
        assert two.fit("rb").model.module(x[[0, 2]]).argmax(1).tolist() == [0, 1]
    teacher.remove("green")
    assert list(teacher.counts()) == ["red", "blue"]
    short = QuickTeacher(lite0)
    short.add("red", [colour_image(COLOURS["red"], 0, size=64)] * 2)
    short.add("green", [colour_image(COLOURS["green"], 0, size=64)])
    with pytest.raises(CarNetError, match="cannot train yet: add at least 2 photos of green"):
        short.fit()


@pytest.mark.slow
@pytest.mark.shared
def test_three_real_classes_from_thirty_photos_each(lite0):
    """tiny_vehicles_6 car / pickup / minibus, 30 train photos each: the quick model's val top-1 on all 390 val
    photos of those classes — measured 82.3 % by bench/teach_benchmark.py (a 3-epoch full fine-tune: 85.1 %; chance
    33 %); held to 75 %."""
    from carnet_core.data.images import load_image

    data = need(SHARED / "data" / "tiny_vehicles_6")
    teacher = QuickTeacher(lite0)
    for cls in ("car", "pickup", "minibus"):
        teacher.add(cls, sorted((data / "train" / cls).iterdir())[:30])
    model = teacher.fit("tv3").model
    right = total = 0
    for cls in ("car", "pickup", "minibus"):
        files = sorted((data / "val" / cls).iterdir())
        with torch.no_grad():
            top = model.module(model.preprocess([load_image(f) for f in files])).argmax(1)
        right += int((top == model.class_names.index(cls)).sum())
        total += len(files)
    assert total == 390 and right / total >= 0.75, right / total
