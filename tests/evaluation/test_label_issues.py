"""Possible label errors through cleanlab, in the calling process."""

import numpy as np

from carnet_core.evaluation.label_issues import find_label_issues


def test_cleanlab_runs_without_forking_a_pool(monkeypatch):
    """cleanlab forks a multiprocessing pool when n_jobs > 1; forked from the app's threaded server, a child can hang
    forever. The call must ask for one job, and a photo labelled against a confident prediction is found."""
    import cleanlab.filter

    asked = []
    real = cleanlab.filter.find_label_issues

    def spy(*args, **kwargs):
        asked.append(kwargs.get("n_jobs"))
        return real(*args, **kwargs)

    monkeypatch.setattr(cleanlab.filter, "find_label_issues", spy)
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 10)
    probs = np.full((30, 3), 0.05) + np.eye(3)[labels] * 0.9 + rng.uniform(0, 0.01, (30, 3))
    labels[4] = 2  # clearly class 0 by the model, labelled 2
    issues = find_label_issues(probs, labels, [f"p{i}.jpg" for i in range(30)], ["a", "b", "c"])
    assert asked == [1]
    assert issues and issues[0]["path"] == "p4.jpg" and issues[0]["predicted"] == "a"
