"""A fine-tune's recipe (:class:`TrainConfig`, its defaults the recipe measured in docs/measurements.md), the
choices it offers, and what a run reports: per-epoch metrics and the result."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from carnet_core.errors import CarNetError

#: The optimizers and learning-rate schedules a fine-tune offers (:class:`TrainConfig`; the CLI's choices).
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
SCHEDULERS: tuple[str, ...] = ("cosine", "plateau")


@dataclass
class TrainConfig:
    """A fine-tuning recipe. Defaults follow common transfer-learning practice for timm CNNs."""

    data: str
    out: str = "runs/finetune"
    dataset_kind: str = "auto"
    model: str = "efficientnet_lite0"
    head: str = "linear"                 # or "ml_decoder" (the CarNet model)
    pretrained: bool = True              # start from the model's resolved ImageNet weights
    img_size: int | None = None          # default: the model's data config
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-4                     # backbone learning rate (peak of the schedule)
    head_lr_scale: float = 10.0          # the new head learns this many times faster (discriminative LRs); 1 after
                                         # probe_init, which has already fitted the head (LP-FT tunes all alike)
    weight_decay: float = 0.05
    optimizer: str = "adamw"             # or "sgd" (momentum 0.9)
    scheduler: str = "cosine"            # or "plateau" (reduce on val top-1 plateau)
    warmup_epochs: float = 1.0           # linear LR warm-up once the backbone is unfrozen (Adam's first full-size
                                         # steps on a pretrained backbone otherwise wreck its features)
    freeze_epochs: int = 0               # train only the head for this many epochs, then everything
    bn_eval: bool = True                 # BatchNorm keeps its pretrained statistics while fine-tuning (Keras'
                                         # transfer-learning guide; robust with small datasets and batches)
    probe_init: bool = True              # LP-FT: first fit the head on cached backbone features (Kumar et al. 2022)
    probe_epochs: int | None = None      # passes over the cached features for probe_init; default 40 for a linear
                                         # head (seconds), 20 for ML-Decoder (~0.4 s/step on a 2-core CPU)
    label_smoothing: float = 0.1
    mixup: float = 0.0                   # mixup alpha (0 = off)
    cutmix: float = 0.0                  # cutmix alpha (0 = off)
    randaugment: str | None = "rand-m7-mstd0.5"  # timm auto-augment string (RANDAUGMENT), None = resize/crop/flip
    crop_scale: tuple[float, float] = (0.35, 1.0)  # RandomResizedCrop area range (ImageNet from scratch: 0.08–1;
                                         # on whole-car photos a 8 % crop is a wheel, not a car)
    ema_decay: float | None = None       # e.g. 0.999; validation then uses the EMA weights
    early_stopping: int | None = None    # stop after this many epochs without a better val top-1
    keep_best: int = 2
    precision: str = "auto"              # auto: bf16-mixed on GPUs that support it, else 32-true
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    workers: int = 2
    seed: int = 0
    val_fraction: float = 0.25
    resume: bool = True
    loggers: Sequence[str] = ()          # extra: "tensorboard", "mlflow", "wandb" (offline)
    limit_train_batches: int | None = None  # for tests and quick looks

    def problems(self) -> list[str]:
        """What is wrong with these settings, one line per setting (empty when they can be trained with), checked
        before any work is done: values that would otherwise fail deep in torch or timm with a traceback (a batch
        size of 0, a negative learning rate) or train without saying so (0 epochs, ``keep_best=0``: no best
        checkpoint written; an EMA decay above 1; a NaN or infinite rate)."""
        def check(name: str, ok: Callable[[Any], bool], rule: str, optional: bool = False) -> str | None:
            value = getattr(self, name)
            return None if (value is None and optional) or (value is not None and ok(value)) else \
                f"{name} must be {rule} (got {value})"

        found = [check("epochs", lambda v: v >= 1, "at least 1"), check("batch_size", lambda v: v >= 1, "at least 1"),
                 check("lr", lambda v: 0 < v < math.inf, "a finite number above 0"),
                 check("head_lr_scale", lambda v: 0 < v < math.inf, "a finite number above 0"),
                 check("weight_decay", lambda v: 0 <= v < math.inf, "a finite number, at least 0"),
                 check("warmup_epochs", lambda v: 0 <= v < math.inf, "a finite number, at least 0"),
                 check("freeze_epochs", lambda v: 0 <= v <= max(self.epochs or 0, 0),
                       f"from 0 to epochs ({self.epochs})"),
                 check("probe_epochs", lambda v: v >= 1, "at least 1", optional=True),
                 check("label_smoothing", lambda v: 0 <= v < 1, "from 0 to below 1"),
                 check("mixup", lambda v: 0 <= v < math.inf, "a finite number, at least 0"),
                 check("cutmix", lambda v: 0 <= v < math.inf, "a finite number, at least 0"),
                 check("ema_decay", lambda v: 0 < v < 1, "between 0 and 1, e.g. 0.999", optional=True),
                 check("early_stopping", lambda v: v >= 1, "at least 1 epoch", optional=True),
                 check("keep_best", lambda v: v >= 1, "at least 1"), check("workers", lambda v: v >= 0, "at least 0"),
                 check("num_nodes", lambda v: v >= 1, "at least 1"),
                 check("val_fraction", lambda v: 0 < v < 1, "between 0 and 1"),
                 check("img_size", lambda v: v >= 32, "at least 32 px", optional=True),
                 check("limit_train_batches", lambda v: v >= 1, "at least 1", optional=True),
                 check("crop_scale", lambda v: 0 < v[0] <= v[1] <= 1, "two area fractions, 0 < min <= max <= 1"),
                 check("scheduler", lambda v: v in SCHEDULERS, " or ".join(SCHEDULERS)),
                 check("out", lambda v: not Path(v).is_file(), "a run folder, new or one to resume, not a file")]
        return [p for p in found if p]

    def check(self) -> None:
        """Raise :class:`CarNetError` listing every one of :meth:`problems`, if there are any."""
        if problems := self.problems():
            raise CarNetError("cannot fine-tune with these settings: " + "; ".join(problems))


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    val_loss: float
    top1: float
    top5: float
    lr: float
    images_per_s: float
    seconds: float


@dataclass
class TrainResult:
    best_checkpoint: Path | None
    best_top1: float
    history: list[EpochMetrics] = field(default_factory=list)
    stopped_early: bool = False
    cancelled: bool = False
    #: val top-1 of the linear probe (LP-FT's first stage: the head fitted on frozen features) before any epoch —
    #: the number fine-tuning the whole network has to beat; None when the run fitted no probe. When no epoch beats
    #: it, the best checkpoint is the probe's (``best-e000-…``, named ``…-probe``)
    probe_top1: float | None = None

    @property
    def probe_is_best(self) -> bool:
        """True when no fine-tuned epoch reached the probe's val top-1, so the best checkpoint holds the probe."""
        return self.probe_top1 is not None and all(h.top1 < self.probe_top1 for h in self.history)


