"""Evaluation of a classifier on a labelled dataset: top-1, top-5, per-class accuracy, confusion matrix,
calibration (expected calibration error, Guo et al. 2017, and the reliability-curve data) and, for label sets with a
make / model / year hierarchy, accuracy at each level."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from carnet_core._io import atomic_write_json
from carnet_core.config import cache_dir as default_cache_dir
from carnet_core.data.datasets import DatasetSplits, ImageDataset
from carnet_core.errors import CarNetError, listed
from carnet_core.evaluation.compare import LabelProjection
from carnet_core.evaluation.label_issues import find_label_issues
from carnet_core.evaluation.metrics import metrics_from_probabilities, pr_curves
from carnet_core.evaluation.scoring import check_photo_count, score_images
from carnet_core.inference.predict import predict_probabilities
from carnet_core.inference.serving import weights_fingerprint
from carnet_core.models.classifier import Classifier
from carnet_core.models.labels import within_classes


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
        predictions: per image {"path", "label", "predicted", "confidence", "top3": [[class, probability], …]}
            (for galleries and the confusion-cell drill-down).
        skipped: (path, reason) of unreadable images.
        pr_curves: class → its precision–recall curve and average precision (:func:`~.metrics.pr_curves`).
        label_issues: possible label errors, least likely given label first
            (:func:`~carnet_core.evaluation.label_issues.find_label_issues`).
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
    pr_curves: dict[str, dict] = field(default_factory=dict)
    label_issues: list[dict] = field(default_factory=list)

    def most_confused(self, n: int = 10) -> list[tuple[str, str, int]]:
        """The ``n`` largest off-diagonal confusion counts as (true, predicted, count)."""
        c = np.array(self.confusion)
        np.fill_diagonal(c, 0)
        order = np.argsort(-c, axis=None)[:n]
        return [(self.class_names[i], self.class_names[j], int(c[i, j]))
                for i, j in zip(*np.unravel_index(order, c.shape)) if c[i, j] > 0]

    def class_scores(self) -> dict[str, dict[str, float]]:
        """Precision, recall (the class's accuracy) and F1 of each class from :attr:`confusion`, as scikit-learn's
        ``classification_report`` defines them: precision is NaN for a class never predicted and recall for a class
        with no images, and F1 counts either as 0 (``zero_division=0``)."""
        c = np.array(self.confusion, dtype=np.float64)
        hits, predicted, actual = np.diag(c), c.sum(0), c.sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision, recall = hits / predicted, hits / actual
            f1 = np.nan_to_num(2 * hits / (predicted + actual))
        return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i])}
                for i, name in enumerate(self.class_names)}

    @property
    def macro_f1(self) -> float:
        """Unweighted mean of the classes' F1 over those with images or predictions (scikit-learn's
        ``f1_score(average="macro")``); a model that gets the frequent classes right and the rare ones wrong scores
        low here though its top-1 is high. NaN when nothing was scored."""
        return self._macro_f1(self.class_scores())

    def _macro_f1(self, scores: dict[str, dict[str, float]]) -> float:
        c = np.array(self.confusion)
        present = (c.sum(0) + c.sum(1)) > 0
        f1 = [scores[name]["f1"] for name, p in zip(self.class_names, present) if p]
        return float(np.mean(f1)) if f1 else float("nan")

    def photos(self, true_class: str | None = None, predicted: str | None = None, which: str = "all",
               most_confident_first: bool = True) -> list[dict]:
        """The images of :attr:`predictions` behind a confusion cell, a row or a column: those labelled
        ``true_class`` and/or predicted as ``predicted`` (None: any), ``which`` of them ("all", "wrong" or "right"),
        ordered by the model's confidence in its prediction, most confident first ("confidently wrong" first among
        mistakes) or least (the near misses).

        Raises:
            ValueError: ``which`` is not one of "all", "wrong", "right".
        """
        if which not in ("all", "wrong", "right"):
            raise ValueError(f"which must be 'all', 'wrong' or 'right', not {which!r}")
        chosen = [p for p in self.predictions
                  if true_class in (None, p["label"]) and predicted in (None, p["predicted"])
                  and (which == "all" or (p["label"] == p["predicted"]) == (which == "right"))]
        return sorted(chosen, key=lambda p: p["confidence"], reverse=most_confident_first)

    def mistakes(self, true_class: str | None = None, predicted: str | None = None,
                 most_confident_first: bool = True) -> list[dict]:
        """The misclassified images (:meth:`photos` with ``which="wrong"``)."""
        return self.photos(true_class, predicted, "wrong", most_confident_first)

    def cells(self) -> list[tuple[str, str, int]]:
        """Every non-empty cell of :attr:`confusion` as (true class, predicted class, images), the mistakes first and
        largest first within each kind: the choices of a drill-down picker."""
        c = np.array(self.confusion)
        found = [(self.class_names[i], self.class_names[j], int(c[i, j])) for i, j in zip(*np.nonzero(c))]
        return sorted(found, key=lambda t: (t[0] == t[1], -t[2], t[0], t[1]))

    def to_dict(self) -> dict:
        """Everything as JSON-ready values; an undefined number (the accuracy of a class with no images, the precision
        of one never predicted) is None, as JSON has no NaN (``json.dumps`` writes a bare ``NaN`` that strict
        parsers — ``jq``, browsers — refuse)."""
        scores = self.class_scores()
        return _nan_to_none({
            "num_images": self.num_images, "top1": self.top1, "top5": self.top5, "macro_f1": self._macro_f1(scores),
            "ece": self.ece, "hierarchy": self.hierarchy, "per_class": self.per_class,
            "class_scores": scores, "class_names": self.class_names, "confusion": self.confusion,
            "reliability": self.reliability,
            "most_confused": [{"true": a, "predicted": b, "count": n} for a, b, n in self.most_confused()],
            "predictions": self.predictions, "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "pr_curves": self.pr_curves, "label_issues": self.label_issues})


def _nan_to_none(value: Any) -> Any:
    """``value`` with every float NaN in it, however deep in dicts and lists, replaced by None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    return value


