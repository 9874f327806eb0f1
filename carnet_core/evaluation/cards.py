"""Model cards: what a model is and what it costs — parameters, GMACs, file size, layer table, measured latency and
peak memory, provenance, and for fine-tuned checkpoints their dataset, recipe and validation metrics.

Counting uses ``torch.utils.flop_counter.FlopCounterMode`` (PyTorch's own operator-level counter; one
multiply-accumulate = 2 FLOPs, so GMACs = FLOPs / 2, the unit of timm's and the papers' tables: ResNet-50 ≈ 4.1 GMACs
at 224 px). Latency and peak memory are measured on this machine and cached on disk per model and machine
(``$CARNET_CACHE_DIR/cards.json``); :func:`measure_cost` re-measures.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carnet_core._io import atomic_write_json, file_lock, read_json
from carnet_core.config import cache_dir, child_env
from carnet_core.errors import CarNetError
from carnet_core.inference.serving import ServedModel
from carnet_core.models.classifier import Classifier
from carnet_core.models.registry import get_spec

if TYPE_CHECKING:
    import torch


@dataclass
class LayerRow:
    """One row of a card's layer table: a stage of the network and what comes out of it."""
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


@dataclass
class ModelCard:
    """Everything the Models page shows for one model (units in the names: px, MB, ms)."""
    key: str
    name: str
    arch: str
    head: str
    label_set: str
    class_names: list[str]
    input_px: int
    params: int
    gmacs: float
    file_mb: float | None
    provenance: str
    layers: list[LayerRow] = field(default_factory=list)
    latency_ms: float | None = None
    peak_memory_mb: float | None = None
    top1: float | None = None          # validation top-1 where known (fine-tuned checkpoints)
    dataset: str | None = None
    recipe: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_macs(module: torch.nn.Module, input_size: tuple[int, int, int]) -> float:
    """Multiply-accumulates of one forward pass of a batch of 1 at ``input_size`` (C, H, W), counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2)."""
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    from torch.utils.flop_counter import FlopCounterMode  # lazy: only model cards count MACs

    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(torch.zeros(1, *input_size, device=next(module.parameters()).device))
    module.train(was_training)
    return counter.get_total_flops() / 2


