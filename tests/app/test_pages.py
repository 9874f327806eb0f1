"""The Streamlit pages through AppTest (no browser)."""

import json

import pytest
from conftest import MOBILENET_TIMM, ROOT, SIX, need
from PIL import Image
from streamlit.testing.v1 import AppTest

from carnet_core import load_model
from carnet_core.data.images import MAX_FILE_BYTES

TIMEOUT = 180


def bars(at):
    return [json.loads(chart.proto.spec)["data"][0] for chart in at.get("plotly_chart")]


def image_captions(at):
    return [c for el in at.get("image") for c in el.captions]


def test_navigation_has_every_page_and_each_runs():
    import re

    declared = re.findall(r'st\.Page\("(app_pages/[^"]+)", title="([^"]+)"', (ROOT / "app.py").read_text())
    assert sorted(p for p, _ in declared) == sorted(f"app_pages/{f.name}" for f in (ROOT / "app_pages").glob("*.py"))
    assert [t for _, t in declared] == ["Home", "Classify", "Explain", "Compare", "Fine-tune", "Models", "Evaluate"]
    # no pages/ folder: with one, a fresh server routes a deep link (/Classify) the legacy way, running that page
    # alone with an "app" entry in the sidebar, until someone opens the home page
    assert not (ROOT / "pages").exists()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception and at.title[0].value == "🚗 CarNet"  # the default page: Home
    for path, title in declared[1:]:
        at.switch_page(path).run()
        assert not at.exception, path
        assert at.title[0].value == title


def test_page_urls_are_the_lower_case_names_people_type(monkeypatch):
    import streamlit as st

    # a URL typed from the sidebar's label, /classify, gave "Page not found" while the pages were at /Classify
    seen = []
    real = st.navigation
    monkeypatch.setattr(st, "navigation", lambda pages, **kw: seen.extend(pages) or real(pages, **kw))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert [p.url_path for p in seen] == ["", "classify", "explain", "compare", "fine-tune", "models", "evaluate"]


def test_counts_read_as_words():
    from carnet_core.errors import count

    assert (count(1, "mistake"), count(440, "mistake"), count(0, "job")) == ("1 mistake", "440 mistakes", "0 jobs")
    assert (count(1, "class", "classes"), count(40, "class", "classes")) == ("1 class", "40 classes")


def test_home_lists_models_and_device(tmp_path, monkeypatch):
    import torch

    from carnet_core.models.checkpoints import save_checkpoint

    monkeypatch.setenv("CARNET_JOBS_DIR", str(tmp_path))  # a finished fine-tune: its best checkpoint (metadata read)
    best = save_checkpoint(tmp_path / "run" / "best-e003-top1-91.0.safetensors", {"w": torch.zeros(1)}, {
        "name": "efficientnet_lite0-cars-e3", "arch": "tf_efficientnet_lite0", "head": "linear", "label_set": "cars",
        "class_names": ["coupe", "sedan", "van"], "metrics": {"top1": 0.91}})
    save_checkpoint(tmp_path / "run2" / "best-e003-top1-88.0.safetensors", {"w": torch.zeros(1)}, {
        "name": "efficientnet_lite0-cars-e3", "arch": "tf_efficientnet_lite0", "head": "linear", "label_set": "cars",
        "class_names": ["coupe", "sedan", "van"], "metrics": {"top1": 0.88}})  # another run, stopped at the same epoch
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert {"★ efficientnet_lite0-cars-e3 (run)", "★ efficientnet_lite0-cars-e3 (run2)"} <= set(table["model"])
    assert "efficientnet_lite0" in set(table["model"]) and len(table) >= 6
    assert table.set_index("model").loc["resnet50", "available"] == "no"
    assert list(table["model"]).index("★ efficientnet_lite0-cars-e3 (run)") < list(table["model"]).index("resnet50")
    star = table.set_index("model").loc["★ efficientnet_lite0-cars-e3 (run)"]  # with the registry, as in every picker
    assert (star["available"], star["labels"], star["weights"]) == ("yes", "cars (3 classes)", str(best))


@pytest.mark.shared
def test_classify_real_photo_gives_five_bars_and_a_non_image_an_error(car_photos):
    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("gallery is empty" in i.value for i in at.info)
    assert at.file_uploader[0].proto.max_upload_size_mb == MAX_FILE_BYTES // 2**20  # the library's limit, said at once
    at.file_uploader[0].set_value([
        ("car.jpg", car_photos[0].read_bytes(), "image/jpeg"),
        ("notes.txt", b"hello, this is text", "text/plain"),
    ]).run()
    assert not at.exception
    [chart] = bars(at)
    assert len(chart["y"]) == 5 and all(t.endswith("%") for t in chart["text"])
    # a Hummer: "half track" at top-1 is a vehicle, a military one, which the vehicle view leaves out; it said
    # "Top class is not a vehicle"
    assert chart["y"][-1] == "half track" and any("Top class is not a road vehicle; best road-vehicle class: "
                                                 "**amphibian**" in c.value for c in at.caption)
    assert any("notes.txt" in e.value and "not an image" in e.value for e in at.error)
    [download] = at.get("download_button")  # the photos' results as a table: the skipped one too
    assert download.proto.label == "Download the 2 results (CSV)"


