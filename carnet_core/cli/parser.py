"""The command line's grammar: every command, its arguments and their help."""

from __future__ import annotations

import argparse
import dataclasses
import functools
from pathlib import Path
from typing import Any

from carnet_core.cli.commands import (
    cmd_compare,
    cmd_bundle,
    cmd_engines,
    cmd_evaluate,
    cmd_explain,
    cmd_embed,
    cmd_faithfulness,
    cmd_export,
    cmd_models,
    cmd_predict,
    cmd_train,
    cmd_validate_data,
)
from carnet_core.cli.inputs import numbers
from carnet_core.data.datasets import SPLITS
from carnet_core.data.readers import DATASET_KINDS
from carnet_core.evaluation.embeddings import PROJECTIONS
from carnet_core.explain.cams import COLORMAPS, METHODS
from carnet_core.explain.faithfulness import RANKED_METHODS
from carnet_core.models.registry import HEADS
from carnet_core.training.config import OPTIMIZERS, SCHEDULERS, TrainConfig

CLASSES_HELP = ("class names of a weights file trained on classes of its own, in training order: a text file (one name "
                "per line) or timm's .pkl class map, a JSON list, a CSV with a class_name column, or the dataset "
                "folder it was trained on (a timm train.py checkpoint finds its own when its dataset is on this "
                "machine)")


def plain_weights_options(p: argparse.ArgumentParser, dest: str = "arch") -> None:
    """``--model NAME``, ``--classes`` and ``--no-hub``: what a command given a weights file that does not describe
    itself (a plain state dict) needs to know."""
    p.add_argument("--model", dest=dest, metavar="NAME",
                   help="registry name, for a checkpoint that is a plain state dict without CarNet metadata")
    p.add_argument("--classes", metavar="FILE_OR_FOLDER", help=CLASSES_HELP)
    p.add_argument("--no-hub", action="store_true", help="do not try the Hugging Face Hub")


def checkpoint_argument(p: argparse.ArgumentParser, dest: str) -> None:
    """CHECKPOINT as the first argument, or as ``--checkpoint FILE``, as predict and explain take it."""
    p.add_argument(dest, metavar="CHECKPOINT", nargs="?", help="checkpoint or weights file, or a registry model name")
    p.add_argument("--checkpoint", dest="checkpoint_option", metavar="FILE",
                   help="the same, given as predict and explain take it")
    p.set_defaults(checkpoint_dest=dest)


