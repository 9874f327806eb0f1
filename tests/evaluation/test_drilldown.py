"""From the numbers to the photos: confusion cells, per-class precision / recall / precision–recall curves, and the
possible label errors of confident learning, on generated outcomes whose answers are known."""

import numpy as np
import pytest
import torch

from carnet_core.evaluation.evaluate import report_from_dict, report_from_probabilities

NAMES = ["bus", "car", "van"]


def _outcomes():
    """30 images, 10 per class. Known outcomes: car_0..car_3 predicted as van (confidence 0.6, 0.7, 0.8, 0.9),
    van_0 predicted as car (0.95); bus_0 and bus_1 are labelled bus but the model is sure they are cars (0.99, 0.98):
    planted label errors. Everything else right at 0.8."""
    paths, labels, rows = [], [], []
    for c, name in enumerate(NAMES):
        for i in range(10):
            p = np.full(3, 0.1)
            p[c] = 0.8
            if name == "car" and i < 4:
                p = np.array([0.0, 0.0, 0.6 + 0.1 * i])
                p[1] = 1 - p[2]
            elif name == "van" and i == 0:
                p = np.array([0.0, 0.95, 0.05])
            elif name == "bus" and i < 2:
                p = np.array([0.005 + 0.01 * i, 0.99 - 0.01 * i, 0.005])
            paths.append(f"{name}_{i}.jpg")
            labels.append(c)
            rows.append(p / p.sum())
    return torch.tensor(np.array(rows), dtype=torch.float32), torch.tensor(labels), paths


@pytest.fixture(scope="module")
def report():
    probs, labels, paths = _outcomes()
    return report_from_probabilities(probs, labels, paths, NAMES)


def test_a_confusion_cell_holds_exactly_its_photos(report):
    cell = report.photos("car", "van")
    assert [p["path"] for p in cell] == ["car_3.jpg", "car_2.jpg", "car_1.jpg", "car_0.jpg"]  # confidently wrong first
    assert [p["path"] for p in report.photos("car", "van", most_confident_first=False)][0] == "car_0.jpg"
    assert len(report.photos("car", "car")) == 6 and len(report.photos("car")) == 10  # the diagonal cell; the row
    assert {p["path"] for p in report.photos(predicted="car")} == {f"car_{i}.jpg" for i in range(4, 10)} | {
        "van_0.jpg", "bus_0.jpg", "bus_1.jpg"}  # the column
    assert len(report.photos("car", which="right")) == 6 and len(report.photos("car", which="wrong")) == 4
    assert report.mistakes("car") == report.photos("car", which="wrong")
    assert report.cells()[:3] == [("car", "van", 4), ("bus", "car", 2), ("van", "car", 1)]  # mistakes, largest first
    assert sum(n for *_, n in report.cells()) == 30
    c = np.array(report.confusion)
    for true, predicted, n in report.cells():
        assert len(report.photos(true, predicted)) == n == c[NAMES.index(true), NAMES.index(predicted)]
    [van_0] = report.photos("van", "car")
    assert [name for name, _ in van_0["top3"]] == ["car", "van", "bus"] and van_0["top3"][0][1] == pytest.approx(0.95)
    with pytest.raises(ValueError, match="which"):
        report.photos(which="mistakes")


def test_precision_recall_and_curves_are_scikit_learns(report):
    from sklearn.metrics import average_precision_score, precision_recall_curve

    probs, labels, _ = _outcomes()
    scores = report.class_scores()
    assert scores["car"]["recall"] == pytest.approx(0.6) and scores["car"]["precision"] == pytest.approx(6 / 9)
    assert scores["van"]["precision"] == pytest.approx(9 / 13) and scores["bus"]["precision"] == 1.0
    for i, name in enumerate(NAMES):
        precision, recall, _ = precision_recall_curve(labels.numpy() == i, probs[:, i].numpy())
        curve = report.pr_curves[name]
        assert curve["precision"] == pytest.approx(list(precision)) and curve["recall"] == pytest.approx(list(recall))
        assert curve["average_precision"] == pytest.approx(average_precision_score(labels.numpy() == i, probs[:, i]))


def test_many_points_are_thinned_and_a_class_without_images_has_no_curve():
    from carnet_core.evaluation.metrics import pr_curves

    rng = np.random.default_rng(0)
    probs = torch.tensor(rng.dirichlet(np.ones(3), 2000), dtype=torch.float32)
    curves = pr_curves(probs, torch.tensor(rng.integers(0, 2, 2000)), ["a", "b", "never"])
    assert set(curves) == {"a", "b"} and 50 < len(curves["a"]["precision"]) <= 101
    assert curves["a"]["recall"][0] == 1.0 and curves["a"]["recall"][-1] == 0.0  # both ends kept


def test_planted_label_errors_are_found_least_likely_label_first(report):
    issues = report.label_issues
    assert [i["path"] for i in issues[:2]] == ["bus_0.jpg", "bus_1.jpg"]
    assert issues[0]["label"] == "bus" and issues[0]["predicted"] == "car"
    assert issues[0]["label_probability"] == pytest.approx(0.005, abs=1e-3)
    probabilities = [i["label_probability"] for i in issues]
    assert probabilities == sorted(probabilities)
    assert not any(i["path"].startswith(("car_4", "van_5")) for i in issues)  # right, and sure of it


def test_the_new_views_survive_the_json_round_trip(report):
    import json

    back = report_from_dict(json.loads(json.dumps(report.to_dict(), allow_nan=False)))
    assert back.photos("car", "van") == report.photos("car", "van")
    assert back.pr_curves == report.pr_curves and back.label_issues == report.label_issues


def test_every_non_empty_cell_of_the_heatmap_can_be_clicked(report):
    """plotly.js fires no click on a heatmap cell in select mode; the invisible marker on each non-empty cell does,
    and carries the cell the page opens."""
    from carnet_core.charts import confusion_heatmap_figure, pr_curve_figure

    fig = confusion_heatmap_figure(report.confusion, report.class_names)
    heat, markers = fig.data
    assert heat.hoverinfo == "skip" and markers.marker.color == "rgba(0,0,0,0)"
    assert sorted((t, p, n) for t, p, n, *_ in markers.customdata) == sorted(report.cells())
    assert [text for *_, text in markers.customdata].count("1 image — click to see it") == 1  # van → car
    assert list(markers.x) == [p for _, p, *_ in markers.customdata]
    assert list(markers.y) == [t for t, *_ in markers.customdata]
    curves = pr_curve_figure(report.pr_curves, ["car", "nope"])
    assert len(curves.data) == 1 and curves.data[0].name.startswith("car (AP ")
