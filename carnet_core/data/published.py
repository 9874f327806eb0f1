"""Readers of published car datasets in their own layouts: Stanford Cars (devkit .mat annotations), CompCars
(make / model / year folders) and CIFAR-100 (Python pickles, read without running any code)."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np

from carnet_core.data.datasets import DatasetSplits, ImageDataset, car_hierarchy, read_image_folder, stratified_split
from carnet_core.errors import CarNetError


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
    hierarchy = car_hierarchy(class_names)
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
