"""The app's models: pickers (registered models and fine-tuned checkpoints), models cached per process, their
weights' status, cards and measured cost."""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import streamlit as st
from PIL import Image

from carnet_core import CarNetError, list_models, load_model
from carnet_core.config import jobs_dir, served_models_dir, serving_tier, weights_dir
from carnet_core.errors import ClassNamesNeededError
from carnet_core.inference.serving import ServedModel, cached_served, served_model_files, warm_up
from carnet_core.models import weights as W
from carnet_core.models.catalog import CheckpointEntry, list_checkpoints
from carnet_core.models.classifier import Classifier
from carnet_core.models.refs import ModelRef
from ui.session import public


def served() -> dict[str, Path]:
    """The serving tier's models: {name: serving export} (:func:`carnet_core.inference.serving.served_model_files`),
    read again when a file of the bundle's models folder changes; {} in the full install."""
    if not serving_tier():
        return {}
    folder = served_models_dir()
    try:
        listing = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()))
    except OSError:
        listing = ()
    return {name: Path(path) for name, path in _served(str(folder), listing).items()}


@st.cache_data(show_spinner=False, max_entries=4)
def _served(folder: str, listing: tuple) -> dict[str, str]:  # listing: the folder's files and times
    return {name: str(path) for name, path in served_model_files(folder).items()}


def fine_tuned() -> dict[str, CheckpointEntry]:
    """{picker key: entry} for fine-tuned checkpoints (jobs folder, weights folder), newest first. Read again as soon
    as a checkpoint file is added, replaced or removed (a fine-tune that just finished is in the next picker). None in
    the serving tier, whose models are the bundle's."""
    if serving_tier():
        return {}
    folders = (str(jobs_dir()), str(weights_dir()))
    return {ModelRef.of_checkpoint(e.path).key: e for e in _checkpoints(folders, _checkpoint_files(folders))}


def _checkpoint_files(folders: tuple[str, ...]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime ns) of every ``.safetensors`` file under ``folders``: a few stat calls per rerun, against
    opening every checkpoint's header."""
    found = []
    for folder in map(Path, folders):
        for path in folder.rglob("*.safetensors") if folder.is_dir() else ():
            try:
                st_ = path.stat()
            except OSError:  # removed while listing
                continue
            found.append((str(path), st_.st_size, st_.st_mtime_ns))
    return tuple(sorted(found))


@st.cache_data(show_spinner=False, max_entries=16)
def _checkpoints(folders: tuple[str, ...], files: tuple[tuple[str, int, int], ...]) -> list[CheckpointEntry]:
    return list_checkpoints(list(folders))


def model_titles(checkpoints: dict[str, CheckpointEntry] | None = None) -> Callable[[str], str]:
    """How a picker shows a model key — the registry name, or ★ and the checkpoint's title — as a ``format_func``
    that reads the checkpoint list once (or uses ``checkpoints``, :func:`fine_tuned` already read), not once per
    option (hundreds of runs in the jobs folder)."""
    checkpoints = fine_tuned() if checkpoints is None else checkpoints
    return lambda name: f"★ {checkpoints[name].title}" if name in checkpoints else name


def model_title(name: str) -> str:
    """How a picker shows one model key (see :func:`model_titles`, for many)."""
    return model_titles()(name) if ModelRef.parse(name).is_checkpoint else name


def available_model_names() -> tuple[list[str], dict[str, str]]:
    """Registered models with weights here plus usable fine-tuned checkpoints, and {name: message} for models
    without usable weights (an unusable ★ checkpoint with the reason). The serving tier: the bundle's models."""
    if serving_tier():
        return list(served()), {}
    available, missing = [], {}
    for spec in list_models():
        ok, text = weights_status(spec.name)
        if ok:
            available.append(spec.name)
        else:
            missing[spec.name] = text
    for key, entry in fine_tuned().items():
        if entry.problem:
            missing[key] = f"★ {entry.label} cannot be used: {entry.problem}"
        else:
            available.append(key)
    return available, missing


def cached_model(name: str) -> Classifier | ServedModel:
    """A model by registry name or checkpoint key, loaded once per process and shared by all sessions — again when
    its file changes: a checkpoint re-written, a registered model's file put into, replaced in or taken out of the
    weights folder. In the serving tier: the bundle's model of that name (a :class:`ServedModel`).

    Raises:
        CarNetError: the model cannot be loaded (the serving tier: the bundle has no such model).
    """
    if serving_tier():  # loaded at start-up (warm_up_once), in well under a second
        path = served().get(name)
        if path is None:
            raise CarNetError(f"this demo has no model {name!r}")
        return cached_served(path)
    ref = ModelRef.parse(name)
    if ref.is_checkpoint:
        return _cached_model(name, f"{ref.checkpoint.stat().st_mtime_ns}" if ref.checkpoint.exists() else "")
    from carnet_core import get_spec

    found = W.find_in_weights_dir(get_spec(name))
    return _cached_model(name, f"{found}:{found.stat().st_mtime_ns}" if found is not None else "")


