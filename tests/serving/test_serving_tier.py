"""The torch-free serving tier: a bundle's models run by ONNX Runtime give the full install's probabilities and CAMs,
and the bundled app's pages run in a process where PyTorch cannot be imported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, colour_image

from carnet_core import CarNetError
from carnet_core.data.images import load_image
from carnet_core.explain.cams import explain, methods_for
from carnet_core.explain.closed_form import CLOSED_FORM_METHODS
from carnet_core.inference.predict import predict, predict_probabilities
from carnet_core.inference.selection import select_engine
from carnet_core.inference.serving import ServedModel, load_served, served_model_files

HERE = Path(__file__).resolve().parent
BLOCKER = HERE / "block_full_install"
GALLERY = sorted((ROOT / "gallery").glob("*.jpg"))


#: A labelled folder for the bundle's data root: classes named after ImageNet classes (no mapping needed).
CLASSES = {"sports car": (200, 40, 40), "pickup": (40, 160, 40), "minivan": (40, 40, 200)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, lite0):
    """A bundle of EfficientNet-Lite0 and Lite1 (real ImageNet weights), written by the CLI's own function, with the
    full-install models it was made from; its data root holds one labelled folder of generated photos."""
    from carnet_core import load_model
    from carnet_core.cli.bundle import write_bundle

    lite1 = load_model("efficientnet_lite1", device="cpu", use_hub=False)
    out = tmp_path_factory.mktemp("bundle") / "site"
    write_bundle(out, [lite0, lite1])
    for k, (name, rgb) in enumerate(CLASSES.items()):
        (out / "data" / "vehicles" / name).mkdir(parents=True)
        for i in range(4):
            colour_image(rgb, 10 * k + i, size=96).save(out / "data" / "vehicles" / name / f"{i}.png")
    return out, {"efficientnet_lite0": lite0, "efficientnet_lite1": lite1}


def served(bundle, name: str) -> ServedModel:
    out, _ = bundle
    return load_served(served_model_files(out / "models")[name])


@pytest.mark.slow
def test_a_served_model_describes_itself_as_the_full_install_does(bundle):
    out, full = bundle
    assert list(served_model_files(out / "models")) == ["efficientnet_lite0", "efficientnet_lite1"]
    model, reference = served(bundle, "efficientnet_lite0"), full["efficientnet_lite0"]
    assert model.class_names == reference.class_names and model.data_config == reference.data_config
    assert model.num_params == reference.num_params and model.weights == reference.weights
    assert model.cam_layer == "bn2" and model.feature_shape == (1280, 7, 7)
    assert model.extra["layers"] and 0.3 < model.extra["gmacs"] < 0.5
    choice = select_engine(model)  # chosen when bundling: nothing measured now
    assert choice.engine.name == "onnxruntime" and choice.reason.startswith("chosen when the bundle was made")
    assert methods_for(model) == ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam", "finercam")
    assert "scorecam" in methods_for(reference)  # the full install's model keeps every method


@pytest.mark.slow
@pytest.mark.shared
def test_served_probabilities_equal_the_full_installs_on_every_real_photo(bundle, car_photos):
    _, full = bundle
    model, reference = served(bundle, "efficientnet_lite0"), full["efficientnet_lite0"]
    worst = {"onnxruntime": 0.0, "torch": 0.0}
    for start in range(0, len(car_photos), 16):
        images = [load_image(p) for p in car_photos[start:start + 16]]
        ours = model.run(model.preprocess(images))[0]
        for engine in worst:
            theirs = predict_probabilities(reference, reference.preprocess(images), engine=engine).numpy()
            worst[engine] = max(worst[engine], float(np.abs(ours - theirs).max()))
    assert worst["onnxruntime"] <= 1e-4 and worst["torch"] <= 1e-4, worst
    top = predict(model, [load_image(car_photos[0])])[0]  # the same top-5 path as the full install's
    assert top.class_names == predict(reference, [load_image(car_photos[0])])[0].class_names


@pytest.mark.slow
@pytest.mark.parametrize("method", CLOSED_FORM_METHODS)
def test_served_cams_equal_pytorch_grad_cams(bundle, method):
    _, full = bundle
    model, reference = served(bundle, "efficientnet_lite0"), full["efficientnet_lite0"]
    for path in GALLERY[:2]:
        image = load_image(path)
        ours, theirs = explain(model, image, method), explain(reference, image, method)
        assert (ours.class_index, ours.layer) == (theirs.class_index, theirs.layer)
        assert np.abs(ours.heatmap - theirs.heatmap).max() <= 1e-4, (method, path.name)
        assert ours.probability == pytest.approx(theirs.probability, abs=1e-4)
        assert ours.faithfulness == pytest.approx(theirs.faithfulness, abs=1e-4)  # an ONNX pass of the masked photo
        assert np.abs(ours.image - theirs.image).max() <= 1e-6  # what the model sees, shown beside the map


@pytest.mark.slow
def test_what_a_served_model_cannot_do_is_refused_with_the_reason(bundle):
    model = served(bundle, "efficientnet_lite0")
    image = load_image(GALLERY[0])
    with pytest.raises(CarNetError, match="ScoreCAM is not available in this demo"):
        explain(model, image, "scorecam")
    with pytest.raises(CarNetError, match="at its last feature map"):
        explain(model, image, "gradcam", layer="blocks.3")
    with pytest.raises(CarNetError, match="augmentation smoothing is not available"):
        explain(model, image, "gradcam", aug_smooth=True)


def test_files_that_are_not_a_serving_export_are_refused(tmp_path):
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(b"onnx")
    Path(str(plain) + ".json").write_text(json.dumps({"name": "plain", "outputs": ["logits", "probabilities"],
                                                      "class_names": ["a", "b"]}))
    with pytest.raises(CarNetError, match="not a serving export"):
        load_served(plain)
    assert served_model_files(tmp_path) == {}  # and not listed
    with pytest.raises(CarNetError, match="metadata"):
        load_served(tmp_path / "absent.onnx")


def drive(out: Path, **env: str) -> dict:
    """tests/serving/drive_bundle.py on the bundle ``out``, with PyTorch and the full install's other packages made
    unimportable; what its pages showed."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CARNET_")}  # the tests' own folders: not the bundle's
    proc = subprocess.run([sys.executable, str(HERE / "drive_bundle.py"), str(out)], cwd=out, capture_output=True,
                          text=True, timeout=600, env={**clean, "PYTHONPATH": f"{BLOCKER}{os.pathsep}{out}",
                                                       "CARNET_CACHE_DIR": str(out / ".cache"), **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_bundled_app_runs_its_pages_without_pytorch(bundle):
    out, _ = bundle
    seen = drive(out, CARNET_HOSTED="1")
    assert not seen["torch_imported"] and seen["full_install_modules"] == []
    pages = seen["pages"]
    assert {name: page["exceptions"] for name, page in pages.items()} == {name: [] for name in pages}
    assert not [t for t in seen["texts"] if "Something went wrong" in t]  # app.py's catch-all: no fault hidden there
    assert len(pages["classify"]["bars"]) == 3  # three gallery photos, five bars each
    assert all(len(bars) == 5 for bars in pages["classify"]["bars"])
    assert any("engine: chosen when the bundle was made" in t for t in pages["classify"]["texts"])
    assert "Live camera" not in pages["classify"]["toggles"]  # no WebRTC packages in the serving tier
    similar = pages["classify_similar"]  # features from the export's feature map, 6 photos per photo
    assert sum(t.startswith("**Most like") for t in similar["texts"]) == 3
    explain_page = pages["explain"]
    assert explain_page["methods"] == ["GradCAM", "GradCAM++", "HiResCAM", "XGradCAM", "LayerCAM", "EigenCAM",
                                       "FinerCAM"]  # the closed forms (as the select box shows them)
    assert explain_page["layers"] == ["bn2"]
    assert "GradCAM heatmap · layer bn2" in explain_page["images"]
    assert any(t.startswith("Faithfulness") and "probability of" in t for t in explain_page["texts"])
    assert any("without PyTorch" in t for t in explain_page["texts"])  # what it cannot do, in one line
    compare = pages["compare"]
    # the photo: two members and their ensemble; the folder: each member's and each ensemble's accuracy
    assert len(compare["bars"]) == 4 and "**Ensemble**" in compare["texts"]
    assert sorted(compare["bars"][3]) == ["efficientnet_lite0", "efficientnet_lite1", "ensemble (geometric)",
                                          "ensemble (hard)", "ensemble (soft)"]
    assert sum(c.startswith("Grad-CAM for") for c in compare["images"]) == 2
    folder = {row["model / rule"]: row for row in compare["tables"][0]}  # members and ensembles on the folder
    assert set(folder) == {"efficientnet_lite0", "efficientnet_lite1", "ensemble (soft)", "ensemble (geometric)",
                           "ensemble (hard)"} and all(0 <= r["top-1 (%)"] <= 100 for r in folder.values())
    assert any(t.startswith("12 images in `vehicles`") for t in compare["texts"])  # the folder by its name
    evaluate = pages["evaluate"]
    assert evaluate["metrics"]["images"] == "12" and evaluate["metrics"]["top-1"].endswith("%")
    assert evaluate["tabs"] == ["Per class", "Confusion", "Mistakes", "Calibration"]  # no scikit-learn or cleanlab
    assert any("need CarNet's full install" in t for t in evaluate["texts"])
    assert any(t.startswith("Engine **onnxruntime**") for t in pages["models"]["texts"])
    assert any("latency is measured on this server" in t for t in pages["models"]["texts"])
    home = " ".join(pages["home"]["texts"])  # what the demo has, not what the serving tier leaves out
    assert "(efficientnet_lite0, efficientnet_lite1)" in home
    for absent in ("live camera", "label errors", "embedding map", "ResNet", "and layer", "Fine-tune"):
        assert absent not in home, absent
    # a public visitor reads no server path and no operator instruction
    text = "\n".join(seen["texts"])
    for secret in (str(out), str(Path.home()), "/tmp/", "CARNET_", "python -m carnet_core", "Fine-tune"):
        assert secret not in text, secret


@pytest.mark.slow
def test_a_server_warms_up_every_model_once_before_the_first_visitor(bundle):
    from carnet_core.inference.serving import cached_served, warm_up

    out, _ = bundle
    warm_up(out / "models").join(120)
    for path in served_model_files(out / "models").values():
        model = cached_served(path)
        assert "latency_ms" in vars(model) and model.latency_ms > 0  # measured by the warm-up, not by this line
        assert cached_served(path) is model  # one instance per file, shared by every session
