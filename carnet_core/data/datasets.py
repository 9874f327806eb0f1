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

import pickle
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

    def subset(self, indices: Sequence[int]) -> "ImageDataset":
        return replace(self, items=[self.items[i] for i in indices])

    def class_counts(self) -> dict[str, int]:
        counts = Counter(label for _, label in self.items)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}


@dataclass
class DatasetSplits:
    """A train and a val split over the same classes, and where they came from."""

    train: ImageDataset
    val: ImageDataset
    kind: str
    root: Path
    notes: list[str] = field(default_factory=list)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names


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


def _car_hierarchy(class_names: Sequence[str]) -> Hierarchy | None:
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
        class_dirs = class_folders(where)
        if not class_dirs:
            raise no_class_folders_error(where, splits=where == root)
        classes = [p.name for p in class_dirs]
        items = [(p, i) for i, c in enumerate(class_dirs) for p in list_images(c)]
        tr, va = stratified_split([label for _, label in items], val_fraction, seed)
        train, val = [items[i] for i in tr], [items[i] for i in va]
        notes.append(f"{f'only {where.name}/' if where != root else 'no train/val folders'}: stratified split, "
                     f"{val_fraction:.0%} to val, seed {seed}")
    if not train:
        raise empty_dataset_error(where)  # a folder of datasets, say
    check_class_folders(class_dirs, train + val)  # no class left silently empty by images one level too deep
    names = tuple(classes)
    hierarchy = _car_hierarchy(names)
    return DatasetSplits(ImageDataset(train, names, hierarchy=hierarchy, name=f"{root.name}/train"),
                         ImageDataset(val, names, hierarchy=hierarchy, name=f"{root.name}/val"), "image_folder", root, notes)


def _loadmat(path: Path, *keys: str) -> dict:
    """A MATLAB file's variables; each of ``keys`` must be among them (a readable .mat file of another dataset, or
    one saved wrongly, otherwise fails later with a bare KeyError)."""
    import scipy.io  # lazy: only Stanford Cars' .mat annotations need it

    if not path.is_file():
        raise CarNetError(f"missing {path}")
    try:
        data = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as exc:
        raise CarNetError(f"{path}: not a readable .mat file ({exc})") from None
    if missing := [k for k in keys if k not in data]:
        found = ", ".join(k for k in data if not k.startswith("__")) or "nothing"
        raise CarNetError(f"{path}: no {', '.join(missing)} in it (it holds {found}); is it the dataset's own file?")
    return data


def read_stanford_cars(root: str | Path) -> DatasetSplits:
    """Stanford Cars (Krause et al., 3dRR 2013) in torchvision's devkit layout under ``root`` (or
    ``root/stanford_cars``), or as class folders.

    Raises:
        CarNetError: a file of the layout is missing; the message names it.
    """
    root = Path(root)
    if (root / "stanford_cars").is_dir():
        root = root / "stanford_cars"
    if not (root / "devkit").is_dir():
        splits = read_image_folder(root)
        return replace(splits, kind="stanford_cars (class folders)")
    meta = _loadmat(root / "devkit" / "cars_meta.mat", "class_names")
    class_names = tuple(str(c) for c in np.atleast_1d(meta["class_names"]))

    def annotations(mat: Path, images: Path) -> list[tuple[Path, int]]:
        if not images.is_dir():
            raise CarNetError(f"missing folder {images} (the images of cars_train.tgz / cars_test.tgz)")
        out = []
        for a in np.atleast_1d(_loadmat(mat, "annotations")["annotations"]):
            try:
                label = int(a["class"] if isinstance(a, dict) else a.__dict__["class"]) - 1
                path = images / str(a["fname"] if isinstance(a, dict) else a.fname)
            except (AttributeError, KeyError, TypeError, ValueError):
                raise CarNetError(f"{mat}: its annotations have no class and fname fields") from None
            if not 0 <= label < len(class_names):
                raise CarNetError(f"{mat}: class {label + 1} of {path.name} is not one of the {len(class_names)} "
                                  "classes in cars_meta.mat")
            out.append((path, label))
        return out

    train = annotations(root / "devkit" / "cars_train_annos.mat", root / "cars_train")
    test_mat = root / "cars_test_annos_withlabels.mat"
    if not test_mat.is_file():
        raise CarNetError(f"missing {test_mat}: the test labels (cars_test_annos_withlabels.mat) go there")
    val = annotations(test_mat, root / "cars_test")
    hierarchy = _car_hierarchy(class_names)
    return DatasetSplits(ImageDataset(train, class_names, hierarchy=hierarchy, name="stanford_cars/train"),
                         ImageDataset(val, class_names, hierarchy=hierarchy, name="stanford_cars/test"),
                         "stanford_cars", root, ["devkit layout: train = cars_train, val = cars_test"])


