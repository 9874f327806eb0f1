"""The embedding map: penultimate-layer features (cached per model and dataset files), their 2-D projection (UMAP,
t-SNE), the most similar photos by cosine similarity, the `embed` CLI and the pages that show them."""

import csv
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, SHARED, need
from PIL import Image
from streamlit.testing.v1 import AppTest

from carnet_core import CarNetError
from carnet_core.data.datasets import ImageDataset
from carnet_core.data.readers import open_dataset
from carnet_core.evaluation import embeddings
from carnet_core.evaluation.embeddings import (
    dataset_features,
    features_of,
    knn_accuracy,
    nearest,
    penultimate_features,
    project,
    similar,
)

TIMEOUT = 300


def test_the_features_are_what_the_head_reads(lite0):
    x = lite0.preprocess([Image.new("RGB", (300, 200), (120, 40, 40)), Image.new("RGB", (64, 64), (0, 0, 200))])
    features = penultimate_features(lite0, x)
    assert features.shape == (2, 1280) and features.dtype == torch.float32
    with torch.no_grad():  # the head on them gives the model's logits
        assert torch.allclose(lite0.module.get_classifier()(features), lite0.module(x), atol=1e-4)


def test_an_ml_decoder_model_gets_pooled_features():
    from carnet_core.models.classifier import build_module
    from tests.explain.test_explain import tiny_model

    model = tiny_model("mobilenetv2")
    model.module = build_module("mobilenetv2_050", head="ml_decoder", num_classes=10).eval()
    features = penultimate_features(model, torch.rand(3, 3, 64, 64))
    assert features.shape[0] == 3 and features.ndim == 2


def test_nearest_by_cosine_similarity():
    unit = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], dtype=np.float32)
    assert [r for r, _ in nearest(unit, 0, 3)] == [1, 2, 3]  # not itself
    assert nearest(unit, 0, 1)[0][1] == pytest.approx(0.8)
    assert [r for r, _ in nearest(unit, np.array([0.0, 5.0]), 2)] == [2, 1]  # a vector: any length
    assert len(nearest(unit, 0, 10)) == 3


def test_knn_accuracy_in_blocks_is_scikit_learns():
    from sklearn.model_selection import LeaveOneOut, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 200)
    points = rng.normal(size=(200, 2)) + labels[:, None] * 1.5
    ours = knn_accuracy(points, labels.astype(str), k=5, metric="euclidean", block=17)
    theirs = cross_val_score(KNeighborsClassifier(5), points, labels, cv=LeaveOneOut()).mean()
    assert ours == pytest.approx(theirs, abs=0.02) and ours > 0.6  # ties may be broken differently
    assert knn_accuracy(points, labels.astype(str), metric="euclidean") == ours


@pytest.mark.slow
def test_features_are_cached_per_model_and_dataset_files(lite0, colour_folder, tmp_path, monkeypatch):
    folder = tmp_path / "colours"
    shutil.copytree(colour_folder, folder)
    calls = []
    real = embeddings.penultimate_features
    monkeypatch.setattr(embeddings, "penultimate_features", lambda m, b: calls.append(len(b)) or real(m, b))
    dataset = open_dataset(folder).part("all")
    first = dataset_features(lite0, dataset, cache_dir=tmp_path / "cache")
    assert sum(calls) == len(dataset) == len(first.paths) and first.features.shape == (len(dataset), 1280)
    again = dataset_features(lite0, dataset, cache_dir=tmp_path / "cache")
    assert sum(calls) == len(dataset)  # from the cache
    assert again.paths == first.paths and again.labels == first.labels
    assert np.allclose(again.features, first.features, atol=2e-2)  # kept as float16
    victim = sorted(folder.glob("red/*"))[0]
    Image.new("RGB", (48, 48), (10, 200, 10)).save(victim)  # a changed file: computed again
    dataset_features(lite0, open_dataset(folder).part("all"), cache_dir=tmp_path / "cache")
    assert sum(calls) == 2 * len(dataset)
    victim.write_bytes(b"not an image")  # an unreadable one is said, not fatal
    broken = dataset_features(lite0, open_dataset(folder).part("all"), cache_dir=tmp_path / "cache")
    assert len(broken.paths) == len(dataset) - 1 and broken.skipped[0][0] == str(victim)


@pytest.mark.slow
def test_projections_are_seeded_and_umap_falls_back_to_tsne(monkeypatch):
    rng = np.random.default_rng(0)
    points = rng.normal(size=(40, 16)).astype(np.float32)
    for method in ("umap", "tsne"):
        a, b = project(points, method), project(points, method)
        assert a.shape == (40, 2) and np.array_equal(a, b)
    with pytest.raises(CarNetError, match="unknown projection 'pca'"):
        project(points, "pca")
    with pytest.raises(CarNetError, match="3 or more images"):
        project(points[:2])
    monkeypatch.setitem(sys.modules, "umap", None)  # the serving tier may not have umap-learn
    assert np.array_equal(project(points, "umap"), project(points, "tsne"))


