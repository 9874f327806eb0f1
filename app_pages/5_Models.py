"""Models: a card per model and fine-tuned checkpoint — what it is, what it costs here, and how it was made."""

import functools

import pandas as pd
import streamlit as st

import ui
from carnet_core import CarNetError
from carnet_core.charts import cost_scatter_figure
from carnet_core.config import hosted_mode, operator_text
from carnet_core.errors import count
from carnet_core.evaluation.cards import ACCURACY_KINDS, TABLE_COLUMNS, cost_points, table_row
from carnet_core.evaluation.metrics import top5_informative
from carnet_core.inference.export import export_bundle
from carnet_core.inference.selection import stored_engine_text
from carnet_core.inference.serving import served_zip
from carnet_core.models.checkpoints import public_checkpoint
from carnet_core.models.refs import ModelRef
from carnet_core.models.registry import list_models

st.set_page_config(page_title="CarNet · Models", page_icon="🚗", layout="wide")
st.title("Models")
served = ui.served()  # the serving tier: the models bundled with this demo
if served:
    st.caption("Pick a model by what it costs and how well it does. Parameters and GMACs were counted when this demo "
               "was bundled (PyTorch's FLOP counter, 1 MAC = 2 FLOPs); latency is measured on this server, once.")
else:
    st.caption("Pick a model by what it costs and how well it does. Parameters and GMACs are counted (PyTorch's FLOP "
               "counter, 1 MAC = 2 FLOPs); latency and peak memory are measured on this machine and cached.")

show_all = not served and st.toggle("All registered architectures (not only the defaults)", key="models_all")
checkpoints = ui.fine_tuned()
keys = list(served) or [s.name for s in list_models(default_only=not show_all)] + list(checkpoints)
title = ui.model_titles(checkpoints)
cards, broken = {}, []
with st.spinner("Counting parameters and multiply-accumulates…"):
    for key in keys:
        try:
            cards[key] = ui.model_card(key)
        except CarNetError as exc:  # a checkpoint that cannot be loaded: said once, the other cards still shown
            broken.append(f"{title(key)}: {ui.public(exc)}")
for message in broken:
    st.warning(f"Left out — {message}")
keys = list(cards)

rows = [table_row(checkpoints[key].label if key in checkpoints else key, key, card, ui.cached_cost(key))
        for key, card in cards.items()]
table = pd.DataFrame(rows)

st.subheader("Cost against accuracy")
if points := cost_points(rows):
    st.plotly_chart(cost_scatter_figure(points, ACCURACY_KINDS), width="stretch", key="models_scatter")
    st.caption("Accuracy: a fine-tune's validation top-1 on its own dataset; for EfficientNet-Lite0, Lite1 and Lite2, the "
               "share of 274 car photos (Stanford Cars val) they put a road vehicle at top-1, measured here; other "
               "ImageNet models sit in the strip below, their accuracy not measured here. A model with no weights "
               "here is measured on random weights: the same network, the same cost.")
unmeasured = [r["key"] for r in rows if r["latency (ms)"] is None]
if unmeasured and not hosted_mode():  # a measuring process per model: not for a public demo's visitors
    st.info(f"Latency not measured yet for {count(len(unmeasured), 'model')} on this machine.")
    if st.button(f"Measure {count(len(unmeasured), 'model')} (about 10 s each)", key="models_measure_all",
                 help="A model without weights here is measured on random weights: the same network, the same cost."):
        bar = st.progress(0.0)
        failed = []
        for i, key in enumerate(unmeasured):
            bar.progress(i / len(unmeasured), text=f"Measuring {key}…")
            try:
                ui.measure(key)
            except CarNetError as exc:
                failed.append(ui.public(exc))
        if not failed:
            st.rerun()
        bar.empty()
        for message in failed:
            st.error(message)

st.dataframe(table[list(TABLE_COLUMNS)], hide_index=True, width="stretch", placeholder="–",  # "–": not measured yet
             column_config={"model": st.column_config.TextColumn(pinned=True),  # stays while the rest scrolls
                            "vehicle at top-1 on car photos (%)": st.column_config.NumberColumn(
                                "car photos (%)", help="Share of 274 Stanford Cars val photos with a road vehicle "
                                                       "at top-1, measured here (ImageNet models)"),
                            "val top-1 (%)": st.column_config.NumberColumn(
                                help="A fine-tune's validation top-1 on its own dataset")})

st.subheader("Model card")
pick = st.selectbox("Model", keys, format_func=title, key="models_pick")
card = cards[pick]
cost = ui.cached_cost(pick)
st.markdown(f"### {title(pick)}")
st.caption(f"timm architecture `{card['arch']}` · head **{card['head']}** · label set **{card['label_set']}** "
           f"({len(card['class_names'])} classes) · weights: {card['provenance']}")
