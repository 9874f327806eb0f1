"""The commands of ``python -m carnet_core``: one function each, taking the parsed arguments, returning the exit
code (0 ok, 1 some inputs failed)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import fields
from pathlib import Path

import torch

from carnet_core.cli.inputs import (
    check_csv_folder,
    check_image_out,
    image_paths,
    load_member,
    model_or_checkpoint,
    write_csv,
)
from carnet_core.data.datacheck import validate_splits
from carnet_core.data.images import IMAGE_EXTENSIONS, load_image
from carnet_core.data.readers import open_dataset
from carnet_core.errors import CarNetError, WeightsNotFoundError, count
from carnet_core.evaluation.compare import compare_on_folder
from carnet_core.models.labels import load_mapping
from carnet_core.evaluation.embeddings import PROJECTION_NAMES, dataset_features, knn_accuracy, neighbour_rows, project
from carnet_core.evaluation.evaluate import evaluate, per_class_rows, scored_text
from carnet_core.evaluation.metrics import top5_text
from carnet_core.explain.cams import FLOOR_METHOD, explain
from carnet_core.explain.faithfulness import REMOVED_PCT, rank_methods, road
from carnet_core.inference.engines import TorchEngine, onnxruntime_session, softmax
from carnet_core.inference.export import export_onnx
from carnet_core.inference.parity import parity_photos
from carnet_core.inference.predict import predict, prediction_table
from carnet_core.cli.bundle import write_bundle
from carnet_core.inference.gate_set import labelled_photos
from carnet_core.inference.selection import select_engine, stored_engines, write_engine_choice
from carnet_core.models import weights as W
from carnet_core.models.catalog import list_checkpoints
from carnet_core.models.loading import load_model, usable_weights
from carnet_core.models.registry import list_models
from carnet_core.training.config import TrainConfig
from carnet_core.training.trainer import fine_tune


def cmd_models(args: argparse.Namespace) -> int:
    rows = []
    for spec in list_models():
        available = False
        try:
            status, available = usable_weights(spec.name, use_hub=not args.no_hub).describe(), True
        except WeightsNotFoundError:
            status = f"MISSING — put a file at {W.weights_dir() / (spec.name + '.safetensors')}"
        except CarNetError as exc:  # the weights folder's file for it cannot be used
            status = f"UNUSABLE — {exc}"
        rows.append({"kind": "registry", "engine": stored_engines().get(spec.name), "name": spec.name, "arch": spec.arch, "family": spec.family,
                     "head": spec.head, "labels": spec.label_set, "default": spec.default, "available": available,
                     "weights": status, "description": spec.description})
    checkpoints = list_checkpoints()  # the app's ★ models: fine-tunes, and CarNet checkpoints in weights/
    rows += [{"kind": "checkpoint", "name": c.name, "arch": c.arch, "family": None, "head": c.head,
              "labels": c.label_set, "default": False, "available": c.problem is None,
              "weights": f"checkpoint: {c.path}" if c.problem is None else f"UNUSABLE — {c.problem}",
              "description": c.title, "path": str(c.path)} for c in checkpoints]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    registered = [r for r in rows if r["kind"] == "registry"]
    width = max(len(r["name"]) for r in registered)
    print(f"{'model':<{width}}  {'timm architecture':<22} {'labels':<12} weights")
    for r in registered:
        print(f"{r['name']:<{width}}  {r['arch']:<22} {r['labels']:<12} {r['weights']}")
    engines = stored_engines()
    if engines:
        print("\nengines chosen on a labelled set (engines/export --calibration), used from then on:")
        for name, e in sorted(engines.items()):
            print(f"{name:<{width}}  {e['engine']:<17} measured {e['measured']}: {e['gate']}")
    if checkpoints:
        print("\nfine-tuned checkpoints (pass the path: predict IMG --checkpoint PATH, evaluate PATH DATA, "
              "compare FOLDER --models PATH,...):")
        for c in checkpoints:
            print(f"★ {c.title}\n  {c.path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    check_csv_folder(args.csv, "predictions", "predictions.csv")
    model = model_or_checkpoint(args)
    results, failed = [], 0
    for path in image_paths(args.images):
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
        write_csv(args.csv, *prediction_table(results))
        if not args.json:
            print(f"\npredictions written to {args.csv}")
    if failed:
        print(f"{failed} of {len(results)} images could not be read", file=sys.stderr)
    return 1 if failed else 0


def cmd_explain(args: argparse.Namespace) -> int:
    check_image_out(args.out)
    model = model_or_checkpoint(args)
    result = explain(model, args.image, method=args.method, class_name=args.class_name, layer=args.layer,
                     aug_smooth=args.aug_smooth, eigen_smooth=args.eigen_smooth)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result.overlay(args.alpha, args.colormap).save(args.out)
    summary = {"image": args.image, "model": model.name, "method": result.method, "layer": result.layer,
               "class": result.class_name, "probability": round(result.probability, 6),
               "faithfulness": round(result.faithfulness, 6), "latency_ms": round(result.latency_ms, 1),
               "aug_smooth": result.aug_smooth, "eigen_smooth": result.eigen_smooth, "overlay": str(args.out)}
    curves = road(model, args.image, result.heatmap, result.class_index) if args.road else None
    if curves:
        summary["road"] = {"combined": round(curves.combined, 6), "removed_pct": curves.removed_pct,
                           "morf": [round(v, 6) for v in curves.morf], "lerf": [round(v, 6) for v in curves.lerf]}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        smoothed = " + ".join(w for w, on in (("aug", result.aug_smooth), ("eigen", result.eigen_smooth)) if on)
        print(f"{result.method}{f' ({smoothed} smoothing)' if smoothed else ''} on {model.name}/{result.layer}: "
              f"{result.class_name} ({result.probability * 100:.1f}%), {result.latency_ms:.0f} ms → {args.out}")
        print("faithfulness: " + result.faithfulness_text().replace("**", ""))  # as the Explain page words it
        if curves:
            print("ROAD: " + curves.text().replace("**", ""))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    check_csv_folder(args.csv, "map", "embedding.csv")
    if args.neighbours < 1:
        raise CarNetError(f"--neighbours must be 1 or more, got {args.neighbours}")
    model = load_member(str(args.checkpoint), not args.no_hub, args.model, args.classes)
    splits = open_dataset(args.data, args.kind)
    split = args.split or splits.default_split
    dataset = splits.part(split)
    found = dataset_features(model, dataset)
    coordinates = project(found.features, args.method)
    rows = neighbour_rows(found, coordinates, args.neighbours)
    write_csv(args.csv, list(rows[0]), rows)
    for path, reason in found.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    print(f"{model.name} on {dataset.name}: {count(len(rows), 'image')} mapped by {PROJECTION_NAMES[args.method]}, "
          f"{args.neighbours} most similar each → {args.csv}")
    print(f"k-NN accuracy of the features (5 nearest, leave-one-out): {knn_accuracy(found.features, found.labels):.1%}"
          f" (one class in {len(set(found.labels))} by chance)")
    return 0


def cmd_faithfulness(args: argparse.Namespace) -> int:
    if args.images < 1:
        raise CarNetError(f"--images must be 1 or more, got {args.images}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    model = load_member(str(args.checkpoint), not args.no_hub, args.model, args.classes)
    splits = open_dataset(args.data, args.kind)
    dataset = splits.part(splits.default_split)
    photos = dataset.spread(args.images)
    scores, skipped = rank_methods(model, photos, methods)
    for path, reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": model.name, "data": str(args.data), "split": dataset.name,
                          "images": [str(p) for p in photos], "removed_pct": list(REMOVED_PCT),
                          "methods": [{"method": s.method, "name": s.name, "road_combined": s.mean, "std": s.std,
                                       "beats_floor": s.beats_floor, "per_image": s.scores} for s in scores]},
                         indent=2))
        return 0
    print(f"ROAD combined of {model.name} on {count(len(photos) - len(skipped), 'photo')} of {dataset.name} "
          f"(higher is more faithful; {FLOOR_METHOD.name}, random channel weights, is the floor):")
    width = max(len(s.name) for s in scores)
    for s in scores:
        verdict = "  (the floor)" if s.method == FLOOR_METHOD.key else "" if s.beats_floor else "  (not above the floor)"
        print(f"  {s.name:<{width}} {s.mean:+.3f} ± {s.std:.3f}{verdict}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    models = [load_member(n, not args.no_hub, compare=True) for n in names]
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


def cmd_export(args: argparse.Namespace) -> int:

    model = load_member(args.model, not args.no_hub, args.arch, args.classes)
    model.to("cpu")
    if args.format == "safetensors":
        return export_checkpoint(model, args.out)
    out = args.out or Path(f"{model.name}.onnx")
    if out.suffix != ".onnx":  # as a checkpoint must be .safetensors: what reads it goes by the name
        raise CarNetError(f"{out}: an ONNX export is a .onnx file")
    gate_set = _gate_set(model, args)
    export_onnx(model, out)
    if gate_set is not None:  # the engine is chosen now, on the labelled set, and stored with the export
        choice = select_engine(model, calibration=gate_set)
        print(f"engine: {choice.reason}\n{choice.table()}")
        write_engine_choice(out, choice)
        if choice.engine.name == "onnxruntime-int8":
            shutil.copyfile(choice.engine.path, out.with_name(out.stem + "-int8.onnx"))
            print(f"wrote {out.with_name(out.stem + '-int8.onnx')} (the int8 model that passed the gate)")
        elif choice.engine.name == "openvino-bf16":
            print(f"{out} passed the gate in bf16 under OpenVINO (its CPU plugin, INFERENCE_PRECISION_HINT=bf16, on a "
                  f"CPU with AMX or AVX-512-BF16); ONNX Runtime runs it in fp32")
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


def export_checkpoint(model, out: Path | None) -> int:
    """Save ``model`` as a CarNet checkpoint (class names, data config and provenance inside), load it back and
    check its probabilities against the model's own on a random batch."""

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


