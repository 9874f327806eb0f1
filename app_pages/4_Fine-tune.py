"""Fine-tune: pick a dataset, launch a short fine-tune in the background, watch its curves, reuse the result."""

import os
import time
from pathlib import Path

import pandas as pd
import streamlit as st

import ui
from carnet_core import CarNetError
from carnet_core.charts import runs_overlay_figure, topk_bar_figure, training_curves_figure
from carnet_core.config import can_train, data_root
from carnet_core.data import catalog
from carnet_core.data.datacheck import too_few_classes
from carnet_core.data.images import list_images, load_image
from carnet_core.data.uploads import add_class_photos, class_counts, remove_class
from carnet_core.errors import count, duration_text
from carnet_core.inference.predict import predict
from carnet_core.models.labels import IMAGENET_1K
from carnet_core.models.refs import CHECKPOINT_PREFIX, ModelRef
from carnet_core.models.registry import HEAD_TITLES, HEADS, get_spec
from carnet_core.training.config import IMAGE_SIZES, default_img_size, page_recipe
from carnet_core.training.jobs import FINISHED, JobRunner
from carnet_core.training.teach import QuickTeacher, save_quick_model

QUICK_BACKBONE = "efficientnet_lite0"  # the quick model's default backbone: real weights offline, fast features

st.set_page_config(page_title="CarNet · Fine-tune", page_icon="🚗", layout="wide")
st.title("Fine-tune")
st.caption("Teach a pretrained backbone your own classes. Each fine-tune runs in its own process — reload the page or "
           "restart the app and it keeps going; the result appears in every model picker, marked ★.")

if not can_train():
    st.info("Training is switched off on this demo. Run CarNet on your own machine to fine-tune (see the README).")
    st.stop()

try:
    runner = JobRunner()
except CarNetError as exc:  # e.g. a jobs folder that cannot be written
    st.error(ui.public(exc))
    st.stop()
if not ui.has_gpu():
    st.warning(f"No GPU here: fine-tunes run on this machine's {os.cpu_count()} CPU cores. Expect about a minute "
               "per epoch for a few hundred photos at 224 px; use a small image size and few epochs (and the linear-"
               "probe start), or a machine with a GPU.")



# --- the running job (refreshed every 2 s without rerunning the page) ----------------------------------------
@st.fragment(run_every=2)
def live_panel() -> None:
    jobs = runner.jobs()
    active = [j for j in jobs if j.state == "running"]
    queued = [j for j in jobs if j.state == "queued"]
    seen = st.session_state.setdefault("finetune_active", [])
    if seen and not active and not queued:  # something just finished: refresh pickers and history
        st.session_state["finetune_active"] = []
        st.rerun(scope="app")
    st.session_state["finetune_active"] = [j.id for j in active + queued]
    if not active:
        if queued:
            st.info(f"{count(len(queued), 'job')} queued.")
        return
    job = active[0]
    st.subheader(f"Running: {job.label}")
    p = job.progress
    if p:
        st.progress(min(max(p["fraction"], 0.0), 1.0),
                    text=f"epoch {p['epoch']}/{p['epochs']} · batch {p['step']}/{p['num_steps']} · "
                         f"elapsed {duration_text(p['elapsed_s'])} · ETA {duration_text(p['eta_s'])}")
        st.caption(f"{p['device']} · memory {p['memory_mb']:,.0f} MB"
                   + (f" · {len(queued)} more queued" if queued else ""))
    else:
        st.progress(0.0, text="preparing: checking the dataset and loading the model…")
    if job.history:
        st.plotly_chart(training_curves_figure(job.history, probe_top1=job.probe_top1), width="stretch",
                        key="live_curves")
    with st.expander("Log", expanded=not job.history):
        st.code(job.log_tail(15) or "(no output yet)", language=None)
    if st.button("Stop", key="finetune_stop", type="secondary",
                 help="Stops after the current batch; finished epochs are kept and the run can be resumed."):
        runner.cancel(job.id)
        st.toast("Stopping after the current batch…")


live_panel()

def teacher() -> QuickTeacher:
    """The session's quick-model teacher for the chosen backbone: photo features kept as the photos are added."""
    name = st.session_state.get("finetune_quick_backbone", QUICK_BACKBONE)
    kept = st.session_state.get("_quick_teacher")
    if kept is None or kept[0] != name:
        kept = (name, QuickTeacher(ui.model_or_stop(name)))
        st.session_state["_quick_teacher"] = kept
    return kept[1]


