"""LP-FT's first stage (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"): the new head fitted on
the frozen backbone's cached features before the whole network is fine-tuned."""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch

from carnet_core.training.config import TrainConfig

#: The cached feature maps for the probe, at most (MB); above it the head trains with the backbone instead.
PROBE_MAX_MB = 2048


def fit_linear_probe(module: torch.nn.Module, dataset: Any, head_params: Sequence[torch.nn.Parameter],
                     cfg: TrainConfig, fabric: Any) -> float | None:
    """LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"): fit the new head on the frozen
    backbone's features of the (un-augmented) train images, cached once, before fine-tuning everything. One
    pass of inference replaces the slow head-only epochs, and fine-tuning starts from a linear probe. Returns
    the probe's last training loss, or None (having changed nothing) when the cached features would exceed
    :data:`PROBE_MAX_MB`."""
    raw = getattr(module, "module", module)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, num_workers=cfg.workers)
    raw.eval()
    feats, labels = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for x, y in loader:
            x = x.to(fabric.device).contiguous(memory_format=torch.channels_last)
            with fabric.autocast():
                feats.append(raw.forward_features(x).float())
            labels.append(y.to(fabric.device))
            need_mb = feats[0][0].numel() * 4 * len(dataset) / 2**20
            if need_mb > PROBE_MAX_MB:
                fabric.print(f"probe init skipped: caching the features would take {need_mb:,.0f} MB "
                             f"(limit {PROBE_MAX_MB} MB); the head trains with the backbone instead")
                return None
    feats, labels = torch.cat(feats), torch.cat(labels)
    linear = cfg.head == "linear"
    optimizer = torch.optim.AdamW(head_params, lr=1e-2 if linear else 1e-3, weight_decay=cfg.weight_decay)
    probe_epochs = cfg.probe_epochs or (40 if linear else 20)
    steps = probe_epochs * max(1, -(-len(feats) // cfg.batch_size))
    # cosine decay; the ML-Decoder's attention layers also need a linear warm-up over the first 5 % of steps
    # (measured on stanford_cars_40: 20 epochs at 1e-3 with warm-up reach 70.8 % val top-1, a linear probe 69 %)
    warmup = 0 if linear else max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup if warmup else 1.0) * 0.5 * (1 + math.cos(math.pi * s / steps)))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    generator = torch.Generator().manual_seed(cfg.seed)
    raw.get_classifier().train()  # dropout in the decoder layers; the backbone is not run here
    for _ in range(probe_epochs):
        for idx in torch.randperm(len(feats), generator=generator).split(cfg.batch_size):
            idx = idx.to(feats.device)
            loss = loss_fn(raw.forward_head(feats[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    raw.get_classifier().eval()
    with torch.no_grad():
        acc = float((raw.forward_head(feats).argmax(1) == labels).float().mean())
    fabric.print(f"probe init: head fitted on {len(feats)} cached feature maps in {time.perf_counter() - t0:.0f} s "
                 f"(train top-1 {acc:.1%}, loss {float(loss.detach()):.3f})")
    return float(loss.detach())