def test_classify_takes_a_classroom_of_photos_and_says_when_there_are_more():
    import io

    from conftest import colour_image

    from ui.photos import MAX_PHOTOS

    png = io.BytesIO()
    colour_image((200, 30, 30), 0).save(png, "PNG")
    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    at.file_uploader[0].set_value([(f"{i:02d}.png", png.getvalue(), "image/png") for i in range(MAX_PHOTOS + 3)]).run()
    assert not at.exception
    assert len(bars(at)) == MAX_PHOTOS and image_captions(at)[-1] == f"{MAX_PHOTOS - 1:02d}.png"
    assert any(f"{MAX_PHOTOS + 3} photos given; classifying the first {MAX_PHOTOS}" in w.value for w in at.warning)


@pytest.mark.slow
def test_a_session_decodes_at_most_its_pixel_budget(monkeypatch):
    """A session's Classify runs together decode at most CARNET_SESSION_MEGAPIXELS (here 1 MP): past it a photo is
    skipped with the reason, while the photos already classified stay."""
    import io

    monkeypatch.setenv("CARNET_SESSION_MEGAPIXELS", "1")

    def jpeg(colour):
        data = io.BytesIO()
        Image.new("RGB", (1000, 800), colour).save(data, "JPEG")
        return data.getvalue()

    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    at.file_uploader[0].set_value([("a.jpg", jpeg((200, 0, 0)), "image/jpeg")]).run()
    assert not at.exception and len(bars(at)) == 1 and not at.error  # 0.8 MP of the session's 1 MP
    at.file_uploader[0].set_value([("a.jpg", jpeg((200, 0, 0)), "image/jpeg"),
                                   ("b.jpg", jpeg((0, 200, 0)), "image/jpeg")]).run()
    assert any("b.jpg: skipped — this session has classified as many megapixels" in e.value for e in at.error)
    assert len(bars(at)) == 1  # a.jpg is still classified


def test_classify_shows_what_the_model_does_not_see():
    """A 16:9 photo: its sides, which the model's 224 px square input cuts off, are dimmed, and the page says how
    much is seen; a 40 px photo is said to be enlarged; a square 640 px photo gets neither."""
    import io

    import numpy as np

    def png(w, h):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    at.file_uploader[0].set_value([("square.png", png(640, 640), "image/png")]).run()
    assert not at.exception and len(bars(at)) == 1
    assert not any("Dimmed" in c.value or "The model sees" in c.value or "enlarged" in c.value for c in at.caption)
    at.file_uploader[0].set_value([("wide.png", png(1920, 1080), "image/png"), ("tiny.png", png(40, 40), "image/png"),
                                   ("square.png", png(640, 640), "image/png")]).run()
    assert not at.exception and len(bars(at)) == 3
    captions = [c.value for c in at.caption]
    assert "Dimmed: the parts of a photo outside efficientnet_lite0's 224 px input, which it does not see." in captions
    assert sum("The model sees the middle 1080×1080 px, 56% of the photo" in c for c in captions) == 1
    assert sum(c.startswith("The photo is 40×40 px, enlarged 5.6×") for c in captions) == 1


