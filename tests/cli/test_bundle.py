"""`python -m carnet_core bundle`: a deployable folder with the app, the models exported for serving, their engines
chosen on a labelled set, and the files a Heroku-style host, Docker or a Hugging Face Space reads."""

import json
import subprocess
import sys

import pytest
from conftest import CARS_VAL, need

from carnet_core.inference.serving import SERVED_ENGINES

SERVING_FORBIDDEN = ("torch", "torchvision", "timm", "grad-cam", "lightning", "wandb", "mlflow", "openvino")


@pytest.mark.slow
@pytest.mark.shared
def test_a_bundle_holds_the_app_and_its_models_ready_to_serve(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path / "cache"))  # the engine choice it stores stays here
    out = tmp_path / "site"
    code, stdout, err = cli("bundle", out, "--models", "efficientnet_lite0", "--calibration", need(CARS_VAL))
    assert code == 0, err
    assert f"wrote {out}: 1 model" in stdout
    for name in ("app.py", "Procfile", "requirements.txt", "Dockerfile", "README.md",
                 ".python-version", "bundle.json", "app_pages/1_Classify.py", "ui/present.py",
                 "carnet_core/explain/closed_form.py", "gallery/SOURCES.md", ".streamlit/config.toml",
                 "models/efficientnet_lite0.onnx", "models/efficientnet_lite0.onnx.npz"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("__pycache__"))
    meta = json.loads((out / "models" / "efficientnet_lite0.onnx.json").read_text())
    assert meta["outputs"] == ["logits", "probabilities", "features"] and meta["cam_layer"] == "bn2"
    assert meta["params"] == 4652008 and 0.3 < meta["gmacs"] < 0.5 and meta["file_mb"] > 10
    assert [row["name"] for row in meta["layers"]][:2] == ["conv_stem", "bn1"]  # the card's layer table
    assert len(meta["class_names"]) == 1000 and meta["engine"]["engine"] in SERVED_ENGINES  # what the tier runs
    assert {c["name"] for c in meta["engine"]["candidates"]} <= {"torch", *SERVED_ENGINES}  # torch: the reference
    gates = [c["gate"] for c in meta["engine"]["candidates"] if c["gate"]]
    assert gates and all(g["set_name"].startswith("stanford_cars_40/val") for g in gates)  # chosen on the set given
    listed = json.loads((out / "bundle.json").read_text())
    assert listed["models"][0]["name"] == "efficientnet_lite0" and listed["calibration"].startswith("stanford_cars")
    serving = [line.split("=")[0].split(">")[0].split("<")[0].strip().lower()
               for line in (out / "requirements.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert "onnxruntime" in serving and "streamlit" in serving and not set(serving) & set(SERVING_FORBIDDEN)
    assert (out / ".python-version").read_text().strip() == "3.11"
    assert "CMD" in (out / "Dockerfile").read_text() and "Hugging Face Space" in (out / "README.md").read_text()
    # the bundle's own copy of the library runs (its CLI, from the bundle's folder)
    proc = subprocess.run([sys.executable, "-m", "carnet_core", "--help"], cwd=out, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "bundle" in proc.stdout

    code, _, err = cli("bundle", out, "--models", "efficientnet_lite0")
    assert code == 2 and "already exists and is not an empty folder" in err
