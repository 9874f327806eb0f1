"""ROAD faithfulness (Rong et al. 2022, through pytorch-grad-cam): one heatmap's curves, and the ranking of the CAM
methods for a model over real photos, with RandomCAM as the floor; the CLI and the Explain page agree."""

import json

import numpy as np
import pytest
from conftest import ROOT, SHARED, need
from streamlit.testing.v1 import AppTest

from carnet_core import CarNetError
from carnet_core.data.readers import open_dataset
from carnet_core.explain.cams import FLOOR_METHOD, explain
from carnet_core.explain.faithfulness import RANKED_METHODS, rank_methods, ranking_summary, road

GALLERY_PHOTO = ROOT / "gallery" / "black_ferrari_599_rear_quarter.jpg"  # ships with the product


@pytest.fixture(scope="module")
def gallery_photo():
    return GALLERY_PHOTO


@pytest.mark.slow
def test_an_inverted_heatmap_scores_the_opposite(lite0, gallery_photo):
    """Removing the least relevant pixels of a heatmap is removing the most relevant of its inverse: their ROAD
    combined scores are opposite (up to the imputer's noise), and Grad-CAM's is positive."""
    cam = explain(lite0, gallery_photo)
    curves = road(lite0, gallery_photo, cam.heatmap, cam.class_index)
    inverse = road(lite0, gallery_photo, 1.0 - cam.heatmap, cam.class_index)
    assert curves.removed_pct == [20, 40, 60, 80] and curves.class_name == cam.class_name
    assert curves.probability == pytest.approx(cam.probability, abs=1e-4)
    assert curves.combined > 0.05 and inverse.combined == pytest.approx(-curves.combined, abs=0.02)
    assert inverse.morf == pytest.approx(curves.lerf, abs=0.05) and inverse.lerf == pytest.approx(curves.morf, abs=0.05)
    assert curves.combined == pytest.approx(np.mean([(a - b) / 2 for a, b in zip(curves.lerf, curves.morf)]))
    again = road(lite0, gallery_photo, cam.heatmap, cam.class_index)
    assert again.combined == curves.combined  # the imputer's noise is seeded
    assert f"ROAD combined **{curves.combined:+.3f}**" in curves.text()


def test_bad_removal_levels_and_a_misfit_heatmap_are_refused(lite0, gallery_photo):
    cam = explain(lite0, gallery_photo)
    with pytest.raises(CarNetError, match="between 0 and 100"):
        road(lite0, gallery_photo, cam.heatmap, cam.class_index, removed_pct=(0, 50))
    with pytest.raises(CarNetError, match="the heatmap is 7×7 px, the model's input 224×224 px"):
        road(lite0, gallery_photo, np.zeros((7, 7)), cam.class_index)
    with pytest.raises(CarNetError, match="unknown CAM method nope"):
        rank_methods(lite0, [gallery_photo], methods=("gradcam", "nope"))


@pytest.mark.slow
@pytest.mark.shared
def test_road_ranks_gradcam_above_the_random_floor_on_real_car_photos(lite0):
    """EfficientNet-Lite0 (real ImageNet weights) on 6 Stanford Cars val photos, one from each of the first 6 classes.
    Measured: Grad-CAM +0.094 ± 0.061, RandomCAM −0.036 ± 0.087 (ROAD combined, 20–80 % removed)."""
    photos = open_dataset(need(SHARED / "data" / "stanford_cars_40")).part("val").spread(6)
    scores, skipped = rank_methods(lite0, photos, methods=("gradcam",))
    assert not skipped and [s.method for s in scores] == ["gradcam", FLOOR_METHOD.key]
    gradcam, floor = scores
    assert gradcam.mean > floor.mean + 0.05 and gradcam.beats_floor and not floor.beats_floor
    assert len(gradcam.scores) == 6 and sum(g > f for g, f in zip(gradcam.scores, floor.scores)) >= 5
    assert ranking_summary(scores).startswith("Most faithful for this model: **GradCAM**")


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.subprocess
def test_the_cli_and_the_explain_page_rank_the_methods_alike(cli_process, tmp_path, monkeypatch):
    """`python -m carnet_core faithfulness` and the Explain page's "Which method is most faithful" table: the same
    methods, the same order and the same scores on the same 2 photos (three methods and the floor, for time)."""
    data = need(SHARED / "data" / "tiny_vehicles_6")
    done = cli_process("faithfulness", "efficientnet_lite0", data, "--images", 2, "--methods",
                       "gradcam,eigencam,layercam", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    numbers = json.loads(done.stdout)
    assert [m["method"] for m in numbers["methods"]].count(FLOOR_METHOD.key) == 1
    assert {m["method"] for m in numbers["methods"]} == {"gradcam", "eigencam", "layercam", FLOOR_METHOD.key}
    assert set(RANKED_METHODS) > {"gradcam", "eigencam", "layercam"}  # the page offers every cheap method

    monkeypatch.setenv("CARNET_DATA_ROOT", str(data.parent))
    at = AppTest.from_file(str(ROOT / "app_pages" / "2_Explain.py"), default_timeout=600).run()
    at.file_uploader[0].set_value(("car.jpg", GALLERY_PHOTO.read_bytes(), "image/jpeg")).run()
    at.button(key="explain_road").click().run()  # this photo's heatmap first: its two curves beside the sentence
    assert not at.exception and any("ROAD combined **" in m.value for m in at.markdown)
    assert "most relevant removed first (should fall)" in at.get("plotly_chart")[-1].proto.spec
    at.selectbox(key="explain_rank_folder").set_value(data).run()
    at.slider(key="explain_rank_images").set_value(2).run()
    assert at.multiselect(key="explain_rank_methods").value == list(RANKED_METHODS)
    at.multiselect(key="explain_rank_methods").set_value(["gradcam", "eigencam", "layercam"]).run()
    at.button(key="explain_rank").click().run()
    assert not at.exception, at.exception
    scores, skipped = at.session_state["_road_ranking"][next(iter(at.session_state["_road_ranking"]))][1]
    assert [(s.method, round(s.mean, 6)) for s in scores] == [(m["method"], round(m["road_combined"], 6))
                                                                 for m in numbers["methods"]]
    best = numbers["methods"][0]
    assert any(f"**{best['name']}** (ROAD combined {best['road_combined']:+.3f})" in m.value for m in at.markdown)
