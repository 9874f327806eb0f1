"""The live camera's per-frame work (carnet_core.inference.live): classify, draw the bars on the frame, measure the
rate. The video itself is tested in Chromium with a fake camera (tests/app/test_browser.py)."""

import numpy as np
from conftest import ROOT
from PIL import Image

from carnet_core.inference.live import RATE_WINDOW, LiveClassifier


def test_frames_come_back_with_their_bars_and_the_rate_is_measured(lite0, monkeypatch):
    photo = sorted((ROOT / "gallery").glob("*.jpg"))[0]
    frame = np.asarray(Image.open(photo).convert("RGB").resize((640, 480)))
    clock = iter(np.arange(0, 10, 0.125))  # a frame every 125 ms
    monkeypatch.setattr("carnet_core.inference.live.time.monotonic", lambda: float(next(clock)))
    live = LiveClassifier(lite0)
    assert live.latest() is None and live.rate() == 0.0
    for _ in range(3):
        out = live.process(frame)
    assert out.shape == frame.shape and out.dtype == np.uint8
    assert np.abs(out[:60, :200].astype(int) - frame[:60, :200]).mean() > 20  # the bars' panel over the top left
    assert np.array_equal(out[-50:, -200:], frame[-50:, -200:])  # the rest of the picture untouched
    latest = live.latest()
    assert latest.prediction.top1 == "sports car" and len(latest.prediction.class_names) == 5 and latest.ms > 0
    assert live.rate() == 8.0  # 2 intervals of 125 ms
    for _ in range(RATE_WINDOW + 5):
        live.process(frame)
    assert live.rate() == 8.0  # over the last RATE_WINDOW frames only

    dimmed = LiveClassifier(lite0, heatmap=lambda im: Image.new("RGB", (32, 24), (255, 0, 0)))
    out = dimmed.process(frame)
    assert out.shape == frame.shape and tuple(out[-10, -10]) == (255, 0, 0)  # the overlay, resized to the frame