def layer_table(module: torch.nn.Module, input_size: tuple[int, int, int]) -> list[LayerRow]:
    """The network's stages in order — its top-level children, with the stage containers (ResNet ``layer1``…,
    EfficientNet/MobileNet ``blocks.0``…) one level down — with output shapes (batch of 1) and parameters."""
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    rows: list[tuple[str, torch.nn.Module]] = []
    for name, child in module.named_children():
        grandchildren = list(child.named_children())
        if name in ("blocks", "features", "stages") and grandchildren:
            rows += [(f"{name}.{n}", c) for n, c in grandchildren]
        else:
            rows.append((name, child))
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: shapes.__setitem__(
        n, tuple(out.shape) if isinstance(out, torch.Tensor) else ())) for n, m in rows]
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(1, *input_size, device=next(module.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        module.train(was_training)
    return [LayerRow(n, type(m).__name__, shapes.get(n, ()), sum(p.numel() for p in m.parameters()))
            for n, m in rows if n in shapes]


def model_card(key: str, model: Classifier) -> ModelCard:
    """The static part of a card (counted, not timed); see :func:`cached_cost` for latency and memory."""
    size = tuple(model.data_config["input_size"])
    location = Path(model.weights.location) if model.weights.location else None
    file_mb = location.stat().st_size / 2**20 if location and location.is_file() else None
    metrics = model.metrics or {}
    return ModelCard(key=key, name=model.name, arch=model.arch, head=model.head, label_set=model.label_set,
                     class_names=list(model.class_names), input_px=int(size[-1]), params=model.num_params,
                     gmacs=count_macs(model.module, size) / 1e9, file_mb=file_mb, provenance=model.weights.describe(),
                     layers=layer_table(model.module, size), top1=metrics.get("top1"),
                     dataset=model.extra.get("dataset"), recipe=model.extra.get("recipe"))


def served_card(key: str, model: ServedModel) -> ModelCard:
    """The card of a served model (the serving tier), from what the bundle stored in its export's metadata: parameters,
    GMACs, ONNX file size and layer table were counted when bundling (no network here to count them on)."""
    size = tuple(model.data_config["input_size"])
    layers = [LayerRow(r["name"], r["kind"], tuple(r["output_shape"]), int(r["params"]))
              for r in model.extra.get("layers") or []]
    return ModelCard(key=key, name=model.name, arch=model.arch, head=model.head, label_set=model.label_set,
                     class_names=list(model.class_names), input_px=int(size[-1]), params=model.num_params,
                     gmacs=float(model.extra.get("gmacs") or 0.0), file_mb=model.extra.get("file_mb"),
                     provenance=model.weights.describe(), layers=layers, top1=(model.metrics or {}).get("top1"),
                     dataset=model.extra.get("dataset"), recipe=model.extra.get("recipe"))


# --- measured cost, cached per machine ----------------------------------------------------------------------------

def _cache_file() -> Path:

    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    return root / "cards.json"


def _machine() -> str:
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    return f"{platform.node()}|{platform.processor() or platform.machine()}|{os.cpu_count()}|torch {torch.__version__}"


def _cost_key(key: str, fingerprint: str) -> str:
    return f"{_machine()}|{key}|{fingerprint}"


def cached_cost(key: str, fingerprint: str) -> dict[str, float] | None:
    """The last measurement of ``key`` (with weights ``fingerprint``) on this machine: {latency_ms,
    peak_memory_mb, measured}, or None."""
    data = read_json(_cache_file(), {})
    return data.get(_cost_key(key, fingerprint)) if isinstance(data, dict) else None


def measure_cost(key: str, fingerprint: str, load_args: dict[str, Any], repeats: int = 20) -> dict[str, float]:
    """Measure batch-1 classify latency (median ms over ``repeats``, through :func:`carnet_core.inference.predict` with the
    engine CarNet picks) and peak memory (the process's resident high-water mark, MB) in a fresh process, so one
    model's memory is not mixed with another's; then cache it.

    Args:
        key: the card key (registry name or checkpoint path).
        fingerprint: the weights fingerprint (a changed checkpoint is measured again).
        load_args: keyword arguments of :func:`carnet_core.load_model` (``name`` and/or ``checkpoint``).

    Raises:
        CarNetError: the model cannot be loaded or classified with (e.g. an engine forced by ``$CARNET_ENGINE`` that
            it cannot use: that message), or the measuring process died (its last output lines).
    """
    code = f"""
import json, sys, time, statistics, torch
from PIL import Image
from carnet_core import CarNetError, load_model, predict
from carnet_core._io import peak_rss_mb
try:
    torch.manual_seed(0)  # random weights (a model without weights here) are the same ones each time: one ONNX export
    m = load_model(**{json.dumps(load_args)}, device="cpu")
    img = Image.new("RGB", (320, 240), (120, 130, 140))
    predict(m, [img]); predict(m, [img])
except CarNetError as exc:
    sys.exit("carnet: " + str(exc))
ts = [predict(m, [img]).latency_ms for _ in range({int(repeats)})]
print(json.dumps({{"latency_ms": statistics.median(ts), "peak_memory_mb": peak_rss_mb()}}))
"""
    env = child_env()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        said = [line[len("carnet: "):] for line in proc.stderr.splitlines() if line.startswith("carnet: ")]
        raise CarNetError(f"measuring {key} failed: " + (said[-1] if said else
                                                          "\n".join((proc.stdout + proc.stderr).splitlines()[-5:])))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["measured"] = time.strftime("%Y-%m-%d %H:%M")
    _store_cost(key, fingerprint, result)
    return result


def _store_cost(key: str, fingerprint: str, result: dict[str, Any]) -> None:
    """Add one measurement to the cache file: read, change and replace it under a file lock, so that sessions
    measuring at the same moment do not drop each other's entries."""
    path = _cache_file()
    with file_lock(path.with_suffix(".lock")):
        data = read_json(path, {})
        data[_cost_key(key, fingerprint)] = result
        try:
            atomic_write_json(path, data)
        except OSError:  # a full disk: the measurement is still shown, just measured again next time
            pass


#: The Models table's columns, left to right: what a choice is made on first (cost and accuracy), what describes the
#: network after, so that a narrow screen (a projector at 150 %) shows the deciding columns without scrolling.
TABLE_COLUMNS: tuple[str, ...] = ("model", "params (M)", "GMACs", "latency (ms)", "vehicle at top-1 on car photos (%)",
                                  "val top-1 (%)", "peak memory (MB)", "file (MB)", "input (px)", "architecture",
                                  "head", "label set", "classes", "weights")


def table_row(label: str, key: str, card: dict[str, Any], cost: dict[str, float] | None) -> dict[str, Any]:
    """One row of the Models page's table for a card (:meth:`ModelCard.to_dict` plus ``has_weights``) and its
    measured cost (:func:`cached_cost`, or None when not measured yet): sizes rounded as shown, accuracy in %."""
    return {"model": label, "key": key, "architecture": card["arch"], "head": card["head"],
            "label set": card["label_set"], "classes": len(card["class_names"]),
            "params (M)": round(card["params"] / 1e6, 2), "GMACs": round(card["gmacs"], 2),
            "input (px)": card["input_px"],
            "file (MB)": None if card["file_mb"] is None else round(card["file_mb"], 1),
            "latency (ms)": None if not cost else round(cost["latency_ms"], 1),
            "peak memory (MB)": None if not cost or cost.get("peak_memory_mb") is None else round(cost["peak_memory_mb"]),
            "val top-1 (%)": None if card["top1"] is None else round(card["top1"] * 100, 1),
            "vehicle at top-1 on car photos (%)": None if (v := car_photo_top1(key)) is None else round(v * 100, 1),
            "weights": card["provenance"] if card["has_weights"] else "no weights here"}


def car_photo_top1(key: str) -> float | None:
    """A registered model's measured share of car photos with a road vehicle at top-1
    (:attr:`~carnet_core.models.registry.ModelSpec.car_photo_top1`); None for a checkpoint or where not measured."""
    try:
        return get_spec(key).car_photo_top1
    except CarNetError:  # a checkpoint's key, not a registered name
        return None


#: What a cost chart's accuracy is, by where it comes from.
ACCURACY_KINDS = {"val": "fine-tune: val top-1 on its dataset",
                  "car photos": "ImageNet model: road vehicle at top-1, 274 car photos (measured)"}


def cost_points(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The measured rows of :func:`table_row` as points of the cost-against-accuracy chart
    (:func:`carnet_core.charts.cost_scatter_figure`): name, latency (ms), accuracy in [0, 1] or None and what it is
    (``kind``, a key of :data:`ACCURACY_KINDS`: a fine-tune's val top-1, else an ImageNet model's measured
    vehicle-at-top-1 on car photos), parameters."""
    points = []
    for r in rows:
        if r["latency (ms)"] is None:
            continue
        val, car = r["val top-1 (%)"], r.get("vehicle at top-1 on car photos (%)")
        kind = "val" if val is not None else "car photos" if car is not None else None
        points.append({"name": r["model"], "latency_ms": r["latency (ms)"],
                       "top1": None if kind is None else (val if kind == "val" else car) / 100, "kind": kind,
                       "params": r["params (M)"] * 1e6, "label_set": r["label set"]})
    return points
