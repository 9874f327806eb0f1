"""Evaluate: a model on a labelled dataset — accuracy, per-class, confusion, mistakes (with Grad-CAM), calibration."""

import json
from pathlib import Path

import pandas as pd
import streamlit as st

import ui
from carnet_core import CarNetError
from carnet_core.charts import confusion_heatmap_figure, embedding_figure, pr_curve_figure, reliability_figure
from carnet_core.config import data_root, folder_photos_cap, hosted_mode, mappings_dir, operator_text
from carnet_core.data import catalog
from carnet_core.data.datasets import SPLITS
from carnet_core.data.readers import DATASET_KINDS, open_dataset
from carnet_core.errors import count, listed
from carnet_core.evaluation.compare import load_mapping
from carnet_core.evaluation.embeddings import (
    PROJECTION_NAMES,
    PROJECTIONS,
    dataset_features,
    knn_accuracy,
    project,
    similar,
)
from carnet_core.evaluation.evaluate import evaluate_cached, explorer_extras, per_class_rows, scored_text
from carnet_core.evaluation.metrics import TOP5_NOTE, confusion_order, top5_informative, top5_text
from carnet_core.models.labels import within_classes

st.set_page_config(page_title="CarNet · Evaluate", page_icon="🚗", layout="wide")
st.title("Evaluate")
st.caption("How a model does on a labelled dataset, class by class, and where it goes wrong. Results are cached per "
           "model and dataset" + operator_text("; the same numbers come from `python -m carnet_core evaluate`") + ".")

model_key = st.selectbox("Model", ui.available_model_names()[0], key="evaluate_model", format_func=ui.model_titles())
model = ui.model_or_stop(model_key)

folders = catalog.dataset_folders()
if not folders:
    st.info("No datasets to evaluate on this demo." if hosted_mode() else
            f"No dataset folders in `{data_root()}`. Put one there (class sub-folders, optionally under train/ and "
            f"val/; or Stanford Cars, CompCars, CIFAR-100 in their own layouts), or set `CARNET_DATA_ROOT`.")
    st.stop()
left, mid, right = st.columns(3)
folder = left.selectbox("Dataset", folders, format_func=catalog.dataset_label, key="evaluate_folder",
                        index=ui.first_measurable("evaluate_folder", folders, [model]))
kind = mid.selectbox("Layout", DATASET_KINDS, key="evaluate_kind")
try:
    splits = open_dataset(folder, kind)
except CarNetError as exc:
    st.error(ui.public(exc))
    st.stop()
split = right.radio("Split", SPLITS, index=SPLITS.index(splits.default_split), horizontal=True,
                    key=f"evaluate_split::{folder}", help="all: every image found; a folder without train/ and val/ "
                    "folders is scored whole unless you pick the split CarNet would make for training")
dataset = splits.part(split)

mapping, mapping_name = None, None
if not within_classes(dataset.class_names, model.class_names):  # classes named after the model's need no mapping
    files = catalog.mapping_files()
    suggested = catalog.suggested_mapping(folder, files)
    st.info(f"{dataset.name} has its own classes ({listed(dataset.class_names, 6)}), not {model.name}'s. "
            "It is scored through a mapping file (dataset class → model classes).")
    pick = st.selectbox("Mapping", files, index=files.index(suggested) if suggested else None,
                        key=f"evaluate_mapping_{folder.name}", format_func=lambda p: p.name,
                        placeholder="choose a mapping file") if files else None
    if pick is None:
        st.warning(f"No mapping file for {folder.name} chosen"
                   + ("" if hosted_mode() else f" (mapping files live in `{mappings_dir()}`)") + ". Or pick a "
                   "model fine-tuned on these classes (★).")
        st.stop()
    try:
        mapping, mapping_name = load_mapping(pick), pick.name
    except CarNetError as exc:
        st.error(ui.public(exc))
        st.stop()

