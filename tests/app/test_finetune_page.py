"""The Fine-tune page through AppTest: launch on generated data, poll until done, curves and the new model appear."""

import json
import shutil
import time

import pytest
from conftest import ROOT
from streamlit.proto.Block_pb2 import Block
from streamlit.testing.v1 import AppTest

TIMEOUT = 180
PAGE = str(ROOT / "app_pages" / "4_Fine-tune.py")


@pytest.fixture
def dirs(colour_folder, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(colour_folder, data / "colours")
    monkeypatch.setenv("CARNET_DATA_ROOT", str(data))
    monkeypatch.setenv("CARNET_JOBS_DIR", str(tmp_path / "jobs"))
    return data


@pytest.mark.slow
@pytest.mark.subprocess
def test_launch_watch_and_reuse_a_fine_tune(dirs):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="finetune_folder").value.name == "colours"
    assert [m.value for m in at.metric][:3] == ["3", "54", "18"]  # classes, train, val (seeded 75/25 split)
    at.select_slider(key="finetune_img").set_value(96)
    at.number_input(key="finetune_epochs").set_value(2)
    at.number_input(key="finetune_batch").set_value(6)
    at.number_input(key="finetune_lr").set_value(1e-3)
    at.selectbox(key="finetune_aug").set_value("flip + crop only")
    at.button(key="finetune_estimate").click().run()
    assert any("per epoch" in i.value for i in at.info), [i.value for i in at.info]
    at.button(key="finetune_launch").click().run()
    assert not at.exception, at.exception
    [running] = at.dataframe[-1].value.to_dict("records")  # the Runs table is drawn once; the live panel ticks
    assert running["status"] == "running" and running["duration"] is None  # it said 0:00 all the run long

    deadline = time.time() + 300
    while time.time() < deadline:
        at.run()
        assert not at.exception, at.exception
        table = at.dataframe[-1].value if at.dataframe else None
        if table is not None and "status" in table and set(table["status"]) == {"done"}:
            break
        time.sleep(1)
    else:
        pytest.fail("the fine-tune did not finish")
    row = table.iloc[0]
    assert row["model"] == "efficientnet_lite0" and row["epochs"] == "2/2" and row["best top-1 (%)"] > 50
    assert 0 <= row["linear probe (%)"] <= 100  # the page launches LP-FT: its probe, scored before epoch 1
    overlay = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    [curve] = overlay[-1]["data"]  # one run: its linear probe at epoch 0, then its two epochs
    assert curve["x"] == [0, 1, 2] and round(curve["y"][0], 1) == row["linear probe (%)"]
    assert any("Best checkpoint" in c.value for c in at.caption)

    classify = AppTest.from_file(str(ROOT / "app_pages" / "1_Classify.py"), default_timeout=TIMEOUT).run()
    picker = classify.selectbox(key="classify_model")
    starred = [o for o in picker.options if o.startswith("★")]
    assert len(starred) == 1 and "3 classes" in starred[0]


@pytest.mark.subprocess
def test_settings_that_cannot_train_are_refused_at_launch(dirs, tmp_path):
    """More head-only epochs than epochs: said at Launch, and no job is queued (it used to train head-only)."""
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    at.toggle(key="finetune_probe").set_value(False)
    at.number_input(key="finetune_epochs").set_value(2)
    at.number_input(key="finetune_freeze").set_value(5)
    at.button(key="finetune_launch").click().run()
    assert not at.exception, at.exception
    assert any("freeze_epochs must be from 0 to epochs (2) (got 5)" in e.value for e in at.error), at.error
    assert not list((tmp_path / "jobs").glob("*/spec.json"))


