"""Teach in 20 seconds: a usable model of a few classes from a few photos each, as Teachable Machine makes one — a
linear classifier on the frozen backbone's features (a linear probe; Kornblith, Shlens & Le 2019, "Do Better ImageNet
Models Transfer Better?"), fitted by scikit-learn's multinomial logistic regression.

Each photo's features are computed when it is added (:meth:`QuickTeacher.add`), so "Train" costs only the fit
(well under a second for 3 classes × 30 photos). The model it gives is the backbone with the fitted head, a CarNet
checkpoint like a fine-tune's (listed ★ in the pickers); a full fine-tune of the same photos is the next step.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from carnet_core.config import jobs_dir
from carnet_core.data.datasets import read_labelled_folder
from carnet_core.data.images import ImageSource, load_image
from carnet_core.data.uploads import check_folder_name
from carnet_core.errors import CarNetError, ImageError, count
from carnet_core.evaluation.embeddings import penultimate_features
from carnet_core.models.classifier import Classifier
from carnet_core.models.weights import WeightsSource

#: Fewest classes and photos per class a quick model is fitted from.
MIN_CLASSES, MIN_PHOTOS_PER_CLASS = 2, 2
#: Logistic regression's inverse regularisation strength (scikit-learn's ``C``) on the backbone's features:
#: scikit-learn's default, not tuned (82.3 % val top-1 on tiny_vehicles_6 car / pickup / minibus with it,
#: bench/teach_benchmark.py).
REGULARISATION_C = 1.0


@dataclass
class QuickResult:
    """A fitted quick model: the model, the fit's wall time (s), its photos per class and its accuracy on them (a
    leave-nothing-out train accuracy: the photos it was fitted on)."""

    model: Classifier
    fit_s: float
    photos: dict[str, int]
    train_top1: float


@dataclass
class QuickTeacher:
    """Photos of a few classes and their features, for one backbone; fit a model of them at any time.

    Attributes:
        backbone: the model whose features are used (an ImageNet model: EfficientNet-Lite0 by default on the page).
        features: class name → list of (D,) float32 feature vectors, one per photo added.
        feature_s: wall time spent computing features so far, s.
    """

    backbone: Classifier
    features: dict[str, list[np.ndarray]] = field(default_factory=dict)
    feature_s: float = 0.0
    #: (file path, size, mtime) of each photo added by :meth:`sync`, with its class: what a second sync skips.
    seen: dict[tuple[str, int, int], str] = field(default_factory=dict)

    def add(self, class_name: str, photos: Sequence[ImageSource | Image.Image]) -> list[tuple[str, str]]:
        """Compute and keep the features of ``photos`` for ``class_name`` (a new class is created). Returns the photos
        that could not be read as (name, reason); the others are kept.

        Raises:
            CarNetError: a class name that cannot name a folder (:func:`check_folder_name`)."""
        class_name = check_folder_name(class_name)
        images, refused = [], []
        for i, photo in enumerate(photos):
            try:
                images.append(photo if isinstance(photo, Image.Image) else load_image(photo))
            except ImageError as exc:
                refused.append((Path(photo).name if isinstance(photo, (str, os.PathLike)) else f"photo {i + 1}",
                                str(exc)))
        if images:
            t0 = time.perf_counter()
            found = penultimate_features(self.backbone, self.backbone.preprocess(images)).numpy()
            self.feature_s += time.perf_counter() - t0
            self.features.setdefault(class_name, []).extend(found.astype(np.float32))
        return refused

    def add_folder(self, folder: str | os.PathLike, progress: Callable[[float], None] | None = None,
                   batch: int = 16) -> list[tuple[str, str]]:
        """:meth:`add` every photo of a folder of class folders (its val split when it has train/ and val/)."""
        items = read_labelled_folder(folder)
        refused = []
        for start in range(0, len(items), batch):
            chunk = items[start:start + batch]
            for name in dict.fromkeys(label for _, label in chunk):
                refused += self.add(name, [path for path, label in chunk if label == name])
            if progress:
                progress(min(1.0, (start + batch) / len(items)))
        return refused

    def sync(self, folder: str | os.PathLike) -> list[tuple[str, str]]:
        """Make the photos known the class folders of ``folder`` (a dataset built class by class): compute the
        features of photos not seen before, and start a class again whose files changed or went. A photo is computed
        once however often this is called, so calling it as photos are added leaves only the fit for "Train"."""
        folder = Path(folder)
        items = read_labelled_folder(folder) if folder.is_dir() and any(folder.iterdir()) else []
        now: dict[tuple[str, int, int], str] = {}
        for path, label in items:
            try:
                stat = path.stat()
            except OSError:
                continue
            now[(str(path), stat.st_size, stat.st_mtime_ns)] = label
        changed = {label for key, label in self.seen.items() if key not in now} | \
                  (set(self.features) - set(now.values()))
        for label in changed:  # a photo removed or replaced: that class is computed again from its files
            self.features.pop(label, None)
            self.seen = {k: v for k, v in self.seen.items() if v != label}
        refused = []
        new = [(key, label) for key, label in now.items() if key not in self.seen]
        for label in dict.fromkeys(label for _, label in new):
            keys = [key for key, lab in new if lab == label]
            refused += self.add(label, [Path(key[0]) for key in keys])
            self.seen.update({key: label for key in keys})
        return refused

    def remove(self, class_name: str) -> None:
        """Forget a class and its photos."""
        self.features.pop(class_name, None)
        self.seen = {k: v for k, v in self.seen.items() if v != class_name}

    def counts(self) -> dict[str, int]:
        """Photos per class, in the order the classes were added."""
        return {name: len(f) for name, f in self.features.items()}

    def problem(self) -> str | None:
        """Why no model can be fitted yet, in words, or None when one can."""
        counts = self.counts()
        if len(counts) < MIN_CLASSES:
            return f"add photos of at least {MIN_CLASSES} classes ({count(len(counts), 'class', 'classes')} so far)"
        few = [n for n, k in counts.items() if k < MIN_PHOTOS_PER_CLASS]
        if few:
            return f"add at least {MIN_PHOTOS_PER_CLASS} photos of {', '.join(few)}"
        return None

    def fit(self, name: str = "quick") -> QuickResult:
        """The backbone with a linear head fitted on the photos' features by multinomial logistic regression
        (scikit-learn's ``LogisticRegression``, L2, ``C`` = :data:`REGULARISATION_C`). Classes in the order added.

        Raises:
            CarNetError: fewer than :data:`MIN_CLASSES` classes or :data:`MIN_PHOTOS_PER_CLASS` photos of one."""
        from sklearn.linear_model import LogisticRegression  # lazy: scikit-learn, only for a fit

        if why := self.problem():
            raise CarNetError(f"cannot train yet: {why}")
        classes = list(self.features)
        x = np.stack([f for name in classes for f in self.features[name]])
        y = np.array([i for i, name in enumerate(classes) for _ in self.features[name]])
        t0 = time.perf_counter()
        fitted = LogisticRegression(C=REGULARISATION_C, max_iter=2000).fit(x, y)
        weight, bias = fitted.coef_, fitted.intercept_
        if len(classes) == 2:  # scikit-learn keeps one row for two classes: logit of the second against the first
            weight, bias = np.stack([-weight[0] / 2, weight[0] / 2]), np.array([-bias[0] / 2, bias[0] / 2])
        model = _with_head(self.backbone, classes, weight, bias, name)
        fit_s = time.perf_counter() - t0
        train_top1 = float((fitted.predict(x) == y).mean())
        model.metrics = {"top1": train_top1, "photos": int(len(y)), "fit": "linear probe (logistic regression)"}
        return QuickResult(model, fit_s, self.counts(), train_top1)


def _with_head(backbone: Classifier, classes: list[str], weight: np.ndarray, bias: np.ndarray,
               name: str) -> Classifier:
    """A copy of ``backbone`` whose classifier is ``weight`` (K, D) and ``bias`` (K,)."""
    with backbone.lock:
        module = copy.deepcopy(backbone.module).cpu()
    module.reset_classifier(len(classes))
    head = module.get_classifier()
    if not isinstance(head, torch.nn.Linear) or head.weight.shape != weight.shape:
        raise CarNetError(f"{backbone.name}'s head is not a linear layer over its {weight.shape[1]} features")
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight.astype(np.float32)))
        head.bias.copy_(torch.from_numpy(bias.astype(np.float32)))
    module.eval().to(backbone.device)
    return Classifier(module=module, name=f"{backbone.arch}-{name}", arch=backbone.arch, family=backbone.family,
                      head="linear", class_names=tuple(classes), data_config=dict(backbone.data_config),
                      weights=WeightsSource("checkpoint", detail=f"quick linear probe on {backbone.name}"),
                      label_set=name, extra={"dataset": name, "recipe": {"model": backbone.name, "head": "linear",
                                                                          "fit": "logistic regression on features"}})


def save_quick_model(result: QuickResult, folder: str | os.PathLike | None = None) -> Path:
    """Save a quick model as a CarNet checkpoint in ``folder`` (default ``<jobs folder>/quick``), where the pickers
    list it ★; named after its label set (the dataset name it was given). Returns the file.

    Raises:
        CarNetError: the file cannot be written."""
    folder = Path(folder) if folder else jobs_dir() / "quick"
    path = folder / f"{result.model.label_set}-{result.model.arch}.safetensors"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CarNetError(f"cannot create {folder.name}: {exc.strerror or exc}") from None
    return result.model.save(path, metrics=result.model.metrics)
