"""The labelled set that the reduced-precision accuracy gate measures on (:func:`labelled_photos`).

A folder of class folders (its val split when it has train/val, as Evaluate reads it). Each photo's top-1 counts as
right when it is the photo's class, or — with a mapping (folder class → model classes, e.g.
``mappings/tiny_vehicles_6_to_imagenet.json``) — one of the model classes its folder class maps to. An ImageNet
model on folders that are not its classes and without a mapping (car photos: Stanford Cars' class folders) is
measured by the share of photos with a road vehicle at top-1 instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from carnet_core.config import calibration_set
from carnet_core.data.datasets import SPLIT_FOLDER_NAMES, labelled_folder, read_labelled_folder
from carnet_core.data.images import load_image
from carnet_core.errors import CarNetError, ImageError
from carnet_core.inference.parity import MIN_GATE_PHOTOS, LabelledPhotos
from carnet_core.models.classifier import Classifier
from carnet_core.models.labels import IMAGENET_1K, find_class, load_mapping, vehicle_indices

if TYPE_CHECKING:
    import torch

#: Most photos read from a labelled set (evenly spaced over its sorted list): enough for a 1 % accuracy step on
#: the gate's part, few enough to measure in seconds.
MAX_GATE_SET_PHOTOS = 400


def labelled_photos(model: Classifier, folder: str | os.PathLike, mapping: dict[str, list[str]] | None = None,
                    limit: int = MAX_GATE_SET_PHOTOS) -> LabelledPhotos:
    """The labelled set in ``folder`` for ``model``'s accuracy gate.

    Args:
        folder: a folder of class folders (or a dataset with train/val: its val split).
        mapping: folder class → model class names; None: folder classes must be model classes, or (ImageNet models)
            the gate counts a road vehicle at top-1.
        limit: most photos read, evenly spaced.

    Raises:
        CarNetError: no such folder or no class folders; classes that are not the model's and no mapping (and the
            model is no ImageNet model); a mapping naming classes the model does not have; fewer readable photos
            than the gate needs.
    """
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    items = read_labelled_folder(folder)
    step = max(1.0, len(items) / limit)
    items = [items[int(i * step)] for i in range(min(limit, len(items)))]
    classes = sorted({name for _, name in items})
    allowed = _allowed_classes(model, classes, mapping)
    images, labels = [], []
    for path, name in items:
        try:
            images.append(load_image(path))
        except ImageError:
            continue
        labels.append(name)
    if len(images) < 2 * MIN_GATE_PHOTOS:
        raise CarNetError(f"the accuracy gate needs at least {2 * MIN_GATE_PHOTOS} readable photos in "
                          f"{Path(folder).name}; it has {len(images)}")
    read = labelled_folder(folder)  # a split is named with its dataset: "stanford_cars_40/val"
    root = f"{read.parent.name}/{read.name}" if read.name.lower() in SPLIT_FOLDER_NAMES else read.name
    if allowed is None:
        vehicles = torch.tensor(vehicle_indices(model.class_names))

        def correct(probs: torch.Tensor, indices: list[int]) -> torch.Tensor:
            return torch.isin(probs.argmax(dim=1), vehicles)

        return LabelledPhotos(images, correct, f"{root} ({len(images)} photos)", "vehicle at top-1")
    member = torch.zeros(len(images), model.num_classes, dtype=torch.bool)
    for i, name in enumerate(labels):
        member[i, allowed[name]] = True

    def correct(probs: torch.Tensor, indices: list[int]) -> torch.Tensor:
        return member[indices].gather(1, probs.argmax(dim=1)[:, None])[:, 0]

    how = ", mapped to the model's classes" if mapping is not None else ""
    return LabelledPhotos(images, correct, f"{root}{how} ({len(images)} photos)", "top-1 accuracy")


def _allowed_classes(model: Classifier, classes: list[str],
                     mapping: dict[str, list[str]] | None) -> dict[str, list[int]] | None:
    """Folder class → the model class indices that count as right; None: count a vehicle at top-1."""
    if mapping is None:
        found = {c: find_class(model.class_names, c) for c in classes}
        if all(i is not None for i in found.values()):
            return {c: [i] for c, i in found.items()}
        if model.label_set == IMAGENET_1K:
            return None
        missing = [c for c, i in found.items() if i is None]
        raise CarNetError(f"{len(missing)} of the set's {len(classes)} classes are not classes of {model.name} "
                          f"({', '.join(missing[:5])}{'…' if len(missing) > 5 else ''}); give a mapping file")
    allowed = {}
    for c in classes:
        if c not in mapping:
            raise CarNetError(f"the mapping has no entry for the set's class {c!r}")
        indices = [find_class(model.class_names, m) for m in mapping[c]]
        if None in indices:
            bad = [m for m, i in zip(mapping[c], indices) if i is None]
            raise CarNetError(f"mapping for {c!r}: {', '.join(map(repr, bad))} not a class of {model.name}")
        allowed[c] = indices
    return allowed


def env_gate_set(model: Classifier) -> LabelledPhotos | None:
    """The labelled set named by ``$CARNET_CALIBRATION`` (a folder of class folders) and, for ImageNet models on
    other classes, ``$CARNET_CALIBRATION_MAPPING`` (a JSON mapping file); None when unset or unusable for this
    model (then reduced precision is not chosen)."""
    folder, mapping_file = calibration_set()
    if not folder:
        return None
    try:
        return labelled_photos(model, folder, load_mapping(mapping_file) if mapping_file else None)
    except CarNetError:
        return None
