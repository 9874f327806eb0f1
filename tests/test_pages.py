"""The Streamlit pages through AppTest (no browser)."""

import json

from streamlit.testing.v1 import AppTest

from conftest import ROOT

TIMEOUT = 180


def bars(at):
    return [json.loads(chart.proto.spec)["data"][0] for chart in at.get("plotly_chart")]


def test_home_lists_models_and_device():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert "efficientnet_lite0" in set(table["model"]) and len(table) >= 6
    assert table.set_index("model").loc["resnet50", "available"] == "❌"


def test_classify_real_photo_gives_five_bars_and_a_non_image_an_error(car_photos):
    at = AppTest.from_file(str(ROOT / "pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("gallery is empty" in i.value for i in at.info)
    at.file_uploader[0].set_value([
        ("car.jpg", car_photos[0].read_bytes(), "image/jpeg"),
        ("notes.txt", b"hello, this is text", "text/plain"),
    ]).run()
    assert not at.exception
    [chart] = bars(at)
    assert len(chart["y"]) == 5 and all(t.endswith("%") for t in chart["text"])
    assert any("notes.txt" in e.value and "not an image" in e.value for e in at.error)


def test_classify_model_without_weights_says_where_to_put_a_file():
    at = AppTest.from_file(str(ROOT / "pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    at.selectbox(key="classify_model").set_value("resnet50").run()
    assert not at.exception
    assert any("No ImageNet weights found for resnet50" in e.value for e in at.error)
    assert not at.get("plotly_chart")


def test_gallery_and_vehicle_view(car_photos, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("CARNET_GALLERY_DIR", str(tmp_path))
    shutil.copy(car_photos[0], tmp_path / "sample.jpg")
    at = AppTest.from_file(str(ROOT / "pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    at.multiselect(key="classify_gallery").set_value(["sample.jpg"]).run()
    at.toggle(key="classify_vehicles").set_value(True).run()
    assert not at.exception
    [chart] = bars(at)
    from carnet_core.labels import VEHICLE_CLASSES

    assert set(chart["y"]) <= set(VEHICLE_CLASSES)
