"""Evaluation of a classifier on a labelled dataset: top-1, top-5, per-class accuracy, confusion matrix,
calibration (expected calibration error, Guo et al. 2017, and the reliability-curve data) and, for label sets with a
make / model / year hierarchy, accuracy at each level."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .datasets import ImageDataset
from .errors import CarNetError, ImageError
from .model import Classifier
from .predict import predict_probabilities

ECE_BINS = 15


@dataclass
class EvalReport:
    """Numbers of :func:`evaluate`; all accuracies in [0, 1].

    Attributes:
        class_names: the label set (rows/columns of ``confusion``).
        top1 / top5: accuracy.
        per_class: class name → {"accuracy": float, "count": int}.
        confusion: (C, C) counts, rows = true class, columns = predicted class.
        ece: expected calibration error over :data:`ECE_BINS` equal-width confidence bins.
        reliability: per bin {"confidence": mean top-1 probability, "accuracy": float, "count": int}.
        hierarchy: {"make": acc, "model": acc, "year": acc} when the dataset has a hierarchy.
        predictions: per image {"path", "label", "predicted", "confidence"} (for galleries).
        skipped: (path, reason) of unreadable images.
    """

    class_names: list[str]
    num_images: int
    top1: float
    top5: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    ece: float
    reliability: list[dict[str, float]]
    hierarchy: dict[str, float] = field(default_factory=dict)
    predictions: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def most_confused(self, n: int = 10) -> list[tuple[str, str, int]]:
        """The ``n`` largest off-diagonal confusion counts as (true, predicted, count)."""
        c = np.array(self.confusion)
        np.fill_diagonal(c, 0)
        order = np.argsort(-c, axis=None)[:n]
        return [(self.class_names[i], self.class_names[j], int(c[i, j]))
                for i, j in zip(*np.unravel_index(order, c.shape)) if c[i, j] > 0]

    def to_dict(self) -> dict:
        return {"num_images": self.num_images, "top1": self.top1, "top5": self.top5, "ece": self.ece,
                "hierarchy": self.hierarchy, "per_class": self.per_class, "class_names": self.class_names,
                "confusion": self.confusion, "reliability": self.reliability,
                "most_confused": [{"true": a, "predicted": b, "count": n} for a, b, n in self.most_confused()],
                "predictions": self.predictions, "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}


def metrics_from_probabilities(probs: torch.Tensor, labels: torch.Tensor, class_names: list[str],
                               hierarchy: dict | None = None) -> dict:
    """All metrics of :class:`EvalReport` (but predictions) from probabilities (N, C) and labels (N,)."""
    n, c = probs.shape
    conf, pred = probs.max(1)
    k = min(5, c)
    top5 = (probs.topk(k, 1).indices == labels[:, None]).any(1)
    correct = pred == labels
    confusion = torch.zeros(c, c, dtype=torch.long)
    confusion.index_put_((labels, pred), torch.ones(n, dtype=torch.long), accumulate=True)
    per_class = {}
    for i, name in enumerate(class_names):
        mask = labels == i
        per_class[name] = {"accuracy": float(correct[mask].float().mean()) if mask.any() else float("nan"),
                           "count": int(mask.sum())}
    edges = torch.linspace(0, 1, ECE_BINS + 1)
    reliability, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            acc, mean_conf = float(correct[mask].float().mean()), float(conf[mask].mean())
            ece += float(mask.float().mean()) * abs(acc - mean_conf)
            reliability.append({"bin_low": float(lo), "bin_high": float(hi), "confidence": mean_conf,
                                "accuracy": acc, "count": int(mask.sum())})
    levels = {}
    if hierarchy:
        for level in ("make", "model", "year"):
            true = [hierarchy[class_names[int(y)]].get(level, "") for y in labels]
            guess = [hierarchy[class_names[int(p)]].get(level, "") for p in pred]
            if all(true):
                levels[level] = float(np.mean([a == b for a, b in zip(true, guess)]))
    return {"top1": float(correct.float().mean()), "top5": float(top5.float().mean()), "per_class": per_class,
            "confusion": confusion.tolist(), "ece": ece, "reliability": reliability, "hierarchy": levels}


def evaluate(model: Classifier, dataset: ImageDataset, batch_size: int = 32,
             progress: Callable[[float], None] | None = None) -> EvalReport:
    """Evaluate ``model`` on ``dataset`` (whose class names must be the model's, in any order).

    Raises:
        CarNetError: the label sets differ (the message names the difference), or no image could be read.
    """
    if set(dataset.class_names) != set(model.class_names):
        only_d = sorted(set(dataset.class_names) - set(model.class_names))[:5]
        only_m = sorted(set(model.class_names) - set(dataset.class_names))[:5]
        raise CarNetError(f"the dataset's classes are not {model.name}'s: only in the dataset: {', '.join(only_d) or '—'}; "
                          f"only in the model: {', '.join(only_m) or '—'}")
    to_model = [model.class_names.index(c) for c in dataset.class_names]
    probs, labels, rows, skipped = [], [], [], []
    for start in range(0, len(dataset), batch_size):
        images = []
        for i in range(start, min(start + batch_size, len(dataset))):
            item, label = dataset.items[i]
            try:
                images.append(dataset.load(i))
            except ImageError as exc:
                skipped.append((str(item), str(exc)))
                continue
            labels.append(to_model[label])
            rows.append(str(item) if not isinstance(item, np.ndarray) else f"#{i}")
        if images:
            probs.append(predict_probabilities(model, model.preprocess(images)))
        if progress:
            progress(min(1.0, (start + batch_size) / len(dataset)))
    if not probs:
        raise CarNetError(f"none of the {len(dataset)} images of {dataset.name} could be read")
    p, y = torch.cat(probs), torch.tensor(labels)
    names = list(model.class_names)
    m = metrics_from_probabilities(p, y, names, dataset.hierarchy)
    conf, pred = p.max(1)
    predictions = [{"path": r, "label": names[int(t)], "predicted": names[int(q)], "confidence": float(c)}
                   for r, t, q, c in zip(rows, y, pred, conf)]
    return EvalReport(names, len(y), m["top1"], m["top5"], m["per_class"], m["confusion"], m["ece"], m["reliability"],
                      m["hierarchy"], predictions, skipped)
