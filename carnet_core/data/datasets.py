"""Dataset readers behind one interface: items → (image, label), class names, an optional label hierarchy.

Readers (nothing is downloaded; a missing file gives a message saying exactly what to place where):

- :func:`read_image_folder` — ``root/<class>/*`` (split automatically: stratified, seeded) or
  ``root/train/<class>/*`` + ``root/val/<class>/*``;
- :func:`read_stanford_cars` — torchvision's devkit layout (``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat``,
  ``cars_train/``, ``cars_test/``, ``cars_test_annos_withlabels.mat``), or the class-folder layout of the popular
  copies (read as an image folder, with the make/model/year hierarchy parsed from the class names);
- :func:`read_compcars` — CompCars ``data/image/<make id>/<model id>/<year>/*.jpg`` with ``data/misc/make_model_name.mat``,
  labels at make, model or year level;
- :func:`read_cifar100` — CIFAR-100's python files (``cifar-100-python/{train,test,meta}``), read with a restricted
  unpickler that only rebuilds numpy arrays and plain containers.

:func:`open_dataset` picks the reader from the folder's layout.
"""

from __future__ import annotations

import hashlib
import json

import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from carnet_core.data.images import IMAGE_EXTENSIONS, list_images, load_image
from carnet_core.errors import CarNetError, count, listed

Hierarchy = dict[str, dict[str, str]]  # class name -> {"make": ..., "model": ..., "year": ...}
_SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation", "test")}
SPLIT_FOLDER_NAMES = tuple(n for names in _SPLIT_NAMES.values() for n in names)  #: folder names read as splits
_MULTIWORD_MAKES = ("AM General", "Aston Martin", "Land Rover")


@dataclass
class ImageDataset:
    """A list of (item, label) with class names; indexable like a torch ``Dataset``.

    Attributes:
        items: (item, class index) pairs; an item is a path or, for in-memory datasets, an RGB uint8 array (H, W, 3).
        class_names: one name per class index.
        transform: applied to the RGB PIL image in ``__getitem__`` (e.g. timm's train or eval transform).
        hierarchy: optional make / model / year of each class.
        name: for reports.
    """

    items: list[tuple[Any, int]]
    class_names: tuple[str, ...]
    transform: Callable | None = None
    hierarchy: Hierarchy | None = None
    name: str = ""

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Image.Image:
        item = self.items[index][0]
        return Image.fromarray(item) if isinstance(item, np.ndarray) else load_image(item)

    def __getitem__(self, index: int):
        image = self.load(index)
        return (self.transform(image) if self.transform else image), self.items[index][1]

    def with_transform(self, transform: Callable | None) -> "ImageDataset":
        return replace(self, transform=transform)

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the class names and of each item's path, label, size and modification time (a 4 KB
        prefix of an in-memory item): what a cache of results over this dataset is keyed by, so a changed, added or
        removed file gives a new key."""
        h = hashlib.sha256(json.dumps(list(self.class_names)).encode())
        for item, label in self.items:
            if isinstance(item, (str, Path)):
                try:
                    st = Path(item).stat()
                    size, mtime = st.st_size, st.st_mtime_ns
                except OSError:
                    size = mtime = -1
                h.update(f"{item}|{label}|{size}|{mtime}".encode())
            else:
                h.update(np.ascontiguousarray(item).tobytes()[:4096])
                h.update(str(label).encode())
        return h.hexdigest()

    def spread(self, n: int) -> list[Any]:
        """``n`` items (all, if fewer) taken from the classes in turn — the first of each class, then the second, … —
        so a small sample covers the label set; the same items every time."""
        by_class: dict[int, list[Any]] = {}
        for item, label in self.items:
            by_class.setdefault(label, []).append(item)
        queues = [by_class[c] for c in sorted(by_class)]
        picked: list[Any] = []
        for depth in range(max(map(len, queues), default=0)):
            picked += [q[depth] for q in queues if depth < len(q)]
            if len(picked) >= n:
                break
        return picked[:n]

    def subset(self, indices: Sequence[int]) -> "ImageDataset":
        return replace(self, items=[self.items[i] for i in indices])

    def class_counts(self) -> dict[str, int]:
        counts = Counter(label for _, label in self.items)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}


#: The parts of a dataset an evaluation can score: its val split, its train split, or all of its images.
SPLITS: tuple[str, ...] = ("val", "train", "all")


@dataclass
class DatasetSplits:
    """A train and a val split over the same classes, and where they came from. ``split_here``: the dataset has no
    split of its own (class folders without ``train/`` and ``val/``), so the reader made one, seeded."""

    train: ImageDataset
    val: ImageDataset
    kind: str
    root: Path
    notes: list[str] = field(default_factory=list)
    split_here: bool = False

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names

    @property
    def num_images(self) -> int:
        """Every image found, both splits."""
        return len(self.train) + len(self.val)

    @property
    def default_split(self) -> str:
        """What an evaluation scores unless told otherwise: the val split of a dataset that has one of its own; all of
        a folder the reader split here (it is what the user points at: a held-out set, say)."""
        return "all" if self.split_here else "val"

    def part(self, split: str) -> ImageDataset:
        """The images of ``split`` (one of :data:`SPLITS`); ``"all"`` is train then val.

        Raises:
            CarNetError: an unknown split.
        """
        if split == "val":
            return self.val
        if split == "train":
            return self.train
        if split == "all":
            return replace(self.train, items=self.train.items + self.val.items, name=f"{self.root.name}/all")
        raise CarNetError(f"unknown split {split!r}; choose {', '.join(SPLITS)}")


def stratified_split(labels: Sequence[int], val_fraction: float = 0.25, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of a seeded per-class split: ``val_fraction`` of each class (at least one image when the class has
    two or more) goes to val."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        idx = by_class[label][:]
        rng.shuffle(idx)
        n_val = max(1, round(len(idx) * val_fraction)) if len(idx) >= 2 else 0
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def class_folders(root: Path) -> list[Path]:
    """The class folders of ``root``: its sub-folders, sorted, hidden ones and ``_``-prefixed ones (``_uploads``)
    left out."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def training_folder(root: Path) -> Path:
    """Where a dataset's training class folders are: ``root/train`` (or ``training``) when it has one, else
    ``root``."""
    return _find_split(root, "train") or root


