"""Classify: upload, snap or pick car photos; see each image's top-5 classes as bars."""

import streamlit as st

import ui
from carnet_core import CarNetError
from carnet_core.charts import topk_bar_figure
from carnet_core.config import can_train, operator_text
from carnet_core.data import catalog
from carnet_core.data.readers import open_dataset
from carnet_core.data.uploads import add_class_photos
from carnet_core.errors import count
from carnet_core.evaluation.embeddings import dataset_features, features_of, similar
from carnet_core.evaluation.evaluate import outcome_caption
from carnet_core.inference.predict import prediction_csv
from carnet_core.inference.selection import select_engine
from carnet_core.models.labels import vehicle_indices

SIMILAR_SHOWN = 6  # most similar photos shown per photo
PRESENT_FONT_PX = 20  # the bars' text in presentation mode

st.set_page_config(page_title="CarNet · Classify", page_icon="🚗", layout="wide")
presenting = ui.presenting()  # one photo per screen, large type; the model and the photos behind "Model and photos"
if presenting:
    stage = ui.stage()  # the stepper and the one result, on top
    setup = st.expander("Model and photos")
else:
    st.title("Classify")
    st.caption("Top-5 classes per photo: ImageNet's, or a fine-tune's own. Preprocessing follows each model's own "
               "data config.")
    setup = st.container()

with setup:
    model = ui.model_picker("classify_model")
    st.caption(f"**{model.name}** · {model.num_params / 1e6:.1f} M parameters · {ui.device_label()} · "
               f"weights: {model.weights.describe()}")
    vehicles_only = False
    if vehicle_indices(model.class_names):  # ImageNet's label set: a fine-tune's own classes have no vehicle view
        vehicles_only = st.toggle("Show vehicle classes only", key="classify_vehicles",
                                  help="Rank only ImageNet's road-vehicle classes (sports car, pickup, minivan, …), "
                                       "useful when the top class is a car part such as 'grille' or 'car wheel'.")
    live = ui.live_camera_available() and st.toggle(  # not in the serving tier (no WebRTC packages)
        "Live camera", key="classify_live",
        help="Classify the webcam's video as it runs, the top-5 drawn on the picture (WebRTC).")
    inputs = [] if live else ui.image_inputs("classify")
if live:
    with stage if presenting else st.container():
        heatmap = st.toggle("Grad-CAM overlay", key="classify_live_heatmap",
                            help="The heatmap of the top class under the bars: about half the updates per second.")
        ui.live_camera(model, "classify_live_video", heatmap=heatmap)
    st.stop()
if presenting and not inputs:
    inputs = ui.gallery_inputs()  # a teacher steps through the sample gallery
if not inputs:
    st.info("Upload one or more photos, take one with the camera, or pick samples from the gallery.")
    st.stop()
if presenting:
    inputs = [inputs[ui.stepper("classify_present_index", len(inputs), stage)]]

if len(inputs) > ui.MAX_PHOTOS:  # each is decoded at full size and drawn: a hosted demo takes a class's worth
    st.warning(f"{len(inputs)} photos given; classifying the first {ui.MAX_PHOTOS}. For a whole folder, use the "
               "Evaluate page" + operator_text(" or `python -m carnet_core predict FOLDER`") + ".")
    inputs = inputs[:ui.MAX_PHOTOS]

uploads = [ui.Photo(*pair) for pair in inputs]  # their digests: what the results are remembered by, and the keys
try:
    photos, batch = ui.classified(model, uploads)
except CarNetError as exc:  # e.g. an engine forced by $CARNET_ENGINE that this model cannot use
    st.error(ui.public(exc))
    st.stop()
for photo in photos:
    if photo.error:
        st.error(f"Skipped — {photo.error}")
if batch is None:
    st.stop()
body = stage if presenting else st.container()
details = st.expander("Details") if presenting else body  # jargon, below the result and out of a classroom's way
details.caption(f"{batch.timing()} · engine: {select_engine(model).reason}")
if len(inputs) > 1:
    results = [{"image": p.name, **p.prediction.to_dict(), "latency_ms": round(batch.per_image_ms, 2)}
               if p.prediction else {"image": p.name, "error": p.error} for p in photos]
    body.download_button(f"Download the {len(results)} results (CSV)", prediction_csv(results), mime="text/csv",
                       file_name=f"predictions-{model.name}.csv", key="classify_csv",
                       help="One row per photo: the top-5 classes and probabilities (and why a photo was skipped).")