def input_view(path: str | Path, model: Classifier) -> Image.Image | None:
    """The photo at ``path`` as ``model`` sees it (:meth:`Classifier.input_view`), cached per file and data config;
    None when it cannot be read. Thumbnails of one size, so a grid of them lines up."""
    path = Path(path)
    try:
        return _input_view(str(path), path.stat().st_mtime, repr(model.data_config), model)
    except (OSError, CarNetError):
        return None


@st.cache_data(show_spinner=False, max_entries=256)  # 150 kB each at 224 px
def _input_view(path: str, mtime: float, data_config: str, _model: Classifier) -> Image.Image:  # _model: not hashed
    from carnet_core import load_image

    return _model.input_view(load_image(path))


#: What the page says while a model loads, on a cache miss only: the first load with PyTorch measured 1.7–4.5 s on a
#: 2-core CPU (docs/measurements.md).
@st.cache_resource(show_spinner="Loading the model: a few seconds, once per server…", max_entries=8)
def _cached_model(name: str, stamp: str) -> Classifier:  # stamp: which file, and when it was written
    return load_model(**ModelRef.parse(name).load_args())


def weights_status(name: str) -> tuple[bool, str]:
    """(available, provenance or the message saying where to put a file, or why the weights folder's file for it
    cannot be used) for a registered model. A file put in the weights folder counts at the next rerun, once it is
    checked to load (:func:`carnet_core.models.loading.usable_weights`); the Hugging Face cache is looked at again after a
    minute."""
    folder = weights_dir()
    try:
        files = tuple(sorted((p.name, st_.st_size, st_.st_mtime_ns) for p in folder.iterdir() for st_ in [p.stat()]))
    except OSError:  # no weights folder (yet)
        files = ()
    return _weights_status(name, str(folder), files)


@st.cache_data(ttl=60, show_spinner=False)
def _weights_status(name: str, folder: str, files: tuple = ()) -> tuple[bool, str]:  # files: the folder's listing
    from carnet_core.models.loading import usable_weights

    try:
        return True, usable_weights(name, folder=Path(folder)).describe()
    except CarNetError as exc:  # none found, or the weights folder's file cannot be used
        return False, public(exc)


def device_label() -> str:
    """Where models run: the GPU's name, or the CPU's cores (the serving tier runs on the CPU)."""
    if has_gpu():
        import torch  # lazy: the serving tier has no torch

        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores)" + ("" if serving_tier() else " — no GPU found")


def model_picker(key: str, label: str = "Model", default: str = "efficientnet_lite0") -> Classifier:
    """A model select box (registered models, then fine-tuned checkpoints marked ★); stops the page with a clear
    message when the chosen model has no weights or its checkpoint cannot be loaded."""
    if serving_tier():
        names = list(served())
        if not names:
            st.error("This demo has no models.")
            st.stop()
        pick = st.selectbox(label, names, index=names.index(default) if default in names else 0, key=key)
        return model_or_stop(pick)
    names = [s.name for s in list_models()]
    status = {n: weights_status(n) for n in names}
    names.sort(key=lambda n: not status[n][0])  # available first
    checkpoints = fine_tuned()
    title = model_titles(checkpoints)  # the checkpoints listed once per rerun
    status.update({k: (e.problem is None, f"★ {e.label} cannot be used: {e.problem}") for k, e in checkpoints.items()})
    names = ([n for n in names if status[n][0]] + [k for k, e in checkpoints.items() if not e.problem]
             + [k for k, e in checkpoints.items() if e.problem] + [n for n in names if not status[n][0]])
    pick = st.selectbox(label, names, index=names.index(default) if default in names else 0, key=key,
                        format_func=lambda n: title(n) if status[n][0] or n in checkpoints else
                        f"{n} (no usable weights)")
    if not status[pick][0]:
        st.error(status[pick][1])
        st.stop()
    return model_or_stop(pick)


