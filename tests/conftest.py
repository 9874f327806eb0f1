"""Shared fixtures. Tests that need ../shared (real photos, real weights) skip cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("CARNET_SHARED_DIR", ROOT.parent / "shared"))
CARS_VAL = SHARED / "data" / "stanford_cars_40" / "val"
MOBILENET_TV = SHARED / "weights" / "mobilenet_v2_tv_in1k_from_qnnpack-e748ebc9.pth"
MOBILENET_TIMM = SHARED / "weights" / "mobilenetv2_100_timm_in1k_from_qnnpack-a3358d41.pth"

# Tests never touch the network and never read the developer's own weights folder or HF cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# ONNX exports go to a throw-away cache, never the developer's ~/.cache/carnet.
# It is removed when the test process exits (each run's exports come to a few hundred MB).
if "CARNET_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["CARNET_CACHE_DIR"] = tempfile.mkdtemp(prefix="carnet-test-cache-")
    atexit.register(shutil.rmtree, os.environ["CARNET_CACHE_DIR"], ignore_errors=True)


def need(path: Path) -> Path:
    """Skip the calling test when a file or folder from ../shared is missing."""
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is absent)")
    return path


def photo_count(folder: Path) -> int:
    """How many .jpg photos lie anywhere under ``folder``, counted here, apart from the library's readers: a test that
    every photo was scored compares with this, not with a number that holds only for today's copy of ../shared."""
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() == ".jpg")


@pytest.fixture(autouse=True)
def _isolated_weights(tmp_path_factory, monkeypatch):
    """Each test sees an empty weights folder unless it sets CARNET_WEIGHTS_DIR itself."""
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(tmp_path_factory.mktemp("weights")))
    monkeypatch.setenv("CARNET_GALLERY_DIR", str(tmp_path_factory.mktemp("gallery")))


@pytest.fixture(autouse=True)
def _engines_are_measured_before_use():
    """app.py makes engine choices non-blocking for the process (measure_in_background); an AppTest of it must not
    leave the tests after it classifying with torch while a measurement runs."""
    yield
    import sys

    selection = sys.modules.get("carnet_core.inference.selection")
    if selection is not None:
        selection._background = False


@pytest.fixture(autouse=True)
def _no_job_worker_outlives_its_test():
    """A test that fails half-way must not leave a fine-tune worker training for minutes beside the next tests."""
    yield
    import signal
    import sys

    jobs = sys.modules.get("carnet_core.training.jobs")
    for pid, proc in list(jobs._children.items()) if jobs else []:
        if proc.poll() is None:
            try:
                os.killpg(pid, signal.SIGKILL)  # workers run in their own session: their loader processes too
            except ProcessLookupError:
                pass
            proc.wait()
        jobs._children.pop(pid, None)


class FakeClock:
    """A stand-in for ``time.perf_counter``: each reading is 1 ms after the one before, and :meth:`advance` makes
    seconds pass at once, so a test can tell what a timer measured without sleeping."""

    def __init__(self, tick_s: float = 1e-3):
        self.now, self.tick_s = 1000.0, tick_s

    def __call__(self) -> float:
        self.now += self.tick_s
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_clock(monkeypatch) -> FakeClock:
    """``time.perf_counter`` replaced by a :class:`FakeClock` for the test."""
    import time

    clock = FakeClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    return clock


@pytest.fixture
def cli(capsys):
    """The CLI in this process (``carnet_core.cli.main``, what ``python -m carnet_core`` runs): call it with the
    command's words, get (exit code, stdout, stderr). Cheaper than a new interpreter where the process boundary is
    not what a test is about."""
    from carnet_core.cli import main

    def run(*args) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def cli_process():
    """``python -m carnet_core`` in a new process, from the project folder: call it with the command's words (and
    ``env_extra``, variables to add), get the ``subprocess.CompletedProcess``."""
    import subprocess
    import sys

    def run(*args, env_extra=None) -> subprocess.CompletedProcess:
        env = {**os.environ, **(env_extra or {})}
        return subprocess.run([sys.executable, "-m", "carnet_core", *map(str, args)], cwd=ROOT, capture_output=True,
                              text=True, env=env, timeout=300)

    return run


#: Six ImageNet classes (one capitalised, as a dataset's folder may be) of a car classifier made from MobileNetV2.
SIX = ["sports car", "pickup", "Jeep", "minivan", "limousine", "convertible"]


@pytest.fixture
def six_class_mobilenet():
    """A function of a class order giving (state dict, ImageNet rows): real ImageNet MobileNetV2 weights cut down to
    six of its classes, in that order — a six-class car classifier whose logits are the ImageNet model's for those
    classes (what a fine-tune's head would be, known exactly). Skips without ../shared."""
    from carnet_core.models.checkpoints import read_state_dict
    from carnet_core.models.labels import imagenet_class_names

    def make(order: list[str]):
        state = read_state_dict(need(MOBILENET_TIMM))
        rows = [imagenet_class_names().index(name.lower() if name == "Jeep" else name) for name in order]
        state["classifier.weight"] = state["classifier.weight"][rows]
        state["classifier.bias"] = state["classifier.bias"][rows]
        return state, rows

    return make


@pytest.fixture(scope="session")
def lite0():
    """The offline default model with its real ImageNet weights, on the CPU."""
    from carnet_core import load_model

    return load_model("efficientnet_lite0", device="cpu", use_hub=False)


@pytest.fixture(scope="session")
def car_photos() -> list[Path]:
    """All real Stanford Cars validation photos (274 in ../shared today), sorted."""
    return sorted(need(CARS_VAL).glob("*/*.jpg"))


# --- generated data: 3 classes of noisy flat colours, learnable in a few CPU seconds -------------------------

COLOURS = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def colour_image(rgb, seed, size=48):
    rng = np.random.default_rng(seed)
    return Image.fromarray(np.clip(np.array(rgb) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8))


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory):
    """3 classes × 24 noisy flat-colour images, class folders only (the reader splits them)."""
    root = tmp_path_factory.mktemp("colours")
    for k, (c, rgb) in enumerate(COLOURS.items()):
        (root / c).mkdir()
        for i in range(24):
            colour_image(rgb, 100 * k + i).save(root / c / f"{i:02d}.png")
    return root


FAST = dict(model="efficientnet_lite0", img_size=64, batch_size=6, workers=0, lr=3e-4, randaugment=None,
            label_smoothing=0.0, probe_init=False, freeze_epochs=1)


@pytest.fixture
def unusable_weights_folder(tmp_path, monkeypatch) -> Path:
    """The weights folder (``$CARNET_WEIGHTS_DIR``) holding files named after registered models that cannot be used
    as their weights — a pickle with an object (refused), an interrupted copy (0 bytes), MobileNetV2's tensors under
    EfficientNet-B3's name, a six-class MobileNetV2 under SE-ResNet-50's — beside a good (random) MobileNetV2 file."""
    from pathlib import PurePosixPath

    import timm
    import torch

    folder = tmp_path / "weights"
    folder.mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "data_dir": PurePosixPath("/data")}, folder / "resnet50-run.pth")
    (folder / "efficientnet_b0.pth").write_bytes(b"")
    torch.manual_seed(0)
    mnv2 = timm.create_model("mobilenetv2_100", pretrained=False).state_dict()
    six = {**mnv2, "classifier.weight": mnv2["classifier.weight"][:6], "classifier.bias": mnv2["classifier.bias"][:6]}
    torch.save(mnv2, folder / "efficientnet_b3.pth")
    torch.save(six, folder / "seresnet50.pth")
    torch.save(mnv2, folder / "mobilenetv2_100.pth")
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(folder))
    return folder
