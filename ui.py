"""Streamlit building blocks shared by the pages: cached models, the model picker, image inputs.

Only UI glue lives here; everything a test can check without a browser is in ``carnet_core``.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st
import torch

from carnet_core import CarNetError, list_models, load_model
from carnet_core import weights as W
from carnet_core.images import IMAGE_EXTENSIONS, list_images
from carnet_core.model import Classifier

ROOT = Path(__file__).resolve().parent


def gallery_dir() -> Path:
    """Sample gallery folder: ``$CARNET_GALLERY_DIR`` or ``gallery/`` in the project."""
    return Path(os.environ.get("CARNET_GALLERY_DIR", ROOT / "gallery"))


def data_root() -> Path:
    """Default folder offered for labelled datasets: ``$CARNET_DATA_ROOT`` or ``data/`` in the project."""
    return Path(os.environ.get("CARNET_DATA_ROOT", ROOT / "data"))


def available_model_names() -> tuple[list[str], dict[str, str]]:
    """Registered models with weights here, and {name: message} for those without."""
    available, missing = [], {}
    for spec in list_models():
        ok, text = weights_status(spec.name)
        if ok:
            available.append(spec.name)
        else:
            missing[spec.name] = text
    return available, missing


@st.cache_resource(show_spinner="Loading model…", max_entries=8)
def cached_model(name: str) -> Classifier:
    """A model loaded once per process and shared by all sessions (never mutated by the pages)."""
    return load_model(name)


def weights_status(name: str) -> tuple[bool, str]:
    """(available, provenance or the message saying where to put a file) for a registered model."""
    return _weights_status(name, str(W.weights_dir()))


@st.cache_data(ttl=60, show_spinner=False)
def _weights_status(name: str, folder: str) -> tuple[bool, str]:
    from carnet_core import get_spec

    try:
        return True, W.resolve(get_spec(name), folder=Path(folder)).describe()
    except CarNetError as exc:
        return False, str(exc)


def device_label() -> str:
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores) — no GPU found"


def model_picker(key: str, label: str = "Model", default: str = "efficientnet_lite0") -> Classifier:
    """A model select box; stops the page with a clear message when the chosen model has no weights."""
    names = [s.name for s in list_models()]
    status = {n: weights_status(n) for n in names}
    names.sort(key=lambda n: not status[n][0])  # available first
    pick = st.selectbox(label, names, index=names.index(default) if default in names else 0, key=key,
                        format_func=lambda n: n if status[n][0] else f"{n} (no weights)")
    if not status[pick][0]:
        st.error(status[pick][1])
        st.stop()
    try:
        return cached_model(pick)
    except CarNetError as exc:
        st.error(f"Cannot load {pick}: {exc}")
        st.stop()


def image_inputs(key: str, multiple: bool = True) -> list[tuple[str, object]]:
    """Upload / camera / gallery tabs. Returns (display name, bytes-like source) pairs, possibly empty."""
    upload_tab, camera_tab, gallery_tab = st.tabs(["Upload", "Camera", "Sample gallery"])
    chosen: list[tuple[str, object]] = []
    with upload_tab:
        files = st.file_uploader("Car photos (JPEG, PNG, WebP, BMP, GIF, TIFF)", accept_multiple_files=multiple,
                                 key=f"{key}_upload")
        files = files if isinstance(files, list) else [files] if files else []
        chosen += [(f.name, f.getvalue()) for f in files]
    with camera_tab:
        if st.toggle("Use the camera", key=f"{key}_camera_on"):
            shot = st.camera_input("Take a photo", key=f"{key}_camera")
            if shot is not None:
                chosen.append(("camera photo", shot.getvalue()))
    with gallery_tab:
        folder = gallery_dir()
        samples = list_images(folder)
        if not samples:
            st.info(f"The sample gallery is empty. Put some car photos ({', '.join(IMAGE_EXTENSIONS[:5])}…) in "
                    f"`{folder}`, or point `CARNET_GALLERY_DIR` at a folder of images, then reload.")
        else:
            picked = st.multiselect("Sample images", [p.name for p in samples], key=f"{key}_gallery",
                                    max_selections=None if multiple else 1)
            chosen += [(n, (folder / n).read_bytes()) for n in picked]
    return chosen
