"""Explain: what did the network look at? Grad-CAM and friends on any model, class and layer."""


import streamlit as st

import ui
from carnet_core import CarNetError
from carnet_core.charts import faithfulness_bar_figure, road_curves_figure
from carnet_core.config import cam_methods_cap, operator_text
from carnet_core.data import catalog
from carnet_core.data.images import png_bytes
from carnet_core.data.readers import open_dataset
from carnet_core.errors import count
from carnet_core.explain.cams import (
    AUG_SMOOTH_PASSES,
    COLORMAPS,
    EXPENSIVE_METHODS,
    FLOOR_METHOD,
    METHOD_NAMES,
    METHODS,
    SERVED_CAM_NOTE,
    aug_smooth_refusal,
    default_layer,
    estimate_seconds,
    methods_for,
    spatial_layers,
    stage_layers,
    usable_smoothing,
)
from carnet_core.explain.faithfulness import (
    RANKED_METHODS,
    SECONDS_PER_PHOTO_AND_METHOD,
    rank_methods,
    ranking_summary,
    road,
)
from carnet_core.inference.predict import predict

st.set_page_config(page_title="CarNet · Explain", page_icon="🚗", layout="wide")
# the method, layer and display settings outlive a run without a photo (one photo swapped for another)
ui.keep_widget_values("explain_method", "explain_layer", "explain_all_layers", "explain_alpha", "explain_colormap",
                      "explain_eigen_smooth", "explain_aug_smooth")
presenting = ui.presenting()  # one photo per screen, large type; settings behind expanders
if presenting:
    stage = ui.stage()  # the stepper and the photo beside its heatmap, on top; the controls under them
    setup = st.expander("Model and photo")
else:
    st.title("Explain")
    st.caption("Class activation maps (pytorch-grad-cam's methods): which parts of the photo drove the prediction. "
               "Heatmaps can be wrong — the faithfulness number tells how much the highlighted region alone supports "
               "the class.")
    setup = st.container()

with setup:
    model = ui.model_picker("explain_model")
    inputs = ui.image_inputs("explain", multiple=False)
if presenting and not inputs:
    inputs = ui.gallery_inputs()  # a teacher steps through the sample gallery
    inputs = [inputs[ui.stepper("explain_present_index", len(inputs), stage)]] if inputs else []
if not inputs:
    st.info("Upload a photo, take one with the camera, or pick a sample from the gallery.")
    st.stop()
photo = ui.Photo(*inputs[0])
try:  # remembered for the session: a slider or colormap change does not decode and classify the photo again
    size, top5 = ui.remembered("_explain_photo", [model], photo.digest,
                               lambda: (photo.image.size, predict(model, [photo.image], topk=5)[0]))
except CarNetError as exc:  # a file that is no image; an engine forced by $CARNET_ENGINE that this model cannot use
    st.error(ui.public(exc))
    st.stop()
all_layers = list(spatial_layers(model))
methods = methods_for(model)  # a served model (the torch-free demo): the closed forms at its last feature map
served = methods != METHODS
if st.session_state.get("explain_method") not in methods:
    st.session_state.pop("explain_method", None)
controls = st.columns(3 if presenting else 4)
method = controls[0].selectbox("Method", methods, format_func=METHOD_NAMES.get, key="explain_method")
method_name = METHOD_NAMES[method]
class_options = [f"{c} ({p * 100:.1f}%)" for c, p in zip(top5.class_names, top5.probabilities)]
picked = controls[1].selectbox("Class", class_options + ["other…"], key="explain_class")
class_name = top5.class_names[class_options.index(picked)] if picked != "other…" else \
    controls[1].selectbox("Any class", model.class_names, key="explain_other_class")
settings = st.expander("Details") if presenting else st.container()  # a classroom sees the map, not the knobs
short = stage_layers(model)
every = not served and settings.toggle(f"All {len(all_layers)} layers", key="explain_all_layers",
                                      help="The picker lists the outputs of the last stages; every module with a "
                                           "spatial output is here.")
layers = all_layers if every else short
if st.session_state.get("explain_layer") not in layers:  # a layer picked from the long list, which is now short
    st.session_state.pop("explain_layer", None)
layer = controls[2].selectbox("Target layer", layers, index=layers.index(default_layer(model)), key="explain_layer",
                              help="Default: the last block with spatial output for this architecture family.")
