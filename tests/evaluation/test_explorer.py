"""Model explorer: model cards (counted numbers, layer table, measured cost), evaluation views, the Models and
Evaluate pages, and CLI parity on real photos."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, MOBILENET_TIMM, ROOT, SHARED, need, photo_count
from PIL import Image
from streamlit.testing.v1 import AppTest

from carnet_core import load_model
from carnet_core.charts import confusion_heatmap_figure, reliability_figure, runs_overlay_figure, training_curves_figure
from carnet_core.data.readers import open_dataset
from carnet_core.evaluation.cards import cached_cost, count_macs, model_card, table_row
from carnet_core.evaluation.evaluate import evaluate, evaluate_cached, per_class_rows, report_from_dict
from carnet_core.evaluation.metrics import confusion_order, metrics_from_probabilities
from carnet_core.inference.export import fingerprint
from carnet_core.models.checkpoints import read_metadata
from carnet_core.models.refs import ModelRef
from carnet_core.training.config import TrainConfig
from carnet_core.training.trainer import fine_tune

TIMEOUT = 300


# --- cards ---------------------------------------------------------------------------------------------------------

def test_resnet50_card_matches_the_published_numbers():
    model = load_model("resnet50", weights="random", device="cpu")
    card = model_card("resnet50", model)
    assert card.params == 25_557_032
    assert card.gmacs == pytest.approx(4.1, rel=0.03)  # He et al. 2016 / timm: ~4.1 GMACs at 224 px
    layers = {r.name: r for r in card.layers}
    assert layers["conv1"].output_shape == (1, 64, 112, 112)
    assert layers["layer4"].output_shape == (1, 2048, 7, 7) and layers["fc"].output_shape == (1, 1000)
    assert sum(r.params for r in card.layers) == card.params
    assert card.input_px == 224 and card.provenance.startswith("RANDOM")


def test_macs_scale_with_input_size(lite0):
    full = count_macs(lite0.module, (3, 224, 224))
    large = count_macs(lite0.module, (3, 448, 448))
    assert large / full == pytest.approx(4.0, rel=0.05)  # convolutions scale with the pixel count
    assert full / 1e9 == pytest.approx(0.385, rel=0.05)  # EfficientNet-Lite0: 0.39 GFLOPs(MACs) in its paper table


# --- evaluation views on a known confusion pattern ----------------------------------------------------------------

def _known_pattern():
    """6 classes, 20 images each; class 1 is predicted as 4 half of the time, class 2 as 5 a quarter of the time,
    everything else right. Confidence 0.9 on every prediction."""
    names = ["a", "b", "c", "d", "e", "f"]
    labels, preds = [], []
    for c in range(6):
        for i in range(20):
            labels.append(c)
            preds.append(4 if (c == 1 and i < 10) else 5 if (c == 2 and i < 5) else c)
    probs = torch.full((120, 6), 0.02)
    probs[torch.arange(120), torch.tensor(preds)] = 0.9
    return names, probs, torch.tensor(labels)


def test_views_from_a_known_confusion_pattern():
    names, probs, labels = _known_pattern()
    m = metrics_from_probabilities(probs, labels, names)
    assert m["top1"] == pytest.approx(105 / 120)
    c = np.array(m["confusion"])
    assert c[1, 4] == 10 and c[2, 5] == 5 and c.trace() == 105
    from carnet_core.evaluation.evaluate import EvalReport

    report = EvalReport(names, 120, m["top1"], m["top5"], m["per_class"], m["confusion"], m["ece"], m["reliability"])
    assert report.most_confused(2) == [("b", "e", 10), ("c", "f", 5)]
    rows = per_class_rows(report)
    assert [r["class"] for r in rows[:2]] == ["b", "c"] and rows[0]["recall"] == 0.5
    assert rows[0]["most often predicted instead"] == "e" and rows[0]["times"] == 10
    # precision and F1 beside each class's accuracy (= recall), and macro F1: scikit-learn's numbers
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    y, p = labels.numpy(), probs.argmax(1).numpy()
    precision, recall, f1, _ = precision_recall_fscore_support(y, p, labels=range(6), zero_division=0)
    scores = report.class_scores()
    assert [scores[n]["precision"] for n in names] == pytest.approx(precision)
    assert [scores[n]["recall"] for n in names] == pytest.approx(recall)
    assert [scores[n]["f1"] for n in names] == pytest.approx(f1)
    assert rows[0]["precision"] == 1.0 and rows[0]["F1"] == pytest.approx(2 / 3)  # b: half its images, all correct
    assert report.macro_f1 == pytest.approx(f1_score(y, p, average="macro")) and report.macro_f1 < report.top1
    assert report.to_dict()["macro_f1"] == report.macro_f1
    never = EvalReport(["x", "y"], 2, 0.5, 1.0, {"x": {"accuracy": 0.5, "count": 2}, "y": {"accuracy": math.nan,
                       "count": 0}}, [[1, 1], [0, 0]], 0.0, [])  # y: never true, predicted once
    assert math.isnan(never.class_scores()["y"]["recall"]) and never.class_scores()["y"]["f1"] == 0.0
    assert never.macro_f1 == pytest.approx(f1_score([0, 0], [0, 1], average="macro", zero_division=0))
    # undefined numbers are null in JSON (it wrote a bare NaN, which jq and browsers refuse), NaN again when read back
    text = json.dumps(never.to_dict(), allow_nan=False)
    assert json.loads(text)["class_scores"]["y"]["recall"] is None and json.loads(text)["per_class"]["y"]["accuracy"] is None
    from carnet_core.evaluation.evaluate import report_from_dict

    back = report_from_dict(json.loads(text))
    assert math.isnan(back.per_class["y"]["accuracy"]) and [r["class"] for r in per_class_rows(back)] == ["x", "y"]
    order = confusion_order(m["confusion"])
    assert sorted(order) == list(range(6))
    assert abs(order.index(1) - order.index(4)) == 1 and abs(order.index(2) - order.index(5)) == 1
    # calibration: every prediction says 0.9, 87.5 % are right -> ECE 0.025, one bin
    assert m["ece"] == pytest.approx(0.9 - 105 / 120, abs=1e-6)
    assert len(m["reliability"]) == 1 and m["reliability"][0]["count"] == 120
    heat = confusion_heatmap_figure(m["confusion"], names, order).data[0]
    assert list(heat.y) == [names[i] for i in order] and np.allclose(np.array(heat.z).sum(1), 100)
    assert reliability_figure(m["reliability"], m["ece"]).layout.title.text.endswith("2.5 %")


def test_196_class_heatmap_stays_readable():
    rng = np.random.default_rng(0)
    c = np.diag(rng.integers(5, 10, 196)) + (rng.random((196, 196)) < 0.01)
    fig = confusion_heatmap_figure(c.tolist(), [f"class {i}" for i in range(196)], confusion_order(c.tolist()))
    assert fig.layout.xaxis.showticklabels is False and fig.layout.height <= 900


@pytest.fixture(scope="module")
def colour_checkpoint(colour_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("colour_jobs") / "run"  # its parent is a jobs folder holding only this run
    result = fine_tune(TrainConfig(data=str(colour_folder), out=str(out), epochs=2, **FAST))
    return result.best_checkpoint


def test_evaluation_is_cached_and_invalidated(colour_checkpoint, colour_folder, tmp_path):
    model = load_model(checkpoint=colour_checkpoint, device="cpu")
    data = tmp_path / "colours"
    shutil.copytree(colour_folder, data)
    val = open_dataset(data).val
    first, cached = evaluate_cached(model, val, cache_dir=tmp_path / "cache")
    assert not cached and first.num_images == 18
    again, cached = evaluate_cached(model, val, cache_dir=tmp_path / "cache")
    assert cached and again.to_dict() == first.to_dict()
    assert report_from_dict(json.loads(json.dumps(first.to_dict()))).to_dict() == first.to_dict()
    victim = val.items[0][0]
    from PIL import Image

    Image.new("RGB", (48, 48), (0, 0, 0)).save(victim)  # the dataset changed: measured again
    _, cached = evaluate_cached(model, open_dataset(data).val, cache_dir=tmp_path / "cache")
    assert not cached
    blocker = tmp_path / "a-file"  # a cache that cannot be written: the report is still returned, nothing lost
    blocker.write_text("")
    report, cached = evaluate_cached(model, val, cache_dir=blocker / "cache")
    assert not cached and report.num_images == 18


def test_a_new_or_replaced_checkpoint_is_in_the_pickers_at_once(colour_checkpoint, tmp_path, monkeypatch):
    """The pickers' checkpoint list used to be cached for 3 s: a fine-tune that had just finished could be missing from
    Classify (seen in CI), or a replaced best checkpoint listed under its deleted name."""
    import ui

    jobs = tmp_path / "jobs"
    monkeypatch.setenv("CARNET_JOBS_DIR", str(jobs))
    (jobs / "run1").mkdir(parents=True)
    assert ui.fine_tuned() == {}
    first = jobs / "run1" / "best-e001-top1-90.0.safetensors"
    shutil.copy(colour_checkpoint, first)
    assert [e.path for e in ui.fine_tuned().values()] == [first]
    better = first.rename(first.with_name("best-e002-top1-95.0.safetensors"))  # a better epoch replaces it
    assert [e.path for e in ui.fine_tuned().values()] == [better]
    assert ui.model_title(ModelRef.of_checkpoint(better).key).startswith("★ ")


@pytest.mark.slow
def test_pickers_read_the_checkpoint_list_once_per_rerun_not_once_per_option(colour_checkpoint, tmp_path, monkeypatch):
    """The Evaluate, Compare and Models pickers labelled each checkpoint option by listing the jobs folder again: with
    hundreds of runs, hundreds of folder walks per rerun. The number of walks must not grow with the runs."""
    import ui

    jobs = tmp_path / "jobs"
    monkeypatch.setenv("CARNET_JOBS_DIR", str(jobs))
    walks = []
    listing = ui.models._checkpoint_files
    monkeypatch.setattr(ui.models, "_checkpoint_files", lambda folders: walks.append(1) or listing(folders))

    def walks_per_rerun(runs: int) -> dict[str, int]:
        for i in range(runs):
            (jobs / f"run{i}").mkdir(parents=True, exist_ok=True)
            shutil.copy(colour_checkpoint, jobs / f"run{i}" / f"best-e001-top1-{50 + i}.0.safetensors")
        counts = {}
        for page in ("6_Evaluate.py", "3_Compare.py", "5_Models.py"):
            walks.clear()
            at = AppTest.from_file(str(ROOT / "app_pages" / page), default_timeout=TIMEOUT).run()
            assert not at.exception, at.exception
            counts[page] = len(walks)
        return counts

    assert walks_per_rerun(1) == walks_per_rerun(12)  # 2 per page here; 4 → 26 on Compare with the old labels
    assert ui.model_titles()(ui_key(jobs / "run3" / "best-e001-top1-53.0.safetensors")).startswith("★ ")


@pytest.mark.shared
def test_a_weights_file_put_in_the_folder_counts_at_the_next_rerun(tmp_path, monkeypatch):
    """The page says where to put a weights file; the status used to stay "no weights" for up to a minute after."""
    import ui

    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(folder))
    available, message = ui.weights_status("mobilenetv2_100")
    assert not available and str(folder) in message
    (folder / "mobilenetv2_100.pth").symlink_to(need(MOBILENET_TIMM))
    available, provenance = ui.weights_status("mobilenetv2_100")
    assert available and "mobilenetv2_100.pth" in provenance


# --- pages ----------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_models_page_cards_and_measurement(colour_checkpoint, monkeypatch):
    monkeypatch.setenv("CARNET_JOBS_DIR", str(colour_checkpoint.parent.parent))
    at = AppTest.from_file(str(ROOT / "app_pages" / "5_Models.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    # what a model is chosen by comes first (a projector at 150 % showed only the descriptive columns); none is lost
    columns = list(at.dataframe[0].value.columns)
    assert columns[:5] == ["model", "params (M)", "GMACs", "latency (ms)", "vehicle at top-1 on car photos (%)"]
    card = {"arch": "resnet50", "head": "linear", "label_set": "imagenet-1k", "class_names": ["a"], "params": 1,
            "gmacs": 1.0, "input_px": 224, "file_mb": None, "top1": None, "has_weights": False, "provenance": ""}
    assert set(columns) == set(table_row("resnet50", "resnet50", card, None)) - {"key"}
    table = at.dataframe[0].value.set_index("architecture")
    assert table.loc["resnet50", "params (M)"] == 25.56 and table.loc["resnet50", "GMACs"] == pytest.approx(4.09, abs=0.01)
    assert table.loc["resnet50", "weights"] == "no weights here"
    assert pd.isna(table.loc["resnet50", "file (MB)"]) and at.dataframe[0].proto.placeholder == "–"  # not "None"
    starred = [o for o in at.selectbox(key="models_pick").options if o.startswith("★")]
    assert len(starred) == 1
    at.selectbox(key="models_pick").set_value("efficientnet_lite0").run()
    assert [x.value for x in at.metric][:2] == ["4.65 M", "0.39"]
    assert at.metric[3].value == "–"  # not measured yet on this machine
    at.button(key="models_measure").click().run()
    assert not at.exception, at.exception
    latency = at.metric[3].value
    assert latency.endswith(" ms") and 0 < float(latency.split()[0]) < 2000
    assert at.get("plotly_chart")  # the scatter appears once something is measured
    # measured in a fresh process, cached per machine and weights fingerprint
    lite0 = load_model("efficientnet_lite0", device="cpu")
    cost = cached_cost("efficientnet_lite0", fingerprint(lite0))
    assert f"{cost['latency_ms']:.1f} ms" == latency and 100 < cost["peak_memory_mb"] < 8000
    assert cached_cost("efficientnet_lite0", "other weights") is None
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download as ONNX (.zip)"]  # a registered model: no checkpoint file of its own
    # a model without weights here is measured too, on random weights (it had no latency: nothing to compare it by)
    at.selectbox(key="models_pick").set_value("efficientnet_b0").run()
    assert at.button(key="models_measure").proto.label == "Measure latency and memory (on random weights)"
    at.button(key="models_measure").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.metric[3].value.endswith(" ms") and any("measured on random weights" in c.value for c in at.caption)
    table = at.dataframe[0].value.set_index("architecture")
    assert table.loc["efficientnet_b0", "weights"] == "no weights here"
    assert float(at.metric[3].value.split()[0]) == table.loc["efficientnet_b0", "latency (ms)"]
    from carnet_core.config import cache_dir

    exports = lambda: set((cache_dir() / "onnx").glob("efficientnet_b0-*.onnx"))  # noqa: E731 (other tests' too)
    before = exports()
    at.button(key="models_measure").click().run()  # again: the same random weights, so the same ONNX export
    assert not at.exception and before and exports() == before
    assert not at.get("download_button")  # nothing to deploy without weights
    at.selectbox(key="models_pick").set_value(f"checkpoint:{colour_checkpoint}").run()
    assert not at.exception
    assert [b.proto.label for b in at.get("download_button")] == ["Download as ONNX (.zip)",
                                                                   "Download the checkpoint (.safetensors)"]
    [trained] = [m.value for m in at.markdown if m.value.startswith("Dataset `")]
    assert "validation top-1 **" in trained and "top-5" not in trained  # 3 classes: 100 % by construction


def test_evaluate_page_on_generated_data_with_a_fine_tuned_checkpoint(colour_checkpoint, colour_folder, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("CARNET_JOBS_DIR", str(colour_checkpoint.parent.parent))
    monkeypatch.setenv("CARNET_DATA_ROOT", str(tmp_path))
    shutil.copytree(colour_folder, tmp_path / "colours")
    at = AppTest.from_file(str(ROOT / "app_pages" / "6_Evaluate.py"), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    box = at.selectbox(key="evaluate_model")
    starred = [o for o in box.options if o.startswith("★")]
    assert len(starred) == 1 and "3 classes" in starred[0]
    box.select_index(box.options.index(starred[0])).run()
    at.button(key="evaluate_run").click().run()
    assert not at.exception, at.exception
    expected = evaluate(load_model(checkpoint=colour_checkpoint, device="cpu"), open_dataset(colour_folder).part("all"))
    assert at.metric[0].value == f"{expected.top1 * 100:.1f}%" and at.metric[4].value == "72"  # no split: all
    assert "Scored 72 of the 72 images found (all of them)." in [c.value for c in at.caption]
    assert at.metric[2].label == "macro F1" and at.metric[2].value == f"{expected.macro_f1 * 100:.1f}%"
    assert at.metric[1].label == "top-5" and at.metric[1].value == "—"  # 3 classes: it read 100.0 %, always
    charts = [json.loads(c.proto.spec)["data"][0]["type"] for c in at.get("plotly_chart")]
    assert "heatmap" in charts and "bar" in charts
    assert len(at.dataframe[0].value) == 3  # per-class table, one row per class
    assert list(at.dataframe[0].value.columns)[:6] == ["class", "precision (%)", "recall (%)", "F1 (%)", "AP (%)",
                                                       "images"]
    # a row of the per-class table opens that class's photos (a browser's row click sets this state)
    worst = at.dataframe[0].value.iloc[0]["class"]
    at.session_state["evaluate_class_table"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    shown = [c.value for c in at.tabs[0].caption if c.value.startswith(("**", "✓ **"))]
    assert not at.exception and len(shown) == 24 and all(f"**{worst}** → " in c for c in shown)
    at.radio(key="evaluate_class_which").set_value("wrong").run()
    wrong = [p for p in expected.predictions if p["label"] == worst and p["predicted"] != worst]
    assert any(c.value.startswith(f"{len(wrong)} photo") for c in at.tabs[0].caption)
    # the embedding map: its dots, and a photo's most similar photos (from the cache of features after the first)
    at.radio(key="evaluate_map_method").set_value("tsne").run()
    at.button(key="evaluate_map_run").click().run()
    assert not at.exception, at.exception
    dots = [json.loads(c.proto.spec)["data"] for c in at.get("plotly_chart")
            if json.loads(c.proto.spec)["data"][0]["type"] == "scattergl"]
    assert len(dots) == 1 and sum(len(trace["text"]) for trace in dots[0]) == 72  # x, y are base64 arrays
    assert sorted(trace["name"] for trace in dots[0]) == ["blue", "green", "red"]
    at.radio(key="evaluate_map_colour").set_value("right or wrong").run()
    at.selectbox(key="evaluate_map_photo").set_value(0).run()
    map_tab = at.tabs[4]
    alike = [c.value for c in map_tab.caption if "\ncosine similarity" in c.value]
    assert not at.exception and len(alike) == 6
    assert [float(c.rsplit(" ", 1)[1]) for c in alike] == sorted((float(c.rsplit(" ", 1)[1]) for c in alike),
                                                                  reverse=True)


def test_a_checkpoint_that_cannot_be_loaded_is_a_message_on_every_page(colour_checkpoint, colour_folder, tmp_path,
                                                                        monkeypatch):
    """A listed checkpoint whose tensors do not fit its architecture: Evaluate and Compare say so and stop (they used
    to show a traceback), and Models leaves it out with a warning (the page used to fail for every visitor)."""
    from carnet_core.models.checkpoints import read_metadata, read_state_dict, save_checkpoint

    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("CARNET_DATA_ROOT", str(tmp_path / "data"))
    shutil.copytree(colour_folder, tmp_path / "data" / "colours")
    meta = {**read_metadata(colour_checkpoint), "arch": "mobilenetv2_100", "name": "misfit"}
    save_checkpoint(weights / "misfit.safetensors", read_state_dict(colour_checkpoint), meta)

    def page(name):
        return AppTest.from_file(str(ROOT / "app_pages" / name), default_timeout=TIMEOUT).run()

    at = page("6_Evaluate.py")
    box = at.selectbox(key="evaluate_model")
    box.select_index([i for i, o in enumerate(box.options) if "misfit" in o][0]).run()
    assert not at.exception and any("Cannot load ★ misfit" in e.value for e in at.error), [e.value for e in at.error]

    at = page("3_Compare.py")
    at.multiselect(key="compare_models").set_value(["efficientnet_lite0", ui_key(weights / "misfit.safetensors")]).run()
    assert not at.exception and any("Cannot load ★ misfit" in e.value for e in at.error)

    at = page("5_Models.py")
    assert not at.exception, at.exception
    assert any(w.value.startswith("Left out — ★ misfit") for w in at.warning)
    assert at.dataframe and "efficientnet_lite0" in set(at.dataframe[0].value["model"])


def ui_key(path):

    return ModelRef.of_checkpoint(path).key


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.subprocess
def test_evaluate_page_shows_the_cli_numbers_on_real_photos(tmp_path, monkeypatch):
    """EfficientNet-Lite0 (bundled ImageNet weights) on the 785 real tiny_vehicles_6 val crops, scored through
    mappings/tiny_vehicles_6_to_imagenet.json: the page and `python -m carnet_core evaluate` agree."""
    import subprocess
    import sys

    data = need(SHARED / "data" / "tiny_vehicles_6")
    cli = subprocess.run([sys.executable, "-m", "carnet_core", "evaluate", "efficientnet_lite0", str(data),
                          "--mapping", str(ROOT / "mappings" / "tiny_vehicles_6_to_imagenet.json"), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-2000:]
    numbers = json.loads(cli.stdout)
    assert numbers["num_images"] == photo_count(data / "val") and 0.3 < numbers["top1"] < 0.6  # zero-shot (README)

    monkeypatch.setenv("CARNET_DATA_ROOT", str(data.parent))
    at = AppTest.from_file(str(ROOT / "app_pages" / "6_Evaluate.py"), default_timeout=TIMEOUT).run()
    folders = at.selectbox(key="evaluate_folder")
    # the first dataset the model can be scored on: it started at stanford_cars_40, for which no mapping exists
    assert folders.options == ["stanford_cars_40", "tiny_vehicles_6"]
    assert folders.value.name == "tiny_vehicles_6"
    folders.select_index(0).run()
    assert any("No mapping file for stanford_cars_40" in w.value for w in at.warning)
    folders.select_index(folders.options.index("tiny_vehicles_6")).run()
    assert at.selectbox(key="evaluate_mapping_tiny_vehicles_6").value.name == "tiny_vehicles_6_to_imagenet.json"
    assert any("has its own classes (bike, car, juggernaut, minibus, pickup, truck), not efficientnet_lite0's"
               in i.value for i in at.info)  # all six, without the "…" of more that it added
    at.button(key="evaluate_run").click().run()
    assert not at.exception, at.exception
    shown = [m.value for m in at.metric]
    assert shown == [f"{numbers['top1'] * 100:.1f}%", f"{numbers['top5'] * 100:.1f}%",
                     f"{numbers['macro_f1'] * 100:.1f}%", f"{numbers['ece'] * 100:.1f}%", str(numbers["num_images"])]
    at.button(key="evaluate_wrong_all_all_cam_0").click().run()  # the most confident mistake: what the model saw
    assert not at.exception and not at.error
    assert any("looked at" in m.value for m in at.markdown)
    assert any(c.startswith("Grad-CAM for '") for el in at.get("image") for c in el.captions)
    import ui

    decoded, real_load = [], ui.photos.load_image  # a rerun (another widget) shows the mistake without decoding it again
    monkeypatch.setattr(ui.photos, "load_image", lambda data, name=None: decoded.append(name) or real_load(data, name=name))
    at.run()
    assert not at.exception and any("looked at" in m.value for m in at.markdown) and decoded == []
    _, grid, mistake = at.session_state["evaluate_cam"]  # a mistake picked in another evaluation (another model,
    at.session_state["evaluate_cam"] = ("evaluation::another model", grid, mistake)  # split or mapping) is not shown
    at.run()
    assert not at.exception and not any("looked at" in m.value for m in at.markdown)

    # every mistake can be browsed (it showed the 24 most confident), by true and predicted class, either way round
    confusion_tab, mistakes_tab, labels_tab = 1, 2, 3

    def shown(tab=mistakes_tab):
        return [c.value for c in at.tabs[tab].caption if "**" in c.value and " → " in c.value]

    def percent(caption):
        return int(caption.splitlines()[0].strip().rsplit("(", 1)[1].rstrip("%)"))

    wrong = [p for p in numbers["predictions"] if p["label"] != p["predicted"]]
    first_page = shown()
    assert len(first_page) == 24 and any(f"{len(wrong)} photos, mistakes, most confident first; page 1 of "
                                         f"{-(-len(wrong) // 24)}" in c.value for c in at.caption)
    at.number_input(key="evaluate_wrong_all_all_page").set_value(2).run()
    second_page = [percent(c) for c in shown()]
    assert not at.exception and len(second_page) == 24 and second_page == sorted(second_page, reverse=True)
    assert max(second_page) <= min(percent(c) for c in first_page)  # the next 24, in the same order
    at.button(key="evaluate_wrong_all_all_cam_24").click().run()  # the first mistake of page 2
    assert not at.exception and at.session_state["evaluate_cam"][2] == sorted(
        wrong, key=lambda p: p["confidence"], reverse=True)[24]
    at.selectbox(key="evaluate_wrong_class").select("pickup").run()
    at.selectbox(key="evaluate_wrong_predicted").select("car").run()
    pickup_as_car = [p for p in wrong if p["label"] == "pickup" and p["predicted"] == "car"]
    assert not at.exception and all(c.startswith("**pickup** → car (") for c in shown())
    assert len(shown()) == min(24, len(pickup_as_car)) and any(f"{len(pickup_as_car)} photos" in c.value
                                                                for c in at.caption)
    at.radio(key="evaluate_wrong_order").set_value("least confident first").run()
    least = min(p["confidence"] for p in pickup_as_car)
    assert percent(shown()[0]) == round(least * 100)

    # the drill-down: a confusion cell's photos are exactly the CLI's predictions with that label and prediction
    at.selectbox(key="evaluate_wrong_class").select("all").run()
    at.selectbox(key="evaluate_wrong_predicted").select("all").run()
    cell = at.selectbox(key="evaluate_cell")
    assert cell.options[0].startswith(f"{numbers['most_confused'][0]['true']} → {numbers['most_confused'][0]['predicted']}")
    cell.set_value("truck → truck").run()  # a diagonal cell: the right ones
    trucks = [p for p in numbers["predictions"] if p["label"] == p["predicted"] == "truck"]
    captions = shown(confusion_tab)
    assert not at.exception and len(captions) == min(24, len(trucks)) and all(c.startswith("✓ **truck** → truck")
                                                                              for c in captions)
    assert any(f"{len(trucks)} photos, labelled truck, predicted truck" in c.value for c in at.caption)
    assert [percent(c) for c in captions] == [round(p["confidence"] * 100) for p in sorted(
        trucks, key=lambda p: p["confidence"], reverse=True)][:24]
    assert all("\ntop-3: truck " in c for c in captions)
    # the possible label errors: the CLI's, in its order
    issues = numbers["label_issues"]
    label_captions = shown(labels_tab)
    assert issues and len(label_captions) == min(24, len(issues))
    assert [c.split("\nlabel ", 1)[1].split("\n")[0] for c in label_captions[:3]] == [
        f"{i['label']}: {i['label_probability'] * 100:.1f}%" for i in issues[:3]]


def test_cost_cache_keeps_every_entry_when_sessions_write_at_once(tmp_path, monkeypatch):
    """Eight sessions (processes) store measurements at the same moment; none is lost (file lock)."""
    import multiprocessing

    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path))
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_store_many, args=(i,)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for i in range(8):
        for j in range(25):
            assert cached_cost(f"model-{i}-{j}", "fp") == {"latency_ms": float(j)}


def _store_many(i: int) -> None:
    from carnet_core.evaluation.cards import _store_cost

    for j in range(25):
        _store_cost(f"model-{i}-{j}", "fp", {"latency_ms": float(j)})


def test_fine_tune_curves_tick_whole_epochs():
    """The runs overlay put ticks at epoch 1.2, 1.4, … for a 2-epoch run (seen in the browser); both fine-tune charts
    tick whole epochs up to 15, and leave longer runs to plotly."""
    rows = [{"epoch": e, "top1": 0.5, "top5": 0.9, "train_loss": 1.0, "val_loss": 1.0, "lr": 1e-3} for e in (1, 2)]
    assert runs_overlay_figure({"a": rows, "b": rows[:1]}).layout.xaxis.dtick == 1
    assert training_curves_figure(rows).layout.xaxis.dtick == 1
    long = [{**rows[0], "epoch": e} for e in range(1, 31)]
    assert runs_overlay_figure({"a": long}).layout.xaxis.dtick is None


def test_runs_overlay_starts_each_run_at_its_linear_probe():
    """Compared runs: on val top-1 each run with a probe starts at epoch 0 from it (an open diamond, in the line's own
    colour); a run without one, and the other metrics, draw the epochs alone."""
    rows = [{"epoch": e, "top1": t, "top5": 0.9, "train_loss": 1.0, "val_loss": 1.0, "lr": 1e-3}
            for e, t in ((1, 0.62), (2, 0.71))]
    fig = runs_overlay_figure({"a": rows, "b": rows}, "top1", probes={"a": 0.654, "b": None})
    a, b = fig.data
    assert list(a.x) == [0, 1, 2] and list(a.y) == pytest.approx([65.4, 62.0, 71.0])
    assert list(a.marker.symbol) == ["diamond-open", "circle", "circle"] and a.text[0] == "linear probe"
    assert list(b.x) == [1, 2] and fig.layout.xaxis.title.text == "epoch (0: linear probe)"
    loss = runs_overlay_figure({"a": rows}, "val_loss", probes={"a": 0.654})
    assert list(loss.data[0].x) == [1, 2] and loss.layout.xaxis.title.text == "epoch"
    assert runs_overlay_figure({"b": rows}, "top1", probes={"a": 0.654}).layout.xaxis.title.text == "epoch"


def test_fine_tune_curves_show_the_linear_probe_on_the_accuracy_panel():
    """The run's probe is where fine-tuning starts: a dotted line at its top-1 (%), on the accuracy panel only."""
    rows = [{"epoch": e, "top1": t, "top5": 0.9, "train_loss": 1.0, "val_loss": 1.0, "lr": 1e-3}
            for e, t in ((1, 0.65), (2, 0.78))]
    assert not training_curves_figure(rows).layout.shapes
    fig = training_curves_figure(rows, probe_top1=0.741)
    [line] = fig.layout.shapes
    assert (line.y0, line.y1, line.yref, line.line.dash) == (74.1, 74.1, "y2", "dot")  # y2: "val accuracy (%)"
    assert [a.text for a in fig.layout.annotations if a.text.startswith("linear")] == ["linear probe 74.1%"]


