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

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from carnet_core._io import atomic_write
from carnet_core.data.datacheck import too_few_classes, validate_splits, without_unreadable
from carnet_core.data.datasets import DatasetSplits
from carnet_core.data.readers import open_dataset
from carnet_core.errors import CarNetError
from carnet_core.evaluation.metrics import top5_text, topk_hits
from carnet_core.models.checkpoints import save_checkpoint
from carnet_core.models.runs import (
    DATA_REPORT,
    LAST_CHECKPOINT,
    PROBE_FILE,
    STATE_FILE,
    best_name,
    preference,
    reconcile_best,
    remove_partial_writes,
)
from carnet_core.training.callbacks import EarlyStopping, MetricsWriter
from carnet_core.training.config import EpochMetrics, TrainConfig, TrainResult
from carnet_core.training.parts import (
    backbone_norms_eval,
    cosine_after_freeze,
    fabric_loggers,
    initial_model,
    param_groups,
    transforms,
)
from carnet_core.training.probe import fit_linear_probe


@dataclass
class _Run:
    """What one fit sets up and its steps share: the Fabric-wrapped module and optimizer, the schedule, EMA, mixup,
    losses, loaders and parameter groups."""

    module: Any
    optimizer: Any
    scheduler: Any
    ema: Any
    mixup: Any
    train_loss_fn: Any
    val_loss_fn: Any
    train_loader: Any
    val_loader: Any
    backbone_params: list
    head_params: list
    num_classes: int
    probe_data: Any
    state_path: Path