def _gate_set(model, args: argparse.Namespace):
    """The labelled set of ``--calibration`` (with ``--mapping``) for ``model``'s accuracy gate, or None."""
    if not getattr(args, "calibration", None):
        if getattr(args, "mapping", None):
            raise CarNetError("--mapping goes with --calibration FOLDER (the labelled set it maps)")
        return None
    return labelled_photos(model, args.calibration, load_mapping(args.mapping) if args.mapping else None)


def cmd_bundle(args: argparse.Namespace) -> int:
    names = [n.strip() for n in args.models.split(",") if n.strip()] if args.models else \
        [spec.name for spec in list_models() if _has_weights(spec.name, not args.no_hub)]
    if not names:
        raise CarNetError("no registered model has weights here; name models or checkpoints with --models")
    models = []
    for name in names:
        model = load_member(name, not args.no_hub)
        models.append(model.to("cpu"))
    if args.mapping and not args.calibration:
        raise CarNetError("--mapping goes with --calibration FOLDER (the labelled set it maps)")
    gate = (lambda model: _gate_set(model, args)) if args.calibration else None
    bundle = write_bundle(args.out, models, gate, progress=lambda line: print(line, flush=True))
    for m in bundle.models:
        print(f"{m.name}: {m.engine}" + (f" ({m.gate})" if m.gate else ""))
    print(f"wrote {bundle.folder}: {count(len(bundle.models), 'model')}; deploy it as its README.md says")
    return 0