def test_pickers_start_at_a_folder_every_model_can_be_measured_on(colour_checkpoint, colour_folder, tmp_path,
                                                                 monkeypatch):
    """A folder with a mapping named after it was taken as measurable even when the mapping meant nothing to a member
    (ImageNet classes, a fine-tune of colours): Compare started there, with Evaluate disabled. It now starts at the
    first folder that every member can be measured on; Evaluate, for the ImageNet model alone, still starts there."""
    monkeypatch.setenv("CARNET_JOBS_DIR", str(colour_checkpoint.parent.parent))
    monkeypatch.setenv("CARNET_DATA_ROOT", str(tmp_path / "data"))
    shutil.copytree(colour_folder, tmp_path / "data" / "colours")
    for cls in ("dusk", "dawn"):  # "ash" comes before "colours"
        (tmp_path / "data" / "ash" / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), "grey").save(tmp_path / "data" / "ash" / cls / "0.png")
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "ash_to_imagenet.json").write_text(json.dumps({"dusk": ["volcano"], "dawn": ["lakeside"]}))
    (tmp_path / "maps" / "colours_to_imagenet.json").write_text(json.dumps({"red": ["fire engine"], "green": [
        "green mamba"], "blue": ["jean"]}))  # for the ImageNet model; the fine-tune has the colours itself
    monkeypatch.setenv("CARNET_MAPPINGS_DIR", str(tmp_path / "maps"))
    at = AppTest.from_file(str(ROOT / "app_pages" / "3_Compare.py"), default_timeout=TIMEOUT)
    at.session_state["compare_models"] = [ui_key(colour_checkpoint), "efficientnet_lite0"]
    at.run()
    assert not at.exception and at.multiselect(key="compare_models").value == [ui_key(colour_checkpoint),
                                                                             "efficientnet_lite0"]
    folders = at.selectbox(key="compare_folder_pick")
    assert folders.options[:2] == ["ash", "colours"] and folders.value.name == "colours"  # options: as shown
    assert not at.button(key="compare_run").disabled
    evaluate = AppTest.from_file(str(ROOT / "app_pages" / "6_Evaluate.py"), default_timeout=TIMEOUT).run()
    assert evaluate.selectbox(key="evaluate_model").value == "efficientnet_lite0"
    assert evaluate.selectbox(key="evaluate_folder").value.name == "ash"  # its mapping fits the ImageNet model


