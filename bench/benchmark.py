"""CarNet benchmark: batch-1 classify latency per default model, next to plain timm eager fp32 and plain ONNX Runtime
fp32, same run.

    python bench/benchmark.py [--repeats 30] [--models efficientnet_lite0,...] [--calibration DIR [--mapping FILE]] [--compile]

Latency does not depend on the weights' values, so models without weights on this machine run with random
weights. "timm eager" is a plain ``timm.create_model`` network (NCHW, fp32) called under ``torch.no_grad()`` on the
already preprocessed tensor; "CarNet" is :func:`carnet_core.inference.predict` on a PIL image (its model time, and model +
preprocessing), with the engine it chose (see carnet_core.inference.engines); "ORT" is a default ``onnxruntime.InferenceSession``
(fp32, CPU) on the same exported file, the anchor, timed like CarNet's model time: one call right after the same
preprocessing of the same image ("ORT back-to-back": called in a tight loop on a ready tensor, its threads still
spinning, which no classify request gets); "CarNet session / ORT": CarNet's own ONNX Runtime session timed exactly as
the anchor is (what is left of CarNet's model time without predict()'s Python around the call), as a ratio to the
anchor; "ORT + timm preproc" is the whole classify step as a user of that anchor
would write it: timm's eval transform on the same PIL image, then the session. All are timed in alternating blocks of 10 calls, each after a pause and 3 untimed calls
(drift on a shared machine hits them alike, and no engine's threads still busy-wait while another is timed); numbers
are medians in ms; ratios: CarNet / ORT (model time; target <= 1.0), timm eager / CarNet (speed-up) and CarNet +
preprocessing / ORT + timm preprocessing (the whole step).

``--calibration DIR`` (default: ../shared/data/stanford_cars_40/val when present; ``--mapping FILE`` for an
ImageNet model on other classes) is the labelled set of the reduced-precision candidates' (bf16, int8) accuracy gate:
≥ 99 % of fp32's top-1 accuracy (a vehicle at top-1 on car photos without a mapping), the same top-1 on ≥ 98 % of the
photos, top-1 probability within 0.05 on average; each model's candidate table — accuracy and batch-1 ms side by
side — is printed. ``--compile`` also times ``torch.compile`` (inductor, fp32) and its compile time.

Then throughput at batch 1, 8, 32 (images/s, model time; CarNet next to the ORT anchor given the whole batch in one
call), Grad-CAM per method and model next to one forward pass
(``--expensive`` adds ScoreCAM and AblationCAM, minutes on a CPU), app cold start (a new process: imports, model load,
first prediction) and its peak RSS.
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

from carnet_core import CarNetError, list_models, load_model  # noqa: E402
from carnet_core.inference.export import cached_export
from carnet_core.inference.gate_set import labelled_photos
from carnet_core.inference.parity import median_ms
from carnet_core.models.labels import load_mapping
from carnet_core.inference.selection import select_engine
from carnet_core.inference.predict import predict, predict_probabilities  # noqa: E402

DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "stanford_cars_40" / "val"


def anchor_session(model):
    """A default ONNX Runtime CPU session (fp32, its default graph optimisations and threads) on the model's exported
    file: the anchor CarNet is measured against."""
    import onnxruntime as ort

    return ort.InferenceSession(str(cached_export(model)), providers=["CPUExecutionProvider"])


def ort_in_situ(model, image, session) -> float:
    """The anchor's model time (ms) in the situation CarNet's is measured in: the image preprocessed the same way just
    before (CPU caches and ONNX Runtime's idle threads as in ``predict()``), then one default-session call."""
    x = model.preprocess([image]).numpy()
    t = time.perf_counter()
    session.run(None, {"input": x})
    return (time.perf_counter() - t) * 1e3


def alternating_ms(fns: dict, repeats: int, block: int = 10, pause_s: float = 0.2, warmup: int = 3) -> dict:
    """Median ms per function, timing them in alternating blocks of ``block`` calls (the order rotating from round to
    round), each block after ``warmup`` untimed calls and a pause (so that one engine's busy-waiting threads have
    gone to sleep before the next is timed).
    A function that returns a number (its own measure of its time, ms) is scored by the median of those instead."""
    times = {k: [] for k in fns}
    names = list(fns)
    for r in range(max(1, repeats // block)):
        for k in names[r % len(names):] + names[:r % len(names)]:  # each starts a round in turn: no order bias
            fn = fns[k]
            time.sleep(pause_s)
            for _ in range(warmup):
                fn()
            for _ in range(block):
                t = time.perf_counter()
                own = fn()
                times[k].append(own if isinstance(own, (int, float)) else (time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def compiled_ms(model, x, repeats: int) -> tuple[float, float]:
    """(compile + first call s, median ms) of ``torch.compile`` (inductor, default mode) on a copy of the network."""
    import copy

    net = torch.compile(copy.deepcopy(model.module).eval())
    t = time.perf_counter()
    with torch.no_grad():
        net(x)
    first = time.perf_counter() - t

    def call():
        with torch.no_grad():
            net(x)

    return first, median_ms(call, repeats, warmup=3)


COLD_START = """
import time, sys
t0 = time.perf_counter()
from carnet_core import load_model, predict
from PIL import Image
model = load_model("efficientnet_lite0", device="cpu", use_hub=False)
predict(model, [Image.new("RGB", (640, 480), (90, 90, 90))])
first = time.time()
from carnet_core._io import peak_rss_mb
print(f"{first:.3f} {time.perf_counter() - t0:.2f} {peak_rss_mb():.0f}")
"""


def cold_start(runs: int = 3) -> tuple[float, float, float]:
    """Median over ``runs`` fresh interpreters of (process launch to first prediction s, the part after the
    interpreter's start-up s), and the largest peak RSS MB. The interpreter's exit is not counted."""
    import subprocess

    results = []
    for _ in range(runs):
        launch = time.time()
        out = subprocess.run([sys.executable, "-c", COLD_START], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent).stdout.split()
        results.append((float(out[0]) - launch, float(out[1]), float(out[2])))
    return (statistics.median(r[0] for r in results), statistics.median(r[1] for r in results),
            max(r[2] for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--cam-repeats", type=int, default=5)
    parser.add_argument("--expensive", action="store_true", help="also time ScoreCAM and AblationCAM")
    parser.add_argument("--models", default=",".join(s.name for s in list_models(default_only=True)))
    parser.add_argument("--calibration", default=str(DEFAULT_PHOTOS) if DEFAULT_PHOTOS.is_dir() else None,
                        help="labelled photos (class folders) for the bf16 / int8 accuracy gate (none: those "
                             "candidates are not tried)")
    parser.add_argument("--mapping", help="folder class -> model classes (JSON/CSV) for ImageNet models")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (inductor)")
    args = parser.parse_args()

    import timm

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    mapping = load_mapping(args.mapping) if args.mapping else None
    print(f"# CarNet benchmark — {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, batch 1, median of {args.repeats}; accuracy gate set: "
          f"{args.calibration or 'none (bf16/int8 not tried)'}")
    rows, forward_ms = [], {}
    for name in args.models.split(","):
        try:
            model = load_model(name, device="cpu", use_hub=False)
            kind = "real"
        except CarNetError:
            torch.manual_seed(0)  # the same random weights every run: the cached export is reused, not added to
            model = load_model(name, weights="random", device="cpu")
            kind = "random"
        x = model.preprocess([image])
        plain = timm.create_model(model.arch, pretrained=False, num_classes=len(model.class_names)).eval()

        def eager():
            with torch.no_grad():
                plain(x)

        gate_set = labelled_photos(model, args.calibration, mapping) if args.calibration else None
        choice = select_engine(model, calibration=gate_set)
        print(f"\n## {name}: {choice.reason}\n{choice.table()}", flush=True)
        ort_session = anchor_session(model)
        xn = x.cpu().numpy()
        transform = timm.data.create_transform(**model.data_config)  # timm's own eval transform, torch tensors
        own = getattr(choice.engine, "session", None)  # CarNet's own ONNX Runtime session, when it chose one
        ms = alternating_ms({"eager": eager, "carnet": lambda: predict(model, [image]).latency_ms,
                             "carnet+preproc": lambda: predict(model, [image]),
                             "ort": lambda: ort_in_situ(model, image, ort_session),
                             **({"carnet session": lambda: ort_in_situ(model, image, own)} if own else {}),
                             "ort back-to-back": lambda: ort_session.run(None, {"input": xn}),
                             "ort+preproc": lambda: ort_session.run(None, {"input": transform(image)[None].numpy()})},
                            args.repeats)
        compiled = compiled_ms(model, x, args.repeats) if args.compile else None
        rows.append((name, kind, choice.engine.name, ms["eager"], ms["carnet"], ms["ort"], ms["ort back-to-back"],
                     ms["carnet+preproc"], ms["ort+preproc"], compiled, ms.get("carnet session")))
        forward_ms[name] = (model, ms["eager"], ort_session)

    print(f"\n# Classify latency, batch 1, ms\n{'model':<20} {'weights':<7} {'engine':<12} {'timm eager':>10} "
          f"{'CarNet':>7} {'ORT':>6} {'CarNet/ORT':>10} {'ORT back-to-back':>16} {'speed-up':>9} {'CarNet+preproc':>15}"
          f" {'ORT+timm preproc':>17}"
          f" {'ratio':>6} {'CarNet session/ORT':>18}"
          + (f" {'torch.compile':>13} {'compile s':>9}" if args.compile else ""))
    for name, kind, engine, timm_ms, model_ms, ort_ms, ort_b2b_ms, total_ms, ort_total_ms, compiled, own_ms in rows:
        print(f"{name:<20} {kind:<7} {engine:<12} {timm_ms:>10.1f} {model_ms:>7.1f} {ort_ms:>6.1f} "
              f"{model_ms / ort_ms:>10.2f} {ort_b2b_ms:>16.1f} {timm_ms / model_ms:>8.1f}x {total_ms:>15.1f} {ort_total_ms:>17.1f}"
              f" {total_ms / ort_total_ms:>6.2f} {f'{own_ms / ort_ms:.2f}' if own_ms else '-':>18}"
              + (f" {compiled[1]:>13.1f} {compiled[0]:>9.0f}" if compiled else ""))

    print("\n# Throughput, images/s (model time): CarNet path / the ORT anchor with the batch in one call")
    print(f"{'model':<20} " + " ".join(f"{'batch ' + str(b):>11}" for b in (1, 8, 32)))
    for name, (model, _, ort_session) in forward_ms.items():
        cells = []
        for b in (1, 8, 32):
            batch = torch.randn(b, *model.data_config["input_size"])
            ms = alternating_ms({"carnet": lambda: predict_probabilities(model, batch),
                                 "ort": lambda: ort_session.run(None, {"input": batch.numpy()})},
                                max(12, args.repeats // b), block=max(2, 10 // b), warmup=1)
            cells.append(f"{b / ms['carnet'] * 1e3:>5.0f} /{b / ms['ort'] * 1e3:>4.0f}")
        print(f"{name:<20} " + " ".join(cells))

    from carnet_core.explain.cams import EXPENSIVE_METHODS, METHOD_NAMES, METHODS, explain

    methods = [m for m in METHODS if args.expensive or m not in EXPENSIVE_METHODS]
    print(f"\n# Grad-CAM latency (median of {args.cam_repeats}, ms) and ratio to one forward pass")
    print(f"{'model':<20} {'forward':>8} " + " ".join(f"{METHOD_NAMES[m]:>17}" for m in methods))
    for name, (model, fwd, _) in forward_ms.items():
        cells = []
        for method in methods:
            ms = statistics.median(explain(model, image, method=method).latency_ms
                                   for _ in range(1 if method in EXPENSIVE_METHODS else args.cam_repeats))
            cells.append(f"{ms:>9.0f} ({ms / fwd:>4.1f}x)")
        print(f"{name:<20} {fwd:>8.1f} " + " ".join(cells))


def report_cold_start() -> None:
    wall, inside, rss = cold_start()
    print(f"\n# App cold start (efficientnet_lite0, ONNX export cached; median of 3 fresh processes): process launch to "
          f"first prediction {wall:.1f} s (of which imports + load + engine choice + predict {inside:.1f} s), "
          f"peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    main()
    report_cold_start()
