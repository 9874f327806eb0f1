"""Teach in 20 seconds, measured: 3 classes × 30 photos (../shared tiny_vehicles_6 car / pickup / minibus, train
split), a quick model (linear probe on EfficientNet-Lite0's features, carnet_core.training.teach) against a full
fine-tune of the same photos, both scored on the same classes' val photos.

    python bench/teach_benchmark.py [--photos 30] [--epochs 3] [--data DIR]

Prints: features per photo (ms, paid as photos are added), the fit (s), photos → model in all (s; target ≤ 20 s on
this 2-core CPU), the val top-1 of each, and the full fine-tune's wall time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from carnet_core import load_model  # noqa: E402
from carnet_core.data.datasets import read_labelled_folder  # noqa: E402
from carnet_core.data.images import load_image  # noqa: E402
from carnet_core.inference.predict import predict_probabilities  # noqa: E402
from carnet_core.training.teach import QuickTeacher  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tiny_vehicles_6"
CLASSES = ("car", "pickup", "minibus")


def three_class_set(data: Path, out: Path, photos: int) -> Path:
    """train/<class>/ with the first ``photos`` of each class, val/<class>/ with all its val photos."""
    for cls in CLASSES:
        for split, n in (("train", photos), ("val", None)):
            dst = out / split / cls
            dst.mkdir(parents=True)
            for src in sorted((data / split / cls).iterdir())[:n]:
                shutil.copy(src, dst / src.name)
    return out


def val_top1(model, folder: Path) -> float:
    items = read_labelled_folder(folder)
    right = 0
    for start in range(0, len(items), 64):
        chunk = items[start:start + 64]
        probs = predict_probabilities(model, model.preprocess([load_image(p) for p, _ in chunk]))
        right += sum(model.class_names[int(i)] == label for i, (_, label) in zip(probs.argmax(1), chunk))
    return right / len(items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    args = parser.parse_args()
    from carnet_core.training.config import TrainConfig
    from carnet_core.training.trainer import fine_tune

    with tempfile.TemporaryDirectory() as tmp:
        data = three_class_set(Path(args.data), Path(tmp) / "tv3", args.photos)
        t_load = time.perf_counter()
        backbone = load_model("efficientnet_lite0", device="cpu", use_hub=False)
        load_s = time.perf_counter() - t_load
        teacher = QuickTeacher(backbone)
        t0 = time.perf_counter()
        for cls in CLASSES:  # as a teacher adds them: one class at a time, a few photos per upload
            files = sorted((data / "train" / cls).iterdir())
            for start in range(0, len(files), 10):
                teacher.add(cls, files[start:start + 10])
        add_s = time.perf_counter() - t0
        result = teacher.fit("tv3")
        total = add_s + result.fit_s
        quick_top1 = val_top1(result.model, data / "val")
        n = sum(result.photos.values())
        print(f"# teach in 20 s — EfficientNet-Lite0 features, {len(CLASSES)} classes × {args.photos} photos "
              f"(tiny_vehicles_6 train), scored on {len(read_labelled_folder(data / 'val'))} val photos; "
              f"{torch.get_num_threads()} threads")
        print(f"model load {load_s:.1f} s (once per server)")
        print(f"features: {1e3 * teacher.feature_s / n:.0f} ms a photo, {add_s:.1f} s for {n} photos (paid as they "
              f"are added); fit {result.fit_s:.2f} s; photos → model {total:.1f} s "
              f"({'met' if total <= 20 else 'NOT met'}: ≤ 20 s)")
        print(f"quick model (linear probe): val top-1 {quick_top1:.1%}")
        t0 = time.perf_counter()
        full = fine_tune(TrainConfig(data=str(data), out=str(Path(tmp) / "run"), epochs=args.epochs, batch_size=16,
                                     workers=0))
        full_s = time.perf_counter() - t0
        full_model = load_model(checkpoint=full.best_checkpoint, device="cpu")
        print(f"full fine-tune ({args.epochs} epochs, the app's recipe): val top-1 {val_top1(full_model, data / 'val'):.1%}"
              f" in {full_s:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
