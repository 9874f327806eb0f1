"""Possible label errors of a labelled dataset: the images whose given label the model finds least likely, by
confident learning (Northcutt, Jiang & Chuang 2021, "Confident Learning: Estimating Uncertainty in Dataset Labels",
JAIR 70) through cleanlab's ``find_label_issues`` — the authors' own library (300 KB; it needs only NumPy,
scikit-learn and pandas, which CarNet already has)."""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np


def find_label_issues(probs: Any, labels: Any, names: Sequence[str],
                      class_names: Sequence[str], max_issues: int = 200) -> list[dict]:
    """The images confident learning flags as probably mislabelled, the least likely given label first.

    Args:
        probs: (N, C) out-of-sample probabilities (images the model did not train on), rows summing to 1.
        labels: (N,) given label indices.
        names: the N images' paths or names.
        class_names: the C class names.
        max_issues: at most this many are returned.

    Returns:
        One dict per flagged image: ``path``, ``label`` (given), ``predicted`` (the model's top-1),
        ``label_probability`` (the model's probability of the given label, in [0, 1]) and ``confidence`` (of the
        prediction), ranked by cleanlab's self-confidence (lowest probability of the given label first). Empty with
        fewer than 2 images or classes.
    """
    # lazy: cleanlab, only where an evaluation is made
    from cleanlab.filter import find_label_issues as cleanlab_find

    p, y = np.asarray(probs, np.float64), np.asarray(labels)
    if len(y) < 2 or p.shape[1] < 2:
        return []
    p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
    with warnings.catch_warnings():  # "too few examples in class k": a small val split, said by the page instead
        warnings.simplefilter("ignore")
        # n_jobs=1: with more, cleanlab forks a multiprocessing pool (fork on Linux) from this process — in the app a
        # server full of threads (Streamlit's, torch's, ONNX Runtime's). That hung Evaluate in the browser test about
        # once in a dozen runs: the page's script waited forever in the pool's terminate() for a forked worker that sat
        # blocked on the pool's queue lock (stacks taken with py-spy). A split of a few thousand photos gains nothing
        # from the pool anyway.
        ranked = cleanlab_find(y, p, return_indices_ranked_by="self_confidence", n_jobs=1)
    predicted = p.argmax(1)
    return [{"path": names[i], "label": class_names[int(y[i])], "predicted": class_names[int(predicted[i])],
             "label_probability": float(p[i, y[i]]), "confidence": float(p[i, predicted[i]])}
            for i in ranked[:max_issues]]
