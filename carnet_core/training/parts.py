"""The parts a fine-tune is built from, outside the loop: timm's transforms, the initial model (registry
backbone with a new head, or a checkpoint to continue), parameter groups, the schedule, the experiment loggers, and a
time estimate per epoch."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from carnet_core.errors import CarNetError
from carnet_core.models.classifier import Classifier, build_module
from carnet_core.models.loading import load_model
from carnet_core.models.registry import get_spec
from carnet_core.models.weights import WeightsSource
from carnet_core.training.config import TrainConfig


def transforms(data_config: dict, cfg: TrainConfig):
    import timm  # lazy: timm and torchvision load on first model build

    dc = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data_config.items()}
    train_tf = timm.data.create_transform(input_size=dc["input_size"], is_training=True, auto_augment=cfg.randaugment,
                                          interpolation=dc["interpolation"], mean=dc["mean"], std=dc["std"],
                                          scale=tuple(cfg.crop_scale))
    eval_tf = timm.data.create_transform(**dc, is_training=False)
    return train_tf, eval_tf


def initial_model(cfg: TrainConfig, class_names: tuple[str, ...]) -> Classifier:
    """The registry model with pretrained weights and a fresh head for ``class_names``."""
    spec = get_spec(cfg.model)
    base = load_model(cfg.model, weights="auto" if cfg.pretrained else "random", device="cpu")
    module = build_module(spec.arch, cfg.head, len(class_names))
    head_keys = {k for k in module.state_dict() if k.startswith(head_prefix(module))}
    backbone = {k: v for k, v in base.module.state_dict().items() if k in module.state_dict()
                and not k.startswith(head_prefix(base.module)) and v.shape == module.state_dict()[k].shape}
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


def param_groups(backbone: Sequence[torch.nn.Parameter], head: Sequence[torch.nn.Parameter],
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


def cosine_after_freeze(cfg: TrainConfig, steps_per_epoch: int):
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


def backbone_norms_eval(module: torch.nn.Module) -> None:
    head = module.get_classifier()
    head_modules = set(head.modules())
    for sub in module.modules():
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm) and sub not in head_modules:
            sub.eval()


def head_prefix(module: torch.nn.Module) -> str:
    head = module.get_classifier()
    for name, sub in module.named_modules():
        if sub is head:
            return name
    raise CarNetError("cannot find the model's classifier")


def fabric_loggers(cfg: TrainConfig, out: Path):
    """Fabric loggers for ``cfg.loggers``: TensorBoard (Fabric's own), MLflow and Weights & Biases (thin adapters
    in :mod:`carnet_core.training.loggers`; W&B offline unless ``WANDB_MODE`` says otherwise, MLflow to ``out/mlruns`` unless
    ``MLFLOW_TRACKING_URI`` is set)."""
    from carnet_core.training.loggers import MLflowLogger, WandbLogger  # lazy: they import Lightning

    made = []
    for name in cfg.loggers:
        try:
            if name == "tensorboard":
                from lightning_fabric.loggers import TensorBoardLogger  # lazy: Lightning, only training

                made.append(TensorBoardLogger(str(out), name="tensorboard"))
            elif name == "mlflow":
                made.append(MLflowLogger(out, asdict(cfg)))
            elif name == "wandb":
                made.append(WandbLogger(out, asdict(cfg)))
            else:
                raise CarNetError(f"unknown logger {name!r}; choose tensorboard, mlflow or wandb")
        except ModuleNotFoundError as exc:
            package = exc.name or ("tensorboardX" if name == "tensorboard" else name)
            raise CarNetError(f"the {name} logger needs a package that is not installed: {package} "
                              f"(pip install {package})") from None
    return made
