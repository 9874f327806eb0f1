"""Datasets uploaded to the fine-tune page: a zip of class folders, extracted safely, or photos added class by class
(:func:`add_class_photos`, as Teachable Machine builds one).

Zip extraction:

Refused, with a message naming the member: absolute paths and ``..`` (path traversal, "zip slip"), links, names
longer than a file system takes, more than ``max_files`` members, more than ``max_bytes`` uncompressed (counted while
writing, so a zip that lies about its sizes is stopped too), members compressed more than ``max_ratio`` times and
archives whose members together are (zip bombs: 300 members of 1 MB of zeros each pass a per-member check), and
every failure of reading a member (encrypted, an unsupported compression method, a bad CRC, a truncated archive, a
file and a folder of one name) as an :class:`UnsafeArchiveError` naming it. Nothing is written outside ``dest``; a
refused zip leaves no partial folder behind.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Sequence

from PIL import Image

from carnet_core._io import atomic_write_bytes
from carnet_core.data.datasets import class_folders
from carnet_core.data.images import list_images, load_image
from carnet_core.data.readers import open_dataset
from carnet_core.errors import CarNetError, ImageError

MAX_FILES = 50_000
MAX_BYTES = 2 * 1024**3  # 2 GiB uncompressed
MAX_RATIO = 200          # a JPEG compresses ~1×; 200× is a bomb
#: Below this many uncompressed bytes an archive's overall ratio is not judged (a few small text files compress well).
RATIO_FLOOR_BYTES = 10 * 2**20
MAX_NAME_BYTES = 255     # one path component, as ext4, APFS and NTFS allow
_SKIP = ("__MACOSX/", ".DS_Store", "Thumbs.db")


class UnsafeArchiveError(CarNetError, ValueError):
    """A zip that cannot be extracted safely (traversal, links, too many files, too large, a bomb)."""


def safe_extract_zip(source: str | os.PathLike | bytes | BinaryIO, dest: str | os.PathLike, *,
                     max_files: int = MAX_FILES, max_bytes: int = MAX_BYTES, max_ratio: float = MAX_RATIO) -> Path:
    """Extract a zip into the new folder ``dest`` and return the dataset root inside it.

    Args:
        source: a path, the zip's bytes, or a binary file object (e.g. a Streamlit upload).
        dest: a folder that must not exist yet (created here).
        max_files / max_bytes / max_ratio: limits (members, uncompressed bytes, compression ratio per member).

    Returns:
        ``dest``, or its single top-level folder when the zip holds exactly one (``cars.zip`` → ``cars/``).

    Raises:
        UnsafeArchiveError: a limit or a safety rule is broken (nothing is left in ``dest``).
        CarNetError: not a zip file, or ``dest`` exists.
    """
    dest = Path(dest)
    if dest.exists():
        raise CarNetError(f"{dest} already exists; choose another name")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise CarNetError(f"not a readable zip file ({exc})") from None
    with archive:
        members = [m for m in archive.infolist() if not any(part in m.filename for part in _SKIP)]
        _check_members(members, max_files, max_bytes, max_ratio)
        dest.mkdir(parents=True)
        try:
            _extract(archive, members, dest.resolve(), max_bytes)
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return dataset_root(dest)


def extract_dataset_zip(source: str | os.PathLike | bytes | BinaryIO, dest: str | os.PathLike, name: str) -> Path:
    """:func:`safe_extract_zip`, then the dataset in it opened as a fine-tune opens it
    (:func:`~carnet_core.data.datasets.open_dataset`, which lists the images and decodes none). A zip that holds no dataset
    — loose photos without class folders, say — is removed again, and its error names the zip (``name``, e.g.
    ``cars.zip``) where the folder it was extracted to would mean nothing to the person who uploaded it.

    Returns:
        The dataset root in ``dest`` (as :func:`safe_extract_zip`).

    Raises:
        UnsafeArchiveError, CarNetError: as :func:`safe_extract_zip`, or the dataset reader's error.
    """
    root = safe_extract_zip(source, dest)
    try:
        open_dataset(root)
    except CarNetError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise CarNetError(str(exc).replace(str(Path(dest)), name)) from None
    return root


def dataset_root(folder: str | os.PathLike) -> Path:
    """``folder``, or its single top-level sub-folder when it holds exactly one (an extracted ``cars.zip`` → ``cars/``)."""
    folder = Path(folder)
    tops = [p for p in folder.iterdir() if not p.name.startswith(".")]
    return tops[0] if len(tops) == 1 and tops[0].is_dir() else folder


def _check_members(members: list[zipfile.ZipInfo], max_files: int, max_bytes: int, max_ratio: float) -> None:
    if not members:
        raise UnsafeArchiveError("the zip is empty")
    if len(members) > max_files:
        raise UnsafeArchiveError(f"the zip has {len(members):,} entries; the limit is {max_files:,}")
    total = compressed = 0
    for m in members:
        name = m.filename
        path = PurePosixPath(name.replace("\\", "/"))
        if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise UnsafeArchiveError(f"refused: {name!r} is an absolute path")
        if ".." in path.parts:
            raise UnsafeArchiveError(f"refused: {name!r} points outside the folder (..)")
        if any(len(part.encode()) > MAX_NAME_BYTES for part in path.parts):
            raise UnsafeArchiveError(f"refused: {_short(name)} has a name longer than {MAX_NAME_BYTES} bytes")
        mode = m.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise UnsafeArchiveError(f"refused: {name!r} is a symbolic link")
        if m.flag_bits & 0x1:
            raise UnsafeArchiveError(f"refused: {_short(name)} is encrypted; zip the photos without a password")
        total += m.file_size
        compressed += m.compress_size
        if total > max_bytes:
            raise UnsafeArchiveError(f"the zip expands to more than {max_bytes / 2**20:,.0f} MB")
        if m.compress_size and m.file_size / m.compress_size > max_ratio and m.file_size > 1_000_000:
            raise UnsafeArchiveError(f"refused: {_short(name)} is compressed {m.file_size / m.compress_size:,.0f}× "
                                     f"(a zip bomb?)")
    if total > RATIO_FLOOR_BYTES and total / max(compressed, 1) > max_ratio:
        raise UnsafeArchiveError(f"refused: the zip's {len(members):,} entries are compressed "
                                 f"{total / max(compressed, 1):,.0f}× together (a zip bomb?)")


def _short(name: str, limit: int = 80) -> str:
    """A member's name for a message, cut to ``limit`` characters."""
    return repr(name if len(name) <= limit else name[:limit] + "…")


