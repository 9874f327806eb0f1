"""Label sets: ImageNet-1k class names and the documented vehicle view of them.

The ImageNet-1k class names are torchvision's (``ResNet50_Weights.IMAGENET1K_V1.meta["categories"]``), which are
unique, so a class can be named unambiguously.
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import pickle
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from carnet_core.data.datasets import class_folders, training_folder
from carnet_core.errors import CarNetError

IMAGENET_1K = "imagenet-1k"

#: Road vehicles among the ImageNet-1k classes: cars, vans, buses, trucks, motorcycles, cycles and small
#: utility vehicles that drive on roads. Rail vehicles (``passenger car``, ``streetcar``), military vehicles
#: (``tank``, ``half track``) and animal-drawn carts are left out.
VEHICLE_CLASSES: tuple[str, ...] = (
    # cars
    "sports car", "convertible", "cab", "beach wagon", "limousine", "minivan", "jeep", "Model T", "racer",
    "pickup", "police van", "ambulance",
    # vans, trucks, buses
    "moving van", "tow truck", "trailer truck", "garbage truck", "fire engine", "recreational vehicle",
    "school bus", "minibus", "trolleybus", "snowplow", "tractor", "forklift", "amphibian",
    # two- and three-wheelers, small vehicles
    "moped", "motor scooter", "mountain bike", "bicycle-built-for-two", "tricycle", "go-kart", "golfcart",
)

#: ImageNet-1k classes that are parts of a car. A photo of a car often gets one of these at top-1; the
#: vehicle view then shows the best vehicle classes beside it.
VEHICLE_PART_CLASSES: tuple[str, ...] = ("grille", "car wheel", "car mirror", "disk brake", "seat belt", "odometer")


@lru_cache(maxsize=None)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (torchvision's categories; available offline)."""
    from torchvision.models import ResNet50_Weights  # lazy: torchvision, only for the class names

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def vehicle_indices(class_names: tuple[str, ...] | list[str]) -> list[int]:
    """Indices of :data:`VEHICLE_CLASSES` within ``class_names`` — empty unless the label set holds them all
    (ImageNet's, in any order): a fine-tune's own classes that share a name with one of them ("pickup", "minibus"
    beside "car") are not a vehicle view, whose "top class is not a vehicle" would call its "car" no vehicle."""
    wanted = set(VEHICLE_CLASSES)
    found = [i for i, name in enumerate(class_names) if name in wanted]
    return found if len(found) == len(wanted) else []


def find_class(class_names: Sequence[str], name: str) -> int | None:
    """Index of ``name`` in ``class_names``; written in another case or with extra spaces ("Sports Car ") when exactly
    one class matches it so; None when none does, or several do ("crane" and "Crane")."""
    try:
        return list(class_names).index(name)
    except ValueError:
        folded = " ".join(name.split()).casefold()
        same = [i for i, c in enumerate(class_names) if c.casefold() == folded]
        return same[0] if len(same) == 1 else None


def within_classes(names: Sequence[str], class_names: Sequence[str]) -> bool:
    """Whether each of ``names`` (a dataset's class folders, say) is one of ``class_names`` as :func:`find_class`
    matches them (any case and spacing: a folder "Jeep" is ImageNet's "jeep"), each a different one."""
    found = [find_class(class_names, n) for n in names]
    return None not in found and len(set(found)) == len(found)


def close_classes(class_names: Sequence[str], name: str, n: int = 5) -> list[str]:
    """Up to ``n`` of ``class_names`` closest to ``name``, case ignored (difflib), for "did you mean" hints."""
    near = difflib.get_close_matches(" ".join(name.split()).casefold(), {c.casefold() for c in class_names}, n=n,
                                     cutoff=0.5)
    return [c for folded in near for c in class_names if c.casefold() == folded][:n]


def label_set_names(label_set: str) -> tuple[str, ...]:
    """Class names of a named label set.

    Raises:
        KeyError: the label set is unknown.
    """
    if label_set == IMAGENET_1K:
        return imagenet_class_names()
    raise KeyError(f"unknown label set {label_set!r}; known: {IMAGENET_1K}")


#: The orders in which training code numbers a dataset's class folders: ``sorted`` by name (torchvision's
#: ``ImageFolder``, CarNet's readers) or ``natural`` (timm's ``ImageFolder``: ``timm.utils.natural_key``, case
#: ignored and digit runs compared as numbers, so "class2" before "class10" and "Acura" before "AM General").
CLASS_ORDERS = ("sorted", "natural")


