"""Loading a model: a registered name (its weights from the weights folder, the Hugging Face cache or hub, or a
bundled package), a CarNet checkpoint, or a weights file of classes of its own; and checking a weights file without
loading it."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from carnet_core.data.datasets import SPLIT_FOLDER_NAMES
from carnet_core.errors import CarNetError, CheckpointError, ClassNamesNeededError, WeightsNotFoundError
from carnet_core.models import weights as _weights
from carnet_core.models.checkpoints import (
    architecture_hint,
    check_file,
    head_classes,
    load_into,
    match_state_dict,
    read_metadata,
    read_state_dict,
    training_args,
)
from carnet_core.models.classifier import (
    DATA_CONFIG_KEYS,
    INFERENCE_CROP_PCT,
    Classifier,
    _data_config,
    build_module,
    check_data_config,
    default_device,
)
from carnet_core.models.labels import label_set_names, read_class_names
from carnet_core.models.registry import ModelSpec, find_spec, get_spec
from carnet_core.models.weights import WeightsSource

if TYPE_CHECKING:
    import torch


def load_model(name: str | None = None, *, checkpoint: str | os.PathLike | None = None, weights: str = "auto",
               device: torch.device | str | None = None, weights_folder: Path | None = None,
               use_hub: bool = True, class_names: str | os.PathLike | Sequence[str] | None = None) -> Classifier:
    """Build a classifier by registry name and/or from a checkpoint file, with resolved weights.

    Args:
        name: registry name (see :func:`carnet_core.list_models`). May be omitted when ``checkpoint`` is a
            CarNet checkpoint, which describes its own architecture, or a timm ``train.py`` checkpoint that names a
            registered model (:func:`~carnet_core.models.checkpoints.architecture_hint`).
        checkpoint: explicit weights file (CarNet ``.safetensors`` or a plain state dict).
        weights: ``"auto"`` (the resolution order of :mod:`carnet_core.models.weights`) or ``"random"`` (untrained,
            for tests and training from scratch; the provenance says so).
        device: where to put the model (default :func:`default_device`).
        weights_folder: override for the weights folder.
        use_hub: allow the Hugging Face Hub step.
        class_names: for a weights file trained on classes of its own (its head does not fit the registry model's
            label set) and without CarNet metadata: the names in training order, or where to read them
            (:func:`~carnet_core.models.labels.read_class_names`: a text, JSON or CSV file, or the dataset folder, whose
            class folders are taken in timm's natural order for a timm ``train.py`` checkpoint and sorted by name
            otherwise, as torchvision's ImageFolder numbers them). A timm ``train.py`` checkpoint needs none when
            the ``--class-map`` or dataset it names is on this machine.

    Returns:
        A :class:`Classifier` in eval mode.

    Raises:
        UnknownModelError: ``name`` is not registered.
        WeightsNotFoundError: no weights found (message says where to put a file).
        CheckpointError: the file is unsafe, corrupt or does not fit the model; its head holds classes of its own
            whose names are neither given nor found; ``class_names`` do not match its head, or are given for a
            CarNet checkpoint (which carries its own).
    """
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    if name is None and checkpoint is None:
        raise CarNetError("give a model name or a checkpoint")
    device = torch.device(device) if device is not None else default_device()
    meta = None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        check_file(checkpoint)  # a photo given as the checkpoint is not "a plain state dict without metadata"
        if checkpoint.suffix == ".safetensors":
            meta = read_metadata(checkpoint)
    if meta is not None:
        if class_names is not None:
            raise CheckpointError(f"{checkpoint.name} is a CarNet checkpoint: it carries its own class names "
                                  f"({len(meta.get('class_names') or [])}); class names are for weights files "
                                  f"without them")
        clf = _from_checkpoint(checkpoint, meta)
    else:
        hint = architecture_hint(checkpoint) if name is None else None
        spec = get_spec(name) if name is not None else find_spec(hint or "")
        if spec is None:
            read_state_dict(checkpoint, shapes_only=True)  # a corrupt or refused file says so, rather than this
            raise CheckpointError(f"{checkpoint.name} is a plain state dict without CarNet metadata: say which "
                                  f"architecture it is for (--model NAME)"
                                  + (f"; it names {hint!r}, which is not a registered model" if hint else ""))
        clf = _from_spec(spec, checkpoint, weights, weights_folder, use_hub, class_names)
    clf.module.eval().to(device)
    return clf


def check_weights_file(name: str, path: str | os.PathLike) -> str:
    """Whether the weights file at ``path`` loads into registered model ``name``, without loading it: the checks
    :func:`load_model` makes — the file is readable and safe, its head's classes are named, its tensors fit — on the
    file's tensor shapes (values not read) against the network built on PyTorch's meta device, much cheaper than
    loading it. Used
    where a model is listed as available (the app's pickers, ``models``), so that a file that cannot be used is not
    offered as the model's weights.

    Returns:
        How it would load: ``"by name"``, ``"by position"``, ...

    Raises:
        CheckpointError, ClassNamesNeededError, CarNetError: what :func:`load_model` would raise, with its message —
            except that a file which does not fit the architecture says so even when its head's classes are unnamed.
    """
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    spec, path = get_spec(name), Path(path)
    state = read_state_dict(path, shapes_only=True)
    args = training_args(path) if path.suffix != ".safetensors" else None
    try:
        num_classes, unnamed = len(_file_class_names(spec, path, state, None, args)[0]), None
    except ClassNamesNeededError as exc:  # said after the fit: a file of another architecture is that first
        num_classes, unnamed = head_classes(state), exc
    with torch.device("meta"):
        target = build_module(spec.arch, spec.head, num_classes).state_dict()
    how = match_state_dict(state, target, path.name)[1]
    if unnamed is not None:
        raise unnamed
    return how


def usable_weights(name: str, folder: Path | None = None, use_hub: bool = True) -> WeightsSource:
    """Where registered model ``name``'s weights come from (:func:`carnet_core.models.weights.resolve`), a file in the weights
    folder checked to load first (:func:`check_weights_file`), so that a damaged, refused or misfitting file is not
    listed as the model's weights. A file whose head needs class names counts, and its detail says so: loading it
    says what to give.

    Raises:
        WeightsNotFoundError: no weights found (the message says where to put a file).
        CheckpointError: the weights folder's file for ``name`` cannot be used; the message names it and says why.
    """
    source = _weights.resolve(get_spec(name), folder=folder, use_hub=use_hub)
    if source.source == "weights_dir":
        stat = Path(source.location).stat()
        problem = _file_problem(name, source.location, stat.st_size, stat.st_mtime_ns)
        if isinstance(problem, ClassNamesNeededError) and problem.looked_in:  # checked again once what its training
            problem = _file_problem(name, source.location, stat.st_size, stat.st_mtime_ns,  # options point to appears
                                    tuple(map(_stamp, problem.looked_in)))
        if isinstance(problem, ClassNamesNeededError):
            return WeightsSource(source.source, source.location, "trained on classes of its own: needs their names")
        if problem is not None:
            raise CheckpointError(f"the file for {name} in the weights folder cannot be used: {problem}")
    return source


def _stamp(path: str) -> int | None:
    """When ``path`` last changed (ns), None when it is not there."""
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


@functools.lru_cache(maxsize=64)
def _file_problem(name: str, location: str, size: int, mtime_ns: int,
                  looked_in: tuple[int | None, ...] = ()) -> CarNetError | None:
    """:func:`check_weights_file`'s error for this version of the file (size and mtime), None when it loads: the app
    asks on every rerun of every page with a model picker, and a file is checked again only when it changes — or,
    for a timm ``train.py`` checkpoint whose class names were not found, when a file or folder its training options
    point to changes (``looked_in``: their :func:`_stamp`)."""
    try:
        check_weights_file(name, location)
    except CarNetError as exc:
        return exc
    return None


def _from_checkpoint(path: Path, meta: dict[str, Any]) -> Classifier:
    try:
        module = build_module(meta["arch"], meta.get("head", "linear"), len(meta["class_names"]))
        data_config, class_names = meta["data_config"], tuple(meta["class_names"])
    except KeyError as exc:
        raise CheckpointError(f"{path.name}: CarNet metadata lacks {exc}") from None
    if isinstance(meta["class_names"], str) or not all(isinstance(c, str) for c in class_names):
        raise CheckpointError(f"{path.name}: its class_names are not a list of names")
    load_into(module, read_state_dict(path), source=path.name)
    origin = meta.get("weights", {})
    made_from = Path(origin.get("location") or "").name
    if meta.get("recipe") or meta.get("dataset"):  # a fine-tune: what it started from
        detail = f"fine-tuned from {origin['source']} weights" if origin.get("source") not in (None, "checkpoint") else ""
    elif made_from:  # a model saved as it was (export --format safetensors): the file it was made from, and how
        detail = f"made from {made_from}" + (f": {origin['detail']}" if origin.get("detail") else "")
    else:
        detail = ""
    clf = Classifier(module=module, name=meta.get("name") or path.stem, arch=meta["arch"],
                     family=meta.get("family", ""), head=meta.get("head", "linear"), class_names=class_names,
                     data_config=data_config, weights=WeightsSource("checkpoint", str(path), detail),
                     label_set=meta.get("label_set", path.stem), metrics=meta.get("metrics", {}),
                     extra={k: meta[k] for k in ("dataset", "recipe") if meta.get(k) is not None})
    check_data_config(data_config, path.name)  # a hand-edited data config fails here, not at the first photo
    try:
        clf._resize_crop()  # timm's resize and crop, built from the data config
        clf.transform  # timm's whole transform (to-tensor and normalisation too)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: its data config cannot be used ({type(exc).__name__}: {exc})") from None
    return clf


def _from_spec(spec: ModelSpec, checkpoint: Path | None, weights: str, folder: Path | None, use_hub: bool,
               class_names: str | os.PathLike | Sequence[str] | None = None) -> Classifier:
    names, label_set, data_config = label_set_names(spec.label_set), spec.label_set, None
    if weights == "random":
        if class_names is not None:
            names, label_set, _ = _given_class_names(class_names, "sorted", "custom")  # not the registry's set
        module = build_module(spec.arch, spec.head, len(names))
        source = WeightsSource("random", "", "untrained: for tests and training from scratch")
    elif weights == "auto":
        source = _weights.resolve(spec, checkpoint, folder, use_hub)
        if source.source == "hub":
            module, how = _download(spec, source, len(names)), "downloaded by timm"
        else:
            path = Path(source.location)
            state = read_state_dict(path)
            args = training_args(path) if path.suffix != ".safetensors" else None
            names, label_set, named = _file_class_names(spec, path, state, class_names, args)
            module = build_module(spec.arch, spec.head, len(names))
            how = "; ".join(x for x in (f"loaded {load_into(module, state, source=path.name)}", named) if x)
            if args is not None:
                data_config = _training_data_config(module, args)
                check_data_config(data_config, path.name)  # a train.py run's options, bounded as CarNet's metadata
                if data_config != _data_config(module):
                    how += "; data config from its training options"
        source = WeightsSource(source.source, source.location, "; ".join(x for x in (source.detail, how) if x))
    else:
        raise CarNetError(f"weights must be 'auto' or 'random', not {weights!r}")
    own = label_set != spec.label_set  # trained on classes of its own: named apart from the registry model
    return Classifier(module=module, name=f"{spec.name}-{label_set}" if own else spec.name, arch=spec.arch,
                      family=spec.family, head=spec.head, class_names=names,
                      data_config=data_config or _data_config(module), weights=source, label_set=label_set)


def _training_data_config(module: torch.nn.Module, args: Any) -> dict[str, Any]:
    """The data config a timm ``train.py`` run evaluated with: its ``--img-size`` / ``--input-size``, ``--mean``,
    ``--std``, ``--interpolation`` and ``--crop-pct`` over the model's defaults (``timm.data.resolve_data_config``,
    as train.py resolves it); CarNet's no-margin crop unless the run set ``--crop-pct``."""
    import timm  # lazy: timm and torchvision load on first model build

    options = {k: v for k, v in vars(args).items() if v is not None}
    cfg = dict(timm.data.resolve_data_config(options, model=module))
    if options.get("crop_pct") is None:
        cfg["crop_pct"] = INFERENCE_CROP_PCT
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in DATA_CONFIG_KEYS}