def quick_model_panel(built: Path) -> None:
    """Teach in 20 seconds: a linear head on the backbone's features of the photos so far, then try it."""
    with st.container(border=True):
        st.markdown("**Quick model** — a new head on the backbone's features of these photos, in about a second. "
                    "Try it here; fine-tune fully below when you want more.")
        left, right = st.columns([2, 1], vertical_alignment="bottom")
        backbones = [n for n in ui.available_model_names()[0]
                     if not ModelRef.parse(n).is_checkpoint and get_spec(n).label_set == IMAGENET_1K]
        left.selectbox("Backbone", backbones, key="finetune_quick_backbone",
                       index=backbones.index(QUICK_BACKBONE) if QUICK_BACKBONE in backbones else 0)
        if right.button("Train the quick model", key="finetune_quick_train", type="primary"):
            try:
                with st.spinner("Computing the features of new photos…"):
                    refused = teacher().sync(built)
                result = teacher().fit(built.name)
                path = save_quick_model(result)
            except CarNetError as exc:
                st.error(ui.public(exc))
            else:
                for name, reason in refused:
                    st.warning(f"Left out — {reason}")
                st.session_state["_quick_result"] = (str(path), result.fit_s, result.train_top1, result.photos)
        kept = st.session_state.get("_quick_result")
        if kept and Path(kept[0]).exists():
            path, fit_s, train_top1, photos = kept
            st.success(f"Trained in {fit_s:.1f} s on {count(sum(photos.values()), 'photo')} of "
                       f"{count(len(photos), 'class', 'classes')}; it is in every model picker as ★ "
                       f"{Path(path).stem}.")
            shot = st.camera_input("Try it: take a photo", key="finetune_quick_try_camera") \
                if st.session_state.get("finetune_build_camera") else None
            tried = shot or st.file_uploader("Try it: a photo", key="finetune_quick_try_upload",
                                             max_upload_size=ui.PHOTO_UPLOAD_MB)
            if tried is not None:
                model = ui.model_or_stop(f"{CHECKPOINT_PREFIX}{path}")
                try:
                    pred = predict(model, [load_image(tried.getvalue(), name=tried.name)], topk=len(photos))[0]
                except CarNetError as exc:
                    st.error(ui.public(exc))
                else:
                    st.plotly_chart(topk_bar_figure(pred.class_names, pred.probabilities, title=pred.heading),
                                    width="stretch", key="finetune_quick_bars")


# --- a new fine-tune --------------------------------------------------------------------------------------------
st.subheader("New fine-tune")
source = st.radio("Dataset", ["Folder under the data root", "Upload a zip of class folders",
                             "Build one from photos, class by class"], horizontal=True, key="finetune_source")
dataset = None
if source.startswith("Build"):
    try:
        built = catalog.built_dataset(st.text_input("Dataset name", value="my-cars", key="finetune_build_name"))
    except CarNetError as exc:
        st.error(ui.public(exc))
        st.stop()
    camera = st.toggle("Use the camera", key="finetune_build_camera")
    # The fields keep what was typed and picked until the photos are in: a form that cleared on every submit lost
    # the picked photos to a missing class name (or the class name to Enter). Once added, the next round of fields
    # starts empty (new widget keys), and what happened is said below them.
    round_ = st.session_state.setdefault("finetune_build_round", 0)
    with st.form("finetune_build_form", enter_to_submit=False):
        class_name = st.text_input("Class", placeholder="e.g. pickup", key=f"finetune_build_class_{round_}")
        photos = st.file_uploader("Its photos", accept_multiple_files=True, key=f"finetune_build_photos_{round_}",
                                  max_upload_size=ui.PHOTO_UPLOAD_MB)
        snap = st.camera_input("Or take one", key=f"finetune_build_snap_{round_}") if camera else None
        added = st.form_submit_button("Add the photos to this class")
    for kind, text in st.session_state.pop("finetune_build_said", []):
        getattr(st, kind)(text)
    if added:
        given = [(f.name, f.getvalue()) for f in photos or []] + ([(snap.name, snap.getvalue())] if snap else [])
        try:
            result = add_class_photos(built, class_name, given) if given else None
            if result is not None:  # their features now, so that a quick model costs only its fit
                teacher().sync(built)
        except CarNetError as exc:
            st.error(ui.public(exc))
        else:
            if result is None:
                st.warning("Choose some photos (or take one) first.")
            else:
                st.session_state.finetune_build_said = [
                    ("success", f"{count(len(result.saved), 'photo')} added to **{result.folder.name}**"
                                + (f"; {count(len(result.already_there), 'photo')} already there"
                                   if result.already_there else "") + ".")
                ] + [("error", f"Skipped — {reason}") for name, reason in result.refused]
                st.session_state.finetune_build_round = round_ + 1
                st.rerun()
    counts = class_counts(built)
    if counts:
        st.dataframe(pd.DataFrame([{"class": c, "photos": n} for c, n in counts.items()]), hide_index=True,
                     width="content")
        gone = st.selectbox("Remove a class", [None] + list(counts), key="finetune_build_remove",
                            format_func=lambda c: "—" if c is None else c)
        if gone is not None and st.button(f"Remove {gone} and its {count(counts[gone], 'photo')}",
                                          key="finetune_build_remove_run"):
            try:
                remove_class(built, gone)
                st.rerun()
            except CarNetError as exc:
                st.error(ui.public(exc))
    if len([n for n in counts.values() if n]) < 2:
        st.info(f"Add photos of at least two classes (about 10 or more each); they are kept in `{built}`.")
    else:
        dataset = built
        quick_model_panel(built)