def _extract(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], dest: Path, max_bytes: int) -> None:
    written = 0
    for m in members:
        target = (dest / m.filename.replace("\\", "/")).resolve()
        if dest not in target.parents and target != dest:
            raise UnsafeArchiveError(f"refused: {m.filename!r} points outside the folder")
        try:
            if m.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(m) as src, open(target, "xb") as out:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_bytes:  # the sizes in the zip's directory were wrong
                        raise UnsafeArchiveError(f"the zip expands to more than {max_bytes / 2**20:,.0f} MB")
                    out.write(chunk)
        except UnsafeArchiveError:
            raise
        except FileExistsError:
            if target.is_file() and not m.is_dir():
                raise UnsafeArchiveError(f"refused: {_short(m.filename)} is in the zip twice") from None
            raise UnsafeArchiveError(f"refused: {_short(m.filename)} is both a file and a folder in the zip") from None
        except (IsADirectoryError, NotADirectoryError):
            raise UnsafeArchiveError(f"refused: {_short(m.filename)} is both a file and a folder in the zip") from None
        except NotImplementedError as exc:  # zipfile: "That compression method is not supported"
            raise UnsafeArchiveError(f"cannot read {_short(m.filename)}: {exc} (zip it again with the usual "
                                     "'deflate' compression)") from None
        except RuntimeError:  # zipfile: "File … is encrypted, password required for extraction"
            raise UnsafeArchiveError(f"cannot read {_short(m.filename)}: it is encrypted") from None
        except (zipfile.BadZipFile, EOFError, zlib.error, ValueError) as exc:  # bad CRC, truncated, corrupt data
            raise UnsafeArchiveError(f"cannot read {_short(m.filename)}: the zip is damaged ({exc})") from None
        except OSError as exc:  # a name the file system refuses, a full disk
            raise UnsafeArchiveError(f"cannot extract {_short(m.filename)}: {exc.strerror or exc}") from None


