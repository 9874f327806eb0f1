"""What a session remembers and the slow results cached per process: CAMs, the dataset report, the epoch
estimate, where a dataset picker starts."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TypeVar

import streamlit as st

from carnet_core.config import public_text, session_pixel_budget

from carnet_core.data import catalog
from carnet_core.evaluation import compare
from carnet_core.explain.cams import Explanation
from carnet_core.inference.predict import ClassifiedPhoto, PredictionBatch, classify_files
from carnet_core.models.classifier import Classifier
from ui.photos import Photo

T = TypeVar("T")


EXPLANATIONS_KEPT = 10  # per session (every method once, and one more); ~0.8 MB each at 224 px


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
def epoch_estimate(model: str, head: str, img_size: int, batch_size: int, n_train: int, n_val: int,
                   probe: bool = False, sample_images: Sequence[str] = ()) -> dict:
    from carnet_core.training.estimate import estimate_epoch_seconds

    return estimate_epoch_seconds(model, head, img_size, batch_size, n_train, n_val, probe=probe,
                                  sample_images=sample_images)


def first_measurable(key: str, folders: list[Path], models: list[Classifier]) -> int:
    """The index a dataset picker (widget ``key``) starts at
    (:func:`carnet_core.evaluation.compare.first_measurable`), chosen on the page's first run and kept: a picker's
    default must not move under the user."""
    remembered = f"_{key}_first_measurable"
    if remembered not in st.session_state:
        st.session_state[remembered] = compare.first_measurable(folders, models, catalog.mapping_files())
    return min(st.session_state[remembered], max(len(folders) - 1, 0))


DECODED_KEY = "_decoded_pixels"  # pixels this session has decoded for Classify


def classified(model: Classifier, photos: Sequence[Photo], topk: int = 5
               ) -> tuple[list[ClassifiedPhoto], PredictionBatch | None]:
    """:func:`carnet_core.inference.predict.classify_files` of ``photos``, :func:`remembered` for this session while the model
    and the photos stay the same; the pixels decoded are counted against the session's budget
    (:func:`carnet_core.config.session_pixel_budget`).

    Raises:
        CarNetError: from :func:`carnet_core.inference.predict.classify_files`.
    """
    def run() -> tuple[list[ClassifiedPhoto], PredictionBatch | None]:
        used = st.session_state.get(DECODED_KEY, 0)
        result = classify_files(model, [(p.name, p.data) for p in photos], topk=topk,
                                session_pixels_left=max(0, session_pixel_budget() - used))
        st.session_state[DECODED_KEY] = used + sum(p.view.size[0] * p.view.size[1] for p in result[0] if p.view)
        return result

    return remembered("_classified", [model], (topk, tuple((p.name, p.digest) for p in photos)), run)


def keep_result(slot: str, settings: Hashable, result: object) -> None:
    """Keep ``result`` for the session in ``slot``, with the ``settings`` it was made with."""
    st.session_state[slot] = (settings, result)


def kept_result(slot: str, settings: Hashable) -> tuple[object | None, bool]:
    """(the result kept in ``slot``, whether one was kept under other settings): a result is never shown under
    settings it was not made with — then it is None and the flag says the page should ask for a new run."""
    made_with, result = st.session_state.get(slot, (None, None))
    if result is not None and made_with != settings:
        return None, True
    return result, False


def public(message: object) -> str:
    """A message (an exception, say) as the page may show it: on a hosted demo without the server's folders
    (:func:`carnet_core.config.public_text`)."""
    return public_text(str(message))


def keep_widget_values(*keys: str) -> None:
    """Keep the values of the widgets ``keys`` through runs that stop before drawing them (Explain without a photo,
    while one photo is swapped for another). Streamlit drops a widget's value from the session when a run does not
    draw it, and the widget then came back at its default in the browser while the page's last result still showed
    the old choice — the next touch of any control switched the result. Writing each value back before the widgets
    are drawn makes it the session's, not the widget's, so it survives (Streamlit's documented way to keep widget
    values across such runs)."""
    for key in keys:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
