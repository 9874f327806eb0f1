"""CarNet benchmark: batch-1 classify latency per default model, next to plain timm eager fp32, same run.

    python bench/benchmark.py [--repeats 30] [--models efficientnet_lite0,mobilenetv2_100,...]

Latency does not depend on the weights' values, so models without weights on this machine run with random
weights. "timm eager" is ``model(x)`` under ``torch.no_grad()`` on the already preprocessed 224 px tensor;
"CarNet" is :func:`carnet_core.predict` on a PIL image (its model time, and model + preprocessing).
Numbers are medians in ms; the ratio is CarNet model time / timm eager (1.00 = same speed).

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


def median_ms(fn, repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


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
    print(f"{'model':<20} {'weights':<8} {'timm eager ms':>14} {'CarNet model ms':>16} {'ratio':>6} "
          f"{'CarNet +preproc ms':>19}")
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

        timm_ms = median_ms(eager, args.repeats)
        model_ms = statistics.median(predict(model, [image]).latency_ms for _ in range(args.repeats + 5))
        total_ms = median_ms(lambda: predict(model, [image]), args.repeats)
        print(f"{name:<20} {kind:<8} {timm_ms:>14.1f} {model_ms:>16.1f} {model_ms / timm_ms:>6.2f} {total_ms:>19.1f}")
        forward_ms[name] = (model, timm_ms)

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


if __name__ == "__main__":
    main()
