"""Training throughput: CarNet's fine-tuning loop against timm's own training loop, same model, data, batch size.

    python bench/train_benchmark.py ../shared/data/stanford_cars_40 [--steps 12 --batch-size 32 --img-size 224]
    python bench/train_benchmark.py DATA --timm-train /path/to/pytorch-image-models/train.py   # the real script

Both sides train EfficientNet-Lite0 (``tf_efficientnet_lite0``) on the train split's class folders with the same
train transform (RandomResizedCrop + flip + RandAugment m7, timm's), AdamW, fp32, ``--workers`` loader processes, and
are timed over ``--steps`` optimizer steps after 2 warm-up steps, in the same run. Reported: training images/s and
CarNet / timm.

timm's ``train.py`` is not part of the PyPI package. Without ``--timm-train`` the anchor is timm's training loop
rebuilt from its public API exactly as ``train.py`` composes it (``create_dataset`` → ``create_loader(is_training)``
→ ``create_model`` → ``create_optimizer_v2`` → forward / loss / backward / step), with and without
``channels_last`` (train.py's ``--channels-last``). With ``--timm-train`` the real script runs and its own logged
throughput is parsed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def _train_dir(data: Path) -> Path:
    return data / "train" if (data / "train").is_dir() else data


def timm_loop(data: Path, steps: int, batch_size: int, img_size: int, workers: int, channels_last: bool) -> float:
    """Images/s of timm's training loop (the composition of timm's train.py) over ``steps`` steps."""
    import timm
    import timm.optim
    from timm.data import create_dataset, create_loader

    dataset = create_dataset("", root=str(_train_dir(data)), is_training=True)
    num_classes = len(set(dataset.reader.class_to_idx.values()))
    model = timm.create_model("tf_efficientnet_lite0", num_classes=num_classes)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = timm.data.resolve_data_config({}, model=model)
    loader = create_loader(dataset, input_size=(3, img_size, img_size), batch_size=batch_size, is_training=True,
                           auto_augment="rand-m7-mstd0.5", interpolation=cfg["interpolation"], mean=cfg["mean"],
                           std=cfg["std"], num_workers=workers, device=torch.device("cpu"), use_prefetcher=False)
    optimizer = timm.optim.create_optimizer_v2(model, opt="adamw", lr=2e-4, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    seen, t0, done = 0, None, 0
    while done < steps + 2:
        for x, y in loader:
            if done == 2:
                t0, seen = time.perf_counter(), 0
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(x)
            done += 1
            if done >= steps + 2:
                break
    return seen / (time.perf_counter() - t0)


def carnet_loop(data: Path, steps: int, batch_size: int, img_size: int, workers: int) -> float:
    """Images/s of ``carnet_core.training.trainer`` (the CLI / page loop) over ``steps`` steps (+2 warm-up), no validation cost."""
    from carnet_core.training.config import TrainConfig
    from carnet_core.training.trainer import Trainer

    class Clock:
        def __init__(self):
            self.t0 = self.t1 = None

        def on_train_batch_end(self, trainer, epoch, step, num_steps):
            if step == 2:
                self.t0 = time.perf_counter()
            if step == steps + 2:
                self.t1 = time.perf_counter()

        def should_stop(self, trainer):
            return self.t1 is not None

    clock = Clock()
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(data=str(data), out=out, img_size=img_size, batch_size=batch_size, epochs=1, workers=workers,
                          pretrained=False, probe_init=False, precision="32-true", resume=False,
                          randaugment="rand-m7-mstd0.5", keep_best=1)
        Trainer(cfg, [clock]).fit()
    return steps * batch_size / (clock.t1 - clock.t0)


def timm_train_script(script: Path, data: Path, steps: int, batch_size: int, img_size: int, workers: int) -> float:
    """Run the real ``train.py`` for one short epoch and parse the last images/s it logs."""
    num_classes = sum(1 for p in _train_dir(data).iterdir() if p.is_dir())
    cmd = [sys.executable, str(script), str(data), "--model", "tf_efficientnet_lite0", "--num-classes", str(num_classes),
           "-b", str(batch_size), "--img-size", str(img_size), "--epochs", "1", "--workers", str(workers),
           "--opt", "adamw", "--lr", "2e-4", "--aa", "rand-m7-mstd0.5", "--log-interval", str(max(1, steps // 2)),
           "--no-prefetcher", "--device", "cpu"]
    with tempfile.TemporaryDirectory() as out_dir:
        out = subprocess.run(cmd + ["--output", out_dir], capture_output=True, text=True, timeout=3600).stdout
    rates = re.findall(r"([\d.]+)/s", out)
    if not rates:
        raise RuntimeError("could not read a throughput from train.py's output:\n" + out[-2000:])
    return float(rates[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="image folder with class sub-folders (optionally under train/)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timm-train", type=Path, help="path to timm's train.py (from its git repository)")
    args = ap.parse_args(argv)
    common = (args.data, args.steps, args.batch_size, args.img_size, args.workers)

    rows = [("CarNet (carnet_core.training.trainer, channels_last)", carnet_loop(*common))]
    if args.timm_train:
        rows.append(("timm train.py", timm_train_script(args.timm_train, *common)))
    else:
        rows.append(("timm loop (train.py's composition)", timm_loop(*common, channels_last=False)))
        rows.append(("timm loop --channels-last", timm_loop(*common, channels_last=True)))
    print(f"\nEfficientNet-Lite0 training on CPU ({torch.get_num_threads()} threads), fp32, batch {args.batch_size}, "
          f"{args.img_size} px, {args.steps} steps after 2 warm-up, {args.workers} loader workers")
    print(f"{'loop':<44} {'images/s':>9} {'CarNet / this':>14}")
    for name, rate in rows:
        print(f"{name:<44} {rate:>9.1f} {rows[0][1] / rate:>14.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
