"""``python -m carnet_core`` — the command line. Bad input gives a one-line message and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import os
import shlex
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from carnet_core.errors import CarNetError, ClassNamesNeededError, UnknownModelError, WeightsNotFoundError


def _cmd_models(args: argparse.Namespace) -> int:
    from carnet_core.models import weights as W
    from carnet_core.models.catalog import list_checkpoints
    from carnet_core.models.classifier import usable_weights
    from carnet_core.models.registry import list_models

    rows = []
    for spec in list_models():
        available = False
        try:
            status, available = usable_weights(spec.name, use_hub=not args.no_hub).describe(), True
        except WeightsNotFoundError:
            status = f"MISSING — put a file at {W.weights_dir() / (spec.name + '.safetensors')}"
        except CarNetError as exc:  # the weights folder's file for it cannot be used
            status = f"UNUSABLE — {exc}"
        rows.append({"kind": "registry", "name": spec.name, "arch": spec.arch, "family": spec.family,
                     "head": spec.head, "labels": spec.label_set, "default": spec.default, "available": available,
                     "weights": status, "description": spec.description})
    checkpoints = list_checkpoints()  # the app's ★ models: fine-tunes, and CarNet checkpoints in weights/
    rows += [{"kind": "checkpoint", "name": c.name, "arch": c.arch, "family": None, "head": c.head,
              "labels": c.label_set, "default": False, "available": True, "weights": f"checkpoint: {c.path}",
              "description": c.title, "path": str(c.path)} for c in checkpoints]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    registered = [r for r in rows if r["kind"] == "registry"]
    width = max(len(r["name"]) for r in registered)
    print(f"{'model':<{width}}  {'timm architecture':<22} {'labels':<12} weights")
    for r in registered:
        print(f"{r['name']:<{width}}  {r['arch']:<22} {r['labels']:<12} {r['weights']}")
    if checkpoints:
        print("\nfine-tuned checkpoints (pass the path: predict IMG --checkpoint PATH, evaluate PATH DATA, "
              "compare FOLDER --models PATH,...):")
        for c in checkpoints:
            print(f"★ {c.title}\n  {c.path}")
    return 0


def _model_or_checkpoint(args: argparse.Namespace):
    """``--model`` and/or ``--checkpoint``: a checkpoint without ``--model`` builds the architecture it describes
    (CarNet metadata, or the model a timm train.py checkpoint names); neither gives the default model."""
    from carnet_core.models.classifier import load_model

    name = args.model or (None if args.checkpoint else "efficientnet_lite0")
    if args.classes is not None and args.checkpoint is None:
        raise CarNetError("--classes names the classes of a --checkpoint file; give one")
    try:
        return load_model(name, checkpoint=args.checkpoint, use_hub=not args.no_hub, class_names=args.classes)
    except ClassNamesNeededError as exc:
        raise _what_to_give(exc) from None


def _cmd_predict(args: argparse.Namespace) -> int:
    from carnet_core.data.images import IMAGE_EXTENSIONS, load_image
    from carnet_core.inference.predict import predict, prediction_table

    _check_csv_folder(args.csv, "predictions", "predictions.csv")
    model = _model_or_checkpoint(args)
    results, failed = [], 0
    for path in _image_paths(args.images):
        try:
            if Path(path).is_dir():
                raise CarNetError(f"{path}: a folder with no image files ({', '.join(IMAGE_EXTENSIONS)}) in it")
            image = load_image(path)
        except CarNetError as exc:
            failed += 1
            results.append({"image": path, "error": str(exc)})
            continue
        batch = predict(model, [image], topk=args.topk)
        results.append({"image": path, **batch[0].to_dict(), "latency_ms": round(batch.latency_ms, 2),
                        "note": model.view_of(image.size).note()})  # a photo the model sees little of, or enlarged
    if args.json:
        print(json.dumps({"model": model.name, "weights": model.weights.to_dict(), "results": results}, indent=2))
    else:
        print(f"model {model.name} — weights: {model.weights.describe()}")
        for r in results:
            print(f"\n{r['image']}")
            if "error" in r:
                print(f"  error: {r['error']}")
                continue
            for item in r["topk"]:
                print(f"  {item['probability'] * 100:6.2f}%  {item['class']}")
            if r["vehicle_topk"] and r["topk"][0]["class"] not in {v["class"] for v in r["vehicle_topk"]}:
                best = r["vehicle_topk"][0]
                print(f"  best road-vehicle class: {best['class']} ({best['probability'] * 100:.2f}%)")
            if r["note"]:
                print(f"  note: {r['note']}")
            print(f"  latency {r['latency_ms']:.1f} ms")
    if args.csv:  # one row per image, as timm's inference script writes them; after the printed results
        _write_csv(args.csv, *prediction_table(results))
        if not args.json:
            print(f"\npredictions written to {args.csv}")
    if failed:
        print(f"{failed} of {len(results)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


def _image_paths(args: Sequence[str]) -> list[str]:
    """The arguments with each folder replaced by the image files under it (sub-folders included: a class-folder
    dataset is classified whole). A folder without images stays, for its message."""
    from carnet_core.data.images import list_images

    out = []
    for arg in args:
        out += [str(p) for p in list_images(arg, recursive=True)] or [arg]
    return out


def _rejoin_split_paths(args: Sequence[str], longest: int = 16) -> list[str]:
    """The command line, with a path that the shell split at its spaces (``cars/AM General Hummer`` typed without
    quotes) put back together, said on stderr: an argument that names nothing is joined with the ones after it when
    together (up to ``longest`` pieces) they name a file or folder, the longest such run."""
    out, i = [], 0
    while i < len(args):
        end = i + 1
        if not args[i].startswith("-") and not _exists(args[i]):
            end = next((j for j in range(min(len(args), i + longest), i + 1, -1) if _exists(" ".join(args[i:j]))), end)
        if end > i + 1:
            print(f"note: {' '.join(map(repr, args[i:end]))} read as one path, {' '.join(args[i:end])!r}: put quotes "
                  "around a path with spaces", file=sys.stderr)
        out.append(" ".join(args[i:end]))
        i = end
    return out


def _exists(path: str) -> bool:
    """Whether ``path`` names a file or folder; False, not an error, for a name too long for the system."""
    try:
        return Path(path).exists()
    except (OSError, ValueError):
        return False


def _check_image_out(path: Path) -> None:
    """Said before the work: ``--out`` must name an image file of a format PIL can write (the overlay is a picture;
    HEIC is read, not written)."""
    from PIL import Image

    if path.is_dir():
        raise CarNetError(f"--out {path}: is a folder; give the image file to write, e.g. {path / 'overlay.png'}")
    if Image.registered_extensions().get(path.suffix.lower()) not in Image.SAVE:
        raise CarNetError(f"--out {path}: the overlay is an image; give a file name ending in .png, .jpg or .webp")


def _cmd_explain(args: argparse.Namespace) -> int:
    from carnet_core.explain.cams import explain

    _check_image_out(args.out)
    model = _model_or_checkpoint(args)
    result = explain(model, args.image, method=args.method, class_name=args.class_name, layer=args.layer,
                     aug_smooth=args.aug_smooth, eigen_smooth=args.eigen_smooth)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.overlay(args.alpha, args.colormap).save(args.out)
    summary = {"image": args.image, "model": model.name, "method": result.method, "layer": result.layer,
               "class": result.class_name, "probability": round(result.probability, 6),
               "faithfulness": round(result.faithfulness, 6), "latency_ms": round(result.latency_ms, 1),
               "aug_smooth": result.aug_smooth, "eigen_smooth": result.eigen_smooth, "overlay": str(args.out)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        smoothed = " + ".join(w for w, on in (("aug", result.aug_smooth), ("eigen", result.eigen_smooth)) if on)
        print(f"{result.method}{f' ({smoothed} smoothing)' if smoothed else ''} on {model.name}/{result.layer}: "
              f"{result.class_name} ({result.probability * 100:.1f}%), {result.latency_ms:.0f} ms → {args.out}")
        print("faithfulness: " + result.faithfulness_text().replace("**", ""))  # as the Explain page words it
    return 0


def _load_member(spec: str, use_hub: bool, arch: str | None = None, classes: str | None = None,
                 compare: bool = False):
    """A registry name, or a checkpoint file (``arch``: the registry name a plain state dict is for; ``classes``:
    where its class names are, for a file trained on classes of its own; ``compare``: for ``compare``, which has
    no ``--classes``)."""
    from carnet_core.models.checkpoints import WEIGHT_SUFFIXES, weights_in
    from carnet_core.models.classifier import load_model
    from carnet_core.models.registry import list_models

    if Path(spec).is_file():
        try:
            return load_model(arch, checkpoint=spec, use_hub=use_hub, class_names=classes)
        except ClassNamesNeededError as exc:
            raise _what_to_give(exc, compare) from None
    if spec not in {s.name for s in list_models()}:
        if Path(spec).is_dir():
            raise CarNetError(f"{spec}: is a folder, not a checkpoint file or a model name; "
                              f"{weights_in(Path(spec))}")
        if "/" in spec or "\\" in spec or Path(spec).suffix in WEIGHT_SUFFIXES:
            raise CarNetError(f"{spec}: no such checkpoint file")
    if classes is not None:
        raise CarNetError(f"--classes names the classes of a checkpoint file; {spec} is a registry model")
    return load_model(spec, use_hub=use_hub)


def _what_to_give(exc: ClassNamesNeededError, compare: bool = False) -> CarNetError:
    """``exc`` with the option that names the classes — or, for ``compare``, which has none, the export to run."""
    if compare:
        return CarNetError(f"{exc}. Compare reads class names from CarNet checkpoints: make one with python -m "
                           f"carnet_core export {shlex.quote(exc.path)} --model {exc.model} --classes FILE_OR_FOLDER "
                           f"--format safetensors, and compare that file")
    return CarNetError(f"{exc} (--classes FILE_OR_FOLDER)")


def _numbers(text: str) -> list[float]:
    """``"0.7,0.3"`` → ``[0.7, 0.3]`` (argparse type: a bad value is a usage message, not a traceback)."""
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, e.g. 0.7,0.3, not {text!r}") from None


def _cmd_compare(args: argparse.Namespace) -> int:
    from carnet_core.evaluation.compare import compare_on_folder, load_mapping
    from carnet_core.evaluation.evaluate import top5_text

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    models = [_load_member(n, not args.no_hub, compare=True) for n in names]
    mapping = load_mapping(args.mapping) if args.mapping else None
    report = compare_on_folder(models, args.folder, mapping, args.weights)
    if args.json:
        weights = {name: m.weights.to_dict() for name, m in zip(report.members, models)}  # members' distinct names
        print(json.dumps({"weights": weights, **report.to_dict()}, indent=2))
        return 0
    print(f"{report.folder}: {report.num_images} images, {len(report.classes)} classes ({', '.join(report.classes)})")
    if report.combined_in == "folder classes":
        print("the members have different label sets: each is scored in the folder's classes, and the ensembles "
              "combine those")
    width = max(map(len, report.accuracy))
    print(f"{'':<{width}} {'top-1':>7} {'top-5':>7}")
    for row, acc in report.accuracy.items():
        print(f"{row:<{width}} {acc['top1'] * 100:>6.1f}% {top5_text(acc['top5'], len(report.classes)):>7}")
    print(f"members disagree on {len(report.disagreements)} images")
    for path, reason in report.unreadable:
        print(f"skipped: {reason}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from carnet_core.inference.engines import TorchEngine, export_onnx, onnxruntime_session, softmax

    model = _load_member(args.model, not args.no_hub, args.arch, args.classes)
    model.to("cpu")
    if args.format == "safetensors":
        return _export_checkpoint(model, args.out)
    out = args.out or Path(f"{model.name}.onnx")
    if out.suffix != ".onnx":  # as a checkpoint must be .safetensors: what reads it goes by the name
        raise CarNetError(f"{out}: an ONNX export is a .onnx file")
    export_onnx(model, out)
    session = onnxruntime_session(out)
    x = torch.randn(4, *model.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    logits, probs = (torch.from_numpy(a) for a in session.run(["logits", "probabilities"], {"input": x.numpy()}))
    reference = TorchEngine(model).probabilities(x)
    diff = float(max((probs - reference).abs().max(), (softmax(logits) - reference).abs().max()))  # both outputs
    print(f"wrote {out} (outputs: logits, probabilities) and {out}.json (class names, data config); "
          f"max probability difference vs torch: {diff:.2e}")
    if diff > 1e-4:
        print("error: the exported model does not match torch", file=sys.stderr)
        return 1
    return 0


def _export_checkpoint(model, out: Path | None) -> int:
    """Save ``model`` as a CarNet checkpoint (class names, data config and provenance inside), load it back and
    check its probabilities against the model's own on a random batch."""
    import torch

    from carnet_core.inference.engines import TorchEngine
    from carnet_core.models.classifier import load_model

    out = out or Path(f"{model.name}.safetensors")  # a model of its own classes is named after them: m-cars6
    if out.suffix != ".safetensors":
        raise CarNetError(f"{out}: a CarNet checkpoint is a .safetensors file")
    model.save(out)
    x = torch.randn(4, *model.data_config["input_size"], generator=torch.Generator().manual_seed(0))
    diff = float((TorchEngine(load_model(checkpoint=out, device="cpu")).probabilities(x)
                  - TorchEngine(model).probabilities(x)).abs().max())
    print(f"wrote {out}: a CarNet checkpoint ({len(model.class_names)} classes, label set {model.label_set}, data "
          f"config and provenance inside); loaded back, max probability difference: {diff:.2e}. In the weights "
          f"folder it is listed ★ in the app's model pickers.")
    if diff > 1e-6:
        print("error: the checkpoint read back does not match the model", file=sys.stderr)
        return 1
    return 0