def read_compcars(root: str | Path, level: str = "model", val_fraction: float = 0.25, seed: int = 0) -> DatasetSplits:
    """CompCars (Yang et al., CVPR 2015) web-nature images: ``data/image/<make id>/<model id>/<year>/*.jpg`` with names
    from ``data/misc/make_model_name.mat``; classes at ``level`` "make", "model" or "year" (model + year).

    Uses ``data/train_test_split/classification/{train,test}.txt`` when present, else a stratified split.

    Raises:
        CarNetError: missing files, or an unknown level.
    """
    if level not in ("make", "model", "year"):
        raise CarNetError(f"CompCars level must be make, model or year, not {level!r}")
    root = Path(root)
    data = root / "data" if (root / "data").is_dir() else root
    image_root = data / "image"
    if not image_root.is_dir():
        raise CarNetError(f"missing {image_root}: CompCars images go in data/image/<make id>/<model id>/<year>/")
    names = _loadmat(data / "misc" / "make_model_name.mat", "make_names", "model_names")
    makes = [str(x) for x in np.atleast_1d(names["make_names"])]
    models = [str(x) for x in np.atleast_1d(names["model_names"])]
    labelled, hierarchy = [], {}
    for path in sorted(image_root.glob("*/*/*/*.jpg")):
        try:
            make_id, model_id, year = (int(path.parts[-4]), int(path.parts[-3]), path.parts[-2])
            if not (1 <= make_id <= len(makes) and 1 <= model_id <= len(models)):
                raise ValueError
        except ValueError:
            raise CarNetError(f"{path.relative_to(image_root)}: CompCars images go in image/<make id>/<model id>/"
                              f"<year>/, ids numbered as in make_model_name.mat ({len(makes)} makes, {len(models)} "
                              "models)") from None
        make = makes[make_id - 1].strip()
        model = f"{make} {models[model_id - 1].strip()}"
        label = {"make": make, "model": model, "year": f"{model} {year}"}[level]
        hierarchy[label] = {"make": make, "model": model, "year": f"{model} {year}"} if level == "year" else \
            {"make": make, "model": model if level == "model" else "", "year": ""}
        labelled.append((path, label))
    if not labelled:
        raise CarNetError(f"{image_root} holds no images in <make id>/<model id>/<year>/*.jpg")
    classes = tuple(sorted({label for _, label in labelled}))
    index = {c: i for i, c in enumerate(classes)}
    items = [(p, index[label]) for p, label in labelled]
    split_dir = data / "train_test_split" / "classification"
    if (split_dir / "train.txt").is_file() and (split_dir / "test.txt").is_file():
        wanted = {s: {line.strip() for line in (split_dir / f"{s}.txt").read_text().splitlines() if line.strip()}
                  for s in ("train", "test")}
        rel = [str(p.relative_to(image_root)) for p, _ in items]
        train = [it for it, r in zip(items, rel) if r in wanted["train"]]
        val = [it for it, r in zip(items, rel) if r in wanted["test"]]
        note = "official classification split (train_test_split/classification)"
    else:
        tr, va = stratified_split([label for _, label in items], val_fraction, seed)
        train, val = [items[i] for i in tr], [items[i] for i in va]
        note = f"stratified split, {val_fraction:.0%} to val, seed {seed}"
    h = hierarchy if level != "make" else None
    return DatasetSplits(ImageDataset(train, classes, hierarchy=h, name=f"compcars-{level}/train"),
                         ImageDataset(val, classes, hierarchy=h, name=f"compcars-{level}/val"), "compcars", root,
                         [f"labels at {level} level", note])


