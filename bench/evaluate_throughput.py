"""Where Evaluate's time on a folder goes: decoding, resize-crop-normalise, and the model, for one model on a
labelled folder in batches of 32 (as :func:`carnet_core.evaluation.evaluate.evaluate` scores it), with images/s.

    python bench/evaluate_throughput.py [--model efficientnet_lite0] [--folder ../shared/data/stanford_cars_40/val]

The model's share bounds what overlapping the other two with it could gain (fast-inference issue: "Evaluate on a
folder ≥ 2× today's images/s").
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from carnet_core import load_model  # noqa: E402
from carnet_core.data.readers import open_dataset  # noqa: E402
from carnet_core.inference.predict import predict_probabilities  # noqa: E402
from carnet_core.inference.selection import select_engine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--folder", type=Path, default=ROOT.parent / "shared" / "data" / "stanford_cars_40" / "val")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    model = load_model(args.model, device="cpu", use_hub=False)
    dataset = open_dataset(args.folder).part("all")
    engine = select_engine(model).engine.name  # chosen (and measured) before the clock starts
    load = preprocess = infer = 0.0
    start = time.perf_counter()
    for s in range(0, len(dataset), args.batch_size):
        t = time.perf_counter()
        images = [dataset.load(i) for i in range(s, min(s + args.batch_size, len(dataset)))]
        load += time.perf_counter() - t
        t = time.perf_counter()
        batch = model.preprocess(images)
        preprocess += time.perf_counter() - t
        t = time.perf_counter()
        predict_probabilities(model, batch)
        infer += time.perf_counter() - t
    total = time.perf_counter() - start
    print(f"{args.model} ({engine}) on {len(dataset)} images of {args.folder}, batches of {args.batch_size}:")
    print(f"  {total:.2f} s, {len(dataset) / total:.0f} images/s: decoding {load:.2f} s, resize-crop-normalise "
          f"{preprocess:.2f} s, model {infer:.2f} s")
    print(f"  overlapping decoding and preprocessing with the model could gain at most {total / infer:.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
