"""A page of photos behind a number (a confusion cell, a class, the mistakes, the possible label errors), each with
its caption and a Grad-CAM button, and the CAM of the one picked shown under the grid."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from carnet_core import CarNetError
from carnet_core.errors import count
from carnet_core.evaluation.evaluate import outcome_caption
from carnet_core.models.classifier import Classifier
from carnet_core.models.labels import find_class
from ui.models import input_view
from ui.photos import Photo
from ui.session import explanation, public

PHOTOS_PER_PAGE = 24  # four rows of six thumbnails
PER_ROW = 6
CAM_KEY = "evaluate_cam"  # (evaluation, grid, photo) of the Grad-CAM asked for


def photo_grid(model: Classifier, photos: list[dict], key: str, evaluation: str, description: str) -> None:
    """Show ``photos`` (entries of an evaluation's predictions) a page at a time as the model sees them, captioned by
    :func:`carnet_core.evaluation.evaluate.outcome_caption`, each with a Grad-CAM button; ``key`` names this grid's
    widgets (a new key for new filters starts at page 1), ``evaluation`` the report they come from (a CAM picked in
    another evaluation is not shown here) and ``description`` says which photos and in what order."""
    pages = max(1, -(-len(photos) // PHOTOS_PER_PAGE))
    page = st.columns(4)[0].number_input("Page", 1, pages, 1, key=f"{key}_page") if pages > 1 else 1
    first = (page - 1) * PHOTOS_PER_PAGE
    st.caption(f"{count(len(photos), 'photo')}, {description}" + (f"; page {page} of {pages}" if pages > 1 else "")
               + ", as the model sees them (resized and center-cropped).")
    for i, p in enumerate(photos[first:first + PHOTOS_PER_PAGE], start=first):
        if i % PER_ROW == 0:
            row = st.columns(PER_ROW)  # a row at a time: each row starts level
        with row[i % PER_ROW]:
            view = input_view(p["path"], model)
            if view is not None:
                st.image(view, width="stretch")
            st.caption(outcome_caption(p))
            if st.button("Grad-CAM", key=f"{key}_cam_{i}"):
                st.session_state[CAM_KEY] = (evaluation, key, p)
    for_evaluation, for_grid, picked = st.session_state.get(CAM_KEY, (None, None, None))
    if picked and (for_evaluation, for_grid) == (evaluation, key):
        _show_cam(model, picked)


def _show_cam(model: Classifier, picked: dict) -> None:
    """The photo as the model sees it beside its Grad-CAM for the predicted class (the top-1 where the prediction is
    a mapped dataset class), computed once per session (:func:`ui.session.explanation`)."""
    path = Path(picked["path"])
    if not path.is_file():
        st.warning(f"{path.name} is no longer there.")
        return
    st.markdown(f"**What {model.name} looked at** — `{path.name}`: labelled **{picked['label']}**, predicted "
                f"**{picked['predicted']}**")
    try:
        photo = Photo(path.name, path.read_bytes())
        target = picked["predicted"] if find_class(model.class_names, picked["predicted"]) is not None else None
        exp = explanation(model, photo, "gradcam", target, None)
        left, right, _ = st.columns(3)
        view = input_view(path, model)  # cached: a rerun does not decode the photo again
        left.image(view if view is not None else photo.image, caption="as the model sees it", width="stretch")
        right.image(exp.overlay(), caption=f"Grad-CAM for '{exp.class_name}' ({exp.layer})", width="stretch")
    except (CarNetError, OSError) as exc:  # ImageError is a CarNetError; a file removed since
        st.error(public(exc))
