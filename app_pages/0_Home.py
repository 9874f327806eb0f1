"""Home: what CarNet is, which models have weights here, and which device runs them."""

import pandas as pd
import streamlit as st

import ui
from carnet_core import list_models
from carnet_core.config import can_train, hosted_mode, serving_tier, weights_dir
from carnet_core.evaluation.evaluate import explorer_extras
from carnet_core.models.weights import find_in_weights_dir

st.set_page_config(page_title="CarNet", page_icon="🚗", layout="wide")
st.title("🚗 CarNet")
served = list(ui.served())  # the serving tier: the models bundled with this demo; what it leaves out is not said
networks = ", ".join(served) if served else "EfficientNet, MobileNetV2, ResNet-50, SE-ResNet-50"
extras = explorer_extras()
st.markdown(
    "An interactive demo and model explorer for **car image classification**. Upload a photo and see what "
    f"ImageNet-trained networks ({networks}) think it is — with top-5 probabilities, the vehicle classes among them, "
    "and how long each prediction took."
)
st.markdown("**Pages** (sidebar):\n"
            "- **Classify** — upload, snap or pick photos and get the top-5 classes per image"
            + (", or point the live camera at a car;\n" if ui.live_camera_available() else ";\n") +
            "- **Explain** — Grad-CAM heatmaps: what the network looked at, for any class"
            + (";\n" if served else " and layer;\n") +
            "- **Compare** — two or more models side by side, their ensemble, and both measured on a labelled folder;\n"
            + ("" if not can_train() else "- **Fine-tune** — teach a backbone your own classes (a folder, a zip, or photos "
                                        "added class by class): a quick model in seconds, or a full fine-tune in a "
                                        "background job with its curves;\n") +
            "- **Models** — what each model costs here (parameters, GMACs, latency" + ("" if served else ", memory")
            + "), how it was made, and downloads to deploy it elsewhere;\n"
            "- **Evaluate** — a model on a labelled dataset: per-class precision and recall, the photos behind each "
            "confusion cell, " + ("possible label errors, an embedding map of similar photos, " if extras else "")
            + "calibration.\n\n"
            "On a projector, turn on **Presentation mode** in the sidebar (or add `?present=1` to the address).")

st.subheader("Models and their weights")
rows = []
for name in ui.served():  # the serving tier: the models bundled with this demo, exported for ONNX Runtime
    model = ui.cached_model(name)
    rows.append({"model": name, "available": "yes", "timm architecture": model.arch, "head": model.head,
                 "labels": f"{model.label_set} ({model.num_classes} classes)", "weights": model.weights.describe(),
                 "about": f"ONNX Runtime ({model.engine_name}), chosen when this demo was bundled"})
for spec in [] if serving_tier() else list_models():
    available, where = ui.weights_status(spec.name)
    unusable = not available and find_in_weights_dir(spec) is not None  # a file there, which cannot be used
    rows.append({"model": spec.name, "available": "yes" if available else "no", "timm architecture": spec.arch,
                 "head": spec.head, "labels": spec.label_set,
                 "weights": ui.public(where) if available or unusable else "missing", "about": spec.description})
starred = []
for entry in ui.fine_tuned().values():  # the ★ models of every picker: fine-tunes, CarNet checkpoints in weights/
    starred.append({"model": f"★ {entry.label}", "available": "no" if entry.problem else "yes",
                    "timm architecture": entry.arch,
                    "head": entry.head, "labels": f"{entry.label_set} ({len(entry.class_names)} classes)",
                    "weights": ui.public(entry.path), "about": entry.title})
rows = [r for r in rows if r["available"] == "yes"] + starred + [r for r in rows if r["available"] == "no"]  # as pickers
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", height=min(35 * len(rows) + 38, 640),
             column_config={"weights": st.column_config.TextColumn(width="medium")})  # where from: wider
if not hosted_mode() and not serving_tier():  # where to put weights files is for whoever runs the server, not a demo's visitor
    st.caption(f"Models without weights: put a state dict or CarNet checkpoint named `<model>.safetensors` (or .pth) "
               f"in `{weights_dir()}`, or run once with network access so timm can download them. Weights "
               f"fine-tuned elsewhere on classes of their own: `python -m carnet_core export FILE --model NAME --classes "
               f"DATASET_FOLDER --format safetensors --out {weights_dir() / 'NAME.safetensors'}` and pick them ★.")

st.subheader("Device")
st.write(ui.device_label())