def model_or_stop(name: str) -> Classifier:
    """:func:`cached_model`, or, when the file cannot be loaded (a checkpoint that does not fit its architecture, a
    damaged file), a message naming it and the reason, and the page stops there."""
    try:
        return cached_model(name)
    except CarNetError as exc:
        st.error(f"Cannot load {model_title(name)}: {public(exc)}")
        if isinstance(exc, ClassNamesNeededError):
            st.info("To use it here, make it a CarNet checkpoint, which carries its class names (it is then listed "
                    "★), and move the original file out of the weights folder:")
            st.code(class_names_command(exc), language="bash", wrap_lines=True)
        st.stop()


def class_names_command(exc: ClassNamesNeededError) -> str:
    """The CLI command that turns the weights file of ``exc`` into a CarNet checkpoint in the weights folder."""
    out = weights_dir() / f"{exc.model}-DATASET.safetensors"
    return (f"python -m carnet_core export {shlex.quote(exc.path)} --model {exc.model} --classes DATASET_FOLDER "
            f"--format safetensors --out {shlex.quote(str(out))}")


def has_gpu() -> bool:
    """Whether torch sees a CUDA GPU; False in the serving tier (ONNX Runtime on the CPU)."""
    if serving_tier():
        return False
    import torch  # lazy: the serving tier has no torch

    return torch.cuda.is_available()


def model_card(key: str) -> dict:
    """The card of a registered model or checkpoint as a dict (:class:`carnet_core.evaluation.cards.ModelCard` fields plus
    ``has_weights``, ``metrics`` and the weights ``fingerprint``), cached per process. A registered model without
    weights here gets a card counted on random weights (parameters and GMACs do not depend on them)."""
    if serving_tier():  # the bundle's metadata: counted when it was made
        from carnet_core.evaluation.cards import served_card  # lazy: as make_card below, only the Models page needs it

        model = cached_model(key)
        return {**served_card(key, model).to_dict(), "has_weights": True, "metrics": dict(model.metrics or {}),
                "fingerprint": SERVED}
    ref = ModelRef.parse(key)
    has_weights = ref.is_checkpoint or weights_status(key)[0]
    return _model_card(key, ref.stamp(), has_weights)


@st.cache_data(show_spinner=False, max_entries=64)
def _model_card(key: str, mtime: float, has_weights: bool) -> dict:
    from carnet_core.evaluation.cards import model_card as make_card
    from carnet_core.inference.export import fingerprint

    model = cached_model(key) if has_weights else load_model(key, weights="random", device="cpu")
    card = make_card(key, model).to_dict()
    card.update(has_weights=has_weights, metrics=dict(model.metrics or {}),
                fingerprint=fingerprint(model) if has_weights else RANDOM_WEIGHTS)
    return card


#: The weights "fingerprint" of a served model's card: the bundle's file is the model.
SERVED = "served"

#: The weights fingerprint a registered model without weights here is measured under: on random weights, which cost
#: what the real ones do (the same network; the benchmark measures such models so too).
RANDOM_WEIGHTS = "random weights"


def cached_cost(key: str) -> dict | None:
    """Latency / peak memory measured earlier on this machine for this model's current weights (or, without weights
    here, on random weights), or None. The serving tier: latency measured in this process, once per model file
    (:attr:`carnet_core.inference.serving.ServedModel.latency_ms`, usually at start-up by ``warm_up``; no peak memory of
    its own: the models share the server)."""
    if serving_tier():
        path = served().get(key)
        return None if path is None else _served_cost(str(path), path.stat().st_mtime_ns)
    from carnet_core.evaluation.cards import cached_cost as read

    return read(key, model_card(key)["fingerprint"])


@st.cache_resource(show_spinner="Measuring the model's latency…", max_entries=16)
def _served_cost(path: str, stamp: int) -> dict:  # stamp: when the file was written
    return {"latency_ms": cached_served(path).latency_ms, "peak_memory_mb": None,
            "measured": time.strftime("%Y-%m-%d %H:%M")}


def measure(key: str) -> dict:
    """Measure latency and peak memory of a model in a fresh process and cache the result (see carnet_core.evaluation.cards); a
    registered model without weights here is measured on random weights."""
    from carnet_core.evaluation.cards import measure_cost

    card = model_card(key)
    args = ModelRef.parse(key).load_args()
    if not card["has_weights"]:
        args["weights"] = "random"
    return measure_cost(key, card["fingerprint"], args)


@st.cache_resource(show_spinner=False)
def warm_up_once() -> bool:
    """Start :func:`carnet_core.inference.serving.warm_up` once per server process in the serving tier (a cached
    resource: the first run of any page starts it); False in the full install, whose models load on first use."""
    if not serving_tier():
        return False
    warm_up()
    return True