def evaluate(model: Classifier, dataset: ImageDataset, batch_size: int = 32,
             progress: Callable[[float], None] | None = None, mapping: dict[str, list[str]] | None = None,
             max_photos: int | None = None) -> EvalReport:
    """Evaluate ``model`` on ``dataset`` through the fast inference engine (:mod:`carnet_core.inference.engines`).

    Args:
        model: any classifier; its classes must be the dataset's (in any order), or include them all (the dataset's
            folders named after model classes: scored over those, renormalised), unless ``mapping`` is given.
        dataset: labelled images (any reader of :mod:`carnet_core.data.datasets`).
        batch_size: images per forward pass.
        progress: called with the fraction done (0–1) after each batch.
        mapping: dataset class → model classes (e.g. ``mappings/tiny_vehicles_6_to_imagenet.json``) to score an
            ImageNet model on other labels: its probabilities are summed per dataset class
            (:class:`carnet_core.evaluation.compare.LabelProjection`) and renormalised over the dataset's classes.
        max_photos: refuse a dataset of more photos (:func:`check_photo_count`; None: any size).

    Raises:
        CarNetError: the label sets differ and no mapping is given (the message names the difference), a bad
            mapping, no image could be read, or more than ``max_photos``.
    """
    check_photo_count(len(dataset), dataset.name, max_photos)
    projection = None
    # a mapping, or folders named after some of the model's classes ("sports car", "pickup"): scored over those
    if mapping is not None or (set(dataset.class_names) != set(model.class_names)
                               and within_classes(dataset.class_names, model.class_names)):
        projection = LabelProjection(dataset.class_names, model.class_names, mapping)
        names = list(dataset.class_names)
        to_index = list(range(len(names)))
    else:
        if set(dataset.class_names) != set(model.class_names):
            only_d = sorted(set(dataset.class_names) - set(model.class_names))
            only_m = sorted(set(model.class_names) - set(dataset.class_names))
            raise CarNetError(f"the dataset's classes are not {model.name}'s: only in the dataset: {listed(only_d)}; "
                              f"only in the model: {listed(only_m)} (for an ImageNet model, give a mapping file)")
        names = list(model.class_names)
        to_index = [names.index(c) for c in dataset.class_names]
    def score(views: list) -> np.ndarray:  # the model's input views, made by the loading threads
        p = np.asarray(predict_probabilities(model, model.preprocess(views, cropped=True)), np.float32)
        if projection is None:
            return p
        p = projection.project(p)
        return p / np.maximum(p.sum(1, keepdims=True), np.float32(1e-12))

    items = [(str(item) if not isinstance(item, np.ndarray) else f"#{i}", to_index[label])
             for i, (item, label) in enumerate(dataset.items)]
    scored = score_images(items, lambda i: model.input_view(dataset.load(i)), score, batch_size, progress=progress)
    if scored is None:
        raise CarNetError(f"none of the {len(dataset)} images of {dataset.name} could be read")
    return report_from_probabilities(scored.probs, scored.labels, scored.names, names, dataset.hierarchy,
                                     scored.unreadable)


