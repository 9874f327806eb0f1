"""OpenVINO against ONNX Runtime on this CPU: fp32 and NNCF int8, batch-1 latency and the accuracy gate, side by side
in one run (fast-inference issue: "OpenVINO int8 if it beats ONNX Runtime here").

    python bench/openvino_check.py --venv DIR [--models efficientnet_lite0,mobilenetv2_100] [--calibration DIR]

OpenVINO is not one of CarNet's requirements, so it runs in another venv (``--venv``, made with ``pip install
openvino nncf onnxruntime==1.31.1 numpy pillow pi-heif``). This script, on the full install, exports each model to ONNX
(CarNet's cached export) and preprocesses the labelled set (default: ../shared stanford_cars_40/val, car photos
scored as "a road vehicle at top-1"); then runs itself in that venv, where it times ONNX Runtime fp32 (the
reference), OpenVINO fp32 and OpenVINO int8 (NNCF post-training quantization, calibrated on every 4th photo and gated
on the others, as CarNet's int8) and applies :func:`carnet_core.inference.parity.accuracy_gate`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_SET = ROOT.parent / "shared" / "data" / "stanford_cars_40" / "val"


def prepare(models: list[str], folder: Path, work: Path) -> list[dict]:
    """On the full install: each model's ONNX export and the preprocessed photos, written under ``work``."""
    from carnet_core import load_model
    from carnet_core.data.images import load_image
    from carnet_core.inference.export import cached_export
    from carnet_core.models.labels import vehicle_indices

    photos = sorted(folder.glob("*/*.jpg"))
    jobs = []
    for name in models:
        model = load_model(name, device="cpu", use_hub=False)
        inputs = work / f"{name}.npy"
        np.save(inputs, model.preprocess_array([load_image(p) for p in photos]))
        jobs.append({"name": name, "onnx": str(cached_export(model)), "inputs": str(inputs),
                     "vehicles": vehicle_indices(model.class_names), "set": f"{folder.parent.name}/{folder.name} "
                                                                           f"({len(photos)} photos)"})
    return jobs


def run(job: dict) -> list[dict]:
    """In the OpenVINO venv: the three engines on one model."""
    import nncf
    import onnxruntime as ort
    import openvino as ov

    from carnet_core.inference.parity import MIN_TOP1_AGREEMENT, accuracy_gate, median_ms

    x = np.load(job["inputs"])
    calibration, gated = x[::4], np.delete(x, np.s_[::4], axis=0)
    vehicles = np.asarray(job["vehicles"])

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_free_dimension_override_by_name("batch", 1)
    session = ort.InferenceSession(job["onnx"], options, providers=["CPUExecutionProvider"])
    ort_probs = lambda a: session.run(["probabilities"], {"input": a})[0]  # noqa: E731

    core = ov.Core()
    model = core.read_model(job["onnx"])
    model.reshape({"input": [1, *x.shape[1:]]})
    fp32 = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    # bf16 runs on AMX or AVX-512-BF16; elsewhere OpenVINO falls back to fp32 (the row then says what the CPU lacks)
    bf16_hardware = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    bf16 = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16"})
    int8_model = nncf.quantize(model, nncf.Dataset(list(calibration), lambda a: a[None]),
                               preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calibration))
    int8 = core.compile_model(int8_model, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    # NNCF's accuracy-aware quantization: layers go back to fp32 until the int8 model agrees with fp32 on the top-1
    # class of ≥ 98 % of the calibration photos (our agreement rule, measured on the calibration part only)
    reference_top1 = np.concatenate([ort_probs(c[None]) for c in calibration]).argmax(1)

    def agreement(compiled, items) -> float:
        out = compiled.outputs[1] if len(compiled.outputs) > 1 else compiled.outputs[0]
        return float(np.mean([int(np.argmax(compiled(x[None])[out])) == int(top) for x, top in items]))

    items = nncf.Dataset(list(zip(calibration, reference_top1)), lambda item: item[0][None])
    controlled = nncf.quantize_with_accuracy_control(
        model, calibration_dataset=items, validation_dataset=items, validation_fn=agreement,
        max_drop=1 - MIN_TOP1_AGREEMENT, drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(calibration))
    int8_controlled = core.compile_model(controlled, "CPU", {"PERFORMANCE_HINT": "LATENCY"})

    def ov_probs(compiled):
        out = compiled.output("probabilities") if "probabilities" in {n for o in compiled.outputs
                                                                    for n in o.get_names()} else compiled.output(0)
        return lambda a: softmax(compiled(a)[out]) if out.get_any_name() == "logits" else compiled(a)[out]

    engines = {"onnxruntime fp32": ort_probs, "openvino fp32": ov_probs(fp32),
               "openvino bf16" + ("" if bf16_hardware else " (no bf16 hardware: fp32)"): ov_probs(bf16),
               "openvino int8 (NNCF)": ov_probs(int8),
               "openvino int8, accuracy control": ov_probs(int8_controlled)}
    one = x[:1]
    rows = []
    reference = np.concatenate([ort_probs(g[None]) for g in gated])
    ref_correct = np.isin(reference.argmax(1), vehicles)
    for label, probs in engines.items():
        ms = median_ms(lambda: probs(one), repeats=200)
        p = np.concatenate([probs(g[None]) for g in gated])
        gate = accuracy_gate(reference, p, np.isin(p.argmax(1), vehicles), ref_correct, label, job["set"],
                             "vehicle-at-top-1 share")
        rows.append({"model": job["name"], "engine": label, "ms": ms, "vs_ort": ms / rows[0]["ms"] if rows else 1.0,
                     "gate": gate.summary(), "passed": gate.passed})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, help="a venv with openvino, nncf, onnxruntime, numpy, pillow and pi-heif")
    parser.add_argument("--models", default="efficientnet_lite0")
    parser.add_argument("--calibration", type=Path, default=DEFAULT_SET)
    parser.add_argument("--job", help=argparse.SUPPRESS)  # the run inside the OpenVINO venv
    args = parser.parse_args()
    if args.job:
        print(json.dumps(run(json.loads(Path(args.job).read_text()))))
        return 0
    if args.venv is None:
        parser.error("--venv is required")
    work = Path(tempfile.mkdtemp(prefix="carnet-openvino-"))
    print(f"# OpenVINO against ONNX Runtime, batch 1, {args.calibration}")
    print(f"{'model':<20} {'engine':<32} {'batch-1 ms':>10} {'x ORT fp32':>10}  gate")
    for job in prepare(args.models.split(","), args.calibration, work):
        spec = work / f"{job['name']}.json"
        spec.write_text(json.dumps(job))
        proc = subprocess.run([str(args.venv / "bin" / "python"), __file__, "--job", str(spec)], capture_output=True,
                              text=True, timeout=1800)
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            return 1
        for row in json.loads(proc.stdout.strip().splitlines()[-1]):
            print(f"{row['model']:<20} {row['engine']:<32} {row['ms']:>10.2f} {row['vs_ort']:>10.2f}  {row['gate']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
