"""Reduced-precision candidates side by side: accuracy under the accuracy gate and batch-1 latency, against ONNX
Runtime fp32 and timm eager fp32 measured in the same run.

    python bench/reduced_precision.py [--models efficientnet_lite0,...] [--calibration DIR] [--mapping FILE] [--no-int8]
        [--openvino-variants] [--profile]

Candidates: torch bf16 autocast; OpenVINO bf16 on the same ONNX export (where the CPU has AMX or AVX-512-BF16),
CarNet's engine ``openvino-bf16``; ONNX Runtime static int8 (QDQ, per-channel int8 weights, uint8 activations) with
min-max, entropy and percentile (99.999) calibration, each as is and with the first convolution and the classifier
kept in fp32. ``--openvino-variants`` adds two variants of OpenVINO's that are not engines, to see whether more
precision where it matters keeps the answers: f16 (where its CPU plugin lists FP16: AVX-512-FP16) and bf16 with the
depthwise convolutions kept in fp32. ``--profile`` adds where OpenVINO's fp32 and bf16 time goes, layer by layer.

int8 is calibrated on every 4th photo of the labelled set and gated on the others (the library's split,
:meth:`LabelledPhotos.split`). The gate: :func:`carnet_core.inference.parity.accuracy_gate` (≥ 99 % of fp32's
top-1 accuracy — a vehicle at top-1 on car photos without a mapping —, same top-1 on ≥ 98 % of photos, top-1
probability within 0.05 on average). Models without weights here run with random weights: timing only (their gate
row says "random").
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from carnet_core import CarNetError, load_model  # noqa: E402
from carnet_core.inference.engines import (  # noqa: E402
    OnnxRuntimeEngine,
    OpenVinoBF16Engine,
    TorchBF16Engine,
    TorchEngine,
    onnxruntime_session,
    openvino_bf16_missing,
)
from carnet_core.inference.export import cached_export  # noqa: E402
from carnet_core.inference.gate_set import labelled_photos  # noqa: E402
from carnet_core.inference.parity import accuracy_gate, median_ms  # noqa: E402
from carnet_core.models.labels import load_mapping  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SET = ROOT.parent / "shared" / "data" / "stanford_cars_40" / "val"


def quantize(src: Path, dst: Path, calibration: np.ndarray, method: str, keep_ends: bool) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({"input": x[None]} for x in calibration)

        def get_next(self):
            return next(self.it, None)

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    nodes = onnx.load(str(pre)).graph.node
    exclude = [n.name for n in nodes if n.op_type == "Softmax"]
    if keep_ends:
        convs = [n.name for n in nodes if n.op_type == "Conv"]
        exclude += convs[:1] + [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    extra = {"CalibPercentile": 99.999} if method == "Percentile" else {}
    quantize_static(str(pre), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method), nodes_to_exclude=exclude,
                    extra_options=extra)


def openvino_variant(path: Path, input_size: tuple[int, ...], precision: str, fp32_layers: str | None = None):
    """A batch-1 OpenVINO run of the ONNX export at ``path`` (input ``input_size`` (3, H, W)) with
    ``INFERENCE_PRECISION_HINT`` ``precision``; with ``fp32_layers`` (an IR layer type, e.g. ``GroupConvolution``)
    those layers are kept in fp32. Returns
    (x (1, 3, H, W) → probabilities (1, C), {runtime precision: number of convolution and fully connected layers}).

    How layers are kept in fp32: OpenVINO's ``precise`` runtime attribute, written into the layers of an IR copy of the
    model. Set from Python (``op.get_rt_info()[...]``) it is a plain string, which the CPU plugin ignores; read from
    an IR it becomes the typed attribute the plugin honours (checked below: the runtime precision of each layer)."""
    import re

    import openvino as ov

    core = ov.Core()
    network = core.read_model(str(path))
    network.reshape({"input": [1, *input_size]})
    if fp32_layers:
        with tempfile.TemporaryDirectory() as tmp:
            xml, weights = Path(tmp) / "m.xml", Path(tmp) / "m.bin"
            ov.save_model(network, xml, compress_to_fp16=False)
            marked = re.sub(rf'(<layer [^>]*type="{fp32_layers}"[^>]*>)',
                            r'\1<rt_info><attribute name="precise" version="0" value="" /></rt_info>', xml.read_text())
            xml.write_text(marked)
            network = core.read_model(str(xml), str(weights))
    compiled = core.compile_model(network, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                   "INFERENCE_PRECISION_HINT": precision})
    request, port = compiled.create_infer_request(), compiled.output("probabilities")
    kinds: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Convolution", "FullyConnected"):
            kinds[info["runtimePrecision"].astype(str)] = kinds.get(info["runtimePrecision"].astype(str), 0) + 1
    return (lambda x: np.array(request.infer({0: x})[port], np.float32)), kinds


def openvino_profile(path: Path, input_size: tuple[int, ...], repeats: int = 50) -> dict[str, dict[str, float]]:
    """Where OpenVINO's batch-1 time goes, fp32 against bf16: ms per call of each kind of layer (OpenVINO's
    ``PERF_COUNT``), the layers grouped by their timm module with the block numbers taken out (``blocks/conv_pw``:
    every block's expansion convolution, with what OpenVINO fused into it). Returns {precision: {layer: ms}}."""
    import re

    import openvino as ov

    core = ov.Core()
    x = np.zeros((1, *input_size), np.float32)
    times: dict[str, dict[str, float]] = {}
    for precision in ("f32", "bf16"):
        network = core.read_model(str(path))
        network.reshape({"input": [1, *input_size]})
        request = core.compile_model(network, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT":
                                                      precision, "PERF_COUNT": "YES"}).create_infer_request()
        for _ in range(10):
            request.infer({0: x})
        layers: dict[str, float] = {}
        for _ in range(repeats):
            request.infer({0: x})
            for info in request.get_profiling_info():
                if info.real_time.total_seconds() > 0:
                    name = re.sub(r"blocks\.\d+/blocks\.\d+\.\d+/|/module/|/(Conv|Gemm|MatMul)/.*|/WithoutBiases",
                                  "", info.node_name)
                    layers[name] = layers.get(name, 0.0) + info.real_time.total_seconds() * 1e3 / repeats
        times[precision] = layers
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,mobilenetv2_100,"
                                            "resnet50,efficientnet_b0")
    parser.add_argument("--calibration", default=str(DEFAULT_SET))
    parser.add_argument("--mapping")
    parser.add_argument("--weights", action="append", default=[], metavar="NAME=FILE",
                        help="a weights file for a model (e.g. mobilenetv2_100=../shared/weights/….pth)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                        help="the six int8 variants (--no-int8: leave them out, a much shorter run)")
    parser.add_argument("--openvino-variants", action="store_true",
                        help="also OpenVINO f16, and bf16 with the depthwise convolutions in fp32 (not engines)")
    parser.add_argument("--profile", action="store_true",
                        help="also where OpenVINO's fp32 and bf16 time goes, layer by layer (PERF_COUNT)")
    args = parser.parse_args()
    logging.getLogger().addHandler(logging.NullHandler())
    warnings.simplefilter("ignore")
    files = dict(w.split("=", 1) for w in args.weights)
    mapping = load_mapping(args.mapping) if args.mapping else None
    import timm

    print(f"# reduced precision under the accuracy gate — set {args.calibration}; batch-1 ms, median of {args.repeats}")
    print(f"{'model':<19} {'candidate':<30} {'ms':>6} {'×ORT fp32':>9} {'×eager':>7}  gate")
    for name in args.models.split(","):
        random = False
        try:
            model = load_model(name, checkpoint=files[name], device="cpu") if name in files else \
                load_model(name, device="cpu", use_hub=False)
        except CarNetError:
            torch.manual_seed(0)
            model, random = load_model(name, weights="random", device="cpu"), True
        gate_set = labelled_photos(model, args.calibration, mapping)
        cal, gate = gate_set.split()
        x = model.preprocess(gate_set.images)
        ref = TorchEngine(model).probabilities(x[gate])
        ref_right = gate_set.correct(ref, gate)
        x1 = x[:1]
        plain = timm.create_model(model.arch, pretrained=False, num_classes=model.num_classes).eval()
        with torch.no_grad():
            eager_ms = median_ms(lambda: plain(x1), args.repeats)
        fp32 = OnnxRuntimeEngine(model)
        fp32_ms = median_ms(lambda: fp32.probabilities(x1), args.repeats)
        rows = [("onnxruntime fp32", fp32_ms, None)]
        bf16 = TorchBF16Engine(model)
        probs = torch.cat([bf16.probabilities(x[gate][i:i + 32]) for i in range(0, len(gate), 32)])
        rows.append(("torch bf16", median_ms(lambda: bf16.probabilities(x1), args.repeats),
                     accuracy_gate(ref, probs, gate_set.correct(probs, gate), ref_right, "bf16", gate_set.name)))
        if (missing := openvino_bf16_missing()) is None:
            ov = OpenVinoBF16Engine(model)
            probs = ov.probabilities(x[gate])
            rows.append(("openvino bf16", median_ms(lambda: ov.probabilities(x1), args.repeats),
                         accuracy_gate(ref, probs, gate_set.correct(probs, gate), ref_right, "openvino-bf16",
                                       gate_set.name)))
        else:
            rows.append(("openvino bf16", None, f"not on this machine: {missing}"))
        if args.openvino_variants and missing is None:
            import openvino

            variants = [("openvino bf16, depthwise fp32", "bf16", "GroupConvolution")]
            if "FP16" in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
                variants.append(("openvino f16", "f16", None))
            for label, precision, fp32_layers in variants:
                run, kinds = openvino_variant(cached_export(model), tuple(model.data_config["input_size"]),
                                               precision, fp32_layers)
                probs = torch.from_numpy(np.concatenate([run(x[i:i + 1].numpy()) for i in gate]))
                gate_report = accuracy_gate(ref, probs, gate_set.correct(probs, gate), ref_right, label, gate_set.name)
                print(f"# {label}: convolution and fully connected layers ran in {kinds}", flush=True)
                rows.append((label, median_ms(lambda: run(x1.numpy()), args.repeats), gate_report))
        with tempfile.TemporaryDirectory() as tmp:
            for method in ("MinMax", "Entropy", "Percentile") if args.int8 else ():
                for keep_ends in (False, True):
                    label = f"int8 {method.lower()}" + (" (ends fp32)" if keep_ends else "")
                    dst = Path(tmp) / f"{method}-{keep_ends}.onnx"
                    try:
                        quantize(cached_export(model), dst, x[cal].numpy(), method, keep_ends)
                        session = onnxruntime_session(dst, batch=1)
                    except Exception as exc:  # noqa: BLE001 - a candidate that cannot be made is reported
                        rows.append((label, None, f"unavailable: {type(exc).__name__}"))
                        continue
                    run = lambda a: session.run(["probabilities"], {"input": a})[0]  # noqa: E731
                    probs = torch.from_numpy(np.concatenate([run(x[i:i + 1].numpy()) for i in gate]))
                    rows.append((label, median_ms(lambda: run(x1.numpy()), args.repeats),
                                 accuracy_gate(ref, probs, gate_set.correct(probs, gate), ref_right, label,
                                               gate_set.name)))
        for label, ms, gate_report in rows:
            verdict = ("(the fp32 reference)" if gate_report is None else gate_report if isinstance(gate_report, str)
                       else ("random weights: timing only; " if random else "")
                       + f"{'PASS' if gate_report.passed else 'fail'}: {gate_set.measure} "
                         f"{gate_report.accuracy:.1%} vs {gate_report.reference_accuracy:.1%}, same top-1 "
                         f"{gate_report.agreement:.1%}, |Δp| {gate_report.mean_top1_prob_diff:.3f}")
            cells = (f"{ms:>6.1f} {ms / fp32_ms:>9.2f} {eager_ms / ms:>6.1f}x" if ms else f"{'-':>6} {'-':>9} {'-':>7}")
            print(f"{name:<19} {label:<30} {cells}  {verdict}", flush=True)
        print(f"{name:<19} {'timm eager fp32':<30} {eager_ms:>6.1f} {eager_ms / fp32_ms:>9.2f} {1:>6.1f}x", flush=True)
        if args.profile and missing is None:
            times = openvino_profile(cached_export(model), tuple(model.data_config["input_size"]))
            print(f"# {name}: OpenVINO ms per call, layer by layer (fp32 → bf16), the largest first", flush=True)
            for layer, ms in sorted(times["bf16"].items(), key=lambda kv: -kv[1])[:8]:
                print(f"#   {layer:<40} {times['f32'].get(layer, 0.0):6.3f} → {ms:6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