def _download(spec: ModelSpec, source: WeightsSource, num_classes: int) -> torch.nn.Module:
    import timm  # lazy: timm and torchvision load on first model build

    try:
        return timm.create_model(spec.arch, pretrained=True, num_classes=num_classes)
    except Exception as exc:  # network errors come in many types
        raise WeightsNotFoundError(f"downloading {spec.arch} weights from {source.location} failed: {exc}. "
                                   f"{_weights.missing_weights_message(spec)}") from None


_GENERIC_STEMS = ("classes", "class_names", "class_map", "labels", "names")  # say nothing of the dataset


def _given_class_names(source: str | os.PathLike | Sequence[str], order: str, default_label_set: str,
                       told: str = "class names from") -> tuple[tuple[str, ...], str, str]:
    """(names, label set, how they were named) from ``source`` (:func:`~carnet_core.models.labels.read_class_names`)."""
    names = read_class_names(source, order)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)

        if path.is_dir():  # the dataset's name: data/cars/train gives "cars"
            label_set = (path.parent if path.name in SPLIT_FOLDER_NAMES else path).resolve().name
        else:  # cars.txt gives "cars"; data/cars/classes.csv gives "cars" too
            label_set = path.resolve().parent.name if path.stem.lower() in _GENERIC_STEMS else path.stem
        how = f"{told} {path}" + (f" ({order} folder order)" if path.is_dir() else "")
        return names, label_set, how
    return names, default_label_set, "class names given"