def _cmd_engines(args: argparse.Namespace) -> int:
    import torch

    from carnet_core.inference.engines import parity_photos, select_engine

    photos = None
    if args.photos:
        photos = parity_photos(args.photos)
        if not photos:
            print(f"error: no photos under {args.photos}", file=sys.stderr)
            return 2
    model = _load_member(args.model, not args.no_hub, args.arch, args.classes)
    model.to("cpu")
    choice = select_engine(model, photos=photos)
    print(f"{model.name} on the CPU: {choice.reason}")
    print(choice.table())
    if hasattr(choice.engine, "batching"):  # ONNX Runtime decides how to run batches on the first one it gets
        choice.engine.probabilities(torch.randn(8, *model.data_config["input_size"]))
        print(f"{choice.engine.name}: {choice.engine.batching}")
    return 0


def _cmd_validate_data(args: argparse.Namespace) -> int:
    from carnet_core.data.datacheck import validate_splits
    from carnet_core.data.datasets import open_dataset

    splits = open_dataset(args.data, args.kind)
    report = validate_splits(splits, min_per_class=args.min_per_class)
    if args.json:
        print(json.dumps({"kind": splits.kind, "notes": splits.notes, **report.to_dict()}, indent=2))
    else:
        print(f"{splits.kind} at {splits.root} ({'; '.join(splits.notes)})")
        print(report.summary())
    return 0 if report.ok else 1


