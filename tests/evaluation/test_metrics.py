"""Evaluation metrics on known outcomes."""


import pytest
import torch

from carnet_core.evaluation.metrics import metrics_from_probabilities


def test_metrics_on_a_known_confusion_pattern():
    names = ["Audi A4 2010", "Audi A4 2011", "BMW X5 2012"]
    hierarchy = {"Audi A4 2010": {"make": "Audi", "model": "Audi A4", "year": "Audi A4 2010"},
                 "Audi A4 2011": {"make": "Audi", "model": "Audi A4", "year": "Audi A4 2011"},
                 "BMW X5 2012": {"make": "BMW", "model": "BMW X5", "year": "BMW X5 2012"}}
    # 4 images: A4-2010 right (p 0.9), A4-2010 → A4-2011 (p 0.6), A4-2011 right (p 0.6), X5 → A4-2010 (p 0.9)
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.2, 0.6, 0.2], [0.9, 0.05, 0.05]])
    labels = torch.tensor([0, 0, 1, 2])
    m = metrics_from_probabilities(probs, labels, names, hierarchy)
    assert m["top1"] == 0.5 and m["confusion"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert m["per_class"]["Audi A4 2010"]["accuracy"] == 0.5 and m["per_class"]["BMW X5 2012"]["accuracy"] == 0.0
    assert m["hierarchy"] == {"make": 0.75, "model": 0.75, "year": 0.5}
    # two bins: conf 0.6 (acc 0.5) and conf 0.9 (acc 0.5): ECE = 0.5·0.1 + 0.5·0.4
    assert m["ece"] == pytest.approx(0.25)
    assert m["top5"] == 1.0


def test_topk_hits_and_accuracy_on_known_scores():
    from carnet_core.evaluation.metrics import topk_accuracy, topk_hits

    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_hits(scores, labels, 1).tolist() == [True, False, False]
    assert topk_hits(scores, labels, 2).tolist() == [True, False, False]
    assert topk_hits(scores, labels, 5).tolist() == [True, True, True]  # k over the class count: every label
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores[:0], labels[:0], 1) == 0.0