def _file_class_names(spec: ModelSpec, path: Path, state: dict[str, torch.Tensor],
                      given: str | os.PathLike | Sequence[str] | None,
                      args: Any = None) -> tuple[tuple[str, ...], str, str]:
    """The classes of a weights file without CarNet metadata, as (names, label set, how they were named): the
    registry model's label set when its head fits it and no names are given; else the names given, or those a
    timm ``train.py`` checkpoint's options point to (its ``--class-map`` file, or its dataset's class folders in
    timm's natural order). ``args``: the file's timm training options (:func:`~carnet_core.models.checkpoints.training_args`),
    None for any other file."""
    default = label_set_names(spec.label_set)
    rows = head_classes(state) if spec.head == "linear" else None
    order = "natural" if args is not None else "sorted"
    if given is not None:
        names, label_set, how = _given_class_names(given, order, path.stem)
        if rows is not None and rows != len(names):
            where = "the class names given" if how == "class names given" else str(given)
            raise CheckpointError(f"{path.name} has {rows} classes (its classifier's rows), but {where} name "
                                  f"{len(names)}")
        return names, label_set, how
    if rows is None or rows == len(default):
        return default, spec.label_set, ""
    tried = []
    if args is not None:
        root = getattr(args, "data_dir", None) or getattr(args, "data", None)
        class_map = getattr(args, "class_map", "") or ""
        candidates = ([Path(class_map), Path(root or "") / class_map] if class_map else
                      [Path(root) / (getattr(args, "train_split", None) or "train"), Path(root)] if root else [])
        for candidate in candidates:
            tried.append(str(candidate))
            if candidate.exists():
                names, label_set, how = _given_class_names(candidate, order, path.stem,
                                                           "class names from its training options:")
                if len(names) == rows:
                    return names, label_set, how
    raise ClassNamesNeededError(
        f"{path.name} was trained on {rows} classes of its own (its classifier's rows), not {spec.name}'s "
        f"{len(default)} {spec.label_set} classes, and holds no class names: give them in training order, as a "
        f"text file with one name per line or the dataset folder it was trained on"
        + (f"; its timm training options point to {', '.join(tried)}, not here or not {rows} classes" if tried
           else ""), str(path), spec.name, tuple(tried))