knobs = settings if presenting else controls[3]
alpha = knobs.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="explain_alpha")
colormap = knobs.selectbox("Colormap", COLORMAPS, key="explain_colormap")
smoothing = settings.columns(4)
eigen = smoothing[1].toggle("Eigen smoothing", key="explain_eigen_smooth",
                            help="The first principal component of the weighted activations instead of their sum: "
                                 "less noise (pytorch-grad-cam's eigen_smooth).")
refusal = aug_smooth_refusal(method, eigen, model)
aug = smoothing[0].toggle("Augmentation smoothing", key="explain_aug_smooth", disabled=refusal is not None,
                          help=refusal or f"The mean map over the photo flipped and brightened by 0.9, 1 and 1.1 "
                                          f"({AUG_SMOOTH_PASSES} passes): centred on the object (pytorch-grad-cam's "
                                          f"aug_smooth).") and refusal is None
smoothed = " + ".join(w for w, on in (("augmentation", aug), ("eigen", eigen)) if on)

remembered = ui.explanation(model, photo, method, class_name, layer, compute=False, aug_smooth=aug,
                            eigen_smooth=eigen)
if method in EXPENSIVE_METHODS and remembered is None:
    seconds = estimate_seconds(model, method, layer, aug_smooth=aug)
    st.warning(f"{method_name} runs one forward pass per channel of `{layer}` "
               f"({spatial_layers(model)[layer][0]} channels): about {seconds:.0f} s on this machine.")
    if not st.button(f"Run {method_name}", key="explain_run"):
        st.stop()

try:
    with st.spinner(f"Computing {method_name}…"):
        result = ui.explanation(model, photo, method, class_name, layer, aug_smooth=aug, eigen_smooth=eigen)
except CarNetError as exc:
    st.error(ui.public(exc))
    st.stop()

if presenting:  # the photo and its heatmap side by side, the sentence under them; the rest is for a desk
    st.html("<style>.st-key-present_stage [data-testid='stImage'] img { max-height: 40vh; }</style>")
    original, over, verdict = stage.columns(3)
    original.image(result.image, caption=ui.photo_caption(photo.name, "What the model sees"), width="stretch")
    overlay_image = result.overlay(alpha, colormap)
    over.image(overlay_image, caption=f"{method_name} · {result.class_name}", width="stretch")
    verdict.markdown(result.faithfulness_text()[0].upper() + result.faithfulness_text()[1:] + ".")
    settings.caption(f"Faithfulness: pytorch-grad-cam's CamMultImageConfidenceChange · layer {result.layer} · "
                     f"{result.latency_ms:.0f} ms")
    if note := model.view_of(size).note():
        settings.caption(note)
    st.stop()
original, heat, over = st.columns(3)
original.image(result.image, caption=ui.photo_caption(photo.name, "What the model sees (resized, center-cropped)"),
               width="stretch")
if note := model.view_of(size).note():  # a wide photo's sides cut off, a thumbnail enlarged
    original.caption(note)
heat.image(result.heatmap_image(colormap), width="stretch",
           caption=f"{method_name} heatmap · layer {result.layer}" + (f" · {smoothed} smoothing" if smoothed else ""))
overlay_image = result.overlay(alpha, colormap)
over.image(overlay_image, caption=f"{result.class_name}: {result.probability * 100:.1f}%", width="stretch")
st.caption(f"Faithfulness (pytorch-grad-cam's CamMultImageConfidenceChange): {result.faithfulness_text()} · "
           f"{result.latency_ms:.0f} ms")
credit = ui.photo_credit(photo.name)  # a sample photo's credit travels with the picture made from it
st.download_button("Download overlay (PNG)", png_bytes(overlay_image, credit.png_text() if credit else None),
                   file_name=f"{method}_{result.class_name}.png", mime="image/png", key="explain_download")

if served:  # ROAD and the ranking of methods need the full install's network
    st.caption(SERVED_CAM_NOTE)
else:
    with st.container(border=True):
        st.markdown("**ROAD faithfulness** (Rong et al., ICML 2022): remove the pixels this heatmap ranks most relevant, "
                    "or least relevant, fill them in from their neighbours, and see how much of the class is left.")
        road_key = (photo.digest, method, result.class_name, result.layer, aug, eigen)
        curves = ui.remembered("_road", [model], road_key, None, keep=8)
        button = st.empty()  # gone once measured, in the same run
        if curves is None and button.button(f"Measure ROAD (about {SECONDS_PER_PHOTO_AND_METHOD:.0f} s)",
                                            key="explain_road"):
            with st.spinner("Removing and filling in pixels…"), ui.heavy("measurement"):
                curves = ui.remembered("_road", [model], road_key, keep=8, compute=lambda: road(
                    model, photo.image, result.heatmap, result.class_index))
            button.empty()
        if curves is not None:
            st.markdown(curves.text())
            st.plotly_chart(road_curves_figure(curves.removed_pct, curves.morf, curves.lerf, curves.probability),
                            width="stretch", key="explain_road_chart")