views = [p.view for p in photos if p.view]
if any(view.cuts_off for view in views):
    details.caption(f"Dimmed: the parts of a photo outside {model.name}'s {views[0].input_px} px input, which it "
                    "does not see.")
collect = can_train() and not presenting  # a public demo's visitors do not write into the server's data root
for i, (photo, upload) in enumerate(zip(photos, uploads)):
    if photo.prediction is None:
        continue
    pred = photo.prediction
    left, right = body.columns([1, 1] if presenting else [1, 2])
    left.image(photo.preview, width="stretch",
               caption=ui.photo_caption(photo.name, ui.sample_title(photo.name) if presenting else None))  # a small JPEG; what the model does not see dimmed
    if note := photo.view.note():
        details.caption(note) if presenting else left.caption(note)
    font, height = (PRESENT_FONT_PX, ui.PRESENT_CHART_PX) if presenting else (None, None)
    with right:
        if vehicles_only and pred.vehicle_class_names:
            fig = topk_bar_figure(pred.vehicle_class_names, pred.vehicle_probabilities, font_px=font, height_px=height,
                                  title=f"Top vehicle classes ({pred.vehicle_share * 100:.0f}% on vehicles)")
        else:
            fig = topk_bar_figure(pred.class_names, pred.probabilities, title=pred.heading, font_px=font,
                                  height_px=height)
        st.plotly_chart(fig, width="stretch", key=f"bars_{i}")
        if not vehicles_only and pred.vehicle_class_names and pred.top1 not in pred.vehicle_class_names:
            st.caption(f"Top class is not a road vehicle; best road-vehicle class: **{pred.vehicle_class_names[0]}** "
                       f"({pred.vehicle_probabilities[0] * 100:.1f}%).")
        if collect:
            photo_key = f"{i}_{upload.digest[:16]}"  # the same photo given twice is two rows
            with st.popover("Add to a dataset", help="Keep this photo for a fine-tune: it goes into a class of a "
                                                     "dataset built on the Fine-tune page."):
                dataset_name = st.text_input("Dataset", value="my-cars", key=f"collect_dataset_{photo_key}")
                label = st.text_input("Class", value=pred.top1, key=f"collect_class_{photo_key}",
                                      help="The right class for this photo (the model's top-1 to start with).")
                if st.button("Add", key=f"collect_add_{photo_key}"):
                    try:
                        added = add_class_photos(catalog.built_dataset(dataset_name), label, [(upload.name, upload.data)])
                    except CarNetError as exc:
                        st.error(ui.public(exc))
                    else:
                        where = f"**{added.folder.name}** of {added.folder.parent.name}"
                        for _, reason in added.refused:
                            st.error(reason)
                        if added.saved or added.already_there:
                            st.success(f"Added to {where}." if added.saved else f"Already in {where}.")

folders = catalog.dataset_folders() if not presenting else []
if folders:
    st.subheader("Photos most like these")
    folder = st.columns(3)[0].selectbox(
        "In the dataset", folders, index=None, format_func=catalog.dataset_label, key="classify_similar_folder",
        placeholder="choose a dataset", help="The dataset's photos whose features (what the model's head reads) are "
                                              "closest by cosine similarity; computed once per model and dataset.")
    if folder is not None:
        try:
            dataset = open_dataset(folder).part("all")
            bar = st.progress(0.0, text=f"Computing the features of {count(len(dataset), 'image')} (once)…")
            found = dataset_features(model, dataset, progress=lambda f: bar.progress(f))
            bar.empty()
        except CarNetError as exc:
            st.error(ui.public(exc))
            st.stop()
        for photo, upload in zip(photos, uploads):
            if photo.prediction is None:
                continue
            alike = similar(found, features_of(model, upload.image), SIMILAR_SHOWN)
            st.markdown(f"**Most like {ui.photo_caption(photo.name)}** in {folder.name}")
            cells = st.columns(SIMILAR_SHOWN)
            for cell, entry in zip(cells, alike):
                view = ui.input_view(entry["path"], model)
                if view is not None:
                    cell.image(view, width="stretch")
                cell.caption(outcome_caption(entry))