elif source.startswith("Folder"):
    folders = catalog.dataset_folders()
    if not folders:
        st.info(f"No dataset folders in `{data_root()}`. Put one there (class sub-folders of images, optionally "
                f"under train/ and val/), set `CARNET_DATA_ROOT`, or upload a zip.")
    else:
        dataset = st.selectbox("Folder", folders, format_func=catalog.dataset_label, key="finetune_folder")
else:
    upload = st.file_uploader("Zip of class folders (cars/<class>/*.jpg, optionally with train/ and val/)",
                              type=["zip"], key="finetune_zip")
    if upload is not None:
        try:
            dataset = catalog.extract_upload(upload.name, upload.getvalue())
            catalog.prune_uploads(in_use=[dataset] + [j.spec.get("data", "") for j in runner.jobs()
                                                      if j.state in ("queued", "running")])
            st.success(f"Extracted to `{dataset}`.")
        except CarNetError as exc:
            st.error(f"Upload refused — {ui.public(exc)}")

if dataset is None:
    st.stop()
try:
    report = ui.dataset_report(str(dataset))
except CarNetError as exc:
    st.error(ui.public(exc))
    st.stop()
n_train = sum(c["train"] for c in report["counts"].values())
n_val = sum(c["val"] for c in report["counts"].values())
cols = st.columns(4)
cols[0].metric("classes", len(report["counts"]))
cols[1].metric("train images", n_train)
cols[2].metric("val images", n_val)
cols[3].metric("problems", len(report["unreadable"]) + len(report["small_classes"]) + len(report["duplicates"]))
with st.expander("Validation report", expanded=bool(report["duplicates"] or report["unreadable"])):
    st.dataframe(pd.DataFrame([{"class": k, **v} for k, v in report["counts"].items()]), hide_index=True,
                 width="stretch", height=min(400, 35 * len(report["counts"]) + 38))
    if report["unreadable"]:
        st.warning(f"{count(len(report['unreadable']), 'unreadable file')} will be skipped:")
        st.dataframe(pd.DataFrame(report["unreadable"]), hide_index=True)
    if report["small_classes"]:
        st.warning(f"Classes with too few images: {', '.join(report['small_classes'])}")
    if report["duplicates"]:
        st.error(f"{count(len(report['duplicates']), 'val image')} also in train (perceptual-hash duplicates): val "
                 "accuracy will be too optimistic. Remove them from one split.")
        st.dataframe(pd.DataFrame(report["duplicates"]), hide_index=True)

untrainable = too_few_classes(list(report["counts"]))
if untrainable:
    st.error(f"`{dataset.name}` cannot be fine-tuned on: {untrainable}.")

available, _ = ui.available_model_names()
backbones = [n for n in available if not ModelRef.parse(n).is_checkpoint]
with st.form("finetune_form", enter_to_submit=False):  # Enter in a number field only sets it: the buttons submit
    left, mid, right = st.columns(3)
    model = left.selectbox("Backbone", backbones, key="finetune_model")
    head = left.radio("Head", HEADS, horizontal=True, key="finetune_head", format_func=HEAD_TITLES.get)
    img_size = left.select_slider("Image size (px)", IMAGE_SIZES, value=default_img_size(ui.has_gpu()),
                                  key="finetune_img")
    epochs = mid.number_input("Epochs", 1, 200, 5, key="finetune_epochs")
    batch_size = mid.number_input("Batch size", 1, 512, 32, key="finetune_batch")
    lr = mid.number_input("Learning rate", 1e-6, 1.0, 2e-4, format="%.0e", key="finetune_lr",
                          help="Peak of a cosine schedule after a 1-epoch warm-up (AdamW).")
    probe = right.toggle("Start from a linear probe (LP-FT)", value=True, key="finetune_probe",
                         help="Fit the new head on the frozen backbone's features first (one inference pass), then "
                              "fine-tune everything — fast and stable, especially on a CPU.")
    freeze = right.number_input("Head-only epochs first", 0, 50, 0, key="finetune_freeze",
                                help="Without the linear probe: train only the head this many epochs.")
    augment = right.selectbox("Augmentation", ["RandAugment (m7)", "flip + crop only"], key="finetune_aug")
    mixup = right.toggle("Mixup / CutMix", key="finetune_mixup")
    buttons = st.container(horizontal=True)
    estimate_clicked = buttons.form_submit_button("Estimate time per epoch", key="finetune_estimate")
    launch_clicked = buttons.form_submit_button("Launch", type="primary", key="finetune_launch",
                                                disabled=bool(untrainable))