st.subheader("Compare methods")
fast = [m for m in methods if m not in EXPENSIVE_METHODS]
chosen = st.multiselect("Methods", methods, default=fast[:4], format_func=METHOD_NAMES.get, key="explain_compare",
                        max_selections=cam_methods_cap(),  # a hosted demo's visitor: a few at a time
                        help="ScoreCAM and AblationCAM take much longer than the others."
                             if EXPENSIVE_METHODS & set(methods) else None)
all_remembered = all(ui.explanation(model, photo, m, class_name, layer, compute=False,
                                    **usable_smoothing(m, aug, eigen)) for m in chosen)
if chosen and (st.button("Compare", key="explain_compare_run") or all_remembered):  # stays while the sliders move
    progress = st.progress(0.0, text="Computing…")
    cells = st.columns(min(len(chosen), 4))
    for i, m in enumerate(chosen):
        progress.progress(i / len(chosen), text=f"{METHOD_NAMES[m]} ({i + 1}/{len(chosen)})")
        r = ui.explanation(model, photo, m, class_name, layer, **usable_smoothing(m, aug, eigen))
        caption = f"{METHOD_NAMES[m]} · faithfulness {r.faithfulness * 100:+.1f} · {r.latency_ms:.0f} ms" + \
            (" · without augmentation smoothing" if aug and not r.aug_smooth else "")
        cells[i % len(cells)].image(r.overlay(alpha, colormap), width="stretch", caption=caption)
    progress.empty()  # the grid is the result: no bar left at "Done" on every rerun

if served:
    st.stop()
st.subheader("Which method is most faithful for this model?")
st.caption(f"ROAD combined of each method over photos of a dataset (each photo's top-1 class explained), with "
           f"{FLOOR_METHOD.name} — random channel weights — as the floor a method must beat. ScoreCAM and AblationCAM "
           f"are left out: a minute per photo each."
           + operator_text(" The same table comes from `python -m carnet_core faithfulness`."))
folders = catalog.dataset_folders()
if not folders:
    st.info("No dataset folders to take photos from.")
    st.stop()
pick = st.columns(3)
folder = pick[0].selectbox("Photos from", folders, format_func=catalog.dataset_label,
                           key="explain_rank_folder")
n_photos = pick[1].slider("Photos", 2, 20, 6, key="explain_rank_images", help="Taken from the classes in turn.")
ranked = pick[2].multiselect("Methods", RANKED_METHODS, default=list(RANKED_METHODS), format_func=METHOD_NAMES.get,
                             key="explain_rank_methods", help=f"{FLOOR_METHOD.name} is always measured: the floor.")
seconds = n_photos * (len(ranked) + 1) * SECONDS_PER_PHOTO_AND_METHOD
ranking_key = (str(folder), n_photos, tuple(ranked))
ranking = ui.remembered("_road_ranking", [model], ranking_key, None, keep=4)
button = st.empty()
if ranking is None and ranked and button.button(f"Rank the methods (roughly {max(1, round(seconds / 60))} min on "
                                                "a CPU)",
                                     key="explain_rank"):
    try:
        splits = open_dataset(folder)
        photos = splits.part(splits.default_split).spread(n_photos)
        bar = st.progress(0.0, text="Measuring ROAD…")
        with ui.heavy("ranking"):
            ranking = ui.remembered("_road_ranking", [model], ranking_key, keep=4, compute=lambda: rank_methods(
                model, photos, ranked, progress=lambda f: bar.progress(f)))
        bar.empty()
        button.empty()
    except CarNetError as exc:
        st.error(ui.public(exc))
if ranking is not None:
    scores, skipped = ranking
    st.markdown(ranking_summary(scores))
    st.plotly_chart(faithfulness_bar_figure([s.name for s in scores], [s.mean for s in scores],
                                            [s.std for s in scores], FLOOR_METHOD.name),
                    width="stretch", key="explain_rank_chart")
    if skipped:
        st.warning(f"{count(len(skipped), 'photo')} could not be read and {'was' if len(skipped) == 1 else 'were'} "
                   "left out.")