def _find_split(root: Path, split: str) -> Path | None:
    for name in _SPLIT_NAMES[split]:
        if (root / name).is_dir():
            return root / name
    return None


def _single_split(root: Path) -> Path | None:
    """``root/train`` (or ``val``, ``test``, …) when that one split folder is all ``root`` holds, else None."""
    folders = class_folders(root)
    if len(folders) == 1 and folders[0].name in SPLIT_FOLDER_NAMES:
        return folders[0]
    return None


def parse_car_name(name: str) -> dict[str, str] | None:
    """Make / model / year from a Stanford-Cars-style class name ("BMW M6 Convertible 2010"); None if no year."""
    words = name.split()
    if len(words) < 3 or not (words[-1].isdigit() and len(words[-1]) == 4):
        return None
    make = next((m for m in _MULTIWORD_MAKES if name.startswith(m + " ")), words[0])
    model = name[len(make):].rsplit(" ", 1)[0].strip()
    return {"make": make, "model": f"{make} {model}", "year": name}


def car_hierarchy(class_names: Sequence[str]) -> Hierarchy | None:
    parsed = {c: parse_car_name(c) for c in class_names}
    return parsed if all(parsed.values()) else None  # type: ignore[return-value]


def read_image_folder(root: str | Path, val_fraction: float = 0.25, seed: int = 0) -> DatasetSplits:
    """Read ``root/<class>/*`` (split here), ``root/{train,val}/<class>/*``, or ``root/train/<class>/*`` (or
    ``val/``) alone (split here).

    Raises:
        CarNetError: missing folder, no class folders, no images (naming the datasets when it is a folder of them),
            val classes missing from train, or a class folder whose images are all in its sub-folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise not_a_folder_error(root)
    train_dir, val_dir = _find_split(root, "train"), _find_split(root, "val")
    notes = []
    if train_dir and val_dir:
        class_dirs = class_folders(train_dir)
        classes = [p.name for p in class_dirs]
        if not classes:
            raise no_class_folders_error(train_dir, splits=False)
        extra = sorted({p.name for p in class_folders(val_dir)} - set(classes))
        if extra:
            raise CarNetError(f"{val_dir} has classes that {train_dir} lacks: {listed(extra)}")
        index = {c: i for i, c in enumerate(classes)}
        class_dirs += class_folders(val_dir)
        train = [(p, index[c.name]) for c in class_folders(train_dir) for p in list_images(c)]
        val = [(p, index[c.name]) for c in class_folders(val_dir) for p in list_images(c)]
        notes.append(f"train/val folders: {train_dir.name}/, {val_dir.name}/")
        where = train_dir
    else:
        where = _single_split(root) or root  # train/ (or val/) alone: split it here
        class_dirs, items = class_folder_items(where, splits=where == root)
        classes = [p.name for p in class_dirs]
        tr, va = stratified_split([label for _, label in items], val_fraction, seed)
        train, val = [items[i] for i in tr], [items[i] for i in va]
        notes.append(f"{f'only {where.name}/' if where != root else 'no train/val folders'}: stratified split, "
                     f"{val_fraction:.0%} to val, seed {seed}")
    if not train:
        raise empty_dataset_error(where)  # a folder of datasets, say
    check_class_folders(class_dirs, train + val)  # no class left silently empty by images one level too deep
    names = tuple(classes)
    hierarchy = car_hierarchy(names)
    return DatasetSplits(ImageDataset(train, names, hierarchy=hierarchy, name=f"{root.name}/train"),
                         ImageDataset(val, names, hierarchy=hierarchy, name=f"{root.name}/val"), "image_folder", root, notes,
                         split_here=not (train_dir and val_dir))


def not_a_folder_error(path: Path) -> CarNetError:
    """The error for a dataset path that is no folder: missing, a file, or a zip archive of one (what to do then)."""
    if not path.exists():
        return CarNetError(f"{path}: no such folder")
    if path.suffix.lower() == ".zip":
        return CarNetError(f"{path} is a zip archive: extract it and give the folder (the Fine-tune page takes the "
                           f"zip itself)")
    return CarNetError(f"{path} is a file, not a dataset folder: expected {path}/<class name>/<image files>")


def no_class_folders_error(folder: Path, splits: bool = True) -> CarNetError:
    """The error for a dataset folder without class sub-folders (``splits``: say that train/ and val/ ones would do
    too). A folder of photos with no labels says so, and where such photos are classified instead."""
    expected = f"{folder}/<class name>/<images>"
    if splits:
        expected += f" or {folder}/train/<class name>/… and {folder}/val/<class name>/…"
    loose = list_images(folder)
    if loose:
        unlabelled = "it has no label" if len(loose) == 1 else "they have no labels"
        return CarNetError(f"{folder} holds {count(len(loose), 'image')} but no class sub-folders, so {unlabelled}: "
                           f"put each class's images in a folder named after it ({expected}). To classify photos "
                           f"without labels, use predict (or the Classify page)")
    return CarNetError(f"{folder} has no class sub-folders: expected {expected}")


def empty_dataset_error(folder: Path) -> CarNetError:
    """The error for class folders that hold no images: when they are datasets themselves (``folder`` is a data
    root, say), it names them to choose from."""
    # class folders whose images all sit one level down (blue/2019/*.jpg) each look like a dataset of one class: when
    # every one of several does, they are said as what they are
    found = [c for c in class_folders(folder) if is_one_dataset(c)]
    if len(found) > 1 and all(len(class_folders(c)) == 1 for c in found):
        check_class_folders(class_folders(folder), [])
    datasets = [c.name for c in found]
    if datasets:
        return CarNetError(f"{folder} holds datasets, not class folders: choose one of them "
                           f"({', '.join(datasets[:8])}{', …' if len(datasets) > 8 else ''})")
    return CarNetError(f"{folder}: the class folders hold no images ({', '.join(IMAGE_EXTENSIONS)})")


def check_class_folders(class_dirs: Sequence[Path], items: Sequence[tuple[Any, Any]]) -> None:
    """Refuse a class that would be silently empty — trained on no image, never right: a class folder that holds no
    images itself but some in its sub-folders (``blue/2019/*.jpg``; class folders are read one level deep), and a class
    with no image at all (an empty folder; with train/ and val/, empty in both). ``items`` are the (image path, label)
    pairs read from ``class_dirs``; only the folders none came from are looked into.

    Raises:
        CarNetError: naming the folder, the sub-folder and what to do.
    """
    filled = {Path(path).parent for path, _ in items}
    empty = []
    for folder in class_dirs:
        if folder not in filled:
            nested = list_images(folder, recursive=True)
            if nested:
                raise CarNetError(f"{folder} holds no images itself but {len(nested)} in its sub-folders (e.g. "
                                  f"{nested[0].relative_to(folder)}); a class folder is read one level deep: move "
                                  f"them up into {folder.name}/")
            empty.append(folder)
    with_images = {Path(path).parent.name for path, _ in items}
    empty = [f for f in empty if f.name not in with_images]
    if empty and items:
        raise CarNetError(f"{listed([str(f) for f in empty])} {'holds' if len(empty) == 1 else 'hold'} no images "
                          f"({', '.join(IMAGE_EXTENSIONS[:5])}, …): a class needs photos to be learnt; add some, or "
                          f"remove the {'folder' if len(empty) == 1 else 'folders'}")


def labelled_folder(root: str | Path) -> Path:
    """The folder of class folders that measures a ready model on ``root``: its val split (``val/``, ``valid/``,
    ``validation/`` or ``test/``) when ``root`` has train and val splits, as :func:`read_image_folder` reads them;
    its one split folder when that is all it holds; else ``root`` itself. Every image in it is counted.

    Raises:
        CarNetError: ``root`` is a Stanford Cars, CompCars or CIFAR-100 layout, whose labels are in annotation files
            rather than class folders (:func:`open_dataset` reads those).
    """
    root = Path(root)
    if not root.is_dir():
        return root  # missing, or a file: the reader says which
    kind = layout(root)
    if kind != "image_folder":
        raise CarNetError(f"{root} is a {kind} dataset (labels in annotation files, not class folders); measure "
                          f"it on the Evaluate page or with `python -m carnet_core evaluate MODEL {root}`")
    train, val = _find_split(root, "train"), _find_split(root, "val")
    return val if train and val else _single_split(root) or root


def is_one_dataset(folder: str | Path) -> bool:
    """True when ``folder`` is itself one dataset :func:`open_dataset` reads — a CIFAR-100, Stanford Cars or CompCars
    layout, ``train/`` and ``val/`` splits (or ``train/`` alone), or class folders holding images — rather than a
    folder of datasets (one per sub-folder). A folder that cannot be listed is neither: False."""
    root = Path(folder)
    try:
        if not root.is_dir():
            return False
        if layout(root) != "image_folder" or (_find_split(root, "train") and _find_split(root, "val")):
            return True
        root = _single_split(root) or root
        return any(list_images(c) for c in class_folders(root))
    except OSError:
        return False


def read_labelled_folder(folder: str | Path) -> list[tuple[Path, str]]:
    """(image path, class name) for every image in ``folder/<class>/``, sorted; classes = sub-folder names. A dataset
    with train/ and val/ splits, as Fine-tune and Evaluate read it, is read from its val split
    (:func:`~carnet_core.data.datasets.labelled_folder`).

    Raises:
        CarNetError: the folder is missing, has no class sub-folders or no images, holds datasets rather than
            classes (the message names them), or is a Stanford Cars / CompCars / CIFAR-100 layout.
    """
    folder = labelled_folder(folder)
    if not folder.is_dir():
        raise not_a_folder_error(folder)
    class_dirs, items = class_folder_items(folder, splits=False)
    if not items:
        raise empty_dataset_error(folder)
    check_class_folders(class_dirs, items)
    return [(path, class_dirs[label].name) for path, label in items]


def class_folder_items(folder: Path, splits: bool = True) -> tuple[list[Path], list[tuple[Path, int]]]:
    """The one reader of class folders: ``folder``'s class sub-folders (sorted) and (image path, class index) for
    every image directly in them, sorted. Checks for images one level too deep are the callers'
    (:func:`check_class_folders`), once they know their splits.

    Raises:
        CarNetError: no class sub-folders (``splits``: whether the message suggests train/ and val/ too).
    """
    class_dirs = class_folders(folder)
    if not class_dirs:
        raise no_class_folders_error(folder, splits=splits)
    return class_dirs, [(p, i) for i, c in enumerate(class_dirs) for p in list_images(c)]


def layout(root: Path) -> str:
    """The reader ``auto`` picks for ``root``: a CIFAR-100, Stanford Cars or CompCars layout, else image folders."""
    if (root / "cifar-100-python").is_dir() or (root / "meta").is_file() and (root / "train").is_file():
        return "cifar100"
    if (root / "devkit").is_dir() or (root / "stanford_cars" / "devkit").is_dir():
        return "stanford_cars"
    if (root / "data" / "image").is_dir() or ((root / "image").is_dir() and (root / "misc").is_dir()):
        return "compcars"
    return "image_folder"