def _check_csv_folder(path: Path | None, what: str, example: str) -> None:
    """Said before the work, not after it: the folder a --csv table goes in must exist, and the path not be one."""
    if path and path.is_dir():
        raise CarNetError(f"{path}: is a folder; give the file to write the {what} in, e.g. {path / example}")
    if path and not path.resolve().parent.is_dir():
        raise CarNetError(f"{path}: no folder {path.resolve().parent} to write the {what} in")


def _write_csv(path: Path, fieldnames: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from carnet_core.data.datasets import open_dataset
    from carnet_core.evaluation.compare import load_mapping
    from carnet_core.evaluation.evaluate import evaluate, per_class_rows, top5_text

    _check_csv_folder(args.csv, "per-class table", "per_class.csv")
    model = _load_member(str(args.checkpoint), not args.no_hub, args.model, args.classes)
    splits = open_dataset(args.data, args.kind)
    dataset = splits.val if args.split == "val" else splits.train
    mapping = load_mapping(args.mapping) if args.mapping else None
    report = evaluate(model, dataset, mapping=mapping)
    if args.json:
        print(json.dumps({"model": model.name, "data": str(args.data), "split": dataset.name, **report.to_dict()},
                         indent=2))
    else:
        print(f"{model.name} on {dataset.name}: {report.num_images} images")
        top5 = top5_text(report.top5, len(report.class_names))
        print(f"top-1 {report.top1:.1%}  top-5 {top5}  macro F1 {report.macro_f1:.3f}  ECE {report.ece:.3f}")
        for level, acc in report.hierarchy.items():
            print(f"{level} accuracy {acc:.1%}")
        worst = per_class_rows(report)[:5]
        print("worst classes: " + ", ".join(f"{r['class']} {r['accuracy']:.0%}" for r in worst))
        for a, b, n in report.most_confused(5):
            print(f"  {a} → {b}: {n}")
    if args.csv:  # after the numbers are out: a table that cannot be written loses nothing else
        _write_csv(args.csv, ["class", "accuracy", "precision", "F1", "images", "most often predicted instead",
                              "times"], per_class_rows(report))
        if not args.json:
            print(f"per-class table written to {args.csv}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from carnet_core.training.trainer import TrainConfig, fine_tune

    known = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in known and v is not None}
    if given.get("randaugment") == "none":  # flip + crop only
        given["randaugment"] = None
    cfg = TrainConfig(**given)
    result = fine_tune(cfg)
    if result.best_checkpoint:
        probe = "" if result.probe_top1 is None else f" (linear probe {result.probe_top1:.1%})"
        print(f"best val top-1 {result.best_top1:.1%}{probe}: {result.best_checkpoint}")
        if result.probe_is_best:
            print("note: no epoch beat the linear probe, so the best checkpoint is the probe's (the head fitted on "
                  "frozen features); train longer, or at a lower --lr, for fine-tuning to pay off")
    return 0


CLASSES_HELP = ("class names of a weights file trained on classes of its own, in training order: a text file (one name "
                "per line) or timm's .pkl class map, a JSON list, a CSV with a class_name column, or the dataset "
                "folder it was trained on (a timm train.py checkpoint finds its own when its dataset is on this "
                "machine)")


def _plain_weights_options(p: argparse.ArgumentParser, dest: str = "arch") -> None:
    """``--model NAME``, ``--classes`` and ``--no-hub``: what a command given a weights file that does not describe
    itself (a plain state dict) needs to know."""
    p.add_argument("--model", dest=dest, metavar="NAME",
                   help="registry name, for a checkpoint that is a plain state dict without CarNet metadata")
    p.add_argument("--classes", metavar="FILE_OR_FOLDER", help=CLASSES_HELP)
    p.add_argument("--no-hub", action="store_true", help="do not try the Hugging Face Hub")


def _checkpoint_argument(p: argparse.ArgumentParser, dest: str) -> None:
    """CHECKPOINT as the first argument, or as ``--checkpoint FILE``: predict and explain take their weights file as
    an option, and `evaluate --checkpoint FILE DATA`, the same habit, was "unrecognized arguments"."""
    p.add_argument(dest, metavar="CHECKPOINT", nargs="?", help="checkpoint or weights file, or a registry model name")
    p.add_argument("--checkpoint", dest="checkpoint_option", metavar="FILE",
                   help="the same, given as predict and explain take it")
    p.set_defaults(checkpoint_dest=dest)


def _one_checkpoint(args: argparse.Namespace) -> None:
    """Put the checkpoint given as ``--checkpoint`` where the command reads the CHECKPOINT argument.

    Raises:
        CarNetError: neither or both given.
    """
    dest = args.checkpoint_dest
    given = [v for v in (getattr(args, dest), args.checkpoint_option) if v is not None]
    if not given:
        raise CarNetError(f"no model given: a checkpoint or weights file, or a registry model name, as "
                          f"the first argument (python -m carnet_core {args.command} CHECKPOINT ...) or as "
                          f"--checkpoint FILE")
    if len(given) == 2:
        raise CarNetError(f"two checkpoints given ({given[0]} and --checkpoint {given[1]}): give one")
    setattr(args, dest, given[0])


def build_parser() -> argparse.ArgumentParser:
    # no abbreviated options: `train --data DIR` was read as `--dataset-kind DIR` ("invalid choice"), not as a mistake
    parser = argparse.ArgumentParser(prog="python -m carnet_core", description="CarNet: car image classification.",
                                     allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True,
                                parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))

    p = sub.add_parser("models", help="list registered models and where their weights come from, and the fine-tuned "
                                      "checkpoints found here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-hub", action="store_true", help="do not check the Hugging Face Hub")
    p.set_defaults(func=_cmd_models)

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
    p.set_defaults(func=_cmd_predict)

    from carnet_core.explain.cams import COLORMAPS, METHODS

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
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.add_argument("--no-hub", action="store_true", help="do not try the Hugging Face Hub")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("compare", help="top-1/top-5 of several models and their ensembles on a labelled folder")
    p.add_argument("folder", type=Path, metavar="FOLDER",
                   help="folder with one sub-folder of images per class, or a dataset with train/ and val/ (its val "
                        "split is measured)")
    p.add_argument("--models", required=True, help="comma-separated registry names or checkpoint files")
    p.add_argument("--mapping", type=Path, help="JSON or CSV: folder class -> model classes (see mappings/)")
    p.add_argument("--weights", type=_numbers, help="comma-separated member weights for the weighted votes, e.g. "
                                                     "0.7,0.3 (default equal)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-hub", action="store_true", help="do not try the Hugging Face Hub")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("export", help="export a model or checkpoint to ONNX, or to a CarNet checkpoint, checked "
                                      "against torch")
    _checkpoint_argument(p, "model")
    p.add_argument("--format", choices=["onnx", "safetensors"], default="onnx",
                   help="onnx (default; for deploying elsewhere, class names and data config in <out>.json) or "
                        "safetensors: a CarNet checkpoint that carries them, which the app lists when it is in the "
                        "weights folder")
    p.add_argument("--out", type=Path, help="output file (default: the model's name, e.g. efficientnet_lite0.onnx; "
                                            "a model of classes of its own is named after them: "
                                            "mobilenetv2_100-cars6.safetensors)")
    _plain_weights_options(p)
    p.set_defaults(func=_cmd_export)

    kinds = ["auto", "image_folder", "stanford_cars", "compcars", "cifar100"]
    p = sub.add_parser("engines", help="measure the CPU inference engines for a model (parity gate, batch-1 ms) and "
                                       "show which one classification uses")
    _checkpoint_argument(p, "model")
    p.add_argument("--photos", help="folder of real photos for the bf16 / int8 parity gate (default "
                                    "$CARNET_PARITY_PHOTOS; without photos those are not tried)")
    _plain_weights_options(p)
    p.set_defaults(func=_cmd_engines)

    p = sub.add_parser("validate-data", help="report class counts, unreadable files, small classes, train/val duplicates")
    p.add_argument("data", type=Path, metavar="DATA", help="dataset folder: class folders, train/ and val/, or a "
                                                           "Stanford Cars, CompCars or CIFAR-100 layout")
    p.add_argument("--kind", "--dataset-kind", dest="kind", default="auto", choices=kinds,
                   help="dataset layout (default auto: from the folder)")
    p.add_argument("--min-per-class", type=int, default=5, help="flag classes with fewer images (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=_cmd_validate_data)

    p = sub.add_parser("evaluate", help="top-1/top-5, per-class, confusion, calibration of a model or checkpoint on a "
                                        "dataset split (the Evaluate page's numbers)")
    _checkpoint_argument(p, "checkpoint")
    p.add_argument("data", type=Path, metavar="DATA", help="dataset folder (see validate-data)")
    _plain_weights_options(p, dest="model")
    p.add_argument("--kind", "--dataset-kind", dest="kind", default="auto", choices=kinds,
                   help="dataset layout (default auto: from the folder)")
    p.add_argument("--split", default="val", choices=["val", "train"], help="default val")
    p.add_argument("--mapping", type=Path, help="dataset class → model classes (JSON/CSV), for ImageNet models")
    p.add_argument("--csv", type=Path, help="also write the per-class table (worst first) to this CSV file")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=_cmd_evaluate)

    from carnet_core.training.trainer import (
        TrainConfig,  # its defaults are the recipe's: shown in --help, filled in by TrainConfig
    )

    recipe = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

    def option(flag: str, text: str = "", aliases: tuple[str, ...] = (), **kwargs: Any) -> None:
        default = recipe.get(kwargs.get("dest") or flag.lstrip("-").replace("-", "_"))
        if "action" not in kwargs and default is not None and default != ():  # a value option: say its default
            text = f"{text} (default {default})" if text else f"default {default}"
        p.add_argument(flag, *aliases, help=text or None, **kwargs)

    p = sub.add_parser("train", help="fine-tune a registry model on a dataset (Lightning Fabric: CPU, GPUs, nodes)")
    p.add_argument("data", metavar="DATA", help="dataset folder (see validate-data)")
    option("--out", "run folder; an existing run there is resumed")
    option("--dataset-kind", "dataset layout; auto reads it from the folder", aliases=("--kind",), choices=kinds)
    option("--model", "registry name")
    option("--head", "linear, or ml_decoder (the CarNet model)", choices=["linear", "ml_decoder"])
    option("--img-size", "input size in px (default: the model's data config)", type=int)
    option("--epochs", type=int)
    option("--batch-size", type=int)
    option("--lr", "backbone learning rate, the schedule's peak", type=float)
    option("--head-lr-scale", "head LR = lr × this", type=float)
    option("--weight-decay", type=float)
    option("--optimizer", choices=["adamw", "sgd"])
    option("--scheduler", choices=["cosine", "plateau"])
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
    p.set_defaults(func=_cmd_train)
    return parser


