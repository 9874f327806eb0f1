"""Streamlit building blocks shared by the pages: cached models, the model picker, image inputs.

Only UI glue lives here; everything a test can check without a browser is in ``carnet_core``.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import weakref
from collections.abc import Callable, Hashable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import streamlit as st
import torch
from PIL import Image

from carnet_core import CarNetError, ImageError, list_models, load_image, load_model
from carnet_core.config import gallery_dir, jobs_dir, weights_dir
from carnet_core.data import catalog
from carnet_core.data.gallery import Credit
from carnet_core.data.gallery import credits as gallery_credits
from carnet_core.data.images import FORMAT_NAMES, IMAGE_EXTENSIONS, MAX_FILE_BYTES, list_images, thumbnail
from carnet_core.errors import ClassNamesNeededError
from carnet_core.evaluation import compare
from carnet_core.explain.cams import Explanation
from carnet_core.inference.predict import ClassifiedPhoto, PredictionBatch, classify_files
from carnet_core.models import weights as W
from carnet_core.models.catalog import CheckpointEntry, list_checkpoints
from carnet_core.models.classifier import Classifier
from carnet_core.models.refs import ModelRef

T = TypeVar("T")





def fine_tuned() -> dict[str, CheckpointEntry]:
    """{picker key: entry} for fine-tuned checkpoints (jobs folder, weights folder), newest first. Read again as soon
    as a checkpoint file is added, replaced or removed (a fine-tune that just finished is in the next picker)."""
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
    """Registered models with weights here plus fine-tuned checkpoints, and {name: message} for models without."""
    available, missing = [], {}
    for spec in list_models():
        ok, text = weights_status(spec.name)
        if ok:
            available.append(spec.name)
        else:
            missing[spec.name] = text
    return available + list(fine_tuned()), missing


def cached_model(name: str) -> Classifier:
    """A model by registry name or checkpoint key, loaded once per process and shared by all sessions — again when
    its file changes: a checkpoint re-written, a registered model's file put into, replaced in or taken out of the
    weights folder."""
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


@st.cache_resource(show_spinner="Loading model…", max_entries=8)
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
        return False, str(exc)


def device_label() -> str:
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU ({os.cpu_count()} cores) — no GPU found"


def model_picker(key: str, label: str = "Model", default: str = "efficientnet_lite0") -> Classifier:
    """A model select box (registered models, then fine-tuned checkpoints marked ★); stops the page with a clear
    message when the chosen model has no weights or its checkpoint cannot be loaded."""
    names = [s.name for s in list_models()]
    status = {n: weights_status(n) for n in names}
    names.sort(key=lambda n: not status[n][0])  # available first
    checkpoints = fine_tuned()
    title = model_titles(checkpoints)  # the checkpoints listed once per rerun
    status.update({k: (True, "") for k in checkpoints})
    names = [n for n in names if status[n][0]] + list(checkpoints) + [n for n in names if not status[n][0]]
    pick = st.selectbox(label, names, index=names.index(default) if default in names else 0, key=key,
                        format_func=lambda n: title(n) if status[n][0] else f"{n} (no usable weights)")
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
        st.error(f"Cannot load {model_title(name)}: {exc}")
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


MAX_PHOTOS = 32  # classified per run of the Classify page (a classroom's worth; each is decoded at full size)
PHOTO_UPLOAD_MB = MAX_FILE_BYTES // 2**20  # the uploader says the library's limit, and refuses bigger files at once


#: The sample gallery shows this many photos as thumbnails of this width (px); all can be picked by name.
GALLERY_THUMBNAILS, GALLERY_THUMBNAIL_PX = 24, 128


def sample_title(file_name: str) -> str:
    """How the gallery names a photo: its file name without the extension, ``_`` read as a space
    (``Audi_S5_Convertible_2012_02335.jpg`` → ``Audi S5 Convertible 2012 02335``)."""
    return Path(file_name).stem.replace("_", " ")


def gallery_thumbnail(path: Path) -> bytes | None:
    """:func:`carnet_core.data.images.thumbnail` of a gallery photo (a 2x screen's ``GALLERY_THUMBNAIL_PX``), made once
    per process and again when the file changes; None for a file that cannot be read."""
    try:
        stat = path.stat()
    except OSError:  # gone since the folder was listed
        return None
    return _thumbnail(str(path), stat.st_mtime_ns, stat.st_size)


@st.cache_data(max_entries=512, show_spinner=False)
def _thumbnail(path: str, mtime_ns: int, size: int) -> bytes | None:
    try:
        return thumbnail(path, 2 * GALLERY_THUMBNAIL_PX)
    except ImageError:
        return None


def photo_credit(name: str) -> Credit | None:
    """The credit of a sample-gallery photo by its file name (the name :func:`image_inputs` gives it), else None."""
    return gallery_credits(gallery_dir()).get(name)


def photo_caption(name: str, title: str | None = None) -> str:
    """A photo's caption: ``title`` (default its name) and, for a sample-gallery photo, its credit."""
    credit = photo_credit(name)
    return f"{title or name} — {credit.short}" if credit else (title or name)


def image_inputs(key: str, multiple: bool = True) -> list[tuple[str, bytes]]:
    """Upload / camera / gallery tabs. Returns (display name, bytes-like source) pairs, possibly empty."""
    upload_tab, camera_tab, gallery_tab = st.tabs(["Upload", "Camera", "Sample gallery"])
    chosen: list[tuple[str, bytes]] = []
    with upload_tab:
        files = st.file_uploader(f"Car photos ({FORMAT_NAMES})", accept_multiple_files=multiple,
                                 key=f"{key}_upload", max_upload_size=PHOTO_UPLOAD_MB)
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
            shown = [(p.name, gallery_thumbnail(p)) for p in samples[:GALLERY_THUMBNAILS]]
            shown = [(n, t) for n, t in shown if t is not None]  # an unreadable file is said when picked
            st.image([t for _, t in shown], caption=[photo_caption(n, sample_title(n)) for n, _ in shown],
                     width=GALLERY_THUMBNAIL_PX)
            if len(samples) > GALLERY_THUMBNAILS:
                st.caption(f"The first {GALLERY_THUMBNAILS} of {len(samples)} photos; pick any of them by name.")
            picked = st.multiselect("Sample images", [p.name for p in samples], key=f"{key}_gallery",
                                    max_selections=None if multiple else 1, format_func=sample_title)
            chosen += [(n, (folder / n).read_bytes()) for n in picked]
    return chosen


def classified(model: Classifier, photos: Sequence[Photo], topk: int = 5
               ) -> tuple[list[ClassifiedPhoto], PredictionBatch | None]:
    """:func:`carnet_core.inference.predict.classify_files` of ``photos``, :func:`remembered` for this session while the model
    and the photos stay the same.

    Raises:
        CarNetError: from :func:`carnet_core.inference.predict.classify_files`.
    """
    return remembered("_classified", [model], (topk, tuple((p.name, p.digest) for p in photos)),
                      lambda: classify_files(model, [(p.name, p.data) for p in photos], topk=topk))


EXPLANATIONS_KEPT = 10  # per session (every method once, and one more); ~0.8 MB each at 224 px


def digest(data: bytes) -> str:
    """SHA-256 of an image file's bytes (hex): what :func:`explanation` remembers a photo by."""
    return hashlib.sha256(data).hexdigest()


class Photo:
    """One photo given to a page (a pair from :func:`image_inputs`): its name and bytes, their :func:`digest`, and the
    decoded RGB image, read on first use only (a 12 MP JPEG takes about 0.1 s to decode), then kept for this run."""

    def __init__(self, name: str, data: bytes):
        self.name, self.data = name, data

    @cached_property
    def digest(self) -> str:
        return digest(self.data)

    @cached_property
    def image(self) -> Image.Image:
        """Raises:
            ImageError: the bytes are not an image PIL can read (the message says why)."""
        return load_image(self.data, name=self.name)


def remembered(slot: str, models: Sequence[Classifier], key: Hashable, compute: Callable[[], T] | None,
               keep: int = 1) -> T | None:
    """``compute()`` — what a page works out from its photos with these models: their top-5, a photo's size, a CAM —
    remembered for this session under ``slot`` while the models and ``key`` (the photos' digests, say) stay the same;
    the last ``keep`` are kept. A rerun (a toggle, a slider, an ensemble rule) redraws without decoding and classifying
    the photos again. Measured with 12 MP JPEGs (AppTest): Classify with 8 photos 2.4 s per rerun, Explain 0.16 s,
    Compare with two models 0.22 s. ``compute=None``: only what is remembered, else None. A model is recognised by
    identity, not only by its id, which CPython may give to the next model loaded once the app's cache drops one.

    Raises:
        whatever ``compute`` raises (nothing is remembered then).
    """
    memory = st.session_state.setdefault(slot, {})  # (ids, names, key) -> (the models' weakrefs, value); oldest first
    full_key = (tuple(id(m) for m in models), tuple(m.name for m in models), key)
    refs, value = memory.pop(full_key, (None, None))
    if refs is None or any(ref() is not m for ref, m in zip(refs, models)):  # not kept, or kept for another model
        if compute is None:
            return None
        refs, value = [weakref.ref(m) for m in models], compute()
    memory[full_key] = refs, value  # most recently used last
    while len(memory) > keep:
        memory.pop(next(iter(memory)))
    return value


def explanation(model: Classifier, photo: Photo, method: str, class_name: str | None, layer: str | None,
                compute: bool = True, aug_smooth: bool = False, eigen_smooth: bool = False) -> Explanation | None:
    """The CAM of ``photo`` (decoded only when the CAM is computed) for this model, method, class, layer and
    smoothing, :func:`remembered` for this session by the photo's digest: a slider or colormap change, or a second
    look, does not compute it again (ScoreCAM takes about a minute). ``compute=False``: only what is remembered, else
    None. The last :data:`EXPLANATIONS_KEPT` are kept.

    Raises:
        CarNetError: from :func:`carnet_core.explain.cams.explain` (unknown class or layer); ImageError from
            :attr:`Photo.image`.
    """
    import carnet_core.explain.cams as cams

    def cam() -> Explanation:
        return cams.explain(model, photo.image, method=method, class_name=class_name, layer=layer,
                            aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)

    return remembered("_explanations", [model], (photo.digest, method, class_name, layer, aug_smooth, eigen_smooth),
                      cam if compute else None, keep=EXPLANATIONS_KEPT)


def has_gpu() -> bool:
    return torch.cuda.is_available()











@st.cache_data(show_spinner="Checking the dataset (unreadable files, duplicates across splits)…", max_entries=16)
def _dataset_report(folder: str, mtime: float) -> dict:
    from carnet_core.data.datacheck import validate_splits
    from carnet_core.data.readers import open_dataset

    return validate_splits(open_dataset(folder)).to_dict()


def dataset_report(folder: str) -> dict:
    """The validation report of a dataset folder as a dict (cached until the folder changes)."""
    path = Path(folder)
    mtime = max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.iterdir()])
    return _dataset_report(folder, mtime)


