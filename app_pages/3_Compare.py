"""Compare: two or more models side by side on one photo, their ensemble, and both measured on a labelled folder."""

import json
from pathlib import Path

import pandas as pd
import streamlit as st

import ui
from carnet_core import CarNetError, ImageError
from carnet_core.charts import accuracy_bar_figure, topk_bar_figure
from carnet_core.config import data_root, folder_photos_cap, hosted_mode, mappings_dir
from carnet_core.data import catalog
from carnet_core.errors import listed
from carnet_core.evaluation.compare import compare_on_folder, load_mapping, mapping_from_bytes, plan_folder
from carnet_core.evaluation.metrics import TOP5_NOTE, top5_informative
from carnet_core.inference.ensemble import RULES, agreement, combine, member_names, member_predictions
from carnet_core.inference.predict import topk_predictions

OTHER_FOLDER = "another folder…"
NO_MAPPING = "none (folder classes are model classes)"

st.set_page_config(page_title="CarNet · Compare", page_icon="🚗", layout="wide")
st.title("Compare")
st.caption("Two architectures on the same photo: where they disagree, what each looked at, and what combining them buys.")

available, missing = ui.available_model_names()
absent = [name for name in ("resnet50", "mobilenetv2_100") if name in missing]  # the pair this page is made for
if absent:
    pair = " and ".join(f"**{name}**" for name in absent)
    st.warning(f"{pair} {'is' if len(absent) == 1 else 'are'} not available here"
               + ("; the picker below offers the models that have weights." if len(available) >= 2 else "."))
    if not hosted_mode():  # how to add weights is for whoever runs the server, not a demo's visitor
        with st.expander(f"Why, and how to add {'it' if len(absent) == 1 else 'them'}"):
            for name in absent:
                st.markdown(f"**{name}**: {missing[name]}")
if len(available) < 2:
    st.error("Comparing needs at least two models with weights. Available: " f"{', '.join(available) or 'none'}."
             + ("" if hosted_mode() else " Add a weights file to `weights/` (see the home page)."))
    st.stop()
defaults = [n for n in ("resnet50", "mobilenetv2_100") if n in available]
defaults += [n for n in available if n not in defaults][: 2 - len(defaults)]
names = st.multiselect("Models", available, default=defaults, key="compare_models", format_func=ui.model_titles())
if len(names) < 2:
    st.info("Pick at least two models.")
    st.stop()
models = [ui.model_or_stop(n) for n in names]
labels = member_names(models)  # distinct: two fine-tunes of one dataset can share a name