def _has_weights(name: str, use_hub: bool) -> bool:
    try:
        usable_weights(name, use_hub=use_hub)
        return True
    except CarNetError:
        return False


def cmd_engines(args: argparse.Namespace) -> int:

    photos = None
    if args.photos:
        photos = parity_photos(args.photos)
        if not photos:
            print(f"error: no photos under {args.photos}", file=sys.stderr)
            return 2
    model = load_member(args.model, not args.no_hub, args.arch, args.classes)
    model.to("cpu")
    choice = select_engine(model, photos=photos, calibration=_gate_set(model, args))
    print(f"{model.name} on the CPU: {choice.reason}")
    print(choice.table())
    if hasattr(choice.engine, "batching"):  # ONNX Runtime decides how to run batches on the first one it gets
        choice.engine.probabilities(torch.randn(8, *model.data_config["input_size"]))
        print(f"{choice.engine.name}: {choice.engine.batching}")
    return 0


def cmd_validate_data(args: argparse.Namespace) -> int:
    splits = open_dataset(args.data, args.kind)
    report = validate_splits(splits, min_per_class=args.min_per_class)
    if args.json:
        print(json.dumps({"kind": splits.kind, "notes": splits.notes, **report.to_dict()}, indent=2))
    else:
        print(f"{splits.kind} at {splits.root} ({'; '.join(splits.notes)})")
        print(report.summary())
    return 0 if report.ok else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    check_csv_folder(args.csv, "per-class table", "per_class.csv")
    model = load_member(str(args.checkpoint), not args.no_hub, args.model, args.classes)
    splits = open_dataset(args.data, args.kind)
    split = args.split or splits.default_split
    dataset = splits.part(split)
    mapping = load_mapping(args.mapping) if args.mapping else None
    report = evaluate(model, dataset, mapping=mapping)
    if args.json:
        print(json.dumps({"model": model.name, "data": str(args.data), "split": dataset.name,
                          "images_found": splits.num_images, **report.to_dict()}, indent=2))
    else:
        print(f"{model.name} on {dataset.name}: {scored_text(report.num_images, splits, split)}")
        top5 = top5_text(report.top5, len(report.class_names))
        print(f"top-1 {report.top1:.1%}  top-5 {top5}  macro F1 {report.macro_f1:.3f}  ECE {report.ece:.3f}")
        for level, acc in report.hierarchy.items():
            print(f"{level} accuracy {acc:.1%}")
        worst = per_class_rows(report)[:5]
        print("worst classes (recall): " + ", ".join(f"{r['class']} {r['recall']:.0%}" for r in worst))
        for a, b, n in report.most_confused(5):
            print(f"  {a} → {b}: {n}")
        if report.label_issues:
            print(f"possible label errors (confident learning): {len(report.label_issues)}, least likely label first")
            for issue in report.label_issues[:5]:
                print(f"  {issue['path']}: labelled {issue['label']} ({issue['label_probability']:.0%}), "
                      f"the model says {issue['predicted']} ({issue['confidence']:.0%})")
    if args.csv:  # after the numbers are out: a table that cannot be written loses nothing else
        write_csv(args.csv, ["class", "precision", "recall", "F1", "AP", "images", "most often predicted instead",
                              "times"], per_class_rows(report))
        if not args.json:
            print(f"per-class table written to {args.csv}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
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
