"""The fine-tuning loop: one code path for the CLI, the fine-tune page and the tests.

Devices, precision and multi-GPU come from Lightning Fabric (the same command runs on CPU, one GPU, several GPUs
and several nodes); models, transforms, optimizers, schedules, mixup/cutmix, label smoothing and EMA from timm.
Ours is the loop: freeze-backbone warm-up, early stopping on val top-1, best-k CarNet checkpoints, per-epoch
metrics (CSV + JSONL), and resume after a crash or kill from the last finished epoch (state written atomically).
Hooks for callers (Lightning-style callbacks): ``on_epoch_end(trainer, metrics)`` and ``should_stop(trainer)``.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from .checkpoint import save_checkpoint
from .datacheck import validate_splits, without_unreadable
from .datasets import DatasetSplits, open_dataset
from .errors import CarNetError
from .model import Classifier, build_module, load_model
from .registry import get_spec
from .weights import WeightsSource

STATE_FILE = "last_state.pt"  # optimizer/scheduler/progress for resume; weights beside it in last.safetensors


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
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"             # or "sgd" (momentum 0.9)
    scheduler: str = "cosine"            # or "plateau" (reduce on val top-1 plateau)
    warmup_epochs: int = 0              # linear LR warm-up epochs (the head-only epochs already warm the head up)
    freeze_epochs: int = 1               # train only the head for this many epochs, then everything
    label_smoothing: float = 0.1
    mixup: float = 0.0                   # mixup alpha (0 = off)
    cutmix: float = 0.0                  # cutmix alpha (0 = off)
    randaugment: str | None = "rand-m7-mstd0.5"  # timm auto-augment string, None = resize/crop/flip only
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


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _transforms(data_config: dict, cfg: TrainConfig):
    import timm

    dc = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data_config.items()}
    train_tf = timm.data.create_transform(input_size=dc["input_size"], is_training=True, auto_augment=cfg.randaugment,
                                          interpolation=dc["interpolation"], mean=dc["mean"], std=dc["std"])
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


def _head_prefix(module: torch.nn.Module) -> str:
    head = module.get_classifier()
    for name, sub in module.named_modules():
        if sub is head:
            return name
    raise CarNetError("cannot find the model's classifier")


def _loggers(cfg: TrainConfig, out: Path):
    made = []
    for name in cfg.loggers:
        try:
            if name == "tensorboard":
                from lightning_fabric.loggers import TensorBoardLogger

                made.append(TensorBoardLogger(str(out), name="tensorboard"))
            elif name in ("mlflow", "wandb"):
                raise CarNetError(f"the {name} logger is not wired in this version; metrics are in "
                                  f"{out}/metrics.csv and metrics.jsonl")
            else:
                raise CarNetError(f"unknown logger {name!r}; choose tensorboard")
        except ModuleNotFoundError as exc:
            raise CarNetError(f"the {name} logger needs a package that is not installed: {exc.name} "
                              f"(pip install {exc.name})") from None
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
        import timm.scheduler
        import timm.utils
        from lightning_fabric import Fabric
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy
        from tqdm.auto import tqdm

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        strategy = cfg.strategy
        if strategy == "ddp" and cfg.freeze_epochs > 0:  # frozen backbone = parameters without gradients for DDP
            strategy = "ddp_find_unused_parameters_true"
        fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, strategy=strategy,
                        num_nodes=cfg.num_nodes, precision=self._precision(), loggers=_loggers(cfg, self.out))
        fabric.launch()
        fabric.seed_everything(cfg.seed + fabric.global_rank)
        self.fabric = fabric

        splits = splits or open_dataset(cfg.data, cfg.dataset_kind, **({"val_fraction": cfg.val_fraction}
                                                                        if cfg.dataset_kind in ("auto", "image_folder") else {}))
        report = validate_splits(splits)
        if fabric.is_global_zero:
            (self.out / "data_report.json").write_text(json.dumps(report.to_dict(), indent=1))
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

        module = clf.module
        if fabric.device.type == "cuda":
            module = module.to(memory_format=torch.channels_last)
        backbone_params, _ = clf.backbone_and_head()
        optimizer = timm.optim.create_optimizer_v2(module, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                   momentum=0.9)
        if cfg.scheduler == "cosine":
            scheduler = timm.scheduler.CosineLRScheduler(optimizer, t_initial=cfg.epochs, lr_min=cfg.lr * 0.01,
                                                         warmup_t=cfg.warmup_epochs, warmup_lr_init=cfg.lr * 0.01)
        elif cfg.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.3, patience=2)
        else:
            raise CarNetError(f"unknown scheduler {cfg.scheduler!r}; choose cosine or plateau")
        module, optimizer = fabric.setup(module, optimizer)
        ema = timm.utils.ModelEmaV3(module, decay=cfg.ema_decay) if cfg.ema_decay else None
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                      num_classes=len(splits.class_names)) if (cfg.mixup or cfg.cutmix) else None
        train_loss_fn = SoftTargetCrossEntropy() if mixup else torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        val_loss_fn = torch.nn.CrossEntropyLoss()

        start_epoch, history, best = 0, [], []  # best: [(top1, epoch, path)]
        state_path = self.out / STATE_FILE
        if cfg.resume and state_path.is_file():
            start_epoch, history, best = self._resume(state_path, module, optimizer, scheduler, ema)
            fabric.print(f"resuming after epoch {start_epoch} from {state_path}")

        result = TrainResult(best[0][2] if best else None, best[0][0] if best else 0.0, history)
        since_best = 0
        for epoch in range(start_epoch, cfg.epochs):
            frozen = epoch < cfg.freeze_epochs
            for p in backbone_params:
                p.requires_grad_(not frozen)
            module.train()
            t0, seen, loss_sum = time.perf_counter(), 0, 0.0
            bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}{' (head only)' if frozen else ''}",
                       disable=not fabric.is_global_zero, leave=False)
            for step, (x, y) in enumerate(bar):
                if cfg.limit_train_batches is not None and step >= cfg.limit_train_batches:
                    break
                if fabric.device.type == "cuda":
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
                if ema is not None:
                    ema.update(module)
                seen += len(x)
                loss_sum += float(loss.detach()) * len(x)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
            train_seconds = time.perf_counter() - t0
            eval_module = ema.module if ema is not None else module
            val_loss, top1, top5 = self._validate(eval_module, val_loader, val_loss_fn)
            lr = optimizer.param_groups[0]["lr"]
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(top1)
            else:
                scheduler.step(epoch + 1)
            seen_all = float(fabric.all_reduce(torch.tensor(float(seen), device=fabric.device), reduce_op="sum"))
            loss_all = float(fabric.all_reduce(torch.tensor(loss_sum, device=fabric.device), reduce_op="sum"))
            metrics = EpochMetrics(epoch + 1, loss_all / max(seen_all, 1), val_loss, top1, top5, lr,
                                   seen_all / max(train_seconds, 1e-9), time.perf_counter() - t0)
            history.append(metrics)
            if fabric.is_global_zero:
                fabric.print(f"epoch {metrics.epoch}: train loss {metrics.train_loss:.3f}, val loss {val_loss:.3f}, "
                             f"top-1 {top1:.1%}, top-5 {top5:.1%}, lr {lr:.2e}, {metrics.images_per_s:.0f} img/s")
                best = self._checkpoint(metrics, eval_module, best)
                self._write_metrics(metrics)
                fabric.log_dict({k: v for k, v in asdict(metrics).items() if k != "epoch"}, step=metrics.epoch)
                self._save_state(state_path, module, optimizer, scheduler, ema, epoch + 1, history, best)
            fabric.barrier()
            since_best = 0 if best and best[0][1] == metrics.epoch else since_best + 1
            result = TrainResult(best[0][2] if best else None, best[0][0] if best else 0.0, history)
            self._call("on_epoch_end", metrics)
            if any(self._call("should_stop")):
                result.cancelled = True
                break
            if cfg.early_stopping and since_best >= cfg.early_stopping:
                fabric.print(f"early stopping: no better val top-1 for {since_best} epochs")
                result.stopped_early = True
                break
        self._write_rank_fingerprint(module)
        return result

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
        meta = {**{k: v for k, v in clf.describe().items() if k != "num_params"},
                "name": f"{clf.name}-e{metrics.epoch}", "num_params": sum(p.numel() for p in raw.parameters()),
                "metrics": asdict(metrics), "dataset": str(self.cfg.data), "recipe": asdict(self.cfg)}
        meta["recipe"]["loggers"] = list(self.cfg.loggers)
        save_checkpoint(self.out / "last.safetensors", state, meta)
        best = sorted(best + [(metrics.top1, metrics.epoch, None)], key=lambda t: (-t[0], t[1]))
        keep, drop = best[: self.cfg.keep_best], best[self.cfg.keep_best:]
        for _, epoch, path in drop:
            if path is not None and Path(path).exists():
                Path(path).unlink()
        result = []
        for top1, epoch, path in keep:
            if path is None:
                path = save_checkpoint(self.out / f"best-e{epoch:03d}-top1-{top1 * 100:.1f}.safetensors", state, meta)
            result.append((top1, epoch, Path(path)))
        return result

    def _write_metrics(self, metrics: EpochMetrics) -> None:
        row = asdict(metrics)
        csv_path = self.out / "metrics.csv"
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def _save_state(self, path, module, optimizer, scheduler, ema, epoch, history, best) -> None:
        raw = getattr(module, "module", module)
        state = {"epoch": epoch, "model": raw.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "history": [asdict(h) for h in history],
                 "best": [(t, e, str(p)) for t, e, p in best], "config": json.dumps(asdict(self.cfg), default=str),
                 "ema": ema.module.state_dict() if ema is not None else None,
                 "torch_rng": torch.get_rng_state()}
        _atomic_torch_save(state, path)

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
        except CarNetError:
            raise
        except Exception as exc:
            raise CarNetError(f"cannot resume from {path}: it is corrupt or from another model "
                              f"({type(exc).__name__}: {exc}); delete it to start over") from None
        history = [EpochMetrics(**h) for h in state["history"]]
        best = [(t, e, Path(p)) for t, e, p in state["best"]]
        return int(state["epoch"]), history, best

    def _write_rank_fingerprint(self, module) -> None:
        import hashlib

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
