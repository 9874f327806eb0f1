"""Presentation mode (?present=1 or the sidebar toggle) through AppTest: one gallery photo per screen, stepped
through with Previous / Next; large bars; jargon behind "Details"; a short list of target layers. The keys (← →)
and the fit on a 1280×720 screen at 150 % are checked in Chromium (tests/app/test_browser.py)."""

import json

import pytest
from conftest import ROOT
from streamlit.testing.v1 import AppTest

from carnet_core.explain.cams import stage_layers

TIMEOUT = 180
GALLERY = ROOT / "gallery"


@pytest.fixture
def shipped_gallery(monkeypatch):
    monkeypatch.setenv("CARNET_GALLERY_DIR", str(GALLERY))
    return sorted(p.name for p in GALLERY.glob("*.jpg"))


def _page(name: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app_pages" / name), default_timeout=TIMEOUT)
    at.query_params["present"] = "1"
    return at.run()


def _stepper_text(at) -> str:
    return next(m.value for m in at.markdown if "Photo " in m.value and " of " in m.value)


@pytest.mark.slow
def test_classify_steps_through_the_gallery_one_photo_per_screen(shipped_gallery):
    at = _page("1_Classify.py")
    assert not at.exception, at.exception
    assert not at.title  # no page title: the screen is the photo and its bars
    assert f"Photo 1 of {len(shipped_gallery)}" in _stepper_text(at)
    assert len(at.get("plotly_chart")) == 1 and len([i for i in at.get("image") if "present" in str(i.proto)]) <= 1
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert chart["layout"]["font"]["size"] == 20 and chart["layout"]["height"] == 300  # big bars, one screen
    first_captions = [c for el in at.get("image") for c in el.captions if "—" in c]
    assert any(c.startswith("black ferrari 599 rear quarter — by CarSpotter") for c in first_captions)
    assert [e.label for e in at.expander] == ["Model and photos", "Details"]
    details = at.expander[1]
    assert any("engine:" in c.value for c in details.caption)  # jargon behind "Details", not on the screen
    at.button(key="classify_present_index_next").click().run()
    assert f"Photo 2 of {len(shipped_gallery)}" in _stepper_text(at)
    at.button(key="classify_present_index_previous").click().run()
    at.button(key="classify_present_index_previous").click().run()  # wraps around to the last photo
    assert f"Photo {len(shipped_gallery)} of {len(shipped_gallery)}" in _stepper_text(at)
    assert not at.exception


@pytest.mark.slow
def test_explain_shows_the_photo_beside_its_heatmap_with_a_short_layer_list(shipped_gallery, lite0):
    at = _page("2_Explain.py")
    assert not at.exception, at.exception
    assert f"Photo 1 of {len(shipped_gallery)}" in _stepper_text(at)
    captions = [c for el in at.get("image") for c in el.captions]
    assert any(c.startswith("What the model sees — by CarSpotter") for c in captions)
    assert any(c.startswith("GradCAM · ") for c in captions)
    assert any(m.value.startswith("Keeping only the highlighted region") for m in at.markdown)
    short = stage_layers(lite0)
    assert at.selectbox(key="explain_layer").options == short and at.selectbox(key="explain_layer").value == "bn2"
    at.toggle(key="explain_all_layers").set_value(True).run()
    assert len(at.selectbox(key="explain_layer").options) > 200
    at.selectbox(key="explain_layer").set_value("blocks.5.0").run()
    at.toggle(key="explain_all_layers").set_value(False).run()  # the deep layer is not in the short list: default
    assert at.selectbox(key="explain_layer").value == "bn2" and not at.exception
    assert not at.get("plotly_chart")  # ROAD, compare and the ranking are for a desk, not a projector


def test_the_toggle_follows_the_url_and_the_url_the_toggle(shipped_gallery):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.query_params["present"] = "1"
    at.run()
    assert at.toggle(key="present").value is True and not at.exception
    at.toggle(key="present").set_value(False).run()
    assert "present" not in at.query_params
    at.toggle(key="present").set_value(True).run()
    assert at.query_params["present"] == ["1"] or at.query_params["present"] == "1"