def report_from_probabilities(probs: Any, labels: Any, paths: list[str], class_names: list[str],
                              hierarchy: dict | None = None,
                              skipped: list[tuple[str, str]] | None = None) -> EvalReport:
    """The :class:`EvalReport` of probabilities (N, C) for images ``paths`` with labels (N,) indexing
    ``class_names`` (C): the metrics, each image's top-3, and — where scikit-learn and cleanlab are installed
    (:func:`explorer_extras`; not in the serving tier) — the precision–recall curves and the possible label errors.
    ``probs`` and ``labels``: NumPy arrays or CPU torch tensors."""
    p, y = np.asarray(probs, np.float32), np.asarray(labels, np.int64)
    m = metrics_from_probabilities(p, y, class_names, hierarchy)
    conf, pred = p.max(1), p.argmax(1)
    extras = explorer_extras()
    top_i = np.argsort(-p, axis=1, kind="stable")[:, :min(3, p.shape[1])]
    top_p = np.take_along_axis(p, top_i, axis=1)
    predictions = [{"path": r, "label": class_names[int(t)], "predicted": class_names[int(q)], "confidence": float(c),
                    "top3": [[class_names[int(i)], float(v)] for i, v in zip(ii, vv)]}
                   for r, t, q, c, ii, vv in zip(paths, y, pred, conf, top_i, top_p)]
    return EvalReport(class_names, len(y), m["top1"], m["top5"], m["per_class"], m["confusion"], m["ece"],
                      m["reliability"], m["hierarchy"], predictions, list(skipped or []),
                      pr_curves(p, y, class_names) if extras else {},
                      find_label_issues(p, y, paths, class_names) if extras else [])


def explorer_extras() -> bool:
    """Whether the evaluation explorer's extras can run here — precision–recall curves and the embedding map's t-SNE
    (scikit-learn), possible label errors (cleanlab), the clustered confusion order (SciPy): their packages are
    importable. The serving tier leaves them out (its pages then leave those views out)."""
    for package in ("sklearn", "cleanlab", "scipy"):
        try:
            if importlib.util.find_spec(package) is None:
                return False
        except ImportError:  # an import hook that refuses it
            return False
    return True


def report_from_dict(data: dict) -> EvalReport:
    """Rebuild an :class:`EvalReport` from :meth:`EvalReport.to_dict` (the evaluation cache and JSON exports)."""
    per_class = {name: {**v, "accuracy": float("nan") if v["accuracy"] is None else v["accuracy"]}
                 for name, v in data["per_class"].items()}
    return EvalReport(data["class_names"], data["num_images"], data["top1"], data["top5"], per_class,
                      data["confusion"], data["ece"], data["reliability"], data.get("hierarchy", {}),
                      data.get("predictions", []), [(d["path"], d["reason"]) for d in data.get("skipped", [])],
                      data.get("pr_curves", {}), data.get("label_issues", []))


