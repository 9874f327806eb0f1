"""Which reader opens a dataset folder: class folders, or a published dataset's own layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from carnet_core.data.datasets import DatasetSplits, layout, read_image_folder
from carnet_core.data.published import read_cifar100, read_compcars, read_stanford_cars
from carnet_core.errors import CarNetError


def open_dataset(root: str | Path, kind: str = "auto", **kwargs: Any) -> DatasetSplits:
    """Open a dataset with the reader for ``kind`` (one of :data:`DATASET_KINDS`); ``auto`` looks at the layout.

    Raises:
        CarNetError: unknown kind, or the reader's error.
    """
    root = Path(root)
    readers = _readers()
    if kind == "auto":
        kind = layout(root)
    if kind not in readers:
        raise CarNetError(f"unknown dataset kind {kind!r}; choose {', '.join(DATASET_KINDS)}")
    return readers[kind](root, **kwargs)


def _readers() -> dict[str, Callable[..., DatasetSplits]]:
    return {"image_folder": read_image_folder, "stanford_cars": read_stanford_cars, "compcars": read_compcars,
            "cifar100": read_cifar100}


#: The dataset layouts :func:`open_dataset` reads, ``auto`` first (it looks at the folder): the CLI's and the
#: pages' choices.
DATASET_KINDS: tuple[str, ...] = ("auto", *_readers())