state_key = f"evaluation::{model_key}::{folder}::{kind}::{split}::{mapping_name}"
buttons = st.container(horizontal=True)  # side by side, not spread over the page's width
run = buttons.button("Evaluate", type="primary", key="evaluate_run")
rerun = buttons.button("Re-run (ignore cache)", key="evaluate_refresh")
if run or rerun:
    bar = st.progress(0.0, text=f"Evaluating {model.name} on {len(dataset)} images…")
    try:
        with ui.heavy("evaluation"):
            report, cached = evaluate_cached(model, dataset, progress=lambda f: bar.progress(f), mapping=mapping,
                                             refresh=rerun, max_photos=folder_photos_cap())
    except CarNetError as exc:
        bar.empty()
        st.error(ui.public(exc))
        st.stop()
    bar.empty()
    st.session_state[state_key] = (report, cached)
if state_key not in st.session_state:
    st.stop()
report, cached = st.session_state[state_key]

st.subheader("Results")
if cached:
    st.caption("From the cache (same model weights, same dataset files). Re-run to measure again.")
m = st.columns(5)
m[0].metric("top-1", f"{report.top1 * 100:.1f}%")
m[1].metric("top-5", top5_text(report.top5, len(report.class_names)),
            help=None if top5_informative(len(report.class_names)) else TOP5_NOTE)
m[2].metric("macro F1", f"{report.macro_f1 * 100:.1f}%", help="The mean of the classes' F1 (precision and recall "
            "of each class), every class counting the same however many images it has.")
m[3].metric("calibration error (ECE)", f"{report.ece * 100:.1f}%")
m[4].metric("images", report.num_images)
st.caption(scored_text(report.num_images, splits, split).capitalize() + ".")
if report.skipped:
    st.warning(f"{count(len(report.skipped), 'unreadable image')} skipped.")
if report.hierarchy:
    st.markdown("**By level of the label hierarchy** (a prediction of the right make in the wrong year still counts "
                "at make level)")
    st.dataframe(pd.DataFrame([{"level": k, "accuracy (%)": round(v * 100, 1)} for k, v in report.hierarchy.items()]),
                 hide_index=True)

rows = per_class_rows(report)
table = pd.DataFrame(rows)
for column in ("precision", "recall", "F1", "AP"):
    table[column] = (table[column] * 100).round(1)
table = table.rename(columns={"precision": "precision (%)", "recall": "recall (%)", "F1": "F1 (%)", "AP": "AP (%)"})
export = st.container(horizontal=True)
export.download_button("Per-class table (CSV)", table.to_csv(index=False), "per_class.csv", "text/csv",
                       key="evaluate_csv")
export.download_button("Full report (JSON)", json.dumps({"model": model.name, "dataset": folder.name,
                                                          "split": split, "mapping": mapping_name,
                                                          **report.to_dict()}, indent=1),
                       "evaluation.json", "application/json", key="evaluate_json")

extras = explorer_extras()  # the serving tier leaves out scikit-learn, cleanlab and SciPy, and these views with them
tabs = st.tabs(["Per class", "Confusion", "Mistakes", *(["Possible label errors", "Embedding map"] if extras else []),
                "Calibration"], key="evaluate_tab", on_change="rerun")  # a click in a tab (a cell, a dot) stays there
tab_classes, tab_confusion, tab_mistakes, tab_calibration = tabs[0], tabs[1], tabs[2], tabs[-1]
tab_labels, tab_map = (tabs[3], tabs[4]) if extras else (None, None)
if not extras:
    st.caption("This demo leaves out precision–recall curves, possible label errors and the embedding map: they "
               "need CarNet's full install.")
with tab_classes:
    st.caption("Recall is the class's accuracy (its photos predicted right); precision, the share of the photos "
               "predicted as the class that are of it; AP, the area under its precision–recall curve. Click a row to "
               "see the class's photos.")
    picked_rows = st.dataframe(table, hide_index=True, width="stretch", height=min(600, 35 * len(table) + 38),
                               placeholder="–", on_select="rerun", selection_mode="single-row",
                               key="evaluate_class_table").selection.rows
    if picked_rows:
        name = table.iloc[picked_rows[0]]["class"]
        which = st.radio(f"Photos of **{name}**", ["all", "wrong", "right"], horizontal=True,
                         key="evaluate_class_which")
        ui.photo_grid(model, report.photos(name, which=which), f"evaluate_class_{name}_{which}", state_key,
                      f"labelled {name}, {which}, most confident first")
    if report.pr_curves:
        st.markdown("**Precision–recall curves**")
        worst = [r["class"] for r in sorted(rows, key=lambda r: (pd.isna(r["AP"]), r["AP"]))][:3]
        shown = st.multiselect("Classes", list(report.pr_curves), default=[c for c in worst if c in report.pr_curves],
                               key="evaluate_pr_classes", help="The three with the lowest average precision to start.")
        if shown:
            st.plotly_chart(pr_curve_figure(report.pr_curves, shown), width="stretch", key="evaluate_pr")
