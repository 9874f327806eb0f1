"""Ensembles of classifiers over the same label set, and how much two models agree.

Rules (Kuncheva, "Combining Pattern Classifiers", 2004):
- ``soft``: soft voting, the (weighted) mean of the members' probabilities;
- ``geometric``: the (weighted) mean of log-probabilities, exponentiated and renormalised (product of experts);
- ``hard``: majority vote of the members' top-1 classes (weights count as votes); the output "probabilities" are
  the vote shares, ties broken by the soft vote.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from carnet_core.errors import CarNetError, listed
from carnet_core.inference.predict import timed_probabilities, topk_predictions
from carnet_core.models.classifier import Classifier

if TYPE_CHECKING:
    from PIL import Image

    from carnet_core.inference.predict import Prediction

RULES: tuple[str, ...] = ("soft", "geometric", "hard")
_EPS = 1e-12


def member_names(models: Sequence[Classifier]) -> list[str]:
    """One distinct name per ensemble member, for tables, charts and reports: each model's name, and where members
    share one — two fine-tunes of one dataset that stopped at the same epoch, say, a linear and an ML-Decoder head —
    the folder of each one's weights file after it (``"efficientnet_lite0-cars-e3 (20261123-081500-ab12cd)"``), or
    else its place among the members (``"… #2"``).

    Raises:
        CarNetError: a model given twice (the same name and the same weights file).
    """
    given = set()
    for m in models:
        key = (m.name, m.weights.source, m.weights.location or id(m))  # random weights: each model its own
        if key in given:
            raise CarNetError(f"{m.name} is given twice: each ensemble member must be a different model")
        given.add(key)
    shared = {name for name, n in Counter(m.name for m in models).items() if n > 1}
    names = [f"{m.name} ({Path(m.weights.location).parent.name})" if m.name in shared and m.weights.location
             else m.name for m in models]
    if len(set(names)) < len(names):  # still the same (weights files in one folder, or no file): their places
        names = [f"{m.name} #{i + 1}" if m.name in shared else m.name for i, m in enumerate(models)]
    return names


def _weights(num_members: int, weights: Sequence[float] | None) -> np.ndarray:
    """(M,) float32 member weights summing to 1 (equal when None)."""
    if weights is None:
        return np.full(num_members, 1.0 / num_members, np.float32)
    w = np.asarray([float(x) for x in weights], np.float32)
    if len(w) != num_members:
        raise CarNetError(f"{len(w)} weight{'s' * (len(w) != 1)} for {num_members} members")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:  # NaN or inf made every vote NaN, silently
        raise CarNetError(f"ensemble weights must be finite, >= 0 and not all zero, got {list(weights)}")
    return w / w.sum()


def combine(member_probs: Any, rule: str = "soft", weights: Sequence[float] | None = None) -> np.ndarray:
    """Combine members' probabilities, in NumPy (the serving tier has no torch).

    Args:
        member_probs: (M, N, C) probabilities of M members for N images over C classes (a NumPy array or a CPU
            torch tensor).
        rule: one of :data:`RULES`.
        weights: M non-negative member weights (normalised here); default equal.

    Returns:
        (N, C) float32 combined probabilities (rows sum to 1).

    Raises:
        CarNetError: unknown rule or bad weights.
    """
    if rule not in RULES:
        raise CarNetError(f"unknown ensemble rule {rule!r}; choose one of {', '.join(RULES)}")
    p = np.asarray(member_probs, dtype=np.float32)
    m, n, c = p.shape
    w = _weights(m, weights).reshape(m, 1, 1)
    soft = (w * p).sum(0)
    if rule == "soft":
        return soft
    if rule == "geometric":
        logp = (w * np.log(np.maximum(p, np.float32(_EPS)))).sum(0)
        e = np.exp(logp - logp.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    votes = np.zeros((n, c), np.float32)
    np.add.at(votes, (np.repeat(np.arange(n), m), p.argmax(2).T.reshape(-1)), np.tile(w.reshape(m), n))
    return votes + np.float32(1e-6) * soft  # ties broken by the soft vote; shares still sum to ~1


def aligned_class_names(models: Sequence[Classifier]) -> tuple[str, ...]:
    """The common label set of ``models`` (the first member's order).

    Members may list the same class names in another order (they are re-indexed); any other difference is refused.

    Raises:
        CarNetError: fewer than two members, or label sets differ; the message names the difference.
    """
    if len(models) < 2:
        raise CarNetError("an ensemble needs at least two models")
    first = models[0]
    for other in models[1:]:
        if set(other.class_names) != set(first.class_names):
            only_a = sorted(set(first.class_names) - set(other.class_names))
            only_b = sorted(set(other.class_names) - set(first.class_names))
            raise CarNetError(
                f"{first.name} and {other.name} have different label sets ({first.num_classes} vs "
                f"{other.num_classes} classes): only in {first.name}: {listed(only_a)}; only in {other.name}: "
                f"{listed(only_b)}")
    return first.class_names


def member_probabilities(models: Sequence[Classifier], images: Sequence[Image.Image] = (),
                         views: Sequence[Sequence[Image.Image]] | None = None) -> tuple[np.ndarray, list[float]]:
    """(M, N, C) float32 probabilities of each member on the same images (RGB PIL images), re-indexed to the first
    member's class order, and each member's model time in ms (as :func:`carnet_core.inference.predict` times it: not
    its engine choice). ``views``: instead of ``images``, each member's input views of them (M lists of N), made
    elsewhere (a folder's loading threads)."""
    names = aligned_class_names(models)
    out, times = [], []
    for j, model in enumerate(models):
        probs, _, model_ms = (timed_probabilities(model, views[j], cropped=True) if views is not None
                              else timed_probabilities(model, images))
        probs = np.asarray(probs, dtype=np.float32)
        times.append(model_ms)
        if model.class_names != names:
            probs = probs[:, [model.class_names.index(c) for c in names]]
        out.append(probs)
    return np.stack(out), times


def member_predictions(models: Sequence[Classifier], image: Image.Image,
                       topk: int = 5) -> tuple[list[Prediction], list[float], np.ndarray | None]:
    """Each member's top-``topk`` on one RGB PIL image, in its own classes, and its model time in ms; plus the
    members' (M, 1, C) probabilities in one label order for an ensemble — None when their label sets differ (a
    fine-tune beside an ImageNet model: nothing to combine on one photo; :func:`carnet_core.evaluation.compare.compare_on_folder`
    combines them in a folder's classes).

    Raises:
        CarNetError: fewer than two members, or what a member's engine raises.
    """
    if len(models) < 2 or len({frozenset(m.class_names) for m in models}) == 1:
        probs, times = member_probabilities(models, [image])  # one label set (or a refusal that says why)
        return [topk_predictions(probs[i], models[0].class_names, topk)[0] for i in range(len(models))], times, probs
    preds, times = [], []
    for model in models:
        own, _, model_ms = timed_probabilities(model, [image])
        preds.append(topk_predictions(own, model.class_names, topk)[0])
        times.append(model_ms)
    return preds, times, None


@dataclass
class Agreement:
    """How two probability distributions over the same classes agree.

    Attributes:
        same_top1: both put the same class first.
        top5_overlap: number of classes shared by the two top-5 lists (0–5).
        js_divergence: Jensen–Shannon divergence in bits, 0 (identical) to 1 (disjoint) (Lin 1991).
    """
    same_top1: bool
    top5_overlap: int
    js_divergence: float


def agreement(p: Any, q: Any) -> Agreement:
    """Compare two probability vectors (C,) over the same classes (NumPy arrays or CPU torch tensors)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    top_p, top_q = set(np.argsort(-p)[:5].tolist()), set(np.argsort(-q)[:5].tolist())
    return Agreement(bool(p.argmax() == q.argmax()), len(top_p & top_q), js_divergence(p, q))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence of two distributions (C,) in bits, 0 to 1 (Lin 1991, "Divergence measures based on
    the Shannon entropy"): the mean KL divergence of each from their mixture, after normalising each to sum 1, with
    0·log 0 = 0. SciPy's ``jensenshannon(p, q, base=2) ** 2`` computes the same (a test checks it); written out
    because SciPy would add 136 MB to the serving tier for this one formula."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return max(0.0, (kl(p) + kl(q)) / 2)
