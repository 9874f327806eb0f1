"""Evaluate's images/s now against an earlier commit's, on this machine, in one run (fast-inference issue: "Evaluate
on a folder: images/s ≥ 2 × today's on the same folder and model", "today's" being the code when the issue was
filed).

    python bench/evaluate_against_commit.py [--commit 4c3f118] [--model efficientnet_lite0]
        [--folder ../shared/data/stanford_cars_40/val] [--rounds 5]

The earlier commit is checked out into a temporary git worktree. Each side runs in its own process with its own
defaults — the commit's automatic engine; now, the engine chosen on ``--folder`` under the accuracy gate — and the
two are timed in alternating passes of the whole ``evaluate()`` (batches of 32, after one warm-up pass each); the
fastest pass of each counts. Commit 4c3f118 is the last before any work on that issue. An ImageNet model scores a
car folder through a mapping that shares its classes out among the folder's (meaningless as accuracy; for timing any
mapping does).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: Run in each process, with the tree to import carnet_core from in $TREE: one warm-up pass, then one timed pass per
#: line read from stdin, so that only one side runs at a time.
SIDE = r'''
import json, os, sys, time, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, os.environ["TREE"])
from pathlib import Path
from carnet_core import load_model
from carnet_core.data.readers import open_dataset
from carnet_core.evaluation.evaluate import evaluate
folder = Path(os.environ["FOLDER"])
model = load_model(os.environ["MODEL"], device="cpu", use_hub=False)
dataset = open_dataset(folder).part("all")
n = len(dataset.class_names)
mapping = None if set(dataset.class_names) <= set(model.class_names) else \
    {c: list(model.class_names[k::n]) for k, c in enumerate(dataset.class_names)}
if os.environ.get("GATED"):
    from carnet_core.inference.gate_set import labelled_photos
    from carnet_core.inference.selection import select_engine
    model._engine_choice = select_engine(model, calibration=labelled_photos(model, folder))
evaluate(model, dataset, 32, mapping=mapping)
choice = getattr(model, "_engine_choice", None)
print(json.dumps({"engine": getattr(getattr(choice, "engine", None), "name", "?"), "images": len(dataset)}), flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    evaluate(model, dataset, 32, mapping=mapping)
    print(json.dumps({"s": time.perf_counter() - start}), flush=True)
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", default="4c3f118")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--folder", type=Path, default=ROOT.parent / "shared" / "data" / "stanford_cars_40" / "val")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), args.commit],
                       check=True)
        try:
            sides = {f"commit {args.commit}": (tree, ""), "now, engine chosen under the gate": (ROOT, "1")}
            procs, engines = {}, {}
            for label, (where, gated) in sides.items():
                env = dict(os.environ, TREE=str(where), GATED=gated, MODEL=args.model, FOLDER=str(args.folder),
                           CARNET_CACHE_DIR=str(Path(tmp) / label.split()[0]))  # no export shared across versions
                procs[label] = subprocess.Popen([sys.executable, "-c", SIDE], stdin=subprocess.PIPE,
                                                stdout=subprocess.PIPE, text=True, env=env)
                engines[label] = json.loads(procs[label].stdout.readline())
            times: dict[str, list[float]] = {label: [] for label in procs}
            for _ in range(args.rounds):
                for label, proc in procs.items():
                    proc.stdin.write("\n")
                    proc.stdin.flush()
                    times[label].append(json.loads(proc.stdout.readline())["s"])
            for proc in procs.values():
                proc.stdin.close()
                proc.wait()
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    first = min(next(iter(times.values())))
    print(f"{args.model}, evaluate() on {args.folder} ({engines[label]['images']} images), fastest of {args.rounds} "
          f"alternating passes")
    for label, seconds in times.items():
        best = min(seconds)
        print(f"  {label:<36} {engines[label]['engine']:<14} {best:.2f} s, {engines[label]['images'] / best:>4.0f} "
              f"images/s, {first / best:.2f}× the first row  ({', '.join(f'{t:.2f}' for t in seconds)} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