#: The image sizes the Fine-tune page offers, px.
IMAGE_SIZES: tuple[int, ...] = (96, 128, 160, 192, 224, 256, 288)
#: timm's RandAugment policy of the recipe (magnitude 7, random magnitude std 0.5).
RANDAUGMENT = "rand-m7-mstd0.5"
#: Mixup and CutMix alphas when the page's "Mixup / CutMix" is on (timm's train.py's common values).
MIXUP_ALPHA, CUTMIX_ALPHA = 0.2, 1.0


def default_img_size(has_gpu: bool) -> int:
    """The image size a fine-tune starts at: 224 px on a GPU, 160 px on a CPU (an epoch about half as long)."""
    return 224 if has_gpu else 160


def loader_workers() -> int:
    """Data-loading processes for a fine-tune: the cores left over, at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def page_recipe(data: str, model: str, head: str, img_size: int, epochs: int, batch_size: int, lr: float,
                probe: bool, freeze_epochs: int, randaugment: bool, mixup: bool) -> TrainConfig:
    """The :class:`TrainConfig` of the Fine-tune page's form: its choices, the recipe's defaults for the rest, and
    :func:`loader_workers` data-loading processes."""
    return TrainConfig(data=data, model=model, head=head, img_size=int(img_size), epochs=int(epochs),
                       batch_size=int(batch_size), lr=float(lr), freeze_epochs=int(freeze_epochs), probe_init=probe,
                       randaugment=RANDAUGMENT if randaugment else None, mixup=MIXUP_ALPHA if mixup else 0.0,
                       cutmix=CUTMIX_ALPHA if mixup else 0.0, workers=loader_workers())
