"""Label sets: ImageNet-1k class names and the documented vehicle view of them.

The ImageNet-1k class names are torchvision's (``ResNet50_Weights.IMAGENET1K_V1.meta["categories"]``), which are
unique, so a class can be named unambiguously.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

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
    from torchvision.models import ResNet50_Weights

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


def close_classes(class_names: Sequence[str], name: str, n: int = 5) -> list[str]:
    """Up to ``n`` of ``class_names`` closest to ``name``, case ignored (difflib), for "did you mean" hints."""
    import difflib

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