@st.cache_data(show_spinner="Timing a training step on this machine…", max_entries=32)
def epoch_estimate(model: str, head: str, img_size: int, batch_size: int, n_train: int, n_val: int) -> dict:
    from carnet_core.training.estimate import estimate_epoch_seconds

    return estimate_epoch_seconds(model, head, img_size, batch_size, n_train, n_val)




def first_measurable(key: str, folders: list[Path], models: list[Classifier]) -> int:
    """The index a dataset picker (widget ``key``) starts at
    (:func:`carnet_core.evaluation.compare.first_measurable`), chosen on the page's first run and kept: a picker's
    default must not move under the user."""
    remembered = f"_{key}_first_measurable"
    if remembered not in st.session_state:
        st.session_state[remembered] = compare.first_measurable(folders, models, catalog.mapping_files())
    return min(st.session_state[remembered], max(len(folders) - 1, 0))




def model_card(key: str) -> dict:
    """The card of a registered model or checkpoint as a dict (:class:`carnet_core.evaluation.cards.ModelCard` fields plus
    ``has_weights``, ``metrics`` and the weights ``fingerprint``), cached per process. A registered model without
    weights here gets a card counted on random weights (parameters and GMACs do not depend on them)."""
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


#: The weights fingerprint a registered model without weights here is measured under: on random weights, which cost
#: what the real ones do (the same network; the benchmark measures such models so too).
RANDOM_WEIGHTS = "random weights"


def cached_cost(key: str) -> dict | None:
    """Latency / peak memory measured earlier on this machine for this model's current weights (or, without weights
    here, on random weights), or None."""
    from carnet_core.evaluation.cards import cached_cost as read

    return read(key, model_card(key)["fingerprint"])


def measure(key: str) -> dict:
    """Measure latency and peak memory of a model in a fresh process and cache the result (see carnet_core.evaluation.cards); a
    registered model without weights here is measured on random weights."""
    from carnet_core.evaluation.cards import measure_cost

    card = model_card(key)
    args = ModelRef.parse(key).load_args()
    if not card["has_weights"]:
        args["weights"] = "random"
    return measure_cost(key, card["fingerprint"], args)
