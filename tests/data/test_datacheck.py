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


def test_near_duplicates_are_the_brute_force_ones():
    """Multi-index hashing finds, for each query, the same closest hash and the same number of matches as comparing
    every pair (random 64-bit hashes, with copies planted at 0–6 bits)."""
    import numpy as np

    from carnet_core.data.datacheck import hamming, near_duplicates

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 3000, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 3000, dtype=np.uint64)
    queries = rng.integers(0, 2**63, 600, dtype=np.uint64)
    for q in range(0, 600, 3):  # every third query: a copy of a hash with 0–6 of its bits flipped
        flips = rng.choice(64, q % 7, replace=False)
        queries[q] = hashes[q * 4] ^ np.uint64(sum(1 << int(b) for b in flips))
    hashes[10:20] = hashes[12]  # identical images in train
    found = {row: (d, n) for row, _, d, n in near_duplicates(queries, hashes, 4)}
    d = hamming(queries[:, None], hashes[None, :])
    expected = {row: (int(d[row].min()), int((d[row] <= 4).sum())) for row in range(600) if d[row].min() <= 4}
    assert found == expected and len(found) >= 140


@pytest.mark.subprocess
def test_the_duplicate_check_of_50000_images_fits_in_a_bounded_process():
    """50,000 train hashes, 12,000 of them one photo's (4,000 identical images made 3 M pairs, 0.84 GB, before; 12,000
    about 27 M, 2.9 GB) against 10,000 val hashes, 4,000 of them that photo too: done in a process limited to 1 GB of
    address space above what its imports take (RLIMIT_AS), with one row per val image and every pair counted."""
    import subprocess
    import sys

    code = """
import resource, sys
import numpy as np
from carnet_core.data.datacheck import near_duplicates
vm = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, vm + 2**30))
rng = np.random.default_rng(1)
train = rng.integers(0, 2**63, 50_000, dtype=np.uint64)
train[:12_000] = train[0]
val = rng.integers(0, 2**63, 10_000, dtype=np.uint64)
val[:4_000] = train[0]
found = near_duplicates(val, train, 4)
print(len(found), sum(n for *_, n in found))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows, pairs = map(int, done.stdout.split())
    assert rows == 4_000 and pairs == 4_000 * 12_000
