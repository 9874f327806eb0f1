"""Classification metrics, computed in one place for evaluation, comparison and training: top-k accuracy, the
confusion matrix, per-class accuracy, expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural
Networks") with its reliability curve, and a make / model / year hierarchy's accuracy at each level."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def topk_hits(scores: Any, labels: Any, k: int) -> Any:
    """Whether each label is among its row's ``k`` highest scores: (N,) bool, from scores (N, C) — logits or
    probabilities — and labels (N,) int. ``k`` larger than C counts every label as a hit. Torch tensors in (the
    training loop's, on any device), a torch tensor out; anything else is read as NumPy arrays (the serving tier)."""
    k = min(k, scores.shape[1])
    if hasattr(scores, "topk"):
        return (scores.topk(k, dim=1).indices == labels[:, None]).any(1)
    top = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :k]
    return (top == np.asarray(labels)[:, None]).any(1)


def topk_accuracy(scores: Any, labels: Any, k: int) -> float:
    """Top-``k`` accuracy in [0, 1] (:func:`topk_hits` averaged); 0.0 for no rows."""
    return float(np.asarray(topk_hits(scores, labels, k), dtype=np.float64).mean()) if len(labels) else 0.0


ECE_BINS = 15


def top5_informative(num_classes: int) -> bool:
    """Whether top-5 accuracy says anything: not with 5 classes or fewer, where every class is in the top 5 and it is
    100 % by construction (pages and the CLI show "—" then; the JSON keeps the number)."""
    return num_classes > 5


def top5_text(top5: float, num_classes: int) -> str:
    """Top-5 accuracy (in [0, 1]) for a page or the CLI: ``"93.1%"``, or ``"—"`` where it says nothing
    (:func:`top5_informative`)."""
    return f"{top5 * 100:.1f}%" if top5_informative(num_classes) else "—"


TOP5_NOTE = "With 5 classes or fewer every class is in the top 5, so top-5 accuracy says nothing (it is always 100 %)."


def metrics_from_probabilities(probs: Any, labels: Any, class_names: list[str],
                               hierarchy: dict | None = None) -> dict:
    """All metrics of :class:`EvalReport` (but predictions) from probabilities (N, C) and labels (N,) (NumPy arrays
    or CPU torch tensors)."""
    probs, labels = np.asarray(probs, np.float32), np.asarray(labels, np.int64)
    n, c = probs.shape
    conf, pred = probs.max(1), probs.argmax(1)
    top5 = topk_hits(probs, labels, 5)
    correct = pred == labels
    confusion = np.zeros((c, c), np.int64)
    np.add.at(confusion, (labels, pred), 1)
    per_class = {}
    for i, name in enumerate(class_names):
        mask = labels == i
        per_class[name] = {"accuracy": float(correct[mask].mean()) if mask.any() else float("nan"),
                           "count": int(mask.sum())}
    edges = np.linspace(0, 1, ECE_BINS + 1, dtype=np.float32)
    reliability, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            acc, mean_conf = float(correct[mask].mean()), float(conf[mask].mean())
            ece += float(mask.mean()) * abs(acc - mean_conf)
            reliability.append({"bin_low": float(lo), "bin_high": float(hi), "confidence": mean_conf,
                                "accuracy": acc, "count": int(mask.sum())})
    levels = {}
    if hierarchy:
        for level in ("make", "model", "year"):
            true = [hierarchy[class_names[int(y)]].get(level, "") for y in labels]
            guess = [hierarchy[class_names[int(p)]].get(level, "") for p in pred]
            if all(true):
                levels[level] = float(np.mean([a == b for a, b in zip(true, guess)]))
    return {"top1": float(correct.mean()), "top5": float(top5.mean()), "per_class": per_class,
            "confusion": confusion.tolist(), "ece": ece, "reliability": reliability, "hierarchy": levels}


def confusion_order(confusion: Sequence[Sequence[int]]) -> list[int]:
    """A class order that puts classes confused with each other next to each other: average-linkage clustering of
    the symmetrised, row-normalised confusion matrix with optimal leaf ordering (``scipy.cluster.hierarchy``), so a
    196-class heatmap shows blocks instead of scattered dots. Returns indices into the class list."""
    # lazy: SciPy's clustering, only for the confusion heatmap's order
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import squareform

    c = np.asarray(confusion, dtype=float)
    if len(c) < 3:
        return list(range(len(c)))
    rates = c / np.maximum(c.sum(1, keepdims=True), 1)
    similarity = (rates + rates.T) / 2
    np.fill_diagonal(similarity, 0)
    distance = 1.0 - similarity / max(similarity.max(), 1e-12)
    np.fill_diagonal(distance, 0)
    condensed = squareform(distance, checks=False)
    tree = optimal_leaf_ordering(linkage(condensed, method="average"), condensed)
    return [int(i) for i in leaves_list(tree)]


PR_CURVE_POINTS = 101


def pr_curves(probs: Any, labels: Any, class_names: Sequence[str],
              max_points: int = PR_CURVE_POINTS) -> dict[str, dict]:
    """Each class's one-vs-rest precision–recall curve and average precision, from scikit-learn's
    ``precision_recall_curve`` and ``average_precision_score`` on probabilities (N, C) and labels (N,).

    Returns:
        class name → {"precision": [...], "recall": [...], "average_precision": float}, the curve thinned to at most
        ``max_points`` points (evenly over its length, both ends kept) so a 196-class report stays small; classes
        with no image in ``labels`` are left out (their curve is undefined).
    """
    # lazy: scikit-learn's metrics (~0.5 s to import), only where an evaluation is made
    from sklearn.metrics import average_precision_score, precision_recall_curve

    p, y = np.asarray(probs, np.float32), np.asarray(labels)
    curves = {}
    for i, name in enumerate(class_names):
        positive = y == i
        if not positive.any():
            continue
        precision, recall, _ = precision_recall_curve(positive, p[:, i])
        keep = np.unique(np.linspace(0, len(precision) - 1, min(max_points, len(precision))).round().astype(int))
        curves[name] = {"precision": [float(v) for v in precision[keep]], "recall": [float(v) for v in recall[keep]],
                        "average_precision": float(average_precision_score(positive, p[:, i]))}
    return curves