@pytest.mark.shared
def test_classify_redraws_without_classifying_again(car_photos, monkeypatch, tmp_path):
    """A rerun — the vehicle view toggled, a popover opened — redraws the results it has: 8 phone-size photos took
    2.4 s per rerun to decode, classify and send again (0.06 s now). Other photos or another model classify again."""
    import shutil

    import ui

    shutil.copy(need(MOBILENET_TIMM), tmp_path / "mobilenetv2_100.pth")
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(tmp_path))
    calls = []
    real = ui.session.classify_files
    monkeypatch.setattr(ui.session, "classify_files", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    photos = [(p.name, p.read_bytes(), "image/jpeg") for p in car_photos[:2]]
    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    at.file_uploader[0].set_value(photos).run()
    first = bars(at)
    assert not at.exception and len(first) == 2 and len(calls) == 1
    at.toggle[0].set_value(True).run()  # vehicle classes only
    at.toggle[0].set_value(False).run()
    assert not at.exception and len(calls) == 1 and bars(at) == first
    at.file_uploader[0].set_value(photos[::-1]).run()
    assert len(calls) == 2 and [b["y"] for b in bars(at)] == [b["y"] for b in first[::-1]]
    at.selectbox[0].set_value("mobilenetv2_100").run()
    assert not at.exception and len(calls) == 3 and [b["y"] for b in bars(at)] != [b["y"] for b in first[::-1]]


def test_classify_model_without_weights_says_where_to_put_a_file():
    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    at.selectbox(key="classify_model").set_value("resnet50").run()
    assert not at.exception
    assert any("No ImageNet weights found for resnet50" in e.value for e in at.error)
    assert not at.get("plotly_chart")


@pytest.mark.shared
def test_gallery_and_vehicle_view(car_photos, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("CARNET_GALLERY_DIR", str(tmp_path))
    shutil.copy(car_photos[0], tmp_path / "sample.jpg")
    (tmp_path / "notes.jpg").write_text("not a photo")
    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    assert image_captions(at) == ["sample"]  # the gallery's thumbnails, before any is picked; not the broken file
    assert at.multiselect(key="classify_gallery").options == ["notes", "sample"]  # both can be picked, by title
    at.multiselect(key="classify_gallery").set_value(["sample.jpg"]).run()
    at.toggle(key="classify_vehicles").set_value(True).run()
    assert not at.exception
    [chart] = bars(at)
    from carnet_core.models.labels import VEHICLE_CLASSES

    assert set(chart["y"]) <= set(VEHICLE_CLASSES)


@pytest.mark.shared
def test_explain_page_shows_original_heatmap_overlay_and_compares(car_photos):
    at = AppTest.from_file(str(ROOT / "app_pages" / "2_Explain.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    at.file_uploader[0].set_value(("car.jpg", car_photos[0].read_bytes(), "image/jpeg")).run()
    assert not at.exception and not at.error
    assert len(image_captions(at)) == 3  # original | heatmap | overlay
    captions = " ".join(c.value for c in at.caption)
    assert "Faithfulness" in captions and "keeping only the highlighted region " in captions and " points): " in captions
    classes = at.selectbox(key="explain_class").options
    assert len(classes) == 6 and classes[0].endswith("%)")  # top-5 with probabilities, then "other…"
    at.selectbox(key="explain_class").set_value(classes[1]).run()
    at.selectbox(key="explain_method").set_value("scorecam").run()
    assert not at.exception and any("one forward pass per channel" in w.value for w in at.warning)
    at.selectbox(key="explain_method").set_value("gradcam++").run()
    at.multiselect(key="explain_compare").set_value(["gradcam", "eigencam"]).run()
    at.button(key="explain_compare_run").click().run()
    assert not at.exception
    grid = [c for c in image_captions(at) if "faithfulness" in c]
    assert [c.split(" ·")[0] for c in grid] == ["GradCAM", "EigenCAM"]  # as their papers write them
    assert at.selectbox(key="explain_method").options[:3] == ["GradCAM", "GradCAM++", "HiResCAM"]

    at.toggle(key="explain_aug_smooth").set_value(True).run()  # smoothing: the heatmap says so, the grid too
    at.button(key="explain_compare_run").click().run()
    assert not at.exception and not at.error
    assert any("GradCAM++ heatmap · layer bn2 · augmentation smoothing" == c for c in image_captions(at))
    grid = [c for c in image_captions(at) if "faithfulness" in c]
    assert "without augmentation smoothing" not in grid[0] and grid[1].endswith("without augmentation smoothing")
    at.selectbox(key="explain_method").set_value("eigencam").run()  # where it washes out, it cannot be switched on
    assert not at.exception and not at.error and at.toggle(key="explain_aug_smooth").disabled
    assert "principal component's sign is arbitrary" in at.toggle(key="explain_aug_smooth").help


@pytest.mark.shared
def test_explain_page_keeps_cams_while_the_sliders_move(car_photos, monkeypatch):
    """A CAM once computed (ScoreCAM: about a minute) stays on the page when the opacity or colormap changes, and is
    not computed again; so does the compare grid. (ScoreCAM is stood in for by GradCAM here, for time.)"""
    import carnet_core.explain.cams as cams

    calls, real = [], cams.explain

    def counting(model, image, method="gradcam", **kwargs):
        calls.append(method)
        return real(model, image, method="gradcam" if method in cams.EXPENSIVE_METHODS else method, **kwargs)

    monkeypatch.setattr(cams, "explain", counting)
    at = AppTest.from_file(str(ROOT / "app_pages" / "2_Explain.py"), default_timeout=TIMEOUT).run()
    at.file_uploader[0].set_value(("car.jpg", car_photos[0].read_bytes(), "image/jpeg")).run()
    at.selectbox(key="explain_method").set_value("scorecam").run()
    assert calls == ["gradcam"] and at.warning and len(image_captions(at)) == 0  # estimate first, then a button
    at.button(key="explain_run").click().run()
    assert calls == ["gradcam", "scorecam"] and len(image_captions(at)) == 3
    at.slider(key="explain_alpha").set_value(0.3).run()
    at.selectbox(key="explain_colormap").set_value("viridis").run()
    assert not at.exception and not at.warning and len(image_captions(at)) == 3  # still there, not recomputed
    at.multiselect(key="explain_compare").set_value(["gradcam", "eigencam"]).run()
    at.button(key="explain_compare_run").click().run()
    at.slider(key="explain_alpha").set_value(0.7).run()
    assert [c.split(" ·")[0] for c in image_captions(at) if "faithfulness" in c] == ["GradCAM", "EigenCAM"]
    assert calls == ["gradcam", "scorecam", "eigencam"]  # the first GradCAM remembered too
    assert not at.get("progress")  # the grid is shown, with no bar left at "Done"


def test_a_remembered_cam_is_never_shown_for_another_model(monkeypatch):
    """CAMs (and a page's top-5 of its photo) are remembered per session under the model's id; once the app's cache
    drops a model, CPython may give its id to the next one loaded (a checkpoint with the same name, say): that model
    gets its own."""
    import io

    import streamlit as st

    import carnet_core.explain.cams as cams
    import ui

    calls = []
    monkeypatch.setattr(cams, "explain", lambda model, image, **kw: calls.append(model) or f"CAM of {id(model)}")
    st.session_state["_explanations"] = {}
    first, second = (load_model("mobilenetv2_100", weights="random", device="cpu") for _ in range(2))
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, "PNG")
    photo = ui.Photo("black.png", buf.getvalue())
    assert ui.explanation(first, photo, "gradcam", None, None) == f"CAM of {id(first)}"
    assert ui.explanation(first, photo, "gradcam", None, None) == f"CAM of {id(first)}" and calls == [first]

    def given_first_ids(slot):  # as if `second` had been given `first`'s id
        memory = st.session_state[slot]
        [key] = memory
        ids, names, rest = key
        memory[((id(second),), names, rest)] = memory.pop(key)

    given_first_ids("_explanations")
    assert ui.explanation(second, photo, "gradcam", None, None, compute=False) is None  # not first's CAM
    assert ui.explanation(second, photo, "gradcam", None, None) == f"CAM of {id(second)}"
    assert calls == [first, second]

    st.session_state["_test_photo"] = {}
    assert ui.remembered("_test_photo", [first], photo.digest, lambda: "top-5 of first") == "top-5 of first"
    assert ui.remembered("_test_photo", [first], photo.digest, lambda: "again") == "top-5 of first"  # remembered
    assert ui.remembered("_test_photo", [first], "another photo", lambda: "top-5 of another") == "top-5 of another"
    assert ui.remembered("_test_photo", [first], photo.digest, None) is None  # keep=1: the last one only
    st.session_state["_test_photo"] = {}
    ui.remembered("_test_photo", [first], photo.digest, lambda: "top-5 of first")
    given_first_ids("_test_photo")
    assert ui.remembered("_test_photo", [second], photo.digest, lambda: "top-5 of second") == "top-5 of second"


@pytest.mark.shared
def test_explain_and_compare_redraw_without_decoding_and_classifying_again(car_photos, tmp_path, monkeypatch):
    """A slider, colormap or ensemble-rule change redraws what the page has: Explain took 0.16 s per rerun to decode
    and classify a 12 MP photo again, Compare with two models 0.22 s (0.03-0.04 s now). Another CAM decodes the photo
    once more; another photo or other models classify again."""
    import carnet_core.inference.ensemble as ensemble
    import ui

    decoded, voted = [], []
    real_load, real_members = ui.photos.load_image, ensemble.member_predictions
    monkeypatch.setattr(ui.photos, "load_image", lambda data, name=None: decoded.append(name) or real_load(data, name=name))
    monkeypatch.setattr(ensemble, "member_predictions", lambda *a, **kw: voted.append(1) or real_members(*a, **kw))
    at = AppTest.from_file(str(ROOT / "app_pages" / "2_Explain.py"), default_timeout=TIMEOUT).run()
    at.file_uploader[0].set_value(("car.jpg", car_photos[0].read_bytes(), "image/jpeg")).run()
    top5 = at.selectbox(key="explain_class").options
    assert not at.exception and decoded == ["car.jpg"] and len(image_captions(at)) == 3  # one decode: top-5 and CAM
    at.slider(key="explain_alpha").set_value(0.3).run()
    at.selectbox(key="explain_colormap").set_value("viridis").run()
    assert not at.exception and decoded == ["car.jpg"] and at.selectbox(key="explain_class").options == top5
    at.selectbox(key="explain_method").set_value("eigencam").run()
    assert decoded == ["car.jpg"] * 2 and len(image_captions(at)) == 3
    at.file_uploader[0].set_value(("other.jpg", car_photos[1].read_bytes(), "image/jpeg")).run()
    assert decoded[2:] == ["other.jpg"] and at.selectbox(key="explain_class").options != top5

    _with_mobilenet(tmp_path, monkeypatch)
    decoded.clear()
    at = AppTest.from_file(str(ROOT / "app_pages" / "3_Compare.py"), default_timeout=TIMEOUT).run()
    at.file_uploader[0].set_value(("car.jpg", car_photos[0].read_bytes(), "image/jpeg")).run()
    assert not at.exception and not at.error and len(voted) == 1 and decoded == ["car.jpg"]
    soft = bars(at)[-1]  # the ensemble's, after the members'
    at.selectbox(key="compare_rule").set_value("geometric").run()
    at.slider(key="compare_weight_0").set_value(0.5).run()
    assert not at.exception and len(voted) == 1 and decoded == ["car.jpg"]
    assert bars(at)[-1] != soft  # the ensemble itself is recombined
    at.file_uploader[0].set_value(("other.jpg", car_photos[1].read_bytes(), "image/jpeg")).run()
    assert not at.exception and len(voted) == 2


def test_explain_page_says_when_the_model_sees_little_of_the_photo():
    import io

    import numpy as np

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), dtype=np.uint8)).save(buf, "PNG")
    at = AppTest.from_file(str(ROOT / "app_pages" / "2_Explain.py"), default_timeout=TIMEOUT).run()
    at.file_uploader[0].set_value([("wide.png", buf.getvalue(), "image/png")]).run()
    assert not at.exception and "What the model sees (resized, center-cropped)" in image_captions(at)
    assert any(c.value.startswith("The model sees the middle 1080×1080 px, 56% of the photo") for c in at.caption)


