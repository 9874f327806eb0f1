"""Evaluate's images/s on a folder, in one run: :func:`carnet_core.evaluation.evaluate.evaluate` without loading
threads and with ONNX Runtime fp32 (Evaluate before this change: the baseline), against the same with its loading
threads (the next batch decoded while one is scored), with ONNX Runtime fp32 and with the engine chosen on a
labelled set (``--calibration``: reduced precision where it passes the accuracy gate). Batches of 32; passes
alternate, the fastest of ``--rounds`` counts. Then the time of each step, one after the other.

    python bench/evaluate_throughput.py [--model efficientnet_lite0] [--folder ../shared/data/stanford_cars_40/val]
        [--calibration FOLDER] [--rounds 3]

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
from carnet_core.evaluation import scoring  # noqa: E402
from carnet_core.evaluation.evaluate import evaluate  # noqa: E402
from carnet_core.inference.gate_set import labelled_photos  # noqa: E402
from carnet_core.inference.selection import select_engine  # noqa: E402


def one_pass(model, dataset, batch_size: int, engine) -> tuple[float, float, float, float]:
    """(total, decoding, preprocessing, model) seconds for the whole folder with ``engine``, one step after the
    other (Evaluate before its loading threads)."""
    load = preprocess = infer = 0.0
    start = time.perf_counter()
    for s in range(0, len(dataset), batch_size):
        t = time.perf_counter()
        images = [dataset.load(i) for i in range(s, min(s + batch_size, len(dataset)))]
        load += time.perf_counter() - t
        t = time.perf_counter()
        batch = model.preprocess(images)
        preprocess += time.perf_counter() - t
        t = time.perf_counter()
        engine.probabilities(batch)
        infer += time.perf_counter() - t
    return time.perf_counter() - start, load, preprocess, infer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--folder", type=Path, default=ROOT.parent / "shared" / "data" / "stanford_cars_40" / "val")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--calibration", type=Path, help="labelled photos for the accuracy gate (default: --folder)")
    parser.add_argument("--rounds", type=int, default=5, help="passes per engine, alternating; the fastest counts")
    args = parser.parse_args()
    model = load_model(args.model, device="cpu", use_hub=False)
    dataset = open_dataset(args.folder).part("all")
    # both engines are chosen (and measured) before the clock starts
    choices = {"onnxruntime": select_engine(model, "onnxruntime")}
    gated = select_engine(model, calibration=labelled_photos(model, args.calibration or args.folder))
    choices[gated.engine.name] = gated
    # an ImageNet model scores a car folder through a mapping that shares its classes out among the folder's
    # (meaningless as accuracy; for timing any mapping does, and summing the probabilities costs microseconds)
    n = len(dataset.class_names)
    mapping = None if set(dataset.class_names) <= set(model.class_names) else \
        {c: list(model.class_names[k::n]) for k, c in enumerate(dataset.class_names)}
    def evaluate_with(choice, workers: int):
        def run():
            model._engine_choice = choice  # what evaluate's automatic engine answers with, for this pass
            scoring.LOAD_WORKERS = workers
            t = time.perf_counter()
            evaluate(model, dataset, args.batch_size, mapping=mapping)
            return time.perf_counter() - t
        return run

    baseline = "evaluate(), no loading threads, onnxruntime"  # Evaluate before the loading threads
    passes = {baseline: evaluate_with(choices["onnxruntime"], 0)}
    for name, choice in choices.items():
        passes[f"evaluate(), {scoring.LOAD_WORKERS} loading threads, {name}"] = evaluate_with(choice,
                                                                                              scoring.LOAD_WORKERS)
    for run in passes.values():
        run()  # a warm-up pass: the file cache, each engine's batching choice
    times: dict[str, list[float]] = {label: [] for label in passes}
    for _ in range(args.rounds):
        for label, run in passes.items():
            times[label].append(run())
    print(f"{args.model} on {len(dataset)} images of {args.folder}, batches of {args.batch_size}, {args.rounds} "
          f"alternating passes each (fastest, and all); the gated engine: {gated.engine.name} "
          f"({gated.gate_text() or gated.reason})")
    for label, seconds in times.items():
        best = min(seconds)
        print(f"  {label:<46} {best:.2f} s, {len(dataset) / best:>4.0f} images/s, {min(times[baseline]) / best:.2f}× "
              f"the first row  ({', '.join(f'{t:.2f}' for t in seconds)} s)")
    print("  where the time goes, one step after the other (no threads):")
    for name, choice in choices.items():
        total, load, preprocess, infer = one_pass(model, dataset, args.batch_size, choice.engine)
        print(f"    {name:<17} {total:.2f} s: decoding {load:.2f} s, resize-crop-normalise {preprocess:.2f} s, model "
              f"{infer:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
