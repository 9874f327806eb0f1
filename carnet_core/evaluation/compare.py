"""Labelled image folders (one sub-folder per class) and measuring models and ensembles on them.

When the folder's class names are not the model's (``pickup``, ``minibus`` against ImageNet), a mapping file says
which model classes each folder class stands for; a model's probabilities are then summed per folder class
(a projection of its label set) before top-1 / top-5 are scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from carnet_core.data.catalog import suggested_mapping
from carnet_core.data.datasets import labelled_folder, read_labelled_folder
from carnet_core.data.images import load_image
from carnet_core.errors import CarNetError, listed
from carnet_core.evaluation.metrics import topk_accuracy
from carnet_core.evaluation.scoring import check_photo_count, score_images
from carnet_core.inference.ensemble import RULES, aligned_class_names, combine, member_names, member_probabilities
from carnet_core.inference.predict import timed_probabilities
from carnet_core.models.classifier import Classifier
from carnet_core.models.labels import (  # noqa: F401 (the mapping readers are used from here too)
    close_classes,
    find_class,
    load_mapping,
    mapping_from_bytes,
    parse_mapping,
    within_classes,
)


def members_needing_mapping(models: Sequence[Classifier], folder: str | Path) -> tuple[list[str], list[str]]:
    """The classes of a labelled folder, as :func:`compare_on_folder` reads them (its val split, when it has one),
    and the names of the ``models`` whose label sets do not hold them all: those it can score only through a mapping.
    Lists the folder's images and reads none, so a page can ask before measuring.

    Raises:
        CarNetError: as :func:`read_labelled_folder` (no such folder, no class folders or images, a folder of
            datasets, an annotation-file layout).
    """
    classes = sorted({label for _, label in read_labelled_folder(folder)})
    return classes, [name for name, m in zip(member_names(models), models)
                     if not within_classes(classes, m.class_names)]


class LabelProjection:
    """Sums a model's probabilities over the model classes that stand for each folder class.

    Args:
        folder_classes: the folder's class names.
        model_classes: the model's class names.
        mapping: folder class → model classes; ``None`` means the names must be model classes themselves.

    Raises:
        CarNetError: a folder class without a mapping, an unknown model class, or a model class mapped twice.
    """

    def __init__(self, folder_classes: Sequence[str], model_classes: Sequence[str],
                 mapping: dict[str, list[str]] | None = None):
        self.folder_classes = list(folder_classes)
        if mapping is None:
            unknown = [c for c in self.folder_classes if find_class(model_classes, c) is None]
            if unknown:
                raise CarNetError(f"{len(unknown)} of the {len(self.folder_classes)} folder classes "
                                  f"{'is not a class' if len(unknown) == 1 else 'are not classes'} of the model "
                                  f"({listed(unknown)}); give a mapping file (folder class → model classes)")
            mapping = {c: [c] for c in self.folder_classes}
        missing = [c for c in self.folder_classes if c not in mapping]
        if missing:
            raise CarNetError(f"the mapping has no entry for folder classes: {', '.join(missing)}")
        self.matrix = np.zeros((len(model_classes), len(self.folder_classes)), np.float32)
        owner: dict[int, str] = {}
        for j, fc in enumerate(self.folder_classes):
            for mc in mapping[fc]:
                i = find_class(model_classes, mc)  # "Sports Car" is the model's "sports car"
                if i is None:
                    close = close_classes(model_classes, mc)
                    raise CarNetError(f"mapping for {fc!r}: {mc!r} is not a class of the model"
                                      + (f"; did you mean {', '.join(map(repr, close))}?" if close else ""))
                if i in owner and owner[i] != fc:
                    raise CarNetError(f"model class {model_classes[i]!r} is mapped to both {owner[i]!r} and {fc!r}")
                owner[i] = fc
                self.matrix[i, j] = 1.0

    def project(self, probs: Any) -> np.ndarray:
        """(N, C_model) → (N, C_folder) float32: probability mass on each folder class's model classes (a NumPy array
        or a CPU torch tensor in)."""
        return np.asarray(probs, np.float32) @ self.matrix


@dataclass
class CompareReport:
    """Top-1 / top-5 accuracy of each member and each ensemble rule on a labelled folder.

    Attributes:
        classes: folder class names.
        members: the members' names, distinct (:func:`~carnet_core.inference.ensemble.member_names`).
        accuracy: row name (a member's, or ``ensemble (soft)`` …) → {"top1": float, "top5": float} in [0, 1].
        num_images: images scored.
        disagreements: images whose members' top-1 (folder classes) differ: path, true label, each member's top-1.
        unreadable: (path, reason) for images skipped.
        folder: the folder of class folders that was read (a dataset's val split, when it has one).
        combined_in: where the ensembles combined the members: ``"model classes"`` (one label set), or ``"folder
            classes"`` (members with different label sets, each projected onto the folder's classes first).
    """

    classes: list[str]
    members: list[str]
    accuracy: dict[str, dict[str, float]]
    num_images: int
    disagreements: list[dict] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    folder: str = ""
    combined_in: str = "model classes"

    def to_dict(self) -> dict:
        return {"folder": self.folder, "classes": self.classes, "members": self.members, "num_images": self.num_images,
                "combined_in": self.combined_in, "accuracy": self.accuracy, "disagreements": self.disagreements,
                "unreadable": [{"path": p, "reason": r} for p, r in self.unreadable]}


def compare_on_folder(models: Sequence[Classifier], folder: str | Path, mapping: dict[str, list[str]] | None = None,
                      weights: Sequence[float] | None = None, batch_size: int = 32,
                      progress: Callable[[float], None] | None = None, max_photos: int | None = None) -> CompareReport:
    """Score each member and each ensemble rule (:data:`~carnet_core.inference.ensemble.RULES`) on a labelled folder: class
    folders of images, or a dataset with train/ and val/ splits, scored on its val split.

    Members with one label set are combined in it and the result projected onto the folder's classes. Members with
    different label sets — a fine-tune of the folder's classes beside an ImageNet model, say — are each projected
    onto the folder's classes first (through their own classes when they have them all, else through ``mapping``),
    and the ensembles combine those projections. Top-5 is trivially 1.0 when the folder has 5 classes or fewer.

    ``max_photos``: refuse a folder of more photos (:func:`~carnet_core.evaluation.scoring.check_photo_count`).

    Raises:
        CarNetError: bad folder or mapping (naming the member it does not fit), fewer than two members, a member
            given twice, or more than ``max_photos``.
    """
    names = _common_label_set(models)
    members = member_names(models)  # distinct, for the report's rows
    folder = labelled_folder(folder)  # a dataset's val split, when it has train/ and val/
    items = read_labelled_folder(folder)
    check_photo_count(len(items), Path(folder).name, max_photos)
    classes = sorted({label for _, label in items})
    projections = _projections(models, names, classes, mapping)  # checked before any image is read

    def views(i: int) -> tuple:  # in a loading thread: one decode, each member's input view of it
        image = load_image(items[i][0])
        return tuple(m.input_view(image) for m in models)

    def score(loaded: list[tuple]) -> np.ndarray:  # (M, n, C): each member's probabilities
        per_member = [[v[j] for v in loaded] for j in range(len(models))]
        if names is not None:
            return member_probabilities(models, views=per_member)[0]  # in the common label set
        return np.stack([projections[j].project(timed_probabilities(m, per_member[j], cropped=True)[0])
                         for j, m in enumerate(models)])  # each in the folder's classes

    scored = score_images([(str(path), classes.index(label)) for path, label in items], views, score, batch_size,
                          dim=1, progress=progress)
    if scored is None:
        raise CarNetError(f"{folder}: none of the images could be read")
    member, y, paths, unreadable = scored.probs, scored.labels, scored.names, scored.unreadable  # member: (M, N, C)
    labels = y.tolist()
    if names is not None:
        projection = projections[0]  # the common label set onto the folder's classes
        rows = {name: projection.project(member[i]) for i, name in enumerate(members)}
        rows.update({f"ensemble ({rule})": projection.project(combine(member, rule, weights)) for rule in RULES})
    else:
        rows = {name: member[i] for i, name in enumerate(members)}
        rows.update({f"ensemble ({rule})": combine(member, rule, weights) for rule in RULES})
    accuracy = {k: {"top1": topk_accuracy(v, y, 1), "top5": topk_accuracy(v, y, 5)} for k, v in rows.items()}
    top1 = np.stack([rows[name].argmax(1) for name in members])  # (M, N)
    disagree = np.flatnonzero((top1 != top1[0]).any(0)).tolist()
    disagreements = [{"path": paths[i], "label": classes[labels[i]],
                      "predictions": {name: classes[int(top1[j, i])] for j, name in enumerate(members)}}
                     for i in disagree]
    return CompareReport(classes, members, accuracy, len(paths), disagreements, unreadable,
                         str(folder), combined_in="model classes" if names is not None else "folder classes")


def mapping_problem(models: Sequence[Classifier], classes: Sequence[str],
                    mapping: dict[str, list[str]] | None) -> str | None:
    """Why :func:`compare_on_folder` would refuse to score ``models`` (an ensemble's members, or one model, as
    Evaluate scores it) on a folder of ``classes`` through ``mapping`` (None: no mapping), or None when it would not:
    what it raises, found without reading an image, so a page can say it before Evaluate is pressed. A mapping serves
    one label set: ImageNet classes mean nothing to a fine-tune of other classes, whose message names it and says so.
    """
    names = models[0].class_names if len(models) == 1 else _common_label_set(models)
    try:
        _projections(models, names, classes, mapping)
    except CarNetError as exc:
        return str(exc) + (" — a mapping serves one label set: pick models that share one, or a folder whose classes "
                           "each member either has or the mapping covers" if names is None else "")
    return None


def _common_label_set(models: Sequence[Classifier]) -> tuple[str, ...] | None:
    """The members' one label set, or None when they have different ones (each is then projected onto the folder's
    classes on its own). Raises CarNetError for fewer than two members."""
    try:
        return aligned_class_names(models)
    except CarNetError:
        if len(models) < 2:
            raise
        return None


def _projections(models: Sequence[Classifier], names: Sequence[str] | None, classes: Sequence[str],
                 mapping: dict[str, list[str]] | None) -> list[LabelProjection]:
    """One projection of the common label set ``names`` onto the folder ``classes``, or one per member when they have
    different label sets. Raises CarNetError when the mapping (or a member's own classes) does not fit."""
    if names is not None:
        return [LabelProjection(classes, names, mapping)]
    return [_member_projection(m, classes, mapping) for m in models]


def _member_projection(model: Classifier, classes: Sequence[str],
                       mapping: dict[str, list[str]] | None) -> LabelProjection:
    """``model``'s projection onto the folder ``classes``: its own classes when it has them all (a fine-tune of
    this folder), else ``mapping``. Raises CarNetError naming the model when neither fits."""
    try:
        return LabelProjection(classes, model.class_names, None if within_classes(classes, model.class_names) else mapping)
    except CarNetError as exc:
        raise CarNetError(f"{model.name}: {exc}") from None


def first_measurable(folders: Sequence[Path], models: Sequence[Classifier], mapping_files: Sequence[Path]) -> int:
    """The index of the first of ``folders`` that ``models`` can be measured on as it is — class folders that are
    classes of every model, or else a mapping file among ``mapping_files`` named after it
    (:func:`carnet_core.data.catalog.suggested_mapping`) that fits every model that needs one — else 0. A folder
    that is not class folders (an annotation-file layout, say) or whose mapping is bad is passed over."""

    def measurable(folder: Path) -> bool:
        try:
            classes, unmapped = members_needing_mapping(models, folder)
            suggested = suggested_mapping(folder, list(mapping_files))
            return not unmapped or (suggested is not None
                                    and mapping_problem(models, classes, load_mapping(suggested)) is None)
        except CarNetError:
            return False

    return next((i for i, f in enumerate(folders) if measurable(f)), 0)


@dataclass
class FolderPlan:
    """What measuring some models on a labelled folder needs, said before anything is classified: the folder's
    classes, the members that need a mapping to them, and what stands in the way (a message), if anything."""

    classes: list[str]
    unmapped: list[str]                                  # member names without the folder's classes
    problem: str | None = None                           # the folder cannot be measured
    mapping: dict[str, list[str]] | None = None          # the chosen mapping, read and checked
    mapping_error: str | None = None                     # the chosen mapping cannot be read or does not fit

    @property
    def needs_mapping(self) -> bool:
        """A member lacks the folder's classes and no mapping is chosen."""
        return bool(self.unmapped) and self.mapping is None and self.mapping_error is None

    @property
    def ready(self) -> bool:
        """Nothing stands in the way of measuring."""
        return not (self.problem or self.mapping_error or self.needs_mapping)

    def with_mapping(self, models: Sequence[Classifier],
                     read: Callable[[], dict[str, list[str]]] | None) -> FolderPlan:
        """This plan with the mapping ``read`` returns (None: none chosen), read and checked against every member
        (:func:`mapping_problem`) only when a member needs one."""
        if not self.unmapped or read is None or self.problem:
            return self
        try:
            mapping = read()
        except CarNetError as exc:
            return replace(self, mapping_error=str(exc))
        return replace(self, mapping=mapping, mapping_error=mapping_problem(models, self.classes, mapping))


def plan_folder(models: Sequence[Classifier], folder: str | Path) -> FolderPlan:
    """The :class:`FolderPlan` of ``models`` on ``folder``, before any mapping (:meth:`FolderPlan.with_mapping`)."""
    try:
        classes, unmapped = members_needing_mapping(models, folder)
    except CarNetError as exc:
        return FolderPlan([], [], problem=str(exc))
    return FolderPlan(list(classes), list(unmapped))