st.subheader("One photo")
inputs = ui.image_inputs("compare", multiple=False)
if inputs:
    photo = ui.Photo(*inputs[0])
    if credit := ui.photo_credit(photo.name):  # a sample photo: its credit, as wherever it is shown
        st.caption(f"Photo: {credit.text}")
    try:  # remembered for the session: an ensemble rule or weight change does not classify the photo again
        preds, times, probs = ui.remembered("_compare_photo", models, photo.digest,
                                            lambda: member_predictions(models, photo.image))
    except ImageError as exc:  # the folder section below still works
        st.error(ui.public(exc))
        preds = None
    except CarNetError as exc:
        st.error(ui.public(exc))
        st.stop()
    if preds is not None:
        columns = st.columns(len(models))
        for i, (model, label, pred, column) in enumerate(zip(models, labels, preds, columns)):
            with column:
                st.markdown(f"**{label}**")
                st.plotly_chart(topk_bar_figure(pred.class_names, pred.probabilities), key=f"compare_bars_{i}")
                cam = ui.explanation(model, photo, "gradcam", pred.top1, None)  # remembered per session
                st.image(cam.overlay(0.5), caption=f"Grad-CAM for {pred.top1}", width="stretch")
                st.caption(f"{times[i]:.0f} ms model time · {model.num_params / 1e6:.1f} M parameters · "
                           f"weights: {model.weights.describe()}")

        if probs is None:  # e.g. a fine-tune of a folder's classes beside an ImageNet model
            sizes = ", ".join(f"{label}: {m.num_classes} classes" for label, m in zip(labels, models))
            st.info(f"No ensemble of one photo: the models have different label sets ({sizes}). On a labelled folder "
                    "below each is scored in the folder's classes, and the ensembles combine those.")
        else:
            st.markdown("**Ensemble**")
            left, right = st.columns([1, 2])
            rule = left.selectbox("Rule", RULES, key="compare_rule", help="soft: mean of probabilities · geometric: "
                                  "mean of log-probabilities · hard: majority vote")
            weights = [left.slider(f"Weight of {label}", 0.0, 1.0, 1.0, 0.05, key=f"compare_weight_{i}")
                       for i, label in enumerate(labels)]
            if sum(weights) == 0:
                left.error("At least one weight must be above zero.")
            else:
                combined = combine(probs, rule, weights)
                pred = topk_predictions(combined, models[0].class_names)[0]
                right.plotly_chart(topk_bar_figure(pred.class_names, pred.probabilities, title=f"Ensemble ({rule})"),
                                   key="compare_ensemble_bars")
            a = agreement(probs[0, 0], probs[1, 0])
            st.markdown(f"**Agreement of {labels[0]} and {labels[1]}**")
            m1, m2, m3 = st.columns(3)
            m1.metric("Same top-1", "yes" if a.same_top1 else "no")
            m2.metric("Top-5 overlap", f"{a.top5_overlap} / 5")
            m3.metric("Jensen–Shannon divergence", f"{a.js_divergence:.3f} bits",
                      help="0 = identical distributions, 1 = nothing in common")
else:
    st.info("Upload a photo, take one with the camera, or pick a sample to compare the models on it.")

st.subheader("Measured on a labelled folder")
st.caption("A folder with one sub-folder of images per class (a dataset with train/ and val/ is measured on val). "
           "If its class names are not the models' classes, choose a mapping (folder class → model classes).")
if hosted_mode():  # a public demo: only the folders the operator put under the data root, no typed paths
    choices = catalog.dataset_folders()
    if not choices:
        st.info("No labelled folders are offered on this hosted demo.")
        st.stop()
    folder = str(st.selectbox("Folder", choices, format_func=catalog.dataset_label, key="compare_folder_hosted",
                              index=ui.first_measurable("compare_folder_hosted", choices, models)))
else:  # the datasets under the data root, as on Evaluate and Fine-tune, or any folder typed in
    choices = catalog.dataset_folders() + [OTHER_FOLDER]
    picked = st.selectbox("Folder", choices, format_func=lambda p: p if p == OTHER_FOLDER else catalog.dataset_label(p),
                          key="compare_folder_pick",
                          index=ui.first_measurable("compare_folder_pick", choices[:-1], models))
    folder = (st.text_input("Folder path", value=str(data_root()), key="compare_folder") if picked == OTHER_FOLDER
              else str(picked))
plan = plan_folder(models, folder)  # said before measuring: a folder that cannot be measured, classes to map
if plan.problem:  # a warning: nothing failed, there is nothing to measure yet (an error is a press that failed)
    st.warning(plan.problem)
mapping_choice, mapping_upload, read_mapping = NO_MAPPING, None, None
if plan.unmapped:  # offered only when a member lacks the folder's classes: fine-tunes of them need none (as on Evaluate)
    mapping_files = catalog.mapping_files()  # $CARNET_MAPPINGS_DIR, as on Evaluate
    mapping_names = [NO_MAPPING] + [p.name for p in mapping_files] + ["upload…"]
    suggested = catalog.suggested_mapping(folder, mapping_files)  # tiny_vehicles_6_to_imagenet.json for tiny_vehicles_6
    mapping_choice = st.selectbox("Mapping", mapping_names,
                                  index=mapping_names.index(suggested.name) if suggested else 0,
                                  key=f"compare_mapping::{Path(folder).name}")  # each folder keeps its own choice
    mapping_upload = st.file_uploader("Mapping file (JSON or CSV)", type=["json", "csv"], key="compare_mapping_upload",
                                      max_upload_size=5) if mapping_choice == "upload…" else None
    if mapping_upload is not None:
        read_mapping = lambda: mapping_from_bytes(mapping_upload.getvalue(), mapping_upload.name)  # noqa: E731
    elif mapping_choice not in (NO_MAPPING, "upload…"):
        read_mapping = lambda: load_mapping(mappings_dir() / mapping_choice)  # noqa: E731