class _DataOnlyUnpickler(pickle.Unpickler):
    """Rebuilds plain containers and numpy arrays only; anything else in the pickle is refused."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused: the file asks to build {module}.{name}")


def _read_cifar_pickle(path: Path, root: Path) -> dict:
    if not path.is_file():
        raise CarNetError(f"missing {path}: extract cifar-100-python.tar.gz into {root} (it makes "
                          f"cifar-100-python/ with train, test and meta)")
    try:
        with open(path, "rb") as f:
            return _DataOnlyUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise CarNetError(f"{path}: {exc}") from None


def read_cifar100(root: str | Path, label_level: str = "fine") -> DatasetSplits:
    """CIFAR-100 (Krizhevsky 2009) from its python files in ``root/cifar-100-python/``; val = the test set.

    Raises:
        CarNetError: a file is missing or holds something other than data.
    """
    root = Path(root)
    base = root / "cifar-100-python" if (root / "cifar-100-python").is_dir() else root
    meta = _read_cifar_pickle(base / "meta", root)
    names = tuple(meta[f"{label_level}_label_names"])

    def split(name: str) -> ImageDataset:
        d = _read_cifar_pickle(base / name, root)
        images = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = d[f"{label_level}_labels"]
        return ImageDataset([(img, int(y)) for img, y in zip(images, labels)], names, name=f"cifar100/{name}")

    return DatasetSplits(split("train"), split("test"), "cifar100", root, ["val = the CIFAR-100 test set"])


def open_dataset(root: str | Path, kind: str = "auto", **kwargs: Any) -> DatasetSplits:
    """Open a dataset with the reader for ``kind`` (one of :data:`DATASET_KINDS`); ``auto`` looks at the layout.

    Raises:
        CarNetError: unknown kind, or the reader's error.
    """
    root = Path(root)
    readers = _readers()
    if kind == "auto":
        kind = _layout(root)
    if kind not in readers:
        raise CarNetError(f"unknown dataset kind {kind!r}; choose {', '.join(DATASET_KINDS)}")
    return readers[kind](root, **kwargs)


def _readers() -> dict[str, Callable[..., DatasetSplits]]:
    return {"image_folder": read_image_folder, "stanford_cars": read_stanford_cars, "compcars": read_compcars,
            "cifar100": read_cifar100}


#: The dataset layouts :func:`open_dataset` reads, ``auto`` first (it looks at the folder): the CLI's and the
#: pages' choices.
DATASET_KINDS: tuple[str, ...] = ("auto", *_readers())


def _layout(root: Path) -> str:
    """The reader ``auto`` picks for ``root``: a CIFAR-100, Stanford Cars or CompCars layout, else image folders."""
    if (root / "cifar-100-python").is_dir() or (root / "meta").is_file() and (root / "train").is_file():
        return "cifar100"
    if (root / "devkit").is_dir() or (root / "stanford_cars" / "devkit").is_dir():
        return "stanford_cars"
    if (root / "data" / "image").is_dir() or ((root / "image").is_dir() and (root / "misc").is_dir()):
        return "compcars"
    return "image_folder"


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
    datasets = [c.name for c in class_folders(folder) if is_one_dataset(c)]
    if datasets:
        return CarNetError(f"{folder} holds datasets, not class folders: choose one of them "
                           f"({', '.join(datasets[:8])}{', …' if len(datasets) > 8 else ''})")
    return CarNetError(f"{folder}: the class folders hold no images ({', '.join(IMAGE_EXTENSIONS)})")


def check_class_folders(class_dirs: Sequence[Path], items: Sequence[tuple[Any, Any]]) -> None:
    """Refuse a class folder that holds no images itself but some in its sub-folders (``blue/2019/*.jpg``): class
    folders are read one level deep, so that class would be silently empty — trained on no image, never right.
    ``items`` are the (image path, label) pairs read from ``class_dirs``; only the folders none came from are looked
    into.

    Raises:
        CarNetError: naming the folder, the sub-folder and what to do.
    """
    filled = {Path(path).parent for path, _ in items}
    for folder in class_dirs:
        if folder not in filled:
            nested = list_images(folder, recursive=True)
            if nested:
                raise CarNetError(f"{folder} holds no images itself but {len(nested)} in its sub-folders (e.g. "
                                  f"{nested[0].relative_to(folder)}); a class folder is read one level deep: move "
                                  f"them up into {folder.name}/")


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
    kind = _layout(root)
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
        if _layout(root) != "image_folder" or (_find_split(root, "train") and _find_split(root, "val")):
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
    classes = class_folders(folder)
    if not classes:
        raise no_class_folders_error(folder, splits=False)
    items = [(img, c.name) for c in classes for img in list_images(c)]
    if not items:
        raise empty_dataset_error(folder)
    check_class_folders(classes, items)
    return items