def test_explain_page_non_image():
    at = AppTest.from_file(str(ROOT / "app_pages" / "2_Explain.py"), default_timeout=TIMEOUT).run()
    at.file_uploader[0].set_value(("x.png", b"\x89PNG\r\n\x1a\n broken", "image/png")).run()
    assert not at.exception and at.error


@pytest.mark.slow
@pytest.mark.shared
def test_an_engine_that_cannot_be_used_is_a_message(car_photos, monkeypatch):
    """An operator forcing a reduced-precision engine ($CARNET_ENGINE) with no photos to check it on, or one that
    fails its gate: Classify and Explain showed a traceback on every photo, and Models' "Measure" a RuntimeError
    holding the measuring process's traceback."""
    monkeypatch.setenv("CARNET_ENGINE", "torch-bf16")
    monkeypatch.delenv("CARNET_CALIBRATION", raising=False)
    for page, upload in (("1_Classify.py", [("car.jpg", car_photos[0].read_bytes(), "image/jpeg")]),
                         ("2_Explain.py", ("car.jpg", car_photos[0].read_bytes(), "image/jpeg"))):
        at = AppTest.from_file(str(ROOT / "app_pages" / page), default_timeout=TIMEOUT).run()
        at.file_uploader[0].set_value(upload).run()
        assert not at.exception, (page, at.exception)
        assert any("torch-bf16 is used only after the accuracy gate" in e.value for e in at.error), page
    at = AppTest.from_file(str(ROOT / "app_pages" / "5_Models.py"), default_timeout=TIMEOUT).run()
    at.selectbox(key="models_pick").set_value("efficientnet_lite0").run()
    at.button(key="models_measure").click().run()  # measured in a fresh process, which inherits the setting
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == ["measuring efficientnet_lite0 failed: torch-bf16 is used only after the "
                                           "accuracy gate on a labelled set of real photos: pass calibration= (the "
                                           "CLI's --calibration FOLDER) or set CARNET_CALIBRATION to a folder of "
                                           "class folders with at least 16 photos"]