@pytest.mark.slow
@pytest.mark.shared
def test_a_planted_near_duplicate_is_its_originals_nearest_neighbour(lite0, tmp_path):
    """A Stanford Cars photo, made smaller (80 %), re-encoded at JPEG quality 60 and brightened by 10 %, put in
    another class folder among 3 classes' photos: its most similar image is the original, and the original's is it."""
    val = need(SHARED / "data" / "stanford_cars_40" / "val")
    classes = sorted(p for p in val.iterdir() if p.is_dir())[:3]
    for c in classes:
        shutil.copytree(c, tmp_path / "data" / c.name)
    original = sorted((tmp_path / "data" / classes[0].name).glob("*.jpg"))[0]
    image = Image.open(original).convert("RGB")
    image = image.resize((int(image.width * 0.8), int(image.height * 0.8))).point(lambda v: min(255, int(v * 1.1)))
    planted = tmp_path / "data" / classes[1].name / "planted.jpg"
    image.save(planted, quality=60)
    found = dataset_features(lite0, open_dataset(tmp_path / "data").part("all"), cache_dir=tmp_path / "cache")
    row = found.paths.index(str(planted))
    (best, similarity), (_, runner_up) = nearest(found.normalised(), row, 2)
    assert found.paths[best] == str(original) and similarity > 0.8 and similarity - runner_up > 0.1, (
        similarity, runner_up)  # measured 0.85, the next photo far below
    assert similar(found, found.paths.index(str(original)), 1)[0]["path"] == str(planted)
    assert similar(found, features_of(lite0, Image.open(original).convert("RGB")), 1)[0]["path"] == str(original)


@pytest.mark.slow
@pytest.mark.shared
def test_the_map_of_real_photos_separates_their_classes(lite0, tmp_path):
    """EfficientNet-Lite0's ImageNet features of the 274 Stanford Cars val photos (40 classes; chance about 2.5 %).
    Measured: k-NN accuracy (5 nearest, leave-one-out) 35.0 % in the 1280-d features, 21.2 % on the UMAP map and
    32.1 % on the t-SNE map; the fine-grained classes separate far better than chance though ImageNet never saw them."""
    found = dataset_features(lite0, open_dataset(need(SHARED / "data" / "stanford_cars_40")).part("val"),
                             cache_dir=tmp_path)
    chance = max(found.labels.count(c) for c in set(found.labels)) / len(found.labels)  # the biggest class
    assert len(found.paths) == 274 and chance < 0.05
    assert knn_accuracy(found.features, found.labels) > 0.25
    for method in ("umap", "tsne"):
        assert knn_accuracy(project(found.features, method), found.labels, metric="euclidean") > 4 * chance, method


def test_the_embed_command_writes_coordinates_and_neighbours(cli, colour_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "map.csv"
    code, stdout, _ = cli("embed", "efficientnet_lite0", colour_folder, "--method", "tsne", "--neighbours", 3,
                          "--csv", out)
    assert code == 0 and "72 images mapped by t-SNE, 3 most similar each" in stdout
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 72 and list(rows[0])[:4] == ["path", "label", "x", "y"]
    assert all(r["neighbour_1"] != r["path"] for r in rows) and float(rows[0]["similarity_1"]) >= float(
        rows[0]["similarity_3"])
    assert "k-NN accuracy of the features" in stdout
    code, _, err = cli("embed", "efficientnet_lite0", colour_folder, "--neighbours", 0)
    assert code != 0 and "--neighbours must be 1 or more" in err


@pytest.mark.slow
def test_the_classify_page_finds_the_photos_most_like_a_photo(colour_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CARNET_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path / "cache"))
    shutil.copytree(colour_folder, tmp_path / "data" / "colours")
    red = sorted((tmp_path / "data" / "colours" / "red").glob("*"))[0]
    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    at.file_uploader[0].set_value(("mine.png", red.read_bytes(), "image/png")).run()
    at.selectbox(key="classify_similar_folder").select_index(0).run()
    assert not at.exception, at.exception
    assert any(m.value.startswith("**Most like mine.png** in colours") for m in at.markdown)
    similar_captions = [c.value for c in at.caption if "cosine similarity" in c.value]
    assert len(similar_captions) == 6 and similar_captions[0].startswith("**red**")
    assert similar_captions[0].endswith("cosine similarity 1.00")  # the photo itself is in the dataset