with tab_confusion:
    order_by = st.radio("Order", ["clustered (confused classes together)", "alphabetical"], horizontal=True,
                        key="evaluate_order") if extras else "alphabetical"
    order = confusion_order(report.confusion) if order_by.startswith("clustered") else None
    clicked = st.plotly_chart(confusion_heatmap_figure(report.confusion, report.class_names, order), width="stretch",
                              key="evaluate_confusion", on_select="rerun", selection_mode="points")
    cells = {f"{t} → {p}": (t, p) for t, p, _ in report.cells()}
    points = clicked.selection.points if clicked else []
    seen = [tuple(pt["customdata"][:2]) for pt in points if pt.get("customdata")]
    if seen and seen[0] != st.session_state.get("evaluate_cell_clicked"):  # a new click picks its cell, once
        st.session_state["evaluate_cell_clicked"] = seen[0]
        st.session_state["evaluate_cell"] = f"{seen[0][0]} → {seen[0][1]}"
    sizes = {f"{t} → {p}": n for t, p, n in report.cells()}
    cell = st.selectbox("Photos of a cell (true → predicted); or click a cell", list(cells), index=None,
                        format_func=lambda c: f"{c} ({count(sizes[c], 'photo')})", key="evaluate_cell",
                        placeholder="choose a cell")
    if cell in cells:
        true_class, predicted = cells[cell]
        ui.photo_grid(model, report.photos(true_class, predicted), f"evaluate_cell_{true_class}_{predicted}",
                      state_key, f"labelled {true_class}, predicted {predicted}, most confident first")
    pairs = report.most_confused(15)
    st.markdown("**Most confused pairs**")
    st.dataframe(pd.DataFrame(pairs, columns=["true class", "predicted as", "images"]), hide_index=True,
                 width="stretch")
with tab_mistakes:
    wrong = report.mistakes()
    if not wrong:
        st.success("No mistakes.")
    else:
        filters = st.columns(3)
        true_class = filters[0].selectbox("True class", ["all"] + sorted({p["label"] for p in wrong}),
                                          key="evaluate_wrong_class")
        predicted = filters[1].selectbox("Predicted as", ["all"] + sorted({p["predicted"] for p in wrong}),
                                         key="evaluate_wrong_predicted")
        order = filters[2].radio("Order", ["most confident first", "least confident first"], horizontal=True,
                                 key="evaluate_wrong_order", help="Most confident: the mistakes the model is surest "
                                                                  "of. Least confident: the near misses.")
        shown = report.mistakes(None if true_class == "all" else true_class, None if predicted == "all" else predicted,
                                most_confident_first=order.startswith("most"))
        ui.photo_grid(model, shown, f"evaluate_wrong_{true_class}_{predicted}", state_key,
                      f"mistakes, {order}")