def build_parser() -> argparse.ArgumentParser:
    # no abbreviated options: `train --data DIR` was read as `--dataset-kind DIR` ("invalid choice"), not as a mistake
    parser = argparse.ArgumentParser(prog="python -m carnet_core", description="CarNet: car image classification.",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))

    _add_models(sub)
    _add_predict(sub)
    _add_explain(sub)
    _add_compare(sub)
    _add_export(sub)
    _add_engines(sub)
    _add_bundle(sub)
    _add_validate_data(sub)
    _add_evaluate(sub)
    _add_embed(sub)
    _add_faithfulness(sub)
    _add_train(sub)
    return parser


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models and where their weights come from, and the fine-tuned "
                                      "checkpoints found here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-hub", action="store_true", help="do not check the Hugging Face Hub")
    p.set_defaults(func=cmd_models)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify images")
    p.add_argument("images", nargs="+", metavar="IMG", help="image files, or folders of them (searched recursively)")
    p.add_argument("--model", help="registry name (default: efficientnet_lite0, or the architecture the "
                                   "--checkpoint file names)")
    p.add_argument("--checkpoint", type=Path, help="weights file or CarNet checkpoint to use")
    p.add_argument("--classes", metavar="FILE_OR_FOLDER", help=CLASSES_HELP)
    p.add_argument("--topk", "--top-k", dest="topk", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--csv", type=Path, help="also write one row per image (top-k classes and probabilities) here")
    p.add_argument("--no-hub", action="store_true", help="do not try the Hugging Face Hub")
    p.set_defaults(func=cmd_predict)


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="Grad-CAM heatmap of one image, saved as an overlay PNG")
    p.add_argument("image", metavar="IMG", help="an image file")
    p.add_argument("--model", help="registry name (default: efficientnet_lite0, or the architecture the "
                                   "--checkpoint file names)")
    p.add_argument("--checkpoint", type=Path, help="weights file or CarNet checkpoint to use")
    p.add_argument("--classes", metavar="FILE_OR_FOLDER", help=CLASSES_HELP)
    p.add_argument("--method", default="gradcam", choices=METHODS)
    p.add_argument("--class", dest="class_name", metavar="NAME", help="class to explain (default: top-1)")
    p.add_argument("--layer", help="target layer name (default: per architecture family)")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity, 0..1 (default 0.5)")
    p.add_argument("--colormap", default="jet", choices=COLORMAPS)
    p.add_argument("--aug-smooth", action="store_true",
                   help="mean map over the photo flipped and brightened (6 passes; pytorch-grad-cam's aug_smooth): "
                        "centred on the object")
    p.add_argument("--eigen-smooth", action="store_true",
                   help="first principal component of the weighted activations (pytorch-grad-cam's eigen_smooth): "
                        "less noise")
    p.add_argument("--out", type=Path, default=Path("overlay.png"), help="output PNG (default overlay.png)")
    p.add_argument("--road", action="store_true", help="also measure ROAD faithfulness (Rong et al. 2022; ~2 s)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.add_argument("--no-hub", action="store_true", help="do not try the Hugging Face Hub")
    p.set_defaults(func=cmd_explain)


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("embed", help="the embedding map of a dataset: penultimate-layer features projected to 2-D "
                                     "(UMAP or t-SNE) and each image's most similar images, as CSV (Evaluate's map)")
    _model_on_dataset_arguments(p)
    p.add_argument("--split", choices=SPLITS, help="val, train or all (default as evaluate: val where the dataset has "
                                                   "a split of its own, else all)")
    p.add_argument("--method", choices=PROJECTIONS, default="umap", help="2-D projection (default umap)")
    p.add_argument("--neighbours", type=int, default=5, help="most similar images per image (default 5)")
    p.add_argument("--csv", type=Path, default=Path("embedding.csv"),
                   help="where to write path, label, x, y, neighbour_1, similarity_1, … (default embedding.csv)")
    p.set_defaults(func=cmd_embed)


def _add_faithfulness(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("faithfulness", help="which CAM method is most faithful for a model: ROAD combined per method "
                                            "over photos of a dataset, with RandomCAM as the floor (Explain's table)")
    _model_on_dataset_arguments(p)
    p.add_argument("--images", type=int, default=6, help="photos, taken from the classes in turn (default 6; about "
                                                         "2 s per photo and method on a CPU)")
    p.add_argument("--methods", default=",".join(RANKED_METHODS),
                   help=f"comma-separated, from {', '.join(METHODS)} (default: {','.join(RANKED_METHODS)})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_faithfulness)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="top-1/top-5 of several models and their ensembles on a labelled folder")
    p.add_argument("folder", type=Path, metavar="FOLDER",
                   help="folder with one sub-folder of images per class, or a dataset with train/ and val/ (its val "
                        "split is measured)")
    p.add_argument("--models", required=True, help="comma-separated registry names or checkpoint files")
    p.add_argument("--mapping", type=Path, help="JSON or CSV: folder class -> model classes (see mappings/)")
    p.add_argument("--weights", type=numbers, help="comma-separated member weights for the weighted votes, e.g. "
                                                     "0.7,0.3 (default equal)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-hub", action="store_true", help="do not try the Hugging Face Hub")
    p.set_defaults(func=cmd_compare)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model or checkpoint to ONNX, or to a CarNet checkpoint, checked "
                                      "against torch")
    checkpoint_argument(p, "model")
    p.add_argument("--format", choices=["onnx", "safetensors"], default="onnx",
                   help="onnx (default; for deploying elsewhere, class names and data config in <out>.json) or "
                        "safetensors: a CarNet checkpoint that carries them, which the app lists when it is in the "
                        "weights folder")
    p.add_argument("--out", type=Path, help="output file (default: the model's name, e.g. efficientnet_lite0.onnx; "
                                            "a model of classes of its own is named after them: "
                                            "mobilenetv2_100-cars6.safetensors)")
    calibration_options(p)
    plain_weights_options(p)
    p.set_defaults(func=cmd_export)


def _add_engines(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("engines", help="measure the CPU inference engines for a model (parity gate, batch-1 ms) and "
                                       "show which one classification uses")
    checkpoint_argument(p, "model")
    p.add_argument("--photos", help="folder of real photos for the fp32 parity check (default $CARNET_PARITY_PHOTOS)")
    calibration_options(p)
    plain_weights_options(p)
    p.set_defaults(func=cmd_engines)


def _add_bundle(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bundle", help="write a folder a Heroku-style host deploys as it is: the app, the models "
                                      "exported for serving with their engines chosen, Procfile, Dockerfile, README")
    p.add_argument("out", type=Path, metavar="OUT_DIR", help="a new (or empty) folder")
    p.add_argument("--models", help="comma-separated registry names or checkpoint files (default: every registered "
                                    "model with weights here)")
    calibration_options(p)
    p.add_argument("--no-hub", action="store_true", help="never look for weights on the Hugging Face Hub")
    p.set_defaults(func=cmd_bundle)


def calibration_options(p: argparse.ArgumentParser) -> None:
    """``--calibration FOLDER`` and ``--mapping FILE``: the labelled set of the reduced-precision accuracy gate."""
    p.add_argument("--calibration", type=Path, metavar="FOLDER",
                   help="labelled photos (class folders; a dataset's val split) for the bf16 / int8 accuracy gate: "
                        "≥ 99%% of fp32's top-1 accuracy, same top-1 on ≥ 98%% of photos; int8 is calibrated on "
                        "every 4th photo. Without it, reduced precision is not tried. The choice is stored with the "
                        "model's export and used from then on")
    p.add_argument("--mapping", type=Path, help="folder class → model classes (JSON/CSV, see mappings/), for an "
                                                "ImageNet model on other classes; without it an ImageNet model is "
                                                "gated on the share of photos with a vehicle at top-1")


def _add_validate_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate-data", help="report class counts, unreadable files, small classes, train/val duplicates")
    p.set_defaults(func=cmd_validate_data)
    p.add_argument("data", type=Path, metavar="DATA", help="dataset folder: class folders, train/ and val/, or a "
                                                           "Stanford Cars, CompCars or CIFAR-100 layout")
    _dataset_kind_option(p)
    p.add_argument("--min-per-class", type=int, default=5, help="flag classes with fewer images (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable report")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5, per-class, confusion, calibration of a model or checkpoint on a "
                                        "dataset split (the Evaluate page's numbers)")
    _model_on_dataset_arguments(p)
    p.add_argument("--split", choices=SPLITS, help="val, train or all; default: val for a dataset with a split of its "
                                                   "own, all for a folder of class folders (the reader would split it)")
    p.add_argument("--mapping", type=Path, help="dataset class → model classes (JSON/CSV), for ImageNet models")
    p.add_argument("--csv", type=Path, help="also write the per-class table (worst first) to this CSV file")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=cmd_evaluate)


def _add_train(sub: argparse._SubParsersAction) -> None:
    recipe = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

    def option(flag: str, text: str = "", aliases: tuple[str, ...] = (), **kwargs: Any) -> None:
        default = recipe.get(kwargs.get("dest") or flag.lstrip("-").replace("-", "_"))
        if "action" not in kwargs and default is not None and default != ():  # a value option: say its default
            text = f"{text} (default {default})" if text else f"default {default}"
        p.add_argument(flag, *aliases, help=text or None, **kwargs)

    p = sub.add_parser("train", help="fine-tune a registry model on a dataset (Lightning Fabric: CPU, GPUs, nodes)")
    p.add_argument("data", metavar="DATA", help="dataset folder (see validate-data)")
    option("--out", "run folder; an existing run there is resumed")
    option("--dataset-kind", "dataset layout; auto reads it from the folder", aliases=("--kind",), choices=DATASET_KINDS)
    option("--model", "registry name")
    option("--head", "linear, or ml_decoder (the CarNet model)", choices=HEADS)
    option("--img-size", "input size in px (default: the model's data config)", type=int)
    option("--epochs", type=int)
    option("--batch-size", type=int)
    option("--lr", "backbone learning rate, the schedule's peak", type=float)
    option("--head-lr-scale", "head LR = lr × this", type=float)
    option("--weight-decay", type=float)
    option("--optimizer", choices=OPTIMIZERS)
    option("--scheduler", choices=SCHEDULERS)
    option("--warmup-epochs", "linear LR warm-up once the backbone is unfrozen", type=float)
    option("--freeze-epochs", "train only the head for this many epochs first", type=int)
    option("--no-probe-init", "skip LP-FT's first step (fitting the head on cached backbone features)",
           dest="probe_init", action="store_false", default=None)
    option("--probe-epochs", "passes over the cached features (default 40 for a linear head, 20 for ML-Decoder)",
           type=int)
    option("--train-bn", "update BatchNorm statistics while fine-tuning (default: keep the pretrained ones)",
           dest="bn_eval", action="store_false", default=None)
    option("--label-smoothing", type=float)
    option("--mixup", "mixup alpha, 0 = off", type=float)
    option("--cutmix", "cutmix alpha, 0 = off", type=float)
    option("--randaugment", "timm auto-augment string, or 'none'")
    option("--ema-decay", "e.g. 0.999; validation then uses the EMA weights (default off)", type=float)
    option("--early-stopping", "patience in epochs on val top-1 (default off)", type=int)
    option("--keep-best", "best checkpoints kept", type=int)
    option("--precision", "auto (bf16-mixed on GPUs that support it, else 32-true), 32-true, bf16-mixed, 16-mixed")
    option("--accelerator", "auto, cpu, cuda")
    option("--devices", "number of devices (processes)")
    option("--strategy", "auto, ddp")
    option("--num-nodes", type=int)
    option("--workers", "data-loader processes", type=int)
    option("--seed", type=int)
    option("--no-resume", "start again even when --out holds a run", dest="resume", action="store_false",
           default=None)
    option("--no-pretrained", "start from random weights, not the model's ImageNet weights", dest="pretrained",
           action="store_false", default=None)
    option("--limit-train-batches", "steps per epoch, for quick looks", type=int)
    option("--loggers", "also log to tensorboard, mlflow and/or wandb (offline), comma-separated",
           type=lambda s: tuple(x.strip() for x in s.split(",") if x.strip()))
    p.set_defaults(func=cmd_train)


def _model_on_dataset_arguments(p: argparse.ArgumentParser) -> None:
    """CHECKPOINT (or a registry name) and DATA, with what a plain weights file needs and the dataset's layout: the
    arguments of the commands that run a model over a dataset."""
    checkpoint_argument(p, "checkpoint")
    p.add_argument("data", type=Path, metavar="DATA", help="dataset folder (see validate-data)")
    plain_weights_options(p, dest="model")
    _dataset_kind_option(p)


def _dataset_kind_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", "--dataset-kind", dest="kind", default="auto", choices=DATASET_KINDS,
                   help="dataset layout (default auto: from the folder)")