plan = plan.with_mapping(models, read_mapping)  # read and checked now: a misfit is said before Evaluate
if plan.needs_mapping:
    st.info(f"**{Path(folder).name}** has classes of its own ({listed(plan.classes, 6)}), not those of "
            f"{', '.join(plan.unmapped)}. Choose a mapping (folder class → model classes"
            + ("" if hosted_mode() else f"; mapping files live in `{mappings_dir()}`")
            + ", or upload one), or pick models fine-tuned on these classes (★).")
if plan.mapping_error:
    st.warning(plan.mapping_error)
weights = [st.session_state.get(f"compare_weight_{i}", 1.0) for i in range(len(models))]
settings = (tuple(names), folder, mapping_choice, ui.digest(mapping_upload.getvalue()) if mapping_upload else None,
            tuple(weights))  # what a folder report was made with
if st.button("Evaluate", key="compare_run", disabled=not plan.ready):
    try:
        bar = st.progress(0.0, text="Classifying…")
        try:
            with ui.heavy("comparison"):
                report = compare_on_folder(models, folder, plan.mapping, weights if sum(weights) > 0 else None,
                                           progress=lambda f: bar.progress(f, text=f"Classifying… {f * 100:.0f}%"),
                                           max_photos=folder_photos_cap())
        finally:
            bar.empty()  # done (or refused): no bar left at 100 % above the results
        ui.keep_result("compare_report", settings, report)
    except CarNetError as exc:
        st.error(ui.public(exc))

report, stale = ui.kept_result("compare_report", settings)  # never a report under settings it was not made with
if stale:
    st.info("The models, folder, mapping or ensemble weights have changed since the last evaluation. "
            "Press Evaluate to measure this selection.")
if report is not None:
    st.markdown(f"{report.num_images} images in `{ui.public(report.folder)}` · {len(report.classes)} classes · members disagree on "
                f"{len(report.disagreements)} images" + (f" · {len(report.unreadable)} unreadable files skipped"
                                                          if report.unreadable else ""))
    if report.combined_in == "folder classes":
        st.caption("The members have different label sets: each is scored in the folder's classes (its own, or "
                   "through the mapping), and the ensembles combine those.")
    top5 = top5_informative(len(report.classes))
    if not top5:
        st.caption(f"Top-1 only: {TOP5_NOTE}")
    table = pd.DataFrame([{"model / rule": k, "top-1 (%)": round(v["top1"] * 100, 1)}
                          | ({"top-5 (%)": round(v["top5"] * 100, 1)} if top5 else {})
                          for k, v in report.accuracy.items()])
    st.dataframe(table, hide_index=True, key="compare_table")
    st.plotly_chart(accuracy_bar_figure(report.accuracy, top5=top5), key="compare_accuracy_chart")
    st.download_button("Download results (JSON)", json.dumps(report.to_dict(), indent=2), "compare.json",
                       mime="application/json", key="compare_download")
    if report.disagreements:
        st.markdown(f"**Where the members disagree** (first 12, as {labels[0]} sees them: resized and "
                    "center-cropped)")
        cells = st.columns(4)
        for i, d in enumerate(report.disagreements[:12]):
            votes = " · ".join(f"{k}: {v}" for k, v in d["predictions"].items())
            thumbnail = ui.input_view(d["path"], models[0])  # small and cached: a rerun does not send the photos again
            if thumbnail is not None:
                cells[i % 4].image(thumbnail, caption=f"true: {d['label']} — {votes}", width="stretch")
            else:
                cells[i % 4].caption(f"{Path(d['path']).name} (no longer readable): true: {d['label']} — {votes}")