if estimate_clicked:
    try:
        est = ui.epoch_estimate(model, head, int(img_size), int(batch_size), n_train, n_val, probe=probe,
                                sample_images=[str(p) for p in list_images(dataset, recursive=True)[:4]])
        st.info(f"About {duration_text(est['prepare_s'] + est['epoch_s'] * epochs)} in all on {ui.device_label()}: "
                f"{duration_text(est['prepare_s'])} to prepare (start the worker, check every image"
                + (", fit the linear probe" if probe else "") + f"), then about {duration_text(est['epoch_s'])} per "
                f"epoch ({est['train_images_per_s']:.0f} training images/s, data loading not counted) for {epochs} "
                "epochs.")
    except CarNetError as exc:
        st.error(ui.public(exc))
if launch_clicked:
    cfg = page_recipe(str(dataset), model, head, img_size, epochs, batch_size, lr, probe, freeze,
                      randaugment=augment.startswith("Rand"), mixup=mixup)
    try:
        job = runner.submit(cfg, label=f"{get_spec(model).name} · {head} · {dataset.name}")
        st.session_state["finetune_active"] = [job.id]
        st.success(f"Launched job {job.id}.")
        time.sleep(0.5)
        st.rerun()
    except CarNetError as exc:
        st.error(ui.public(exc))

# --- history ----------------------------------------------------------------------------------------------------
st.subheader("Runs")
jobs = runner.jobs()
if not jobs:
    st.caption("No fine-tunes yet.")
    st.stop()
st.dataframe(pd.DataFrame([{
    "job": j.id, "dataset": Path(j.spec.get("data", "")).name, "model": j.spec.get("model"),
    "head": j.spec.get("head"), "status": j.state, "epochs": f"{len(j.history)}/{j.spec.get('epochs')}",
    "best top-1 (%)": None if j.best_top1 is None else round(j.best_top1 * 100, 1),
    "linear probe (%)": None if j.probe_top1 is None else round(j.probe_top1 * 100, 1),
    # a running job's time is in the live panel above, which refreshes; this table is drawn once
    "duration": None if j.state == "running" else duration_text(j.duration_s)} for j in jobs]), hide_index=True,
    width="stretch", placeholder="–")

with_curves = {j.id: j for j in jobs if j.history}
if st.session_state.get("_finetune_curve_runs") != list(with_curves):  # a run added (stopped, finished) or deleted:
    st.session_state["_finetune_curve_runs"] = list(with_curves)  # the newest three, not the choice made before it
    st.session_state["finetune_overlay"] = list(with_curves)[:3]
if with_curves:
    picked = st.multiselect("Compare runs", list(with_curves), key="finetune_overlay",
                            format_func=lambda i: with_curves[i].label + f" ({i})")
    metric = st.radio("Curve", ["top1", "top5", "val_loss", "train_loss"], horizontal=True, key="finetune_metric",
                      format_func=lambda m: {"top1": "val top-1", "top5": "val top-5", "val_loss": "val loss",
                                             "train_loss": "train loss"}[m])
    if picked:
        names = {i: f"{with_curves[i].label} ({i})" for i in picked}
        st.plotly_chart(runs_overlay_figure({names[i]: with_curves[i].history for i in picked}, metric,
                                            probes={names[i]: with_curves[i].probe_top1 for i in picked}),
                        width="stretch", key="overlay")

if st.session_state.get("_finetune_run_ids") != [j.id for j in jobs]:  # a new run: the picker goes to it
    st.session_state["_finetune_run_ids"] = [j.id for j in jobs]
    st.session_state["finetune_run"] = jobs[0].id
chosen = st.selectbox("Run", [j.id for j in jobs], key="finetune_run",
                      format_func=lambda i: f"{i} · {next(j for j in jobs if j.id == i).label}")
job = runner.get(chosen)
if job.state == "failed":
    st.error(job.status.get("error") or "failed")
if job.best_checkpoint:
    st.caption(f"Best checkpoint: `{job.best_checkpoint}` — pick it (★) on Classify, Explain or Compare.")
actions = st.container(horizontal=True)
if job.resumable and actions.button("Resume", key="finetune_resume"):
    runner.resume(job.id)
    st.rerun()
if job.state in FINISHED and actions.button("Delete run", key="finetune_delete"):
    runner.delete(job.id)
    st.rerun()