m = st.columns(5)
m[0].metric("parameters", f"{card['params'] / 1e6:.2f} M")
m[1].metric(f"GMACs at {card['input_px']} px", f"{card['gmacs']:.2f}")
m[2].metric("file size", "–" if card["file_mb"] is None else f"{card['file_mb']:.1f} MB")
m[3].metric("batch-1 latency", "–" if not cost else f"{cost['latency_ms']:.1f} ms")
m[4].metric("peak memory", "–" if not cost or cost["peak_memory_mb"] is None else
            f"{cost['peak_memory_mb']:,.0f} MB")
measure_label = ("Measure again" if cost else "Measure latency and memory") + ("" if card["has_weights"] else
                                                                              " (on random weights)")
if not served and not hosted_mode() and st.button(measure_label, key="models_measure"):  # not a visitor's to spend
    try:
        with st.spinner(f"Measuring {pick} in a fresh process…"):
            ui.measure(pick)
        st.rerun()
    except CarNetError as exc:
        st.error(ui.public(exc))
if cost:
    st.caption(f"Measured {cost['measured']} on this machine: median of 20 batch-1 predictions through CarNet's "
               "inference engine" + ("." if served else "; peak memory is the measuring process's resident high-water "
                                                        "mark.")
               + ("" if card["has_weights"] else " No weights here: measured on random weights, which cost what the "
                                                 "real ones do (the same network)."))
if card["has_weights"]:  # to deploy elsewhere: made when the button is pressed, not on every rerun
    model = ui.model_or_stop(pick)
    if engine_text := stored_engine_text(model, card["fingerprint"]):  # the card's: no hashing on each rerun
        st.caption(engine_text)
    down = st.container(horizontal=True)
    if served:
        down.download_button("Download as ONNX (.zip)", functools.partial(served_zip, model), mime="application/zip",
                             file_name=f"{model.name}-onnx.zip", key="models_onnx",
                             help="The model in ONNX (outputs logits, probabilities and the last feature map) with "
                                  "its class names and data config in a .json and its classifier in a .npz beside it.")
    else:
        down.download_button("Download as ONNX (.zip)", functools.partial(export_bundle, model),
                             mime="application/zip", file_name=f"{model.name}-onnx.zip", key="models_onnx",
                             help="The model in ONNX (outputs logits and probabilities) with its class names and "
                                  "data config in a .json beside it" + operator_text(
                                      ", as `python -m carnet_core export` writes them") + ".")
    if (ref := ModelRef.parse(pick)).is_checkpoint:
        path = ref.checkpoint
        down.download_button("Download the checkpoint (.safetensors)", functools.partial(public_checkpoint, path),
                             file_name=path.name,
                             mime="application/octet-stream", key="models_checkpoint",
                             help="CarNet's own format: class names, data config and provenance inside; "
                                  "`load_model(checkpoint=...)` or the weights folder of another CarNet.")

if card["top1"] is not None or card["recipe"]:
    st.markdown("**Fine-tune**")
    recipe = card["recipe"] or {}
    st.write(f"Dataset `{ui.public(card['dataset'])}` · validation top-1 **{(card['top1'] or 0) * 100:.1f}%**"
             + (f", top-5 {card['metrics']['top5'] * 100:.1f}%"
                if card["metrics"].get("top5") and top5_informative(len(card["class_names"])) else "")
             + (f" (epoch {card['metrics']['epoch']})" if card["metrics"].get("epoch") else
                " (the linear probe: no fine-tuned epoch beat it)" if card["metrics"].get("epoch") == 0 else ""))
    if recipe:
        keep = ["model", "head", "img_size", "epochs", "batch_size", "lr", "optimizer", "scheduler", "freeze_epochs",
                "probe_init", "label_smoothing", "randaugment", "mixup", "cutmix", "ema_decay", "precision"]
        st.dataframe(pd.DataFrame([{"setting": k, "value": str(recipe.get(k))} for k in keep if k in recipe]),
                     hide_index=True)

left, right = st.columns(2)
with left:
    st.markdown("**Layers** (stages and what comes out of them, batch of 1)")
    st.dataframe(pd.DataFrame([{"layer": r["name"], "type": r["kind"], "output": " × ".join(map(str, r["output_shape"][1:])),
                                "params": f"{r['params']:,}"} for r in card["layers"]]), hide_index=True,
                 width="stretch")
with right:
    st.markdown("**Classes**")
    query = st.text_input("Search classes", key="models_class_search", placeholder="e.g. wagon, BMW, 2012")
    names = [n for n in card["class_names"] if query.lower() in n.lower()] if query else card["class_names"]
    st.caption(f"{len(names)} of {len(card['class_names'])}")
    st.dataframe(pd.DataFrame({"class": names}), hide_index=True, width="stretch", height=300)
