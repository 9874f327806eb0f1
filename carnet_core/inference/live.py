"""Live camera classification: each video frame classified, its top-5 drawn on the frame as bars, an optional
heatmap under them, and the rate of updates measured — what the Classify page's live camera (streamlit-webrtc) calls
for every frame it receives, in its own thread.

A frame arrives as an RGB array (H, W, 3) uint8; it is classified as a photo is (:func:`predict`, the model's
engine). Drawing bars on the frame keeps them in step with the picture; a page polls :meth:`LiveClassifier.latest`
and :meth:`LiveClassifier.rate` for text beside it.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from carnet_core.inference.predict import Prediction, predict
from carnet_core.models.classifier import Classifier

#: Updates over which :meth:`LiveClassifier.rate` is measured.
RATE_WINDOW = 20
#: The bars' panel, as a fraction of the frame's width.
PANEL_FRACTION = 0.42


@dataclass
class LiveUpdate:
    """One classified frame: its prediction, when it was done (``time.monotonic()``) and what it took, ms."""

    prediction: Prediction
    at: float
    ms: float


class LiveClassifier:
    """Classifies frames of a live video for one model; thread-safe (frames come from the video thread, reads from the
    page's). ``heatmap``: an RGB image → the same image with a heatmap over it (the page passes a Grad-CAM overlay,
    :meth:`carnet_core.explain.cams.Explanation.overlay`), drawn under the bars; None: the frame as it is."""

    def __init__(self, model: Classifier, topk: int = 5,
                 heatmap: Callable[[Image.Image], Image.Image] | None = None):
        self.model, self.topk, self.heatmap = model, topk, heatmap
        self._lock = threading.Lock()
        self._updates: collections.deque[LiveUpdate] = collections.deque(maxlen=RATE_WINDOW)

    def process(self, frame: np.ndarray) -> np.ndarray:
        """The frame (H, W, 3) uint8 RGB with the top-k bars drawn on it (and the heatmap under them with ``cam``)."""
        t0 = time.perf_counter()
        image = Image.fromarray(frame)
        prediction = predict(self.model, [image], topk=self.topk)[0]
        shown = draw_bars(self.heatmap(image).resize(image.size) if self.heatmap else image, prediction)
        with self._lock:
            self._updates.append(LiveUpdate(prediction, time.monotonic(), (time.perf_counter() - t0) * 1e3))
        return np.asarray(shown)

    def latest(self) -> LiveUpdate | None:
        """The last frame's update, or None before the first."""
        with self._lock:
            return self._updates[-1] if self._updates else None

    def rate(self) -> float:
        """Updates per second over the last :data:`RATE_WINDOW` frames (0 with fewer than two)."""
        with self._lock:
            if len(self._updates) < 2:
                return 0.0
            span = self._updates[-1].at - self._updates[0].at
            return (len(self._updates) - 1) / span if span > 0 else 0.0


def draw_bars(image: Image.Image, prediction: Prediction) -> Image.Image:
    """``image`` with a translucent panel at its left holding one bar and label per class of ``prediction`` (most
    probable on top, the probability in %). Why not a chart library: the bars must be drawn into each video frame,
    at video rate, which Plotly and Matplotlib are far too slow for."""
    out = image.convert("RGBA")
    w, h = out.size
    rows = len(prediction.class_names)
    pad = max(4, h // 60)
    row_h = max(14, min(h // (rows + 2), 48))
    panel_w = int(w * PANEL_FRACTION)
    layer = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle([0, 0, panel_w, pad * 2 + rows * row_h], fill=(0, 0, 0, 150))
    font = ImageFont.load_default(size=max(10, int(row_h * 0.5)))
    for i, (name, p) in enumerate(zip(prediction.class_names, prediction.probabilities)):
        top = pad + i * row_h
        bar_w = int((panel_w - 2 * pad) * float(p))
        draw.rectangle([pad, top + 2, pad + bar_w, top + row_h - 2], fill=(47, 126, 216, 230))
        draw.text((pad + 4, top + row_h * 0.2), f"{name} {p * 100:.0f}%", fill=(255, 255, 255, 255), font=font)
    return Image.alpha_composite(out, layer).convert("RGB")