def per_class_rows(report: EvalReport) -> list[dict]:
    """Per-class table rows, worst recall first: class, precision, recall (the class's accuracy), F1 (in [0, 1],
    :meth:`EvalReport.class_scores`), AP (average precision, :attr:`EvalReport.pr_curves`; NaN where not measured),
    images, and the most frequent wrong prediction with its count."""
    c = np.array(report.confusion)
    scores = report.class_scores()
    rows = []
    for i, name in enumerate(report.class_names):
        off = c[i].copy()
        off[i] = 0
        j = int(off.argmax())
        rows.append({"class": name, "precision": scores[name]["precision"], "recall": report.per_class[name]["accuracy"],
                     "F1": scores[name]["f1"],
                     "AP": report.pr_curves.get(name, {}).get("average_precision", float("nan")),
                     "images": report.per_class[name]["count"],
                     "most often predicted instead": report.class_names[j] if off[j] else "",
                     "times": int(off[j])})
    return sorted(rows, key=lambda r: (np.nan_to_num(r["recall"], nan=2.0), r["class"]))


#: Changes whenever :class:`EvalReport` gains a field, so a cached report without it is made again.
REPORT_VERSION = "2: top3, pr_curves, label_issues"


def evaluation_cache_key(model: Classifier, dataset: ImageDataset, mapping: dict | None = None) -> str:
    """Identifies an evaluation: the model's weights fingerprint, the dataset's files (paths, sizes, mtimes) and
    the mapping. A changed checkpoint or dataset gets a new key."""

    h = hashlib.sha256(REPORT_VERSION.encode() + weights_fingerprint(model).encode())
    h.update(json.dumps(mapping, sort_keys=True).encode())
    h.update(dataset.fingerprint().encode())
    return h.hexdigest()[:24]


def evaluate_cached(model: Classifier, dataset: ImageDataset, cache_dir: str | None = None,
                    progress: Callable[[float], None] | None = None, mapping: dict | None = None,
                    refresh: bool = False, max_photos: int | None = None) -> tuple[EvalReport, bool]:
    """:func:`evaluate` with its report cached as JSON under ``cache_dir`` (default
    ``$CARNET_CACHE_DIR/evaluations``). Returns (report, came from the cache)."""

    root = Path(cache_dir) if cache_dir else default_cache_dir() / "evaluations"
    path = root / f"{evaluation_cache_key(model, dataset, mapping)}.json"
    if path.exists() and not refresh:
        try:
            return report_from_dict(json.loads(path.read_text())), True
        except (ValueError, KeyError):
            pass
    report = evaluate(model, dataset, progress=progress, mapping=mapping, max_photos=max_photos)
    try:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, report.to_dict(), indent=None)
    except OSError:  # an unwritable or full cache: the report is still returned, just not kept
        pass
    return report, False


def scored_text(num_scored: int, splits: DatasetSplits, split: str) -> str:
    """How many images an evaluation scored out of how many were found, and which: ``"scored 549 of the 549 images
    found (all of them)"``, ``"scored 145 of the 549 images found (the val split made here: the folder has no split
    of its own)"``."""
    part = {"all": "all of them", "val": "the val split", "train": "the train split"}.get(split, split)
    made = " made here: the folder has no split of its own" if splits.split_here and split != "all" else ""
    return f"scored {num_scored} of the {splits.num_images} images found ({part}{made})"


def outcome_caption(photo: dict) -> str:
    """A photo's caption in a drill-down grid (Markdown), from an entry of :attr:`EvalReport.predictions` or
    :attr:`EvalReport.label_issues`: ``"**pickup** → car (85%)"`` (given label → prediction, confidence; ``✓`` for a
    right one), then the top-3 on a second line where the entry has them, and the cosine similarity to the photo
    asked about for a similar photo (an entry with ``similarity``)."""
    if "predicted" not in photo:  # a similar photo the evaluation did not score
        text = f"**{photo['label']}**"
    else:
        mark = "✓ " if photo["label"] == photo["predicted"] else ""
        text = f"{mark}**{photo['label']}** → {photo['predicted']} ({photo['confidence'] * 100:.0f}%)"
    if "label_probability" in photo:
        text += f"  \nlabel {photo['label']}: {photo['label_probability'] * 100:.1f}%"
    if photo.get("top3"):
        text += "  \ntop-3: " + " · ".join(f"{name} {p * 100:.0f}%" for name, p in photo["top3"])
    if "similarity" in photo:
        text += f"  \ncosine similarity {photo['similarity']:.2f}"
    return text
