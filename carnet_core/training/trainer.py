"""The fine-tuning loop: one code path for the CLI, the fine-tune page and the tests.

Devices, precision and multi-GPU come from Lightning Fabric (the same command runs on CPU, one GPU, several GPUs
and several nodes); models, transforms, optimizers, schedules, mixup/cutmix, label smoothing and EMA from timm.
Ours is the loop: freeze-backbone warm-up, early stopping on val top-1, best-k CarNet checkpoints, per-epoch
metrics (CSV + JSONL), and resume after a crash or kill from the last finished epoch (state written atomically).
Hooks for callers (Lightning-style callbacks): ``on_train_batch_end(trainer, epoch, step, num_steps)``,
``on_epoch_end(trainer, metrics)`` and ``should_stop(trainer)`` (asked after every batch: a stop mid-epoch drops only
that epoch's unfinished work; the last finished epoch stays resumable).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from carnet_core._io import atomic_write
from carnet_core.data.datacheck import too_few_classes, validate_splits, without_unreadable
from carnet_core.data.datasets import DatasetSplits, open_dataset
from carnet_core.errors import CarNetError
from carnet_core.evaluation.evaluate import top5_text
from carnet_core.models.checkpoints import save_checkpoint
from carnet_core.models.classifier import Classifier, build_module, load_model
from carnet_core.models.registry import get_spec
from carnet_core.models.runs import (
    DATA_REPORT,
    LAST_CHECKPOINT,
    METRICS_CSV,
    METRICS_JSONL,
    PROBE_FILE,
    STATE_FILE,
    best_name,
    preference,
)
from carnet_core.models.weights import WeightsSource

PROBE_MAX_MB = 2048  # cached feature maps for probe_init, at most


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
    randaugment: str | None = "rand-m7-mstd0.5"  # timm auto-augment string, None = resize/crop/flip only
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
                 check("scheduler", lambda v: v in ("cosine", "plateau"), "cosine or plateau"),
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


def _transforms(data_config: dict, cfg: TrainConfig):
    import timm

    dc = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data_config.items()}
    train_tf = timm.data.create_transform(input_size=dc["input_size"], is_training=True, auto_augment=cfg.randaugment,
                                          interpolation=dc["interpolation"], mean=dc["mean"], std=dc["std"],
                                          scale=tuple(cfg.crop_scale))
    eval_tf = timm.data.create_transform(**dc, is_training=False)
    return train_tf, eval_tf


def _initial_model(cfg: TrainConfig, class_names: tuple[str, ...]) -> Classifier:
    """The registry model with pretrained weights and a fresh head for ``class_names``."""
    spec = get_spec(cfg.model)
    base = load_model(cfg.model, weights="auto" if cfg.pretrained else "random", device="cpu")
    module = build_module(spec.arch, cfg.head, len(class_names))
    head_keys = {k for k in module.state_dict() if k.startswith(_head_prefix(module))}
    backbone = {k: v for k, v in base.module.state_dict().items() if k in module.state_dict()
                and not k.startswith(_head_prefix(base.module)) and v.shape == module.state_dict()[k].shape}
    missing = set(module.state_dict()) - set(backbone) - head_keys
    if missing:
        raise CarNetError(f"could not carry the pretrained backbone into the new model ({len(missing)} tensors missing)")
    module.load_state_dict(backbone, strict=False)
    head = module.get_classifier()
    if isinstance(head, torch.nn.Linear):  # start from uniform predictions (loss = ln C); timm's EfficientNet init
        torch.nn.init.zeros_(head.weight)  # scales with 1/sqrt(num_classes) and gives huge logits for few classes
        torch.nn.init.zeros_(head.bias)
    data_config = dict(base.data_config)
    if cfg.img_size:
        data_config["input_size"] = [3, cfg.img_size, cfg.img_size]
    weights = WeightsSource(base.weights.source, base.weights.location, base.weights.detail)
    return Classifier(module=module, name=f"{cfg.model}-{Path(cfg.data).name}", arch=spec.arch, family=spec.family,
                      head=cfg.head, class_names=class_names, data_config=data_config, weights=weights,
                      label_set=Path(cfg.data).name)


def _param_groups(backbone: Sequence[torch.nn.Parameter], head: Sequence[torch.nn.Parameter],
                  cfg: TrainConfig) -> list[dict[str, Any]]:
    """Backbone at ``lr``, head at ``lr * head_lr_scale``; no weight decay on biases and norm weights (ndim <= 1),
    as timm's ``param_groups_weight_decay``. The backbone's decayed group comes first (it is the logged LR)."""
    groups = []
    fitted = cfg.probe_init  # the probe has fitted the head; a skipped probe restores the scale (Trainer.run)
    for params, lr in ((backbone, cfg.lr), (head, cfg.lr * (1.0 if fitted else cfg.head_lr_scale))):
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        role = "backbone" if params is backbone else "head"
        groups += [{"params": decay, "lr": lr, "weight_decay": cfg.weight_decay, "role": role},
                   {"params": no_decay, "lr": lr, "weight_decay": 0.0, "role": role}]
    return [g for g in groups if g["params"]]


def _cosine_after_freeze(cfg: TrainConfig, steps_per_epoch: int):
    """LR factor per optimizer step for ``LambdaLR``: 1 during the head-only epochs, then a linear warm-up from 1 %
    over ``warmup_epochs`` and a cosine decay to 1 % at the last step (timm's cosine-with-warmup, counted from the
    moment the backbone starts learning)."""
    frozen = cfg.freeze_epochs * steps_per_epoch
    total = max(1, (cfg.epochs - cfg.freeze_epochs) * steps_per_epoch)
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        u = step - frozen
        if u < 0:
            return 1.0
        if u < warmup:
            return 0.01 + 0.99 * u / warmup
        progress = (u - warmup) / max(1, total - warmup)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _backbone_norms_eval(module: torch.nn.Module) -> None:
    head = module.get_classifier()
    head_modules = set(head.modules())
    for sub in module.modules():
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm) and sub not in head_modules:
            sub.eval()


def _head_prefix(module: torch.nn.Module) -> str:
    head = module.get_classifier()
    for name, sub in module.named_modules():
        if sub is head:
            return name
    raise CarNetError("cannot find the model's classifier")


def _loggers(cfg: TrainConfig, out: Path):
    """Fabric loggers for ``cfg.loggers``: TensorBoard (Fabric's own), MLflow and Weights & Biases (thin adapters
    in :mod:`carnet_core.training.loggers`; W&B offline unless ``WANDB_MODE`` says otherwise, MLflow to ``out/mlruns`` unless
    ``MLFLOW_TRACKING_URI`` is set)."""
    from carnet_core.training import loggers as _loggers

    made = []
    for name in cfg.loggers:
        try:
            if name == "tensorboard":
                from lightning_fabric.loggers import TensorBoardLogger

                made.append(TensorBoardLogger(str(out), name="tensorboard"))
            elif name == "mlflow":
                made.append(_loggers.MLflowLogger(out, asdict(cfg)))
            elif name == "wandb":
                made.append(_loggers.WandbLogger(out, asdict(cfg)))
            else:
                raise CarNetError(f"unknown logger {name!r}; choose tensorboard, mlflow or wandb")
        except ModuleNotFoundError as exc:
            package = exc.name or ("tensorboardX" if name == "tensorboard" else name)
            raise CarNetError(f"the {name} logger needs a package that is not installed: {package} "
                              f"(pip install {package})") from None
    return made


class Trainer:
    """Runs one fine-tune described by a :class:`TrainConfig` (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[Any] = ()):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.callbacks = list(callbacks)

    def _call(self, hook: str, *args) -> list:
        return [getattr(cb, hook)(self, *args) for cb in self.callbacks if hasattr(cb, hook)]

    def _precision(self) -> str:
        if self.cfg.precision != "auto":
            return self.cfg.precision
        if torch.cuda.is_available() and self.cfg.accelerator in ("auto", "cuda", "gpu"):
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return "32-true"

    def fit(self, splits: DatasetSplits | None = None) -> TrainResult:
        """Train, validate every epoch, checkpoint, and return the best result.

        Raises:
            CarNetError: bad data, model or settings (messages fit for the UI and the CLI).
        """
        import timm
        import timm.optim
        import timm.utils
        from lightning_fabric import Fabric
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy
        from tqdm.auto import tqdm

        cfg = self.cfg
        cfg.check()
        self.out.mkdir(parents=True, exist_ok=True)
        strategy = cfg.strategy
        if strategy == "ddp" and cfg.freeze_epochs > 0:  # frozen backbone = parameters without gradients for DDP
            strategy = "ddp_find_unused_parameters_true"
        try:
            fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, strategy=strategy,
                            num_nodes=cfg.num_nodes, precision=self._precision(), loggers=_loggers(cfg, self.out))
        except (ValueError, TypeError, RuntimeError) as exc:  # Lightning's own messages name the bad setting
            raise CarNetError(f"cannot set up training: {exc}") from None
        fabric.launch()
        fabric.seed_everything(cfg.seed + fabric.global_rank, verbose=False)  # the seed is in the recipe
        self.fabric = fabric

        splits = splits or open_dataset(cfg.data, cfg.dataset_kind, **({"val_fraction": cfg.val_fraction}
                                                                        if cfg.dataset_kind in ("auto", "image_folder") else {}))
        if problem := too_few_classes(splits.class_names):
            raise CarNetError(f"{cfg.data}: {problem}")
        report = validate_splits(splits)
        if fabric.is_global_zero:
            (self.out / DATA_REPORT).write_text(json.dumps(report.to_dict(), indent=1))
        train_ds, val_ds = without_unreadable(splits.train, report), without_unreadable(splits.val, report)
        if len(train_ds) == 0 or len(val_ds) == 0:
            raise CarNetError(f"{cfg.data}: need images in both train and val (train {len(train_ds)}, val {len(val_ds)})")

        clf = _initial_model(cfg, splits.class_names)
        self.classifier = clf
        train_tf, eval_tf = _transforms(clf.data_config, cfg)
        loader_kw = dict(batch_size=cfg.batch_size, num_workers=cfg.workers, persistent_workers=cfg.workers > 0)
        train_loader = torch.utils.data.DataLoader(train_ds.with_transform(train_tf), shuffle=True, drop_last=len(train_ds) > cfg.batch_size, **loader_kw)
        val_loader = torch.utils.data.DataLoader(val_ds.with_transform(eval_tf), shuffle=False, **loader_kw)
        train_loader, val_loader = fabric.setup_dataloaders(train_loader, val_loader)

        module = clf.module.to(memory_format=torch.channels_last)  # faster convolutions on GPUs and on CPUs
        backbone_params, head_params = clf.backbone_and_head()
        head_params = list(head_params)
        optimizer = timm.optim.create_optimizer_v2(_param_groups(backbone_params, head_params, cfg), opt=cfg.optimizer,
                                                   lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9)
        steps_per_epoch = min(len(train_loader), cfg.limit_train_batches or len(train_loader))
        if cfg.scheduler == "cosine":  # stepped after every optimizer step
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_after_freeze(cfg, steps_per_epoch))
        else:  # "plateau" (TrainConfig.problems() allows no other)
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.3, patience=2)
        module, optimizer = fabric.setup(module, optimizer)
        self.optimizer = optimizer  # for callbacks (as Lightning's trainer.optimizers)
        ema = timm.utils.ModelEmaV3(module, decay=cfg.ema_decay) if cfg.ema_decay else None
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                      num_classes=len(splits.class_names)) if (cfg.mixup or cfg.cutmix) else None
        train_loss_fn = SoftTargetCrossEntropy() if mixup else torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        val_loss_fn = torch.nn.CrossEntropyLoss()

        start_epoch, history, best = 0, [], []  # best: [(top1, epoch, path)]
        self.probe_top1: float | None = None
        state_path = self.out / STATE_FILE
        resuming = cfg.resume and state_path.is_file()
        if resuming:
            start_epoch, history, best = self._resume(state_path, module, optimizer, scheduler, ema)
            fabric.print(f"resuming after epoch {start_epoch} from {state_path}")
            if fabric.is_global_zero:  # drop rows of an epoch that was written but not saved for resuming
                for name in (METRICS_CSV, METRICS_JSONL):
                    (self.out / name).unlink(missing_ok=True)
                for row in history:
                    self._write_metrics(row)
        elif fabric.is_global_zero:  # a fresh run in a used folder: not an earlier run's probe on its curves
            (self.out / PROBE_FILE).unlink(missing_ok=True)
        if not resuming and cfg.probe_init:
            probe_train_loss = self._probe_init(module, train_ds.with_transform(eval_tf), head_params)
            if probe_train_loss is not None:
                t0 = time.perf_counter()
                val_loss, top1, top5 = self._validate(module, val_loader, val_loss_fn)
                probe = EpochMetrics(0, probe_train_loss, val_loss, top1, top5, lr=0.0, images_per_s=0.0,
                                     seconds=time.perf_counter() - t0)
                self.probe_top1 = top1
                fabric.print(f"linear probe: val top-1 {top1:.1%}, top-5 {top5_text(top5, len(splits.class_names))} "
                             "(fine-tuning starts from it)")
                if fabric.is_global_zero:
                    (self.out / PROBE_FILE).write_text(json.dumps({"top1": top1, "top5": top5}))  # for the page
                    # a candidate for the best checkpoint, as epoch 0: a short fine-tune that ends below its probe
                    # (the first epochs dip below it) leaves the probe's weights as the run's best, not worse ones
                    best = self._checkpoint(probe, module, best)
                if ema is not None:
                    ema.set(module)
            else:  # no probe after all: the untrained head needs its faster LR back
                for i, group in enumerate(optimizer.param_groups):
                    if group.get("role") == "head":
                        group["lr"] *= cfg.head_lr_scale
                        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                            scheduler.base_lrs[i] *= cfg.head_lr_scale

        result = TrainResult(best[0][2] if best else None, best[0][0] if best else 0.0, history,
                             probe_top1=self.probe_top1)
        since_best = 0
        for epoch in range(start_epoch, cfg.epochs):
            frozen = epoch < cfg.freeze_epochs
            for p in backbone_params:
                p.requires_grad_(not frozen)
            module.train()
            if frozen or cfg.bn_eval:  # pretrained BatchNorm statistics kept (inference mode), see bn_eval
                _backbone_norms_eval(clf.module)
            t0, seen, loss_sum = time.perf_counter(), 0, 0.0
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}{' (head only)' if frozen else ''}",
                       disable=not (fabric.is_global_zero and sys.stderr.isatty()), leave=False)
            num_steps = min(len(train_loader), cfg.limit_train_batches or len(train_loader))
            stop_now = False
            lr = optimizer.param_groups[0]["lr"]
            for step, (x, y) in enumerate(bar):
                if cfg.limit_train_batches is not None and step >= cfg.limit_train_batches:
                    break
                x = x.contiguous(memory_format=torch.channels_last)
                target = y
                if mixup is not None and len(x) % 2 == 0:
                    x, target = mixup(x, y)
                elif mixup is not None:
                    target = torch.nn.functional.one_hot(y, len(splits.class_names)).float()
                loss = train_loss_fn(module(x), target)
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(loss)
                optimizer.step()
                lr = optimizer.param_groups[0]["lr"]  # the backbone's LR of this step (logged per epoch)
                if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step()
                if ema is not None:
                    ema.update(module)
                seen += len(x)
                loss_sum += float(loss.detach()) * len(x)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
                self._call("on_train_batch_end", epoch + 1, step + 1, num_steps)
                if any(self._call("should_stop")):
                    stop_now = True
                    break
            if stop_now:
                fabric.print(f"stopped during epoch {epoch + 1}; "
                             + (f"epochs 1–{epoch} are saved and resumable" if epoch else "no epoch finished yet"))
                result.cancelled = True
                break
            train_seconds = time.perf_counter() - t0
            eval_module = ema.module if ema is not None else module
            val_loss, top1, top5 = self._validate(eval_module, val_loader, val_loss_fn)
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(top1)
            seen_all = float(fabric.all_reduce(torch.tensor(float(seen), device=fabric.device), reduce_op="sum"))
            loss_all = float(fabric.all_reduce(torch.tensor(loss_sum, device=fabric.device), reduce_op="sum"))
            metrics = EpochMetrics(epoch + 1, loss_all / max(seen_all, 1), val_loss, top1, top5, lr,
                                   seen_all / max(train_seconds, 1e-9), time.perf_counter() - t0)
            history.append(metrics)
            if fabric.is_global_zero:
                fabric.print(f"epoch {metrics.epoch}: train loss {metrics.train_loss:.3f}, val loss {val_loss:.3f}, "
                             f"top-1 {top1:.1%}, top-5 {top5_text(top5, len(splits.class_names))}, lr {lr:.2e}, "
                             f"{metrics.images_per_s:.0f} img/s")
                best = self._checkpoint(metrics, eval_module, best)
                # the resume state first: a metrics row is visible only once its epoch can be resumed from
                self._save_state(state_path, module, optimizer, scheduler, ema, epoch + 1, history, best)
                self._write_metrics(metrics)
                fabric.log_dict({k: v for k, v in asdict(metrics).items() if k != "epoch"}, step=metrics.epoch)
            fabric.barrier()
            since_best = 0 if best and best[0][1] == metrics.epoch else since_best + 1
            result = TrainResult(best[0][2] if best else None, best[0][0] if best else 0.0, history,
                                 probe_top1=self.probe_top1)
            self._call("on_epoch_end", metrics)
            if any(self._call("should_stop")):
                result.cancelled = True
                break
            if cfg.early_stopping and since_best >= cfg.early_stopping:
                fabric.print(f"early stopping: no better val top-1 for {since_best} epochs")
                result.stopped_early = True
                break
        self._write_rank_fingerprint(module)
        for logger in fabric.loggers:
            logger.finalize("success" if not result.cancelled else "aborted")
        return result

    def _probe_init(self, module, dataset, head_params) -> float | None:
        """LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"): fit the new head on the frozen
        backbone's features of the (un-augmented) train images, cached once, before fine-tuning everything. One
        pass of inference replaces the slow head-only epochs, and fine-tuning starts from a linear probe. Returns
        the probe's last training loss, or None (having changed nothing) when the cached features would exceed
        :data:`PROBE_MAX_MB`."""
        cfg, fabric = self.cfg, self.fabric
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

    def _validate(self, module, loader, loss_fn) -> tuple[float, float, float]:
        module.eval()
        totals = torch.zeros(4, device=self.fabric.device)  # loss sum, top1 hits, top5 hits, count
        with torch.no_grad():
            for x, y in loader:
                logits = module(x).float()
                k = min(5, logits.shape[1])
                topk = logits.topk(k, dim=1).indices
                totals += torch.stack([loss_fn(logits, y) * len(y), (topk[:, 0] == y).sum().float(),
                                       (topk == y[:, None]).any(1).sum().float(), torch.tensor(float(len(y)), device=totals.device)])
        totals = self.fabric.all_reduce(totals, reduce_op="sum")
        n = max(float(totals[3]), 1.0)
        return float(totals[0]) / n, float(totals[1]) / n, float(totals[2]) / n

    def _checkpoint(self, metrics: EpochMetrics, module, best: list) -> list:
        clf = self.classifier
        raw = getattr(module, "module", module)  # unwrap Fabric / DDP / EMA wrappers
        state = {k: v for k, v in raw.state_dict().items()}
        name = f"{clf.name}-e{metrics.epoch}" if metrics.epoch else f"{clf.name}-probe"  # epoch 0: the linear probe
        meta = {**{k: v for k, v in clf.describe().items() if k != "num_params"},
                "name": name, "num_params": sum(p.numel() for p in raw.parameters()),
                "metrics": asdict(metrics), "dataset": str(self.cfg.data), "recipe": asdict(self.cfg)}
        meta["recipe"]["loggers"] = list(self.cfg.loggers)
        save_checkpoint(self.out / LAST_CHECKPOINT, state, meta)
        best = sorted(best + [(metrics.top1, metrics.epoch, None)], key=lambda t: preference(t[0], t[1]))
        keep, drop = best[: self.cfg.keep_best], best[self.cfg.keep_best:]
        for _, epoch, path in drop:
            if path is not None and Path(path).exists():
                Path(path).unlink()
        result = []
        for top1, epoch, path in keep:
            if path is None:
                path = save_checkpoint(self.out / best_name(epoch, top1), state, meta)
            result.append((top1, epoch, Path(path)))
        return result

    def _write_metrics(self, metrics: EpochMetrics) -> None:
        row = asdict(metrics)
        csv_path = self.out / METRICS_CSV
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        with open(self.out / METRICS_JSONL, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _save_state(self, path, module, optimizer, scheduler, ema, epoch, history, best) -> None:
        raw = getattr(module, "module", module)
        state = {"epoch": epoch, "model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "history": [asdict(h) for h in history],
                 "best": [(t, e, str(p)) for t, e, p in best], "config": json.dumps(asdict(self.cfg), default=str),
                 "ema": ema.module.state_dict() if ema is not None else None,
                 "torch_rng": torch.get_rng_state(), "probe_top1": self.probe_top1}
        atomic_write(path, lambda tmp: torch.save(state, tmp))

    def _resume(self, path: Path, module, optimizer, scheduler, ema):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            saved = json.loads(state["config"])
            for key in ("model", "head", "img_size"):
                if saved.get(key) != getattr(self.cfg, key):
                    raise CarNetError(f"{path} is from a run with {key}={saved.get(key)!r}, not "
                                      f"{getattr(self.cfg, key)!r}; use another --out folder or delete it")
            raw = getattr(module, "module", module)
            raw.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if ema is not None and state.get("ema") is not None:
                ema.module.load_state_dict(state["ema"])
            torch.set_rng_state(state["torch_rng"])
            self.probe_top1 = state.get("probe_top1")  # None in a state written before it was recorded
        except CarNetError:
            raise
        except Exception as exc:
            raise CarNetError(f"cannot resume from {path}: it is corrupt or from another model "
                              f"({type(exc).__name__}: {exc}); delete it to start over") from None
        history = [EpochMetrics(**h) for h in state["history"]]
        best = [(t, e, Path(p)) for t, e, p in state["best"]]
        return int(state["epoch"]), history, best

    def _write_rank_fingerprint(self, module) -> None:
        raw = getattr(module, "module", module)
        h = hashlib.sha256()
        for k, v in raw.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().float().cpu().numpy().tobytes())
        ranks = self.out / "rank_weights"
        ranks.mkdir(exist_ok=True)
        (ranks / f"rank{self.fabric.global_rank}.sha256").write_text(h.hexdigest())


def fine_tune(cfg: TrainConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Run :class:`Trainer` for ``cfg``."""
    return Trainer(cfg, callbacks).fit()


def estimate_epoch_seconds(model: str, head: str, img_size: int, batch_size: int, num_train: int, num_val: int,
                           device: str | torch.device | None = None, steps: int = 2) -> dict[str, float]:
    """Measure one fine-tuning step on this machine and extrapolate to an epoch.

    Builds the architecture with random weights (speed does not depend on them), then times ``steps`` training
    steps (forward, backward, AdamW update; channels_last, bf16 autocast on GPUs) of a random batch after one
    warm-up step, and one evaluation batch. Data loading is not included.

    Returns:
        ``{"train_s", "val_s", "epoch_s", "train_images_per_s"}`` (seconds per epoch, images per second).
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
    return {"train_s": train_s, "val_s": val_s, "epoch_s": train_s + val_s, "train_images_per_s": 1 / train_per_image}
