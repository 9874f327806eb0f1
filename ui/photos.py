"""Photos given to a page: the upload, camera and sample-gallery inputs, each photo decoded once, and the
classified results kept for the session."""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import streamlit as st
from PIL import Image

from carnet_core import ImageError, load_image
from carnet_core.config import gallery_dir, hosted_mode
from carnet_core.data.gallery import Credit
from carnet_core.data.gallery import credit as gallery_credit
from carnet_core.data.images import FORMAT_NAMES, IMAGE_EXTENSIONS, MAX_FILE_BYTES, list_images, thumbnail

MAX_PHOTOS = 32  # classified per run of the Classify page (a classroom's worth; each is decoded at full size)


PHOTO_UPLOAD_MB = MAX_FILE_BYTES // 2**20  # the uploader says the library's limit, and refuses bigger files at once


#: The sample gallery shows this many photos as thumbnails of this width (px); all can be picked by name.
GALLERY_THUMBNAILS = 24


GALLERY_THUMBNAIL_PX = 128


def sample_title(file_name: str) -> str:
    """How the gallery names a photo: its file name without the extension, ``_`` read as a space
    (``Audi_S5_Convertible_2012_02335.jpg`` → ``Audi S5 Convertible 2012 02335``)."""
    return Path(file_name).stem.replace("_", " ")


def gallery_thumbnail(path: Path) -> bytes | None:
    """:func:`carnet_core.data.images.thumbnail` of a gallery photo (a 2x screen's ``GALLERY_THUMBNAIL_PX``), made once
    per process and again when the file changes; None for a file that cannot be read."""
    try:
        stat = path.stat()
    except OSError:  # gone since the folder was listed
        return None
    return _thumbnail(str(path), stat.st_mtime_ns, stat.st_size)


@st.cache_data(max_entries=512, show_spinner=False)
def _thumbnail(path: str, mtime_ns: int, size: int) -> bytes | None:
    try:
        return thumbnail(path, 2 * GALLERY_THUMBNAIL_PX)
    except ImageError:
        return None


def photo_credit(name: str) -> Credit | None:
    """The credit of a sample-gallery photo by its file name (the name :func:`image_inputs` gives it), else None."""
    return gallery_credit(gallery_dir() / name)


def photo_caption(name: str, title: str | None = None) -> str:
    """A photo's caption: ``title`` (default its name) and, for a sample-gallery photo, its credit."""
    credit = photo_credit(name)
    return f"{title or name} — {credit.short}" if credit else (title or name)


def image_inputs(key: str, multiple: bool = True) -> list[tuple[str, bytes]]:
    """Upload / camera / gallery tabs. Returns (display name, bytes-like source) pairs, possibly empty."""
    upload_tab, camera_tab, gallery_tab = st.tabs(["Upload", "Camera", "Sample gallery"])
    chosen: list[tuple[str, bytes]] = []
    with upload_tab:
        files = st.file_uploader(f"Car photos ({FORMAT_NAMES})", accept_multiple_files=multiple,
                                 key=f"{key}_upload", max_upload_size=PHOTO_UPLOAD_MB)
        files = files if isinstance(files, list) else [files] if files else []
        chosen += [(f.name, f.getvalue()) for f in files]
    with camera_tab:
        if st.toggle("Use the camera", key=f"{key}_camera_on"):
            shot = st.camera_input("Take a photo", key=f"{key}_camera")
            if shot is not None:
                chosen.append(("camera photo", shot.getvalue()))
    with gallery_tab:
        folder = gallery_dir()
        samples = list_images(folder)
        if not samples:
            st.info("The sample gallery is empty on this demo." if hosted_mode() else
                    f"The sample gallery is empty. Put some car photos ({', '.join(IMAGE_EXTENSIONS[:5])}…) in "
                    f"`{folder}`, or point `CARNET_GALLERY_DIR` at a folder of images, then reload.")
        else:
            shown = [(p.name, gallery_thumbnail(p)) for p in samples[:GALLERY_THUMBNAILS]]
            shown = [(n, t) for n, t in shown if t is not None]  # an unreadable file is said when picked
            st.image([t for _, t in shown], caption=[photo_caption(n, sample_title(n)) for n, _ in shown],
                     width=GALLERY_THUMBNAIL_PX)
            if len(samples) > GALLERY_THUMBNAILS:
                st.caption(f"The first {GALLERY_THUMBNAILS} of {len(samples)} photos; pick any of them by name.")
            picked = st.multiselect("Sample images", [p.name for p in samples], key=f"{key}_gallery",
                                    max_selections=None if multiple else 1, format_func=sample_title)
            chosen += [(n, (folder / n).read_bytes()) for n in picked]
    return chosen


def gallery_inputs() -> list[tuple[str, bytes]]:
    """Every sample-gallery photo as a (name, bytes) pair, in the gallery's order: what presentation mode steps
    through when nothing else was given. Files that vanished since the folder was listed are left out."""
    found = []
    for path in list_images(gallery_dir()):
        try:
            found.append((path.name, path.read_bytes()))
        except OSError:
            continue
    return found


def digest(data: bytes) -> str:
    """SHA-256 of an image file's bytes (hex): what :func:`explanation` remembers a photo by."""
    return hashlib.sha256(data).hexdigest()


class Photo:
    """One photo given to a page (a pair from :func:`image_inputs`): its name and bytes, their :func:`digest`, and the
    decoded RGB image, read on first use only (a 12 MP JPEG takes about 0.1 s to decode), then kept for this run."""

    def __init__(self, name: str, data: bytes):
        self.name, self.data = name, data

    @cached_property
    def digest(self) -> str:
        return digest(self.data)

    @cached_property
    def image(self) -> Image.Image:
        """Raises:
            ImageError: the bytes are not an image PIL can read (the message says why)."""
        return load_image(self.data, name=self.name)