if extras:  # their libraries are installed (not in the serving tier)
    with tab_labels:
        st.caption("Photos whose given label the model finds least likely — candidates to check by eye, not proof of a "
                   "wrong label. Confident learning (Northcutt et al. 2021, JAIR) with cleanlab; the least likely label "
                   "first.")
        if not report.label_issues:
            st.success("None flagged: every label is among what the model finds likely.")
        else:
            ui.photo_grid(model, report.label_issues, "evaluate_labels", state_key,
                          "flagged as possibly mislabelled, least likely label first")
    with tab_map:
        st.caption("Each dot is a photo, placed by the features the model's head reads (its penultimate layer) projected "
                   "to 2-D: photos the model finds alike sit together. Click a dot to see the photo and the photos most "
                   "like it." + operator_text(" The same map comes from `python -m carnet_core embed`."))
        options = st.columns(3)
        projection = options[0].radio("Projection", PROJECTIONS, format_func=PROJECTION_NAMES.get, horizontal=True,
                                      key="evaluate_map_method", help="UMAP (McInnes et al. 2018) keeps neighbourhoods "
                                      "and some global layout; t-SNE (van der Maaten & Hinton 2008) neighbourhoods only.")
        colour_by = options[1].radio("Colour by", ["class", "right or wrong"], horizontal=True, key="evaluate_map_colour")
        map_key = (state_key, projection)
        made = ui.remembered("_embedding_map", [model], map_key, None, keep=2)
        button = st.empty()  # gone once the map is made, in the same run
        if made is None and button.button("Make the map", key="evaluate_map_run"):
            bar = st.progress(0.0, text=f"Computing the features of {count(len(dataset), 'image')}…")

            def make_map():
                found = dataset_features(model, dataset, progress=lambda f: bar.progress(f))
                bar.progress(0.0, text="Making the pictures shown on hover…")
                pictures = ui.hover_thumbnails(found.paths, progress=lambda f: bar.progress(f))
                bar.progress(1.0, text=f"Projecting with {PROJECTION_NAMES[projection]}…")
                return found, project(found.features, projection), knn_accuracy(found.features, found.labels), pictures

            try:
                with ui.heavy("map"):
                    made = ui.remembered("_embedding_map", [model], map_key, make_map, keep=2)
                button.empty()
            except CarNetError as exc:
                st.error(ui.public(exc))
            bar.empty()
        if made is not None:
            found, coordinates, knn, pictures = made
            outcome = {p["path"]: p for p in report.predictions}
            hover = [f"{Path(p).name} · {label}" + (f" → {outcome[p]['predicted']}" if p in outcome else "")
                     for p, label in zip(found.paths, found.labels)]
            right = [outcome[p]["label"] == outcome[p]["predicted"] if p in outcome else None for p in found.paths] \
                if colour_by == "right or wrong" else None
            with st.container(key="evaluate_map_box"):
                clicked = st.plotly_chart(embedding_figure(coordinates, found.labels, hover, right), width="stretch",
                                          key="evaluate_map_chart", on_select="rerun", selection_mode="points")
            ui.show_on_hover("evaluate_map_box", pictures)
            rows = [pt["customdata"] for pt in (clicked.selection.points if clicked else []) if "customdata" in pt]
            if rows and rows[0] != st.session_state.get("evaluate_map_clicked"):  # a new click picks its photo, once
                st.session_state["evaluate_map_clicked"] = rows[0]
                st.session_state["evaluate_map_photo"] = int(rows[0])
            st.caption(f"{count(len(found.paths), 'photo')} · k-NN accuracy of the features (5 nearest): {knn:.1%} (one "
                       f"class in {len(set(found.labels))} by chance)" + (
                           f" · the first {ui.MAX_HOVER_THUMBNAILS} show their picture on hover"
                           if len(found.paths) > ui.MAX_HOVER_THUMBNAILS else " · hover a dot to see its photo"))
            row = st.selectbox("Photo", range(len(found.paths)), index=None, key="evaluate_map_photo",
                               format_func=lambda i: f"{Path(found.paths[i]).name} ({found.labels[i]})",
                               placeholder="click a dot, or choose a photo")
            if row is not None:
                left, right_side = st.columns([1, 3])
                view = ui.input_view(found.paths[row], model)
                if view is not None:
                    left.image(view, caption=f"{Path(found.paths[row]).name} · {found.labels[row]}", width="stretch")
                with right_side:
                    ui.photo_grid(model, similar(found, row, 6, report.predictions), f"evaluate_similar_{row}",
                                  state_key, "the most similar by cosine similarity of the features")
with tab_calibration:
    st.plotly_chart(reliability_figure(report.reliability, report.ece), width="stretch", key="evaluate_reliability")
    st.caption("Bars below the diagonal: the model is over-confident in that confidence range.")
