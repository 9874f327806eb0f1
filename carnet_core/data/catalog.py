"""The datasets and label-mapping files CarNet offers: what lies under the data root (``$CARNET_DATA_ROOT``), the
zip uploads extracted there, the datasets built class by class, and the mapping files (``$CARNET_MAPPINGS_DIR``)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Sequence

from carnet_core.config import data_root, mappings_dir
from carnet_core.data.datasets import SPLIT_FOLDER_NAMES, class_folders, is_one_dataset
from carnet_core.data.uploads import check_folder_name, dataset_root, extract_dataset_zip

#: Extracted zip uploads, under the data root. The leading "_" keeps them out of a dataset's class folders when the
#: data root is itself one dataset; "uploads" is where earlier versions put them (still listed).
UPLOADS = "_uploads"
#: Datasets built class by class (the Fine-tune page's builder, Classify's "Add to a dataset").
BUILT = "_built"
#: What a mapping file's name ends with.
MAPPING_SUFFIXES = (".json", ".csv")


def dataset_folders(root: Path | None = None) -> list[Path]:
    """Datasets offered by the pickers, sorted by name: the data root (default :func:`carnet_core.config.data_root`)
    itself when it is one dataset (:func:`~carnet_core.data.datasets.is_one_dataset`, e.g. ``CARNET_DATA_ROOT`` set
    to a folder of class folders), else the folders directly under it; then the extracted zip uploads and the
    datasets built class by class; none when the root is missing."""
    root = data_root() if root is None else Path(root)
    if not root.is_dir():
        return []
    if is_one_dataset(root):
        found, upload_dirs = [root], [root / UPLOADS]
    else:
        found = [p for p in class_folders(root) if p.name != "uploads"]  # one dataset per folder
        upload_dirs = [root / UPLOADS, root / "uploads"]
    for uploads in upload_dirs:
        if uploads.is_dir():
            found += [dataset_root(p) for p in sorted(uploads.iterdir()) if p.is_dir()]
    if (root / BUILT).is_dir():  # as they are: one with a single class so far is no zip's top folder
        found += class_folders(root / BUILT)
    return found


def dataset_label(folder: Path, root: Path | None = None) -> str:
    """How a picker names a dataset of :func:`dataset_folders`: its folder's name, and where it came from when it is
    not a folder put in the data root — ``"tiny3 (uploaded tiny3.zip)"``, ``"my-cars (built here)"`` — so a
    dataset put there and an uploaded zip of the same name read apart."""
    root = data_root() if root is None else Path(root)
    folder = Path(folder)
    for kind, says in ((UPLOADS, "uploaded"), ("uploads", "uploaded"), (BUILT, "built here")):
        base = root / kind
        if base in folder.parents:
            if says == "uploaded":
                extraction = folder.relative_to(base).parts[0]  # <zip stem>-<hash>
                return f"{folder.name} (uploaded {extraction.rsplit('-', 1)[0]}.zip)"
            return f"{folder.name} ({says})"
    return folder.name


def built_dataset(name: str, root: Path | None = None) -> Path:
    """The folder of a dataset built class by class: ``<data root>/_built/<name>``.

    Raises:
        CarNetError: a name that cannot be a folder name.
    """
    return (data_root() if root is None else Path(root)) / BUILT / check_folder_name(name, "dataset")


def extract_upload(name: str, data: bytes, root: Path | None = None) -> Path:
    """Extract an uploaded zip (file name ``name``, bytes ``data``) safely under ``<data root>/_uploads/<name>-<hash>``
    and return its dataset folder; the same zip is extracted once and reused. One that holds no dataset is not kept.

    Raises:
        CarNetError: from :func:`carnet_core.data.uploads.extract_dataset_zip` (an unsafe zip, no class folders).
    """
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(name).stem)[:40] or "upload"
    dest = (data_root() if root is None else Path(root)) / UPLOADS / f"{stem}-{hashlib.sha256(data).hexdigest()[:8]}"
    if dest.exists():
        with contextlib.suppress(OSError):
            os.utime(dest)  # used again: the newest for prune_uploads
        return dataset_root(dest)
    return extract_dataset_zip(data, dest, name)


#: Extractions of uploaded zips kept (the most recently used); older ones are removed when another is extracted.
KEEP_UPLOADS = 5


def prune_uploads(keep: int = KEEP_UPLOADS, in_use: Sequence[str | Path] = (), root: Path | None = None) -> list[Path]:
    """Remove the extractions under ``<data root>/_uploads`` beyond the ``keep`` most recently used (their folders'
    modification times, which :func:`extract_upload` renews on reuse), except any that holds or is one of the
    ``in_use`` folders (the dataset of a queued or running fine-tune). Returns the folders removed."""
    base = (data_root() if root is None else Path(root)) / UPLOADS
    if not base.is_dir():
        return []
    used = {Path(p).resolve() for p in in_use}
    folders = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for folder in folders[keep:]:
        here = folder.resolve()
        if any(u == here or here in u.parents for u in used):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def mapping_files(folder: Path | None = None) -> list[Path]:
    """The label-mapping files (JSON or CSV) in ``folder`` (default :func:`carnet_core.config.mappings_dir`), sorted."""
    folder = mappings_dir() if folder is None else Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in MAPPING_SUFFIXES) if folder.is_dir() else []


def suggested_mapping(folder: str | Path, files: list[Path]) -> Path | None:
    """The first of ``files`` named after the dataset ``folder`` (``tiny_vehicles_6_to_imagenet.json`` for
    ``…/tiny_vehicles_6``, or for its ``val/`` split), or None."""
    folder = Path(folder)
    name = folder.parent.name if folder.name in SPLIT_FOLDER_NAMES else folder.name
    return next((f for f in files if name and f.stem.startswith(name)), None)