def test_a_jobs_folder_that_cannot_be_written_is_a_message(dirs, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CARNET_JOBS_DIR", str(blocker / "jobs"))  # cannot be created: a file is in the way
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert any("cannot keep fine-tune jobs in" in e.value and "CARNET_JOBS_DIR" in e.value for e in at.error)


def test_unsafe_zip_or_one_without_class_folders_is_refused(dirs):
    import io
    import zipfile

    photo = next((dirs / "colours" / "red").iterdir()).read_bytes()

    def zipped(members):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name in members:
                z.writestr(name, photo)
        return buf.getvalue()

    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    at.radio(key="finetune_source").set_value("Upload a zip of class folders").run()
    at.file_uploader(key="finetune_zip").set_value(("evil.zip", zipped(["../../evil.png"]), "application/zip")).run()
    assert not at.exception
    assert any("Upload refused" in e.value and "outside" in e.value for e in at.error)
    # photos without class folders: said in the zip's terms, not the server folder it went to, which is not kept
    at.file_uploader(key="finetune_zip").set_value(("holiday cars.zip", zipped(["a.png", "b.png"]), "application/zip"))
    at.run()
    assert not at.exception and not at.success and not at.get("metric")
    [error] = at.error
    assert error.value.startswith("Upload refused — holiday cars.zip holds 2 images but no class sub-folders, so "
                                  "they have no labels: put each class's images in a folder named after it "
                                  "(holiday cars.zip/<class name>/<images> or "), error.value
    assert str(dirs) not in error.value and not list((dirs / "_uploads").iterdir())
    at.file_uploader(key="finetune_zip").set_value(("cars.zip", zipped(["cars/red/a.png", "cars/blue/b.png"]),
                                                    "application/zip")).run()
    assert not at.exception and "Extracted" in at.success[0].value and at.metric[0].value == "2"  # classes


def test_hosted_mode_cannot_launch(dirs, monkeypatch):
    monkeypatch.setenv("CARNET_HOSTED", "1")
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("switched off" in i.value for i in at.info)
    assert not at.get("selectbox") and not at.get("button") and not at.get("file_uploader")


@pytest.mark.shared
def test_hosted_mode_compare_offers_only_the_data_root(dirs, tmp_path, monkeypatch):
    import os

    from conftest import MOBILENET_TIMM, need

    weights = tmp_path / "weights"
    weights.mkdir()
    os.symlink(need(MOBILENET_TIMM), weights / "mobilenetv2_100.pth")  # Compare needs two models
    monkeypatch.setenv("CARNET_WEIGHTS_DIR", str(weights))
    monkeypatch.setenv("CARNET_HOSTED", "1")
    at = AppTest.from_file(str(ROOT / "app_pages" / "3_Compare.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert not [t for t in at.text_input if t.key == "compare_folder"]  # no free-typed server paths
    assert at.selectbox(key="compare_folder_hosted").options == ["colours"]


def test_a_data_root_that_is_one_dataset_is_offered_as_one(colour_folder, tmp_path, monkeypatch):
    """CARNET_DATA_ROOT set to a dataset itself (class folders of images): that dataset is offered, not each of its
    classes as a dataset ("…/red has no class sub-folders"); a zip uploaded there does not become one of its classes."""
    import io
    import zipfile

    from conftest import colour_image

    from carnet_core.data.datasets import is_one_dataset

    data = tmp_path / "colours"
    shutil.copytree(colour_folder, data)
    monkeypatch.setenv("CARNET_DATA_ROOT", str(data))
    monkeypatch.setenv("CARNET_JOBS_DIR", str(tmp_path / "jobs"))
    assert is_one_dataset(data) and not is_one_dataset(tmp_path)  # a folder of datasets is not one
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception and not at.error, at.error
    assert at.selectbox(key="finetune_folder").options == ["colours"]
    assert [m.value for m in at.metric][:3] == ["3", "54", "18"]

    buf, png = io.BytesIO(), io.BytesIO()
    colour_image((0, 0, 255), 0).save(png, "PNG")
    with zipfile.ZipFile(buf, "w") as z:
        for c in ("sky", "sea"):
            z.writestr(f"blues/{c}/0.png", png.getvalue())
    at.radio(key="finetune_source").set_value("Upload a zip of class folders").run()
    at.file_uploader(key="finetune_zip").set_value(("blues.zip", buf.getvalue(), "application/zip")).run()
    assert not at.exception and any("Extracted" in s.value for s in at.success)
    at.radio(key="finetune_source").set_value("Folder under the data root").run()
    assert at.selectbox(key="finetune_folder").options == ["colours", "blues (uploaded blues.zip)"]
    assert [m.value for m in at.metric][:3] == ["3", "54", "18"]  # still 3 classes: the upload is not a fourth
    evaluate = AppTest.from_file(str(ROOT / "app_pages" / "6_Evaluate.py"), default_timeout=TIMEOUT).run()
    assert not evaluate.exception and not evaluate.error, evaluate.error
    assert evaluate.selectbox(key="evaluate_folder").options == ["colours", "blues (uploaded blues.zip)"]


ADD_PHOTOS = "FormSubmitter:finetune_build_form-Add the photos to this class"


def build_field(at, label):
    """The "Class" text input or "Its photos" uploader of the build-a-dataset form (their keys change once photos
    are added, for empty fields)."""
    return next(w for w in [*at.text_input, *at.get("file_uploader")] if w.label == label)


@pytest.mark.subprocess
def test_a_dataset_of_one_class_cannot_be_launched(dirs):
    """A one-class folder was offered Launch, and "trained" to 100 % top-1 on nothing to tell apart."""
    shutil.copytree(dirs / "colours" / "red", dirs / "solo" / "red")
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    at.selectbox(key="finetune_folder").set_value(dirs / "solo").run()
    assert not at.exception and [m.value for m in at.metric][0] == "1"
    assert any("`solo` cannot be fine-tuned on: only one class (red)" in e.value for e in at.error)
    assert at.button(key="finetune_launch").disabled
    at.selectbox(key="finetune_folder").set_value(dirs / "colours").run()
    assert not at.error and not at.button(key="finetune_launch").disabled


@pytest.mark.shared
def test_photos_picked_for_a_class_are_kept_until_they_are_added(dirs, car_photos):
    """The build form cleared on every submit: photos picked before the class name was typed were lost to "give the
    class a name" (and a class name to Enter, which submitted the form). Now the fields keep what was given until the
    photos are in; then they are empty for the next class."""
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    at.radio(key="finetune_source").set_value("Build one from photos, class by class").run()
    build_field(at, "Its photos").set_value([(p.name, p.read_bytes(), "image/jpeg") for p in car_photos[:3]])
    at.button(key=ADD_PHOTOS).click().run()
    assert any("give the class a name" in e.value for e in at.error)
    assert len(build_field(at, "Its photos").value) == 3  # still picked
    build_field(at, "Class").set_value("sports car")
    at.button(key=ADD_PHOTOS).click().run()
    assert not at.exception and any("3 photos added to **sports car**" in s.value for s in at.success)
    assert len(list((dirs / "_built" / "my-cars" / "sports car").iterdir())) == 3
    assert build_field(at, "Class").value == "" and not build_field(at, "Its photos").value  # ready for the next
    build_field(at, "Class").set_value("pickup")
    at.button(key=ADD_PHOTOS).click().run()
    assert any("Choose some photos" in w.value for w in at.warning) and build_field(at, "Class").value == "pickup"


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.subprocess
def test_a_dataset_built_class_by_class_on_the_page_is_ready_to_fine_tune(dirs, car_photos):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    at.radio(key="finetune_source").set_value("Build one from photos, class by class").run()
    assert not at.exception
    assert any("at least two classes" in i.value for i in at.info) and not at.get("metric")

    def add(class_name, photos):
        build_field(at, "Class").set_value(class_name)
        build_field(at, "Its photos").set_value(
            [(p.name, p.read_bytes(), "image/jpeg") for p in photos] + [("notes.txt", b"hello", "text/plain")])
        at.button(key=ADD_PHOTOS).click().run()
        assert not at.exception, at.exception

    add("sports car", car_photos[:6])
    assert any("6 photos added to **sports car**" in s.value for s in at.success)
    assert any("notes.txt" in e.value and "not an image" in e.value for e in at.error)
    assert any("at least two classes" in i.value for i in at.info)
    add("pickup", car_photos[100:106])
    built = dirs / "_built" / "my-cars"
    assert sorted(p.name for p in built.iterdir()) == ["pickup", "sports car"]
    assert [m.value for m in at.metric][:3] == ["2", "8", "4"]  # the validation report of the new dataset
    assert not at.button(key="finetune_launch").disabled  # two classes of photos: ready to train

    # teach in 20 seconds: the features were computed as the photos came in; the quick model costs only its fit
    teacher = at.session_state["_quick_teacher"][1]
    assert teacher.counts() == {"sports car": 6, "pickup": 6} and teacher.feature_s > 0
    spent = teacher.feature_s
    at.button(key="finetune_quick_train").click().run()
    assert not at.exception, at.exception
    assert at.session_state["_quick_teacher"][1].feature_s == spent  # nothing computed again
    assert any(s.value.startswith("Trained in ") and "on 12 photos of 2 classes" in s.value for s in at.success)
    quick = dirs.parent / "jobs" / "quick" / "my-cars-tf_efficientnet_lite0.safetensors"
    assert quick.is_file()
    try_it = next(u for u in at.get("file_uploader") if u.label == "Try it: a photo")
    try_it.set_value((car_photos[1].name, car_photos[1].read_bytes(), "image/jpeg")).run()
    chart = json.loads(at.get("plotly_chart")[-1].proto.spec)["data"][0]
    assert sorted(chart["y"]) == ["pickup", "sports car"] and not at.exception

    at.text_input(key="finetune_build_name").set_value("../elsewhere").run()
    assert any("dataset name '../elsewhere': no / or" in e.value for e in at.error)
    at.text_input(key="finetune_build_name").set_value("my-cars").run()
    at.selectbox(key="finetune_build_remove").set_value("pickup").run()
    at.button(key="finetune_build_remove_run").click().run()
    assert not at.exception and sorted(p.name for p in built.iterdir()) == ["sports car"]
    at.radio(key="finetune_source").set_value("Folder under the data root").run()
    assert "my-cars (built here)" in at.selectbox(key="finetune_folder").options  # and from now on a dataset like any other


def test_enter_in_a_form_field_does_not_submit_it(dirs):
    """Streamlit submits a form on Enter with its first button: typing an epoch count and Enter started a timing run
    ("Estimate time per epoch"). Only the buttons submit now, as in the class-by-class form."""
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()

    def forms(node, found):
        proto = getattr(node, "proto", None)
        if isinstance(proto, Block) and proto.WhichOneof("type") == "form":
            found[proto.form.form_id] = proto.form.enter_to_submit
        for child in getattr(node, "children", {}).values():
            forms(child, found)
        return found

    assert forms(at._tree, {}) == {"finetune_form": False}


def _finished_run(jobs, job_id, created, state="done", epochs=2):
    """A run folder as the job runner leaves it: spec, status and per-epoch metrics."""
    folder = jobs / job_id
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"model": "efficientnet_lite0", "head": "linear", "epochs": 5,
                                                  "data": "/data/colours", "out": str(folder)}))
    (folder / "status.json").write_text(json.dumps({"state": state, "created": created, "ended": created + 60,
                                                    "started": created + 1, "label": f"run {job_id}"}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({
        "epoch": e, "train_loss": 1.0 / e, "val_loss": 1.0 / e, "top1": 0.5 + e / 10, "top5": 1.0, "lr": 1e-3,
        "images_per_s": 10.0, "seconds": 5.0}) + "\n" for e in range(1, epochs + 1)))


def test_a_run_that_was_just_stopped_is_in_the_curves_and_the_run_picker(dirs, tmp_path):
    """After Stop, the stopped run was missing from "Compare runs" and the Run picker stayed on the older run: the
    widgets kept the choice made before it existed."""
    jobs = tmp_path / "jobs"
    _finished_run(jobs, "20261206-070000-aaaaaa", 1_000)
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    assert at.multiselect(key="finetune_overlay").value == ["20261206-070000-aaaaaa"]
    _finished_run(jobs, "20261206-071000-bbbbbb", 2_000, state="cancelled", epochs=1)  # stopped after one epoch
    at.run()
    assert not at.exception, at.exception
    assert "20261206-071000-bbbbbb" in at.multiselect(key="finetune_overlay").value
    assert at.selectbox(key="finetune_run").value == "20261206-071000-bbbbbb"
    at.selectbox(key="finetune_run").set_value("20261206-070000-aaaaaa").run()  # a choice made now is kept
    at.run()
    assert at.selectbox(key="finetune_run").value == "20261206-070000-aaaaaa"