#: File suffix per decoded format, for photos saved by :func:`add_class_photos` (MPO: a phone's multi-picture JPEG).
_SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}
MAX_NAME_CHARS = 80


def check_folder_name(name: str, what: str = "class") -> str:
    """``name`` stripped, if it can be a folder name for a class or dataset: not empty, no path separators, not
    ``.``/``..``, not hidden or ``_``-prefixed (CarNet skips those folders), no control characters, at most
    :data:`MAX_NAME_CHARS` characters.

    Raises:
        CarNetError: it cannot; the message says why.
    """
    name = " ".join(str(name).split())
    if not name:
        raise CarNetError(f"give the {what} a name")
    if any(sep in name for sep in ("/", "\\")) or name in (".", ".."):
        raise CarNetError(f"{what} name {name!r}: no / or \\ and not . or ..")
    if name.startswith((".", "_")):
        raise CarNetError(f"{what} name {name!r}: cannot start with . or _ (folders CarNet skips)")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise CarNetError(f"{what} name {name!r}: holds control characters")
    if len(name) > MAX_NAME_CHARS:
        raise CarNetError(f"{what} name is {len(name)} characters long; at most {MAX_NAME_CHARS}")
    return name


@dataclass
class AddedPhotos:
    """What :func:`add_class_photos` did: files saved, photos already in the class, and photos refused (name,
    reason)."""
    folder: Path
    saved: list[str] = field(default_factory=list)
    already_there: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


def add_class_photos(dataset: str | os.PathLike, class_name: str,
                     photos: Sequence[tuple[str, bytes]]) -> AddedPhotos:
    """Add photos to the class folder ``dataset/<class_name>/`` (both created when new): a dataset of class folders,
    built class by class as in Teachable Machine, which CarNet's readers split into train and val.

    Each photo is decoded first (:func:`~carnet_core.data.images.load_image`: empty, truncated, not-an-image and oversized
    files are refused with the reason) and saved as it came (no re-encoding), named after its content's SHA-256 with
    its format's suffix: the same photo added twice is one file, and no uploaded name reaches the file system.

    Args:
        dataset: the dataset folder.
        class_name: the class (:func:`check_folder_name`).
        photos: (file name as uploaded, bytes) pairs.

    Raises:
        CarNetError: a class name that cannot be a folder name, or a folder that cannot be written (the message says
            how many photos were saved before).
    """

    folder = Path(dataset) / check_folder_name(class_name)
    report = AddedPhotos(folder)
    for name, data in photos:
        try:
            load_image(data, name=name)
            with Image.open(io.BytesIO(data)) as img:
                suffix = _SUFFIXES.get(img.format or "", ".jpg")
        except ImageError as exc:
            report.refused.append((name, str(exc)))
            continue
        target = folder / f"{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
        if target.exists():
            report.already_there.append(name)
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)  # a half-written photo is never read as one
        except OSError as exc:  # a read-only data root, a full disk, a file where the folder should be
            raise CarNetError(f"cannot save photos in {folder}: {exc.strerror or exc}"
                              + (f" ({len(report.saved)} saved before)" if report.saved else "")) from None
        report.saved.append(name)
    return report


def remove_class(dataset: str | os.PathLike, class_name: str) -> None:
    """Delete the class folder ``dataset/<class_name>/`` and its photos.

    Raises:
        CarNetError: a name that is not a class folder of ``dataset``, or a folder that cannot be removed.
    """
    folder = Path(dataset) / check_folder_name(class_name)
    if not folder.is_dir():
        raise CarNetError(f"{Path(dataset).name} has no class {class_name!r}")
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        raise CarNetError(f"cannot remove {folder}: {exc.strerror or exc}") from None


def class_counts(dataset: str | os.PathLike) -> dict[str, int]:
    """{class folder name: number of photos in it} for a dataset of class folders (sorted by name; {} when the
    folder does not exist yet)."""
    dataset = Path(dataset)
    return {f.name: len(list_images(f)) for f in class_folders(dataset)} if dataset.is_dir() else {}