def read_class_names(source: str | os.PathLike | Sequence[str], order: str = "sorted") -> tuple[str, ...]:
    """Class names in index order, for a checkpoint whose head holds its own classes but not their names.

    ``source`` is a list of names, or a path to:
    - a text file, one name per line (timm's ``--class-map`` ``.txt`` format), or timm's pickled ``{name: index}``
      (``.pkl``, read with timm's ``load_class_map``, whose unpickler refuses anything but built-in types);
    - a JSON file: a list of names, or ``{name: index}`` (a ``class_to_idx``);
    - a CSV file with a ``class_name`` (or ``name``, ``class``) column, ordered by its ``index`` column when it has
      one (the ``classes.csv`` of CarNet's datasets);
    - a dataset folder: its class folders (those of its ``train/`` split when it has one) in ``order``
      (:data:`CLASS_ORDERS`).

    Raises:
        CarNetError: the source is missing or unreadable, names no class, or names one twice.
    """
    if order not in CLASS_ORDERS:
        raise CarNetError(f"class order must be one of {', '.join(CLASS_ORDERS)}, not {order!r}")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            names = _class_names_from_path(path, order)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error, pickle.UnpicklingError, EOFError) as exc:
            raise CarNetError(f"{path}: cannot read class names from it ({type(exc).__name__}: {exc})") from None
        where = str(path)
    else:
        names, where = list(source), "the class names given"
    if not names:
        raise CarNetError(f"{where}: names no class")
    if not all(isinstance(n, str) and n.strip() for n in names):
        bad = next(i for i, n in enumerate(names) if not (isinstance(n, str) and n.strip()))
        raise CarNetError(f"{where}: class {bad} has no name ({names[bad]!r})")
    twice = sorted(n for n, count in Counter(names).items() if count > 1)
    if twice:
        raise CarNetError(f"{where}: names {', '.join(map(repr, twice[:3]))} more than once")
    return tuple(names)


def _names_in_index_order(data: object, path: Path, kind: str) -> list:
    """Names from a list of names or a ``{name: index}`` mapping (a ``class_to_idx``), in index order."""
    if isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):
        if sorted(data.values()) != list(range(len(data))):
            raise CarNetError(f"{path}: its class indices are not 0..{len(data) - 1}")
        return sorted(data, key=data.get)
    if not isinstance(data, list):
        raise CarNetError(f"{path}: expected a {kind} list of class names or {{name: index}}")
    return data


def _class_names_from_path(path: Path, order: str) -> list:
    if path.is_dir():
        folders = [f.name for f in class_folders(training_folder(path))]
        if order == "natural":
            from timm.utils import natural_key  # lazy: timm, only for natural sort order

            return sorted(folders, key=natural_key)
        return sorted(folders)
    if not path.is_file():
        raise CarNetError(f"{path}: no such file or folder (class names: a text, JSON or CSV file, or the dataset "
                          f"folder the model was trained on)")
    suffix = path.suffix.lower()
    if suffix == ".pkl":  # timm's --class-map may be a pickled {name: index}: timm's reader, which refuses globals
        from timm.data.readers.class_map import load_class_map  # lazy: timm, only for its class-map files

        try:
            return _names_in_index_order(load_class_map(str(path)), path, "pickled")
        except ValueError as exc:  # timm's: not a dict
            raise CarNetError(f"{path}: {exc}") from None
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".json":
        return _names_in_index_order(json.loads(text), path, "JSON")
    if suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        column = next((c for c in ("class_name", "name", "class") if rows and c in rows[0]), None)
        if column is None:
            raise CarNetError(f"{path}: no class_name (or name, class) column")
        if "index" in rows[0]:
            try:
                rows.sort(key=lambda r: int(r["index"]))
            except (TypeError, ValueError):
                raise CarNetError(f"{path}: its index column holds something other than whole numbers") from None
        return [r[column] for r in rows]
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [line.strip() for line in lines]


def load_mapping(path: str | Path) -> dict[str, list[str]]:
    """Read a mapping folder class → model classes.

    JSON: ``{"pickup": ["pickup"], "car": ["sports car", "convertible"]}``. CSV: rows ``folder class,model class``
    (one model class per row, a folder class may repeat; a header row ``folder_class,model_class`` is skipped).

    Raises:
        CarNetError: unreadable file or wrong structure.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CarNetError(f"cannot read mapping file {path}: {exc}") from None
    return parse_mapping(text, path)


def mapping_from_bytes(data: bytes, name: str) -> dict[str, list[str]]:
    """A mapping from an uploaded file's bytes (``name``: its file name, whose suffix says JSON or CSV).

    Raises:
        CarNetError: not UTF-8 text, or a wrong structure.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CarNetError(f"{name}: not a text file ({exc.reason})") from None
    return parse_mapping(text, Path(name))


def parse_mapping(text: str, path: Path) -> dict[str, list[str]]:
    """A mapping from the text of a JSON or CSV file (``path``'s suffix says which; its name is in the messages).

    Raises:
        CarNetError: a wrong structure.
    """
    if path.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CarNetError(f"{path.name}: not valid JSON ({exc})") from None
        if not isinstance(raw, dict):
            raise CarNetError(f"{path.name}: expected an object {{folder class: [model classes]}}")
        for k, v in raw.items():
            if not isinstance(v, str) and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                raise CarNetError(f"{path.name}: {k!r} maps to {json.dumps(v)}; give a model class name or a list of "
                                  f"them, e.g. {{{json.dumps(k)}: [\"sports car\", \"convertible\"]}}")
        return {str(k): [v] if isinstance(v, str) else v for k, v in raw.items()}
    mapping: dict[str, list[str]] = {}
    for row in csv.reader(text.splitlines()):
        if not row or row[0].startswith("#") or [c.strip() for c in row[:2]] == ["folder_class", "model_class"]:
            continue
        if len(row) < 2:
            raise CarNetError(f"{path.name}: each row needs 'folder class,model class', got {row}")
        mapping.setdefault(row[0].strip(), []).append(row[1].strip())
    return mapping