class Trainer:
    """Runs one fine-tune described by a :class:`TrainConfig` (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, callbacks: Sequence[Any] = ()):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.callbacks = list(callbacks)
        self.metrics_writer = MetricsWriter(self.out)
        self.best_epoch: int | None = None  # the epoch of the best checkpoint so far (0: the linear probe)

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
        cfg = self.cfg
        cfg.check()
        self.out.mkdir(parents=True, exist_ok=True)
        fabric = self._setup_fabric()
        if fabric.is_global_zero:  # temp files of writes a kill interrupted: never read, never cleaned otherwise
            remove_partial_writes(self.out)
        run = self._prepare(*self._data(splits))
        start_epoch, history, best = self._start(run)
        result = self._result(best, history)
        early = EarlyStopping(cfg.early_stopping)
        for epoch in range(start_epoch, cfg.epochs):
            trained = self._train_epoch(run, epoch)
            if trained is None:  # stopped mid-epoch
                fabric.print(f"stopped during epoch {epoch + 1}; "
                             + (f"epochs 1–{epoch} are saved and resumable" if epoch else "no epoch finished yet"))
                result.cancelled = True
                break
            metrics, best = self._end_epoch(run, epoch, trained, history, best)
            # rank 0 keeps the best-k list: every rank takes its best epoch, so early stopping stops them together
            self.best_epoch = fabric.broadcast(best[0][1] if best else None, src=0)
            result = self._result(best, history)
            for callback in (self.metrics_writer, early):  # the loop's own, before the callers'
                callback.on_epoch_end(self, metrics)
            self._call("on_epoch_end", metrics)
            if any(self._call("should_stop")):
                result.cancelled = True
                break
            if early.stopped:
                fabric.print(early.message())
                result.stopped_early = True
                break
        self._write_rank_fingerprint(run.module)
        for logger in fabric.loggers:
            logger.finalize("success" if not result.cancelled else "aborted")
        return result

    def _result(self, best: list, history: list[EpochMetrics]) -> TrainResult:
        return TrainResult(best[0][2] if best else None, best[0][0] if best else 0.0, history,
                           probe_top1=self.probe_top1)

    def _setup_fabric(self):
        """Lightning Fabric for the recipe's devices, strategy and precision; launched and seeded."""
        from lightning_fabric import Fabric  # lazy: Lightning costs about a second to import, only training needs it

        cfg = self.cfg
        strategy = cfg.strategy
        if strategy == "ddp" and cfg.freeze_epochs > 0:  # frozen backbone = parameters without gradients for DDP
            strategy = "ddp_find_unused_parameters_true"
        try:
            fabric = Fabric(accelerator=cfg.accelerator, devices=cfg.devices, strategy=strategy,
                            num_nodes=cfg.num_nodes, precision=self._precision(), loggers=fabric_loggers(cfg, self.out))
        except (ValueError, TypeError, RuntimeError) as exc:  # Lightning's own messages name the bad setting
            raise CarNetError(f"cannot set up training: {exc}") from None
        fabric.launch()
        fabric.seed_everything(cfg.seed + fabric.global_rank, verbose=False)  # the seed is in the recipe
        self.fabric = fabric
        return fabric

    def _data(self, splits: DatasetSplits | None):
        """(splits, train set, val set): the dataset opened and checked (its report written), unreadable files left
        out."""
        cfg, fabric = self.cfg, self.fabric
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
        return splits, train_ds, val_ds

    def _prepare(self, splits: DatasetSplits, train_ds, val_ds) -> _Run:
        """The model, loaders, optimizer, schedule, EMA, mixup and losses of the run, set up on Fabric."""
        import timm.optim  # lazy, as all of timm's training parts: only training needs them
        import timm.utils
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        cfg, fabric = self.cfg, self.fabric
        clf = initial_model(cfg, splits.class_names)
        self.classifier = clf
        train_tf, eval_tf = transforms(clf.data_config, cfg)
        loader_kw = dict(batch_size=cfg.batch_size, num_workers=cfg.workers, persistent_workers=cfg.workers > 0)
        train_loader = torch.utils.data.DataLoader(train_ds.with_transform(train_tf), shuffle=True,
                                                   drop_last=len(train_ds) > cfg.batch_size, **loader_kw)
        val_loader = torch.utils.data.DataLoader(val_ds.with_transform(eval_tf), shuffle=False, **loader_kw)
        train_loader, val_loader = fabric.setup_dataloaders(train_loader, val_loader)

        module = clf.module.to(memory_format=torch.channels_last)  # faster convolutions on GPUs and on CPUs
        backbone_params, head_params = clf.backbone_and_head()
        head_params = list(head_params)
        optimizer = timm.optim.create_optimizer_v2(param_groups(backbone_params, head_params, cfg), opt=cfg.optimizer,
                                                   lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9)
        steps_per_epoch = min(len(train_loader), cfg.limit_train_batches or len(train_loader))
        if cfg.scheduler == "cosine":  # stepped after every optimizer step
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_after_freeze(cfg, steps_per_epoch))
        else:  # "plateau" (TrainConfig.problems() allows no other)
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.3, patience=2)
        module, optimizer = fabric.setup(module, optimizer)
        self.optimizer = optimizer  # for callbacks (as Lightning's trainer.optimizers)
        num_classes = len(splits.class_names)
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                      num_classes=num_classes) if (cfg.mixup or cfg.cutmix) else None
        return _Run(module=module, optimizer=optimizer, scheduler=scheduler,
                    ema=timm.utils.ModelEmaV3(module, decay=cfg.ema_decay) if cfg.ema_decay else None, mixup=mixup,
                    train_loss_fn=SoftTargetCrossEntropy() if mixup else
                    torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
                    val_loss_fn=torch.nn.CrossEntropyLoss(), train_loader=train_loader, val_loader=val_loader,
                    backbone_params=backbone_params, head_params=head_params, num_classes=num_classes,
                    probe_data=train_ds.with_transform(eval_tf), state_path=self.out / STATE_FILE)

    def _start(self, run: _Run) -> tuple[int, list[EpochMetrics], list]:
        """(first epoch, history, best-k) of the run: resumed from its state, or fresh — then the linear probe is
        fitted and scored first, and is a candidate for the best checkpoint as epoch 0."""
        cfg, fabric = self.cfg, self.fabric
        start_epoch, history, best = 0, [], []  # best: [(top1, epoch, path)]
        self.probe_top1: float | None = None
        resuming = cfg.resume and run.state_path.is_file()
        if resuming:
            start_epoch, history, best = self._resume(run.state_path, run.module, run.optimizer, run.scheduler,
                                                      run.ema)
            fabric.print(f"resuming after epoch {start_epoch} from {run.state_path}")
            if fabric.is_global_zero:  # drop rows of an epoch that was written but not saved for resuming
                self.metrics_writer.restart(history)
                best = reconcile_best(self.out, best)  # and its best-* files, which the state does not list
        elif fabric.is_global_zero:  # a fresh run in a used folder: not an earlier run's probe on its curves
            (self.out / PROBE_FILE).unlink(missing_ok=True)
        if not resuming and cfg.probe_init:
            best = self._score_probe(run, best)
        return start_epoch, history, best

    def _score_probe(self, run: _Run, best: list) -> list:
        """Fit the linear probe on cached features and score it on val (``probe.json``, epoch 0's checkpoint); or,
        when it is skipped, give the untrained head its faster learning rate back. Returns the best-k list."""
        cfg, fabric = self.cfg, self.fabric
        probe_train_loss = fit_linear_probe(run.module, run.probe_data, run.head_params, self.cfg, self.fabric)
        if probe_train_loss is None:  # no probe after all: the untrained head needs its faster LR back
            for i, group in enumerate(run.optimizer.param_groups):
                if group.get("role") == "head":
                    group["lr"] *= cfg.head_lr_scale
                    if isinstance(run.scheduler, torch.optim.lr_scheduler.LambdaLR):
                        run.scheduler.base_lrs[i] *= cfg.head_lr_scale
            return best
        t0 = time.perf_counter()
        val_loss, top1, top5 = self._validate(run.module, run.val_loader, run.val_loss_fn)
        probe = EpochMetrics(0, probe_train_loss, val_loss, top1, top5, lr=0.0, images_per_s=0.0,
                             seconds=time.perf_counter() - t0)
        self.probe_top1 = top1
        fabric.print(f"linear probe: val top-1 {top1:.1%}, top-5 {top5_text(top5, run.num_classes)} "
                     "(fine-tuning starts from it)")
        if fabric.is_global_zero:
            (self.out / PROBE_FILE).write_text(json.dumps({"top1": top1, "top5": top5}))  # for the page
            # a candidate for the best checkpoint, as epoch 0: a short fine-tune that ends below its probe
            # (the first epochs dip below it) leaves the probe's weights as the run's best, not worse ones
            best = self._checkpoint(probe, run.module, best)
        if run.ema is not None:
            run.ema.set(run.module)
        return best

    def _train_epoch(self, run: _Run, epoch: int) -> tuple[int, float, float, float] | None:
        """One epoch of training: (images seen, summed loss, last learning rate, start time), or None when a
        callback asked to stop during it."""
        from tqdm.auto import tqdm  # lazy, with the rest of the training loop's dependencies

        cfg, fabric, module, optimizer = self.cfg, self.fabric, run.module, run.optimizer
        frozen = epoch < cfg.freeze_epochs
        for p in run.backbone_params:
            p.requires_grad_(not frozen)
        module.train()
        if frozen or cfg.bn_eval:  # pretrained BatchNorm statistics kept (inference mode), see bn_eval
            backbone_norms_eval(self.classifier.module)
        t0, seen, loss_sum = time.perf_counter(), 0, 0.0
        bar = tqdm(run.train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}{' (head only)' if frozen else ''}",
                   disable=not (fabric.is_global_zero and sys.stderr.isatty()), leave=False)
        num_steps = min(len(run.train_loader), cfg.limit_train_batches or len(run.train_loader))
        lr = optimizer.param_groups[0]["lr"]
        for step, (x, y) in enumerate(bar):
            if cfg.limit_train_batches is not None and step >= cfg.limit_train_batches:
                break
            x = x.contiguous(memory_format=torch.channels_last)
            target = y
            if run.mixup is not None and len(x) % 2 == 0:
                x, target = run.mixup(x, y)
            elif run.mixup is not None:
                target = torch.nn.functional.one_hot(y, run.num_classes).float()
            loss = run.train_loss_fn(module(x), target)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
            lr = optimizer.param_groups[0]["lr"]  # the backbone's LR of this step (logged per epoch)
            if not isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                run.scheduler.step()
            if run.ema is not None:
                run.ema.update(module)
            seen += len(x)
            loss_sum += float(loss.detach()) * len(x)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}")
            self._call("on_train_batch_end", epoch + 1, step + 1, num_steps)
            if any(self._call("should_stop")):
                return None
        return seen, loss_sum, lr, t0

    def _end_epoch(self, run: _Run, epoch: int, trained: tuple[int, float, float, float],
                   history: list[EpochMetrics], best: list) -> tuple[EpochMetrics, list]:
        """Validate, then (rank 0) checkpoint and save the resume state; the metrics row is written after this, by
        :class:`~carnet_core.training.callbacks.MetricsWriter`, so a row is visible only once its epoch can be resumed
        from. Returns the epoch's metrics and the best-k list."""
        fabric = self.fabric
        seen, loss_sum, lr, t0 = trained
        train_seconds = time.perf_counter() - t0
        eval_module = run.ema.module if run.ema is not None else run.module
        val_loss, top1, top5 = self._validate(eval_module, run.val_loader, run.val_loss_fn)
        if isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            run.scheduler.step(top1)
        seen_all = float(fabric.all_reduce(torch.tensor(float(seen), device=fabric.device), reduce_op="sum"))
        loss_all = float(fabric.all_reduce(torch.tensor(loss_sum, device=fabric.device), reduce_op="sum"))
        metrics = EpochMetrics(epoch + 1, loss_all / max(seen_all, 1), val_loss, top1, top5, lr,
                               seen_all / max(train_seconds, 1e-9), time.perf_counter() - t0)
        history.append(metrics)
        if fabric.is_global_zero:
            fabric.print(f"epoch {metrics.epoch}: train loss {metrics.train_loss:.3f}, val loss {val_loss:.3f}, "
                         f"top-1 {top1:.1%}, top-5 {top5_text(top5, run.num_classes)}, lr {lr:.2e}, "
                         f"{metrics.images_per_s:.0f} img/s")
            best = self._checkpoint(metrics, eval_module, best)
            self._save_state(run.state_path, run.module, run.optimizer, run.scheduler, run.ema, epoch + 1, history,
                             best)
        fabric.barrier()
        return metrics, best

    def _validate(self, module, loader, loss_fn) -> tuple[float, float, float]:
        module.eval()
        totals = torch.zeros(4, device=self.fabric.device)  # loss sum, top1 hits, top5 hits, count
        with torch.no_grad():
            for x, y in loader:
                logits = module(x).float()
                totals += torch.stack([loss_fn(logits, y) * len(y), topk_hits(logits, y, 1).sum().float(),
                                       topk_hits(logits, y, 5).sum().float(),
                                       torch.tensor(float(len(y)), device=totals.device)])
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


