"""``python -m carnet_core bundle OUT_DIR``: a folder a Heroku-style host builds and runs as it is — the app, the
chosen models exported for serving (ONNX with the pooled feature map, the classifier for CAMs, what the pages show of
each model, the engine chosen on a labelled set), the Procfile, ``.python-version``, a Dockerfile and a short README.

The bundle is the serving tier: its ``bundle.json`` puts the app in it (:func:`carnet_core.config.serving_tier`), its
models are run by ONNX Runtime (:mod:`carnet_core.inference.serving`), their CAMs are the closed forms of
:mod:`carnet_core.explain.closed_form`, and its ``requirements.txt`` has no PyTorch, torchvision, timm, grad-cam,
Lightning, wandb, mlflow or OpenVINO.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from carnet_core import __version__
from carnet_core.config import PROJECT_ROOT
from carnet_core.errors import CarNetError
from carnet_core.evaluation.cards import count_macs, layer_table
from carnet_core.inference.export import export_serving_onnx
from carnet_core.inference.parity import LabelledPhotos
from carnet_core.inference.selection import select_engine
from carnet_core.inference.serving import SERVED_ENGINES
from carnet_core.models.classifier import Classifier

#: What of the project goes into a bundle (the app and what it reads), relative to the project folder.
APP_FILES: tuple[str, ...] = ("app.py", "app_pages", "ui", "carnet_core", "gallery", "mappings", ".streamlit",
                              "Procfile")
#: The serving tier's packages: no torch, torchvision, timm, grad-cam, lightning, wandb, mlflow or OpenVINO.
SERVING_REQUIREMENTS = """# CarNet's serving tier: the bundled app runs its models with ONNX Runtime, without PyTorch
streamlit==1.67.0
onnxruntime==1.31.1
numpy>=1.26,<3
pillow>=10.0,<14
plotly>=5.20,<8
pandas>=2.0,<4
safetensors>=0.4,<1
pi-heif==1.4.0
"""
PYTHON_VERSION = "3.11"
DOCKERFILE = """FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
ENV CARNET_HOSTED=1 CARNET_WEIGHTS_DIR=/app/weights PORT=8501
EXPOSE 8501
CMD ["bash", "-c", "streamlit run app.py --server.headless true --server.port $PORT --server.address 0.0.0.0 --browser.gatherUsageStats false --client.showErrorDetails none --client.toolbarMode viewer"]
"""


@dataclass
class BundledModel:
    """One model in a bundle: its name, files (relative to the bundle) and the engine chosen for it."""

    name: str
    files: list[str]
    engine: str
    gate: str = ""


@dataclass
class Bundle:
    """What :func:`write_bundle` wrote: the folder, its models, and the labelled set the engines were chosen on."""

    folder: Path
    models: list[BundledModel] = field(default_factory=list)
    calibration: str | None = None


def write_bundle(out: str | Path, models: Sequence[Classifier], calibration: Callable[[Classifier],
                 LabelledPhotos | None] | None = None, progress: Callable[[str], None] | None = None) -> Bundle:
    """Write a deployable folder at ``out`` (which must not exist, or be empty) with the app and ``models``.

    Args:
        models: loaded classifiers with linear heads (the serving export's condition).
        calibration: model → its labelled set for the reduced-precision accuracy gate (None: fp32 engines only); the
            engine is chosen now, so that no visitor waits for it.
        progress: told what is being done, a line at a time.

    Raises:
        CarNetError: ``out`` exists and is not empty; a model whose head cannot be served; a file that cannot be
            written.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CarNetError(f"{out} already exists and is not an empty folder: choose a new one")
    say = progress or (lambda _line: None)
    bundle = Bundle(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in APP_FILES:
            src = PROJECT_ROOT / name
            if src.is_dir():
                shutil.copytree(src, out / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif src.is_file():
                shutil.copy2(src, out / name)
        for model in models:
            say(f"exporting {model.name}")
            stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.name)
            path = export_serving_onnx(model, out / "models" / f"{stem}.onnx")
            gate_set = calibration(model) if calibration else None
            choice = select_engine(model, calibration=gate_set, among=SERVED_ENGINES)
            size = tuple(model.data_config["input_size"])
            meta_path = Path(str(path) + ".json")
            meta = json.loads(meta_path.read_text())
            meta.update({"params": model.num_params, "gmacs": round(count_macs(model.module, size) / 1e9, 4),
                         "file_mb": round(path.stat().st_size / 2**20, 2), "label_set": model.label_set,
                         "family": model.family, "head": model.head, "metrics": model.metrics,
                         "layers": [asdict(row) for row in layer_table(model.module, size)],
                         **{k: model.extra[k] for k in ("dataset", "recipe") if model.extra.get(k) is not None},
                         "engine": {**choice.to_dict(), "measured": time.strftime("%Y-%m-%d %H:%M")}})
            meta_path.write_text(json.dumps(meta, indent=1))
            files = [f"models/{path.name}", f"models/{path.name}.json", f"models/{path.name}.npz"]
            if choice.engine.name == "onnxruntime-int8":
                shutil.copyfile(choice.engine.path, out / "models" / f"{stem}-int8.onnx")
                files.append(f"models/{stem}-int8.onnx")
            bundle.models.append(BundledModel(model.name, files, choice.engine.name, choice.gate_text()))
            if gate_set is not None:
                bundle.calibration = gate_set.name
        (out / "requirements.txt").write_text(SERVING_REQUIREMENTS)
        (out / ".python-version").write_text(PYTHON_VERSION + "\n")
        (out / "Dockerfile").write_text(DOCKERFILE)
        (out / "README.md").write_text(_readme(bundle))
        (out / "bundle.json").write_text(json.dumps({
            "carnet": __version__, "created": time.strftime("%Y-%m-%d %H:%M"), "calibration": bundle.calibration,
            "models": [vars(m) for m in bundle.models]}, indent=1))
    except OSError as exc:
        raise CarNetError(f"cannot write the bundle in {out}: {exc.strerror or exc}") from None
    return bundle


def _readme(bundle: Bundle) -> str:
    rows = "\n".join(f"| {m.name} | {m.engine} | {m.gate or '–'} |" for m in bundle.models)
    return f"""# CarNet, bundled for hosting

Made by `python -m carnet_core bundle` on {time.strftime("%Y-%m-%d")}. The app runs in hosted mode (the Procfile sets
`CARNET_HOSTED=1`): no training, no server folders, uploads capped.

| model | engine | its gate |
| --- | --- | --- |
{rows}

The models are in `models/`: ONNX (outputs logits, probabilities and the pooled feature map), the classifier in
`.npz` for the CAMs, and a `.json` with class names, data config, provenance, parameters, GMACs and the engine chosen
when bundling{f" on {bundle.calibration}" if bundle.calibration else ""}.

`requirements.txt` is the serving tier's: Streamlit, ONNX Runtime, NumPy, Pillow, Plotly, pandas — no PyTorch. The
heatmaps are computed from the models' last feature maps without it; ScoreCAM, AblationCAM, other layers and
fine-tuning need CarNet's full install.

## Deploy

- **Heroku**: `git init && git add . && git commit -m carnet && heroku create && git push heroku main` (the
  `Procfile` and `.python-version` are read as they are).
- **Render**: a new Web Service from this folder's repository; build `pip install -r requirements.txt`, start
  command the `Procfile`'s `web:` line.
- **Railway**: `railway up` in this folder (it reads the `Procfile`).
- **Fly.io**: `fly launch` (it finds the `Dockerfile`), then `fly deploy`.
- **Hugging Face Space**: a new Space with the Docker SDK; push this folder (the `Dockerfile` listens on `$PORT`,
  8501 by default: set `app_port: 8501` in the Space's README header).
"""