@pytest.mark.slow
def test_compare_page_with_a_fine_tune_beside_an_imagenet_model(colour_checkpoint, colour_folder, tmp_path,
                                                                monkeypatch, capsys):
    """A fine-tune of a folder's classes and an ImageNet model: the page stopped at "different label sets". Now one
    photo shows each model in its own classes (no ensemble), and on the folder each is scored in its classes — the
    ImageNet model through the mapping named after the folder, chosen for it — with the ensembles combining those."""
    monkeypatch.setenv("CARNET_JOBS_DIR", str(colour_checkpoint.parent.parent))
    monkeypatch.setenv("CARNET_DATA_ROOT", str(tmp_path / "data"))
    shutil.copytree(colour_folder, tmp_path / "data" / "colours")
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "colours_to_imagenet.json").write_text(json.dumps({"red": ["fire engine"], "green": ["green mamba"],
                                                               "blue": ["jean"]}))
    monkeypatch.setenv("CARNET_MAPPINGS_DIR", str(maps))
    at = AppTest.from_file(str(ROOT / "app_pages" / "3_Compare.py"), default_timeout=TIMEOUT).run()
    at.multiselect(key="compare_models").set_value([ui_key(colour_checkpoint), "efficientnet_lite0"]).run()
    photo = sorted((colour_folder / "red").glob("*.png"))[0]
    at.file_uploader[0].set_value(("red.png", photo.read_bytes(), "image/png")).run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    assert any("No ensemble of one photo" in i.value and "3 classes" in i.value for i in at.info)
    bars = [json.loads(c.proto.spec)["data"][0] for c in at.get("plotly_chart")]
    assert len(bars) == 2 and set(bars[0]["y"]) == {"red", "green", "blue"}  # each in its own classes

    assert next(s for s in at.selectbox if s.label == "Mapping").value == "colours_to_imagenet.json"
    at.button(key="compare_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    table = at.dataframe[0].value
    assert len(table) == 5 and table["model / rule"].iloc[1] == "efficientnet_lite0"
    assert table["top-1 (%)"].iloc[0] >= 50  # the fine-tune, on (mostly) the images it was trained on
    assert any("different label sets" in c.value for c in at.caption)

    # a folder of other classes, with a mapping to ImageNet: it fits the ImageNet model but means nothing to the
    # fine-tune (whose classes are colours). Said before Evaluate, which is disabled (it failed only when pressed)
    for cls in ("dusk", "dawn"):
        (tmp_path / "data" / "skies" / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), "orange").save(tmp_path / "data" / "skies" / cls / "0.png")
    (maps / "skies_to_imagenet.json").write_text(json.dumps({"dusk": ["volcano"], "dawn": ["lakeside"]}))
    at.run()  # the folder list is read on each run
    at.selectbox(key="compare_folder_pick").set_value(tmp_path / "data" / "skies").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert next(s for s in at.selectbox if s.label == "Mapping").value == "skies_to_imagenet.json"
    [warning] = [w.value for w in at.warning if "mapping" in w.value]  # beside the defaults' missing weights
    tuned = read_metadata(colour_checkpoint)["name"]
    assert warning.startswith(f"{tuned}: mapping for 'dawn': 'lakeside' is not a class of the model") \
        and "a mapping serves one label set" in warning
    assert at.button(key="compare_run").disabled

    # two fine-tunes of the folder's classes with the same name (runs that stopped at the same epoch): they need no
    # mapping, so none is offered (the one named after the folder was applied to them, and failed: "'fire engine'
    # is not a class of the model"), and each is named by its run
    jobs = tmp_path / "jobs"
    for run in ("20261123-0815-a", "20261123-0930-b"):
        (jobs / run).mkdir(parents=True)
        shutil.copy(colour_checkpoint, jobs / run / colour_checkpoint.name)
    monkeypatch.setenv("CARNET_JOBS_DIR", str(jobs))
    at = AppTest.from_file(str(ROOT / "app_pages" / "3_Compare.py"), default_timeout=TIMEOUT).run()
    runs = [ui_key(jobs / run / colour_checkpoint.name) for run in ("20261123-0815-a", "20261123-0930-b")]
    at.multiselect(key="compare_models").set_value(runs).run()
    assert not [s for s in at.selectbox if s.label == "Mapping"] and not at.button(key="compare_run").disabled
    at.button(key="compare_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    name = read_metadata(colour_checkpoint)["name"]
    assert list(at.dataframe[0].value["model / rule"])[:2] == [f"{name} (20261123-0815-a)", f"{name} (20261123-0930-b)"]
    from carnet_core.cli import main  # the CLI's JSON: one weights entry per member (the second overwrote the first)

    both = ",".join(str(jobs / run / colour_checkpoint.name) for run in ("20261123-0815-a", "20261123-0930-b"))
    assert main(["compare", str(colour_folder), "--models", both, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["weights"]) == out["members"] == [f"{name} (20261123-0815-a)", f"{name} (20261123-0930-b)"]
    # 3 classes: top-5 is 100 % by construction, so it is not shown (the JSON keeps it)
    assert out["accuracy"][out["members"][0]]["top5"] == 1.0
    assert list(at.dataframe[0].value.columns) == ["model / rule", "top-1 (%)"]
    assert any(c.value.startswith("Top-1 only: With 5 classes or fewer") for c in at.caption)
    assert [trace["name"] for trace in json.loads(at.get("plotly_chart")[-1].proto.spec)["data"]] == ["Top-1"]
    assert main(["compare", str(colour_folder), "--models", both]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["top-1", "top-5"])
    assert lines[header + 1].endswith("%       —") and len(lines[header + 1]) == len(lines[header])
    assert main(["evaluate", str(colour_checkpoint), str(colour_folder)]) == 0
    assert "  top-5 —  macro F1" in capsys.readouterr().out


def test_classify_offers_the_vehicle_view_only_for_imagenets_classes(colour_checkpoint, tmp_path, monkeypatch):
    """The "vehicle classes only" toggle was shown for a fine-tune's own classes too, where it does nothing."""
    monkeypatch.setenv("CARNET_JOBS_DIR", str(colour_checkpoint.parent.parent))
    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    assert "classify_vehicles" in [t.key for t in at.toggle]  # EfficientNet-Lite0, ImageNet's classes
    at.selectbox(key="classify_model").set_value(ui_key(colour_checkpoint)).run()
    assert not at.exception and "classify_vehicles" not in [t.key for t in at.toggle]


@pytest.mark.shared
def test_evaluate_page_needs_no_mapping_for_folders_named_after_imagenet_classes(tmp_path, monkeypatch):
    """Class folders named "sports car" and "pickup": the page asked for a mapping file; it scores them as they are."""
    for name, source in (("sports car", "car"), ("pickup", "pickup")):
        (tmp_path / "inet" / name).mkdir(parents=True)
        for photo in sorted(need(SHARED / "data" / "tiny_vehicles_6" / "val" / source).glob("*.jpg"))[:4]:
            shutil.copy(photo, tmp_path / "inet" / name)
    monkeypatch.setenv("CARNET_DATA_ROOT", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app_pages" / "6_Evaluate.py"), default_timeout=TIMEOUT).run()
    assert not at.exception and at.selectbox(key="evaluate_folder").value.name == "inet"
    assert not [s for s in at.selectbox if s.label == "Mapping"] and not at.warning  # no mapping asked for
    at.button(key="evaluate_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.metric[4].value == "8"  # a folder without a split of its own: all of it


def test_models_table_rows_and_the_cost_chart_points():
    from carnet_core.evaluation.cards import cost_points, table_row

    card = {"arch": "tf_efficientnet_lite0", "head": "linear", "label_set": "cars", "class_names": ["a", "b"],
            "params": 3_410_000, "gmacs": 0.3871, "input_px": 224, "file_mb": 13.04, "top1": 0.8123,
            "provenance": "checkpoint", "has_weights": True}
    row = table_row("★ cars-e3", "checkpoint:/r/best.safetensors", card, {"latency_ms": 4.26, "peak_memory_mb": 512.4})
    assert (row["params (M)"], row["GMACs"], row["file (MB)"], row["val top-1 (%)"]) == (3.41, 0.39, 13.0, 81.2)
    assert (row["latency (ms)"], row["peak memory (MB)"], row["classes"]) == (4.3, 512, 2)
    unmeasured = table_row("mobilenetv2_100", "mobilenetv2_100", {**card, "top1": None, "has_weights": False}, None)
    assert unmeasured["latency (ms)"] is None and unmeasured["weights"] == "no weights here"
    assert cost_points([row, unmeasured]) == [{"name": "★ cars-e3", "latency_ms": 4.3, "top1": 0.812, "kind": "val",
                                               "params": 3.41e6, "label_set": "cars"}]
    # ImageNet models: their measured vehicle-at-top-1 on car photos (Lite0/1/2), not 0 %; unknown ones in the strip
    imagenet = {**card, "top1": None, "label_set": "imagenet-1k"}
    lites = [table_row(k, k, imagenet, {"latency_ms": ms, "peak_memory_mb": 500})
             for k, ms in (("efficientnet_lite0", 5.0), ("efficientnet_lite1", 7.0), ("efficientnet_lite2", 9.0),
                           ("resnet50", 30.0))]
    points = cost_points(lites)
    assert [(p["name"], p["kind"], p["top1"] and round(p["top1"], 3)) for p in points] == [
        ("efficientnet_lite0", "car photos", 0.953), ("efficientnet_lite1", "car photos", 0.949),
        ("efficientnet_lite2", "car photos", 0.931), ("resnet50", None, None)]
    from carnet_core.charts import cost_scatter_figure
    from carnet_core.evaluation.cards import ACCURACY_KINDS

    fig = cost_scatter_figure(points, ACCURACY_KINDS)
    family, strip = fig.data
    assert list(family.text) == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert min(family.y) > 90 and list(strip.text) == ["resnet50"] and strip.yaxis == "y2"  # below, not at 0 %
