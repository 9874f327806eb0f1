"""How long an epoch of a fine-tune will take on this machine, timed on a few real training steps."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Sequence

import torch

from carnet_core.data.images import load_image
from carnet_core.errors import ImageError
from carnet_core.models.classifier import build_module
from carnet_core.models.registry import get_spec


def estimate_epoch_seconds(model: str, head: str, img_size: int, batch_size: int, num_train: int, num_val: int,
                           device: str | torch.device | None = None, steps: int = 2, probe: bool = False,
                           sample_images: Sequence[str | Path] = ()) -> dict[str, float]:
    """Measure one fine-tuning step on this machine and extrapolate to an epoch, and what a run does before its
    first epoch.

    Builds the architecture with random weights (speed does not depend on them), then times ``steps`` training
    steps (forward, backward, AdamW update; channels_last, bf16 autocast on GPUs) of a random batch after one
    warm-up step, and one evaluation batch. Data loading is not included in an epoch.

    Preparation (``prepare_s``), which the smallest fine-tune spent 30 of its 41 s on: the run's dataset check
    decodes every image once (timed on up to 4 of ``sample_images``), and with ``probe`` (LP-FT) the linear probe
    passes every train image through the backbone once more; the worker's start (imports, model load) is
    :data:`WORKER_START_S`.

    Returns:
        ``{"train_s", "val_s", "epoch_s", "train_images_per_s", "decode_s", "probe_s", "prepare_s"}`` (seconds,
        images per second; ``prepare_s`` = :data:`WORKER_START_S` + ``decode_s`` + ``probe_s``).
    Raises:
        UnknownModelError: ``model`` is not registered.
    """
    spec = get_spec(model)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = build_module(spec.arch, head, 10).to(device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 3, img_size, img_size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), device=device)
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with torch.autocast(**amp):
            loss = torch.nn.functional.cross_entropy(module(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    train_per_image = (time.perf_counter() - t0) / (steps * batch_size)
    module.eval()
    with torch.no_grad(), torch.autocast(**amp):
        module(x)
        sync()
        t0 = time.perf_counter()
        module(x)
        sync()
    val_per_image = (time.perf_counter() - t0) / batch_size
    train_s, val_s = train_per_image * num_train, val_per_image * num_val
    decode_s = _decode_seconds(sample_images) * (num_train + num_val)
    probe_s = (val_per_image + _decode_seconds(sample_images)) * num_train if probe else 0.0
    return {"train_s": train_s, "val_s": val_s, "epoch_s": train_s + val_s, "train_images_per_s": 1 / train_per_image,
            "decode_s": decode_s, "probe_s": probe_s, "prepare_s": WORKER_START_S + decode_s + probe_s}


#: Seconds a fine-tune's worker process takes to start (imports of torch, timm and Lightning Fabric, the model's
#: weights): measured 4.4 s on this project's 2-core CPU machine (EfficientNet-Lite0), rounded up.
WORKER_START_S = 5.0


def _decode_seconds(paths: Sequence[str | Path]) -> float:
    """Median seconds to decode one of up to 4 of ``paths`` (0 when none can be)."""
    times = []
    for path in list(paths)[:4]:
        t0 = time.perf_counter()
        try:
            load_image(path)
        except ImageError:
            continue
        times.append(time.perf_counter() - t0)
    return statistics.median(times) if times else 0.0
