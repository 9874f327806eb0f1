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
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

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


def _weights(num_members: int, weights: Sequence[float] | None) -> torch.Tensor:
    if weights is None:
        return torch.full((num_members,), 1.0 / num_members)
    w = torch.tensor([float(x) for x in weights])
    if len(w) != num_members:
        raise CarNetError(f"{len(w)} weight{'s' * (len(w) != 1)} for {num_members} members")
    if not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:  # NaN or inf made every vote NaN, silently
        raise CarNetError(f"ensemble weights must be finite, >= 0 and not all zero, got {list(weights)}")
    return w / w.sum()


def combine(member_probs: torch.Tensor, rule: str = "soft", weights: Sequence[float] | None = None) -> torch.Tensor:
    """Combine members' probabilities.

    Args:
        member_probs: (M, N, C) probabilities of M members for N images over C classes.
        rule: one of :data:`RULES`.
        weights: M non-negative member weights (normalised here); default equal.

    Returns:
        (N, C) combined probabilities (rows sum to 1).

    Raises:
        CarNetError: unknown rule or bad weights.
    """
    if rule not in RULES:
        raise CarNetError(f"unknown ensemble rule {rule!r}; choose one of {', '.join(RULES)}")
    m, n, c = member_probs.shape
    w = _weights(m, weights).to(member_probs.dtype).view(m, 1, 1)
    soft = (w * member_probs).sum(0)
    if rule == "soft":
        return soft
    if rule == "geometric":
        logp = (w * member_probs.clamp_min(_EPS).log()).sum(0)
        return torch.softmax(logp, dim=1)
    votes = torch.zeros(n, c, dtype=member_probs.dtype)
    votes.scatter_add_(1, member_probs.argmax(2).T, w.view(1, m).expand(n, m).contiguous())
    return votes + 1e-6 * soft  # ties broken by the soft vote; shares still sum to ~1


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


def member_probabilities(models: Sequence[Classifier], images: Sequence[Image.Image]
                         ) -> tuple[torch.Tensor, list[float]]:
    """(M, N, C) probabilities of each member on the same images (RGB PIL images), re-indexed to the first member's
    class order, and each member's model time in ms (as :func:`carnet_core.inference.predict` times it: not its engine choice)."""
    names = aligned_class_names(models)
    out, times = [], []
    for model in models:
        probs, _, model_ms = timed_probabilities(model, images)
        times.append(model_ms)
        if model.class_names != names:
            order = [model.class_names.index(c) for c in names]
            probs = probs[:, order]
        out.append(probs)
    return torch.stack(out), times


def member_predictions(models: Sequence[Classifier], image: Image.Image,
                       topk: int = 5) -> tuple[list[Prediction], list[float], torch.Tensor | None]:
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
        js_divergence: Jensen–Shannon divergence in bits, 0 (identical) to 1 (disjoint) (scipy).
    """
    same_top1: bool
    top5_overlap: int
    js_divergence: float


def agreement(p: torch.Tensor | np.ndarray, q: torch.Tensor | np.ndarray) -> Agreement:
    """Compare two probability vectors (C,) over the same classes."""
    from scipy.spatial.distance import jensenshannon  # lazy: SciPy, only for this measure

    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    top_p, top_q = set(np.argsort(-p)[:5].tolist()), set(np.argsort(-q)[:5].tolist())
    return Agreement(bool(p.argmax() == q.argmax()), len(top_p & top_q), float(jensenshannon(p, q, base=2) ** 2))