def _with_mobilenet(tmp_path, monkeypatch):
    import os

    from conftest import MOBILENET_TIMM, need

    weights = tmp_path / "weights"
    weights.mkdir()
    os.symlink(need(MOBILENET_TIMM), weights / "mobilenetv2_100.pth")
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(weights))


@pytest.mark.shared
def test_compare_page_one_photo_and_a_labelled_folder(car_photos, tmp_path, monkeypatch):
    from conftest import SHARED

    _with_mobilenet(tmp_path, monkeypatch)
    data = tmp_path / "data"  # two datasets: class folders, and train/ + val/ as Fine-tune and Evaluate read them
    for c in ("car", "pickup"):
        for i, p in enumerate(sorted((SHARED / "data" / "tiny_vehicles_6" / "val" / c).glob("*.jpg"))[:6]):
            for folder in (data / "plain" / c, data / "split" / ("train" if i < 3 else "val") / c):
                folder.mkdir(parents=True, exist_ok=True)
                (folder / p.name).write_bytes(p.read_bytes())
    monkeypatch.setenv("CARNET_DATA_ROOT", str(data))
    maps = tmp_path / "maps"  # the operator's mapping folder, as on Evaluate (Compare read only the project's)
    maps.mkdir()
    for name in ("vehicles.json", "split_to_imagenet.json"):  # the second is named after a dataset: suggested for it
        (maps / name).write_bytes((ROOT / "mappings" / "tiny_vehicles_6_to_imagenet.json").read_bytes())
    monkeypatch.setenv("CARNET_MAPPINGS_DIR", str(maps))

    at = AppTest.from_file(str(ROOT / "app_pages" / "3_Compare.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("resnet50" in w.value and "not available" in w.value for w in at.warning)  # said plainly
    assert at.multiselect(key="compare_models").value == ["mobilenetv2_100", "efficientnet_lite0"]
    picker = at.selectbox(key="compare_folder_pick")  # the data root's datasets, not the data root itself
    assert [getattr(o, "name", o) for o in picker.options] == ["plain", "split", "another folder…"]
    assert not [t for t in at.text_input if t.key == "compare_folder"]
    at.file_uploader[0].set_value(("car.jpg", car_photos[0].read_bytes(), "image/jpeg")).run()
    assert not at.exception and not at.error
    assert len(bars(at)) == 3  # two members + the ensemble
    assert sum("Grad-CAM" in c for c in image_captions(at)) == 2
    member_captions = [c.value for c in at.caption if "model time" in c.value]
    assert len(member_captions) == 2 and "weights: file in the weights folder: mobilenetv2_100.pth" in member_captions[0]
    assert [m.label for m in at.metric] == ["Same top-1", "Top-5 overlap", "Jensen–Shannon divergence"]
    at.slider(key="compare_weight_1").set_value(0.0).run()  # ensemble = MobileNetV2 alone
    assert bars(at)[2]["y"] == bars(at)[0]["y"]

    mapping = lambda: next(s for s in at.selectbox if s.label == "Mapping")  # noqa: E731 (its key names the folder)
    # it starts at the first folder the models can be measured on: "split" has a mapping named after it, "plain"
    # (car, pickup) has none, and "car" is no ImageNet class
    assert at.selectbox(key="compare_folder_pick").value == data / "split"
    assert mapping().value == "split_to_imagenet.json" and not at.button(key="compare_run").disabled
    at.selectbox(key="compare_folder_pick").set_value(data / "plain").run()
    assert mapping().value == "none (folder classes are model classes)"  # no mapping named after "plain"
    # said before Evaluate is pressed (it ended in "folder classes car are not classes of the model")
    assert any("**plain** has classes of its own (car, pickup), not those of mobilenetv2_100, "
               "efficientnet_lite0. Choose a mapping" in i.value for i in at.info)
    assert at.button(key="compare_run").disabled and not at.error
    mapping().set_value("upload…").run()  # chosen, but nothing uploaded yet
    assert at.button(key="compare_run").disabled and any("classes of its own" in i.value for i in at.info)
    mapping().set_value("vehicles.json").run()
    assert not at.button(key="compare_run").disabled and not any("classes of its own" in i.value for i in at.info)
    at.button(key="compare_run").click().run()
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert len(table) == 5 and table["model / rule"].iloc[0] == "mobilenetv2_100"
    assert any(f"12 images in `{data / 'plain'}`" in m.value for m in at.markdown)
    assert not at.get("progress")  # the bar goes when the evaluation is done

    # the report was made with MobileNetV2's weight 0: moving that slider hides it until Evaluate is pressed again
    at.slider(key="compare_weight_1").set_value(1.0).run()
    assert not at.exception and not at.dataframe and not at.get("download_button")
    assert any("changed since the last evaluation" in i.value for i in at.info)
    at.button(key="compare_run").click().run()
    assert not at.exception and len(at.dataframe[0].value) == 5
    mapping().set_value("none (folder classes are model classes)").run()
    assert not at.dataframe  # nor under another mapping

    # a dataset with train/ and val/ is measured on its val split (it was refused: "the class folders hold no images")
    at.selectbox(key="compare_folder_pick").set_value(data / "split").run()
    assert mapping().value == "split_to_imagenet.json"  # the mapping named after the dataset, chosen for it
    at.button(key="compare_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any(f"6 images in `{data / 'split' / 'val'}`" in m.value for m in at.markdown)
    at.selectbox(key="compare_folder_pick").set_value("another folder…").run()  # any folder, typed in
    at.text_input(key="compare_folder").set_value(str(data)).run()  # said at once, not after pressing Evaluate
    assert [w.value for w in at.warning][-1] == f"{data} holds datasets, not class folders: choose one of them (plain, split)"
    assert at.button(key="compare_run").disabled
    photo = next((data / "plain" / "car").iterdir())  # a photo's path where its folder goes: it was an OSError
    at.text_input(key="compare_folder").set_value(str(photo)).run()
    assert not at.exception and not at.error and [w.value for w in at.warning][-1] == (
        f"{photo} is a file, not a dataset folder: expected {photo}/<class name>/<image files>")


@pytest.mark.shared
def test_compare_shows_where_the_members_disagree_as_the_model_sees_them(tmp_path, monkeypatch):
    """The photos the members disagree on are drawn as the first member sees them (224 px, cached per file), not
    sent whole on every rerun (a 12 MP photo took about 0.2 s each time)."""
    from conftest import SHARED

    import ui

    _with_mobilenet(tmp_path, monkeypatch)
    data = tmp_path / "data" / "tiny_vehicles_6"  # five real val crops per class, the shipped mapping named after it
    for c in sorted(p.name for p in (SHARED / "data" / "tiny_vehicles_6" / "val").iterdir()):
        (data / c).mkdir(parents=True)
        for p in sorted((SHARED / "data" / "tiny_vehicles_6" / "val" / c).glob("*.jpg"))[:5]:
            (data / c / p.name).write_bytes(p.read_bytes())
    monkeypatch.setenv("CARNET_DATA_ROOT", str(data.parent))
    views, input_view = [], ui.input_view
    monkeypatch.setattr(ui, "input_view", lambda path, model: views.append((model.name, input_view(path, model)))
                        or views[-1][1])
    at = AppTest.from_file(str(ROOT / "app_pages" / "3_Compare.py"), default_timeout=TIMEOUT).run()
    at.button(key="compare_run").click().run()
    assert not at.exception and not at.error
    gallery = [c for c in image_captions(at) if c.startswith("true: ")]
    assert gallery and len(views) == len(gallery) <= 12
    assert all(name == "mobilenetv2_100" and view.size == (224, 224) for name, view in views)
    assert any(m.value.startswith("**Where the members disagree** (first 12, as mobilenetv2_100 sees them")
               for m in at.markdown)


def test_unusable_weights_files_are_said_so_and_compare_starts_with_models_that_load(unusable_weights_folder):
    """A refused pickle named resnet50-run.pth was listed "available: yes", and Compare, whose default is ResNet-50,
    stopped at "Cannot load resnet50". Home now says why each file cannot be used; Compare says so for ResNet-50 and
    starts with the models that load."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    table = at.dataframe[0].value.set_index("model")
    assert table.loc["resnet50", "available"] == "no"
    assert "resnet50-run.pth: refused" in table.loc["resnet50", "weights"]
    assert "empty (0 bytes)" in table.loc["efficientnet_b0", "weights"]
    assert table.loc["efficientnet_b1", "weights"] == "missing"
    assert table.loc["mobilenetv2_100", "available"] == "yes"

    at = AppTest.from_file(str(ROOT / "app_pages" / "3_Compare.py"), default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error
    assert at.warning[0].value == ("**resnet50** is not available here; the picker below offers the models that have "
                                   "weights.")  # one line; why, in the expander under it
    assert at.expander[0].label == "Why, and how to add it"
    assert "resnet50-run.pth: refused" in at.expander[0].markdown[0].value
    assert at.multiselect[0].value == ["mobilenetv2_100", "efficientnet_lite0"]


def test_compare_works_offline_with_the_bundled_lite_models():
    """A fresh clone without any weights file: EfficientNet-Lite0, Lite1 and Lite2 ship with the requirements, so
    Compare starts with two of them instead of saying it needs two models."""
    at = AppTest.from_file(str(ROOT / "app_pages" / "3_Compare.py"), default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error
    assert at.warning[0].value == ("**resnet50** and **mobilenetv2_100** are not available here; the picker below "
                                   "offers the models that have weights.")
    assert at.multiselect[0].value == ["efficientnet_lite0", "efficientnet_lite1"]
    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"} <= set(at.multiselect[0].options)


def test_compare_page_with_one_available_model_says_so(monkeypatch):
    """As on a host without the Lite1/Lite2 packages: one model with weights is no comparison."""
    import streamlit as st

    from carnet_core.models import weights as W

    real = W.offline_package_file
    monkeypatch.setattr(W, "offline_package_file", lambda spec: real(spec) if spec.name == "efficientnet_lite0" else None)
    st.cache_data.clear()  # the weights' status is cached per file, and no file changed
    try:
        at = AppTest.from_file(str(ROOT / "app_pages" / "3_Compare.py"), default_timeout=TIMEOUT).run()
    finally:
        st.cache_data.clear()
    assert not at.exception
    assert any("at least two models" in e.value for e in at.error)
    assert not at.get("plotly_chart")
    assert at.warning[0].value == "**resnet50** and **mobilenetv2_100** are not available here."  # no picker follows
    assert at.expander[0].label == "Why, and how to add them"
    assert [m.value.split(":")[0] for m in at.expander[0].markdown] == ["**resnet50**", "**mobilenetv2_100**"]


@pytest.mark.shared
def test_weights_of_classes_of_their_own_get_the_command_that_makes_them_usable(six_class_mobilenet, car_photos, tmp_path, monkeypatch,
                                                                                  capsys):
    """A six-class MobileNetV2 state dict dropped into the weights folder under the model's name: Classify says what
    it is and gives the export command; run with the dataset folder, it makes a ★ checkpoint that classifies."""
    import os
    import shlex

    import torch

    import ui
    from carnet_core.cli import main

    weights, data = tmp_path / "weights", tmp_path / "cars6"
    weights.mkdir()
    imagenet = tmp_path / "imagenet"  # the ImageNet file, loaded first: its model must not stand in for the new one
    imagenet.mkdir()
    os.symlink(need(MOBILENET_TIMM), imagenet / "mobilenetv2_100.pth")
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(imagenet))
    assert len(ui.cached_model("mobilenetv2_100").class_names) == 1000
    for name in SIX:
        (data / "train" / name).mkdir(parents=True)
    state, _ = six_class_mobilenet(sorted(SIX))
    torch.save(state, weights / "mobilenetv2_100.pth")
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("CARNET_ENGINE", "torch")

    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    at.selectbox(key="classify_model").set_value("mobilenetv2_100").run()
    assert not at.exception
    assert any("mobilenetv2_100.pth was trained on 6 classes of its own" in e.value for e in at.error)
    [command] = [c.value for c in at.code]
    assert command.startswith(f"python -m carnet_core export {weights / 'mobilenetv2_100.pth'} --model mobilenetv2_100")

    args = shlex.split(command.replace("DATASET_FOLDER", shlex.quote(str(data))).replace("DATASET", "cars6"))[3:]
    assert main(args) == 0, capsys.readouterr().err
    (weights / "mobilenetv2_100.pth").rename(tmp_path / "mobilenetv2_100.pth")  # "move the original file out"
    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    starred = [o for o in at.selectbox(key="classify_model").options if o.startswith("★ mobilenetv2_100-cars6")]
    assert starred and "6 classes" in starred[0]
    at.selectbox(key="classify_model").set_value(f"checkpoint:{weights / 'mobilenetv2_100-cars6.safetensors'}").run()
    at.file_uploader[0].set_value([("car.jpg", car_photos[0].read_bytes(), "image/jpeg")]).run()
    assert not at.exception and not at.error
    [chart] = bars(at)
    assert len(chart["y"]) == 5 and set(chart["y"]) <= set(SIX)


@pytest.mark.shared
def test_a_classified_photo_is_added_to_a_dataset_under_its_right_class(car_photos, tmp_path, monkeypatch):
    """Gradio's flagging, Teachable Machine's samples: a photo from Classify goes into a class of a dataset built on
    the Fine-tune page, under the class the user says; not on a hosted demo."""
    monkeypatch.setenv("CARNET_DATA_ROOT", str(tmp_path))
    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    at.file_uploader[0].set_value([("car.jpg", car_photos[0].read_bytes(), "image/jpeg")]).run()
    [dataset, label] = at.text_input
    assert dataset.value == "my-cars" and label.value == bars(at)[0]["y"][-1]  # the top-1 to start with
    label.set_value("AM General Hummer")
    [add] = [b for b in at.button if b.key.startswith("collect_add_")]
    add.click().run()
    assert not at.exception and any("Added to **AM General Hummer** of my-cars" in s.value for s in at.success)
    [saved] = (tmp_path / "_built" / "my-cars" / "AM General Hummer").iterdir()
    assert saved.read_bytes() == car_photos[0].read_bytes()
    [add] = [b for b in at.button if b.key.startswith("collect_add_")]
    add.click().run()
    assert any("Already in **AM General Hummer**" in s.value for s in at.success)

    monkeypatch.setenv("CARNET_HOSTED", "1")
    hosted = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    hosted.file_uploader[0].set_value([("car.jpg", car_photos[0].read_bytes(), "image/jpeg")]).run()
    assert not hosted.exception and bars(hosted) and not hosted.text_input


def test_a_fresh_clone_has_a_credited_sample_gallery(monkeypatch):
    """The shipped gallery (gallery/, with gallery/SOURCES.md): thumbnails and results carry each photo's credit, and
    a picture made from a photo carries it in its PNG text."""
    import io

    from PIL import Image

    from carnet_core.data.gallery import credit
    from carnet_core.data.images import png_bytes

    monkeypatch.setenv("CARNET_GALLERY_DIR", str(ROOT / "gallery"))
    at = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    captions = image_captions(at)
    assert len(captions) >= 20 and all(" — " in c for c in captions)  # every thumbnail: title — credit
    assert "yellow 1962 ferrari 250gt classic — by Rex Gray · CC BY 2.0" in captions
    at.multiselect(key="classify_gallery").set_value(["yellow_taxis_new_york_street.jpg"]).run()
    assert not at.exception
    assert "yellow_taxis_new_york_street.jpg — Photo via Pexels (CC0), from IBM MAX-ResNet-50 samples" in \
        image_captions(at)
    rex = credit(ROOT / "gallery" / "yellow_1962_ferrari_250gt_classic.jpg")
    saved = Image.open(io.BytesIO(png_bytes(Image.new("RGB", (4, 4)), rex.png_text())))
    assert saved.text["Author"] == "Rex Gray" and saved.text["Copyright"] == "CC BY 2.0"
    assert saved.text["Description"] == rex.text and "flickr.com" in saved.text["Source"]

