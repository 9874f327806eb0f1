"""CarNet benchmark: batch-1 classify latency per default model, next to plain timm eager fp32, same run.

    python bench/benchmark.py [--repeats 30] [--models efficientnet_lite0,mobilenetv2_100,...]

Latency does not depend on the weights' values, so models without weights on this machine run with random
weights. "timm eager" is ``model(x)`` under ``torch.no_grad()`` on the already preprocessed 224 px tensor;
"CarNet" is :func:`carnet_core.predict` on a PIL image (its model time, and model + preprocessing), with the engine
it chose (see carnet_core.engines); "ORT" is a plain ONNX Runtime session (fp32, CPU, all graph optimisations) on the
same exported model, the anchor. Numbers are medians in ms; ratios: CarNet / ORT (target <= 1.0) and
timm eager / CarNet (speed-up). Then throughput at batch 1, 8, 32 (images/s, model time), app cold start (a new
process: imports, model load, first prediction) and its peak RSS.

Then Grad-CAM: per method and model, :func:`carnet_core.explain.explain` latency next to one forward pass of the
same model (target: GradCAM <= 3.5x). ScoreCAM and AblationCAM run one forward pass per channel (minutes on a CPU):
add ``--expensive`` to include them.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from carnet_core import CarNetError, list_models, load_model, predict  # noqa: E402
from carnet_core.engines import OnnxRuntimeEngine, median_ms, onnxruntime_session, select_engine  # noqa: E402
from carnet_core.predict import predict_probabilities  # noqa: E402


def anchor_session(model):
    """A plain ONNX Runtime session on the model's exported file, CarNet's settings: the anchor CarNet is measured
    against."""
    return onnxruntime_session(OnnxRuntimeEngine(model).path)


COLD_START = """
import time, sys
t0 = time.perf_counter()
from carnet_core import load_model, predict
from PIL import Image
model = load_model("efficientnet_lite0", device="cpu", use_hub=False)
predict(model, [Image.new("RGB", (640, 480), (90, 90, 90))])
from carnet_core._proc import peak_rss_mb
print(f"{time.perf_counter() - t0:.2f} {peak_rss_mb():.0f}")
"""


def cold_start() -> tuple[float, float, float]:
    """(process wall time to first prediction s, the in-process part s, peak RSS MB) of a fresh interpreter."""
    import subprocess

    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", COLD_START], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()
    return time.perf_counter() - t, float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--cam-repeats", type=int, default=5)
    parser.add_argument("--expensive", action="store_true", help="also time ScoreCAM and AblationCAM")
    parser.add_argument("--models", default=",".join(s.name for s in list_models(default_only=True)))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    print(f"# CarNet benchmark — {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, batch 1, median of {args.repeats}")
    print(f"{'model':<20} {'weights':<7} {'engine':<12} {'timm eager':>10} {'CarNet':>7} {'ORT':>6} "
          f"{'CarNet/ORT':>10} {'speed-up':>9} {'CarNet+preproc':>15}")
    forward_ms = {}
    for name in args.models.split(","):
        try:
            model = load_model(name, device="cpu", use_hub=False)
            kind = "real"
        except CarNetError:
            model = load_model(name, weights="random", device="cpu")
            kind = "random"
        x = model.preprocess([image])

        def eager():
            with torch.no_grad():
                model.module(x)

        timm_ms = median_ms(eager, args.repeats, warmup=5)
        engine = select_engine(model).engine.name
        model_ms = statistics.median(predict(model, [image]).latency_ms for _ in range(args.repeats + 5))
        total_ms = median_ms(lambda: predict(model, [image]), args.repeats, warmup=5)
        ort_session = anchor_session(model)
        xn = x.cpu().numpy()
        ort_ms = median_ms(lambda: ort_session.run(None, {"input": xn}), args.repeats, warmup=5)
        print(f"{name:<20} {kind:<7} {engine:<12} {timm_ms:>10.1f} {model_ms:>7.1f} {ort_ms:>6.1f} "
              f"{model_ms / ort_ms:>10.2f} {timm_ms / model_ms:>8.1f}x {total_ms:>15.1f}")
        forward_ms[name] = (model, timm_ms)

    print("\n# Throughput, CarNet path (model time, images/s)")
    print(f"{'model':<20} " + " ".join(f"{'batch ' + str(b):>9}" for b in (1, 8, 32)))
    for name, (model, _) in forward_ms.items():
        cells = []
        for b in (1, 8, 32):
            batch = torch.randn(b, *model.data_config["input_size"])
            ms = median_ms(lambda: predict_probabilities(model, batch), max(3, args.repeats // b))
            cells.append(f"{b / ms * 1e3:>9.0f}")
        print(f"{name:<20} " + " ".join(cells))

    from carnet_core.explain import EXPENSIVE_METHODS, METHODS, explain

    methods = [m for m in METHODS if args.expensive or m not in EXPENSIVE_METHODS]
    print(f"\n# Grad-CAM latency (median of {args.cam_repeats}, ms) and ratio to one forward pass")
    print(f"{'model':<20} {'forward':>8} " + " ".join(f"{m:>17}" for m in methods))
    for name, (model, fwd) in forward_ms.items():
        cells = []
        for method in methods:
            ms = statistics.median(explain(model, image, method=method).latency_ms
                                   for _ in range(1 if method in EXPENSIVE_METHODS else args.cam_repeats))
            cells.append(f"{ms:>9.0f} ({ms / fwd:>4.1f}x)")
        print(f"{name:<20} {fwd:>8.1f} " + " ".join(cells))


def report_cold_start() -> None:
    wall, inside, rss = cold_start()
    print(f"\n# App cold start (efficientnet_lite0, ONNX export cached): process start to first prediction "
          f"{wall:.1f} s (of which imports + load + predict {inside:.1f} s), peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
    report_cold_start()
