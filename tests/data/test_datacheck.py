"""The dataset check: duplicates across splits, unreadable files, small classes, untrainable datasets."""

import shutil
from pathlib import Path

import pytest
from conftest import COLOURS, FAST, colour_image
from PIL import Image

from carnet_core import CarNetError
from carnet_core.data.datacheck import validate_splits
from carnet_core.data.readers import open_dataset
from carnet_core.training.config import TrainConfig
from carnet_core.training.trainer import fine_tune


def test_duplicates_across_splits_are_found(tmp_path):
    for s, split in enumerate(("train", "val")):
        for k, (c, rgb) in enumerate(COLOURS.items()):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(6):
                colour_image(rgb, 1000 * s + 100 * k + i, size=64).save(tmp_path / split / c / f"{i}.png")
    report = validate_splits(open_dataset(tmp_path))
    assert report.duplicates == []
    leak = tmp_path / "train" / "red" / "3.png"
    Image.open(leak).save(tmp_path / "val" / "red" / "leaked.png")  # exact copy
    Image.open(leak).resize((96, 96)).save(tmp_path / "val" / "blue" / "leaked_resized.jpg", quality=90)  # near copy
    (tmp_path / "val" / "green" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    report = validate_splits(open_dataset(tmp_path), min_per_class=7)
    found = {(Path(a).name, Path(b).name) for a, b, _ in report.duplicates}
    assert found == {("3.png", "leaked.png"), ("3.png", "leaked_resized.jpg")}
    assert [Path(p).name for p, _ in report.unreadable] == ["broken.jpg"]
    assert sorted(report.small_classes) == ["blue", "green", "red"]  # 6 < 7 train images


def test_one_class_is_no_fine_tune(colour_folder, tmp_path):
    """A folder of one class trained to "100 % top-1" after an epoch (a softmax over one logit is always right) and
    wrote a checkpoint that had learnt nothing. It is now refused, and the validation report says why."""
    shutil.copytree(colour_folder / "red", tmp_path / "solo" / "red")
    report = validate_splits(open_dataset(tmp_path / "solo"))
    assert not report.ok and "cannot fine-tune: only one class (red)" in report.summary()
    assert report.summary().startswith("1 class, ")
    with pytest.raises(CarNetError, match="only one class \\(red\\): a classifier learns to tell classes apart"):
        fine_tune(TrainConfig(data=str(tmp_path / "solo"), out=str(tmp_path / "run"), epochs=1, **FAST))
    assert not list((tmp_path / "run").glob("*.safetensors"))
    assert validate_splits(open_dataset(colour_folder)).untrainable is None