def _checkpoint_hint(name: str | None) -> str:
    """For an unknown model name that is a fine-tuned checkpoint's (what the app's pickers and ``models`` show):
    the path to give instead."""
    from carnet_core.models.catalog import list_checkpoints

    paths = [str(c.path) for c in list_checkpoints() if name and c.name == name]
    return (f". {name} is a fine-tuned checkpoint: give its path instead (with --checkpoint for predict and explain): "
            f"{paths[0]}" if paths else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 some inputs failed, 2 error, 130 interrupted, 141 the reader of
    its output went away)."""
    args = build_parser().parse_args(_rejoin_split_paths(sys.argv[1:] if argv is None else list(argv)))
    if isinstance(getattr(args, "devices", None), str) and args.devices.isdigit():
        args.devices = int(args.devices)
    if getattr(args, "topk", 1) < 1:
        print("error: --topk must be at least 1", file=sys.stderr)
        return 2
    try:
        if hasattr(args, "checkpoint_dest"):
            _one_checkpoint(args)
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit: a reader that has gone (`| head`) is seen below
        return code
    except BrokenPipeError:  # the reader of our output went away (`... | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 141  # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe
    except UnknownModelError as exc:
        print(f"error: {exc}{_checkpoint_hint(exc.name)}", file=sys.stderr)
        return 2
    except CarNetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path given on the command line that cannot be read or written
        print(f"error: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
