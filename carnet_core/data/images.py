"""Image loading that takes what people upload and turns it into an RGB ``PIL.Image``.

Accepts JPEG, PNG, WebP, BMP, GIF (first frame), TIFF, HEIC/HEIF (iPhone photos; decoded by pi-heif, libheif's
decoder-only Pillow plugin) and AVIF (Pillow); applies the EXIF orientation; converts grayscale,
grayscale+alpha, RGBA, palette, CMYK and 16-bit / float images to 8-bit RGB (transparency is composited on
white). Anything else raises :class:`~carnet_core.errors.ImageError` with a message saying what is wrong.
"""

from __future__ import annotations

import contextlib
import io
import stat
import threading
import warnings
from pathlib import Path
from typing import BinaryIO, Iterator, Union

import numpy as np
from pi_heif import register_heif_opener
from PIL import Image, ImageOps, UnidentifiedImageError

from carnet_core._io import release_free_memory
from carnet_core.errors import ImageError

register_heif_opener()  # HEIC / HEIF for PIL.Image.open; rotation (irot) applied by libheif, EXIF orientation reset

#: Formats CarNet decodes (PIL format names).
SUPPORTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO", "HEIF", "AVIF")
#: The same, as people name them (for messages and upload widgets).
FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF, TIFF, HEIC, AVIF"
#: File name extensions for upload widgets and folder scans.
IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "heic", "heif",
                                     "avif")
#: Largest image accepted, in pixels (width × height): 50 MP, far above any camera photo, far below a
#: decompression bomb.
MAX_PIXELS: int = 50_000_000
#: Largest file accepted, in bytes.
MAX_FILE_BYTES: int = 50 * 1024 * 1024
#: Longest side over shortest side accepted: a model resizes the shorter side to its input (224 px, say), so a
#: 200000×1 PNG of 664 bytes would become a 44.8-gigapixel image. Panoramas stay well below it.
MAX_ASPECT: int = 20

ImageSource = Union[str, Path, bytes, bytearray, BinaryIO, Image.Image]


class PixelBudget:
    """Decoded pixels in flight at once across the threads of a process (every session of a server): a caller holds
    a photo's pixels from its decoding until it has been reduced to what is kept (a preview, a model input), and
    waits while others hold the rest. A photo over the whole budget goes alone. Bounds a server's memory under a
    burst of sessions — eight sessions decoding 7000×7000 px pictures at once took one 2 GB above idle — where a
    per-request bound cannot (Python's ``threading.BoundedSemaphore`` counts callers, not their pixels)."""

    def __init__(self, pixels: int):
        self.limit, self.used = pixels, 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = max(0, min(pixels, self.limit))
        with self._cond:
            self._cond.wait_for(lambda: self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            with self._cond:
                self.used -= pixels
                idle = self.used == 0
                self._cond.notify_all()
            if idle and pixels:  # the last big decode of a burst is done: its freed memory goes back to the system
                release_free_memory()


#: Pixels decoded at once in this process (:class:`PixelBudget`): one of the largest photos CarNet reads, or four
#: 12 MP ones. Two 50 MP decodes at once took a server 1.13 GB above idle under a burst of eight sessions.
DECODING = PixelBudget(50_000_000)


def peek_size(source: ImageSource) -> tuple[int, int] | None:
    """An image's (width, height) px from its header, without decoding it; None when the header cannot be read
    (:func:`load_image` then says why)."""
    try:
        if isinstance(source, Image.Image):
            return source.size
        if isinstance(source, (bytes, bytearray)):
            source = io.BytesIO(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(source) as img:
                return img.size
    except Exception:  # any header PIL cannot read: no size to hold, the decode reports it
        return None
    finally:
        if hasattr(source, "seek"):
            with contextlib.suppress(Exception):
                source.seek(0)


def _read_bytes(source: ImageSource) -> tuple[bytes, str]:
    """Bytes of ``source`` and a name for messages."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), "the upload"
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            if path.is_symlink():  # exists() follows links: one to nothing, or a loop of them
                raise ImageError(f"{path.name}: a link to nothing (its target is missing, or the link points to itself)")
            if isinstance(source, str) and "://" in source:  # Path() would also fold its "//" into "/"
                raise ImageError(f"{source}: a web address; CarNet reads image files on this machine — download the "
                                 "image first, then give its file")
            raise ImageError(f"{path}: no such file")
        if path.is_dir():
            raise ImageError(f"{path}: is a folder, not an image file")
        try:
            st = path.stat()
            if not stat.S_ISREG(st.st_mode):  # a pipe would wait for a writer, a device never ends
                raise ImageError(f"{path.name}: not a regular file (a pipe, a device or a socket), not an image file")
            if st.st_size > MAX_FILE_BYTES:
                raise ImageError(f"{path.name}: file is {st.st_size / 2**20:.0f} MB; the limit is "
                                 f"{MAX_FILE_BYTES / 2**20:.0f} MB")
            with open(path, "rb") as f:  # at most the limit and one byte: a file may grow, or lie about its size
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:  # gone since the check, unreadable (/proc/self/mem: "Input/output error"), no permission
            raise ImageError(f"{path.name}: cannot read the file ({exc.strerror or exc})") from None
        if len(data) > MAX_FILE_BYTES:
            raise ImageError(f"{path.name}: file is larger than the {MAX_FILE_BYTES / 2**20:.0f} MB limit")
        return data, path.name
    name = getattr(source, "name", "the upload")
    data = source.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{name}: file is larger than the {MAX_FILE_BYTES / 2**20:.0f} MB limit")
    return data, str(name)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited on a white background."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if img.mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" not in img.info:
        return img.convert("RGB")  # a palette without transparency: no RGBA copy (a 49 MP GIF: 147 MB, not 735)
    if img.mode in ("P", "RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))  # over white, without a white RGBA copy and a composited one
        return flat
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(source: ImageSource, *, name: str | None = None, draft: int | None = None) -> Image.Image:
    """Decode an image file into an RGB ``PIL.Image`` (H×W×3, uint8), ready for a model's transform.

    Args:
        source: a path, raw bytes, a binary file object (e.g. a Streamlit ``UploadedFile``) or a PIL image.
        name: what to call the file in error messages (defaults to the file name).
        draft: for a picture to show, not to classify: a JPEG is decoded at the smallest of 1/1, 1/2, 1/4, 1/8 of
            its size that is still at least ``draft`` px on each side (Pillow's ``Image.draft``; a 12 MP photo at
            256 px: about 4× faster). Other formats are decoded whole.

    Returns:
        The image in RGB, EXIF orientation applied, first frame for animations.

    Raises:
        ImageError: the file is empty, truncated, not an image, an unsupported format, not a regular file, larger
            than :data:`MAX_PIXELS` / :data:`MAX_FILE_BYTES`, longer than :data:`MAX_ASPECT` times its width (or
            the other way round), or a float image with NaN or infinite values. The message names the file and the
            reason.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(ImageOps.exif_transpose(source))
    data, default_name = _read_bytes(source)
    label = name or default_name
    if len(data) == 0:
        raise ImageError(f"{label}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
            raise ImageError(f"{label}: a HEIC/AVIF file that cannot be decoded — cut short, or encoded in a way "
                             "CarNet's decoder lacks; export it as JPEG") from None
        raise ImageError(f"{label}: not an image CarNet can read{_sniff(data)}; "
                         f"supported formats: {FORMAT_NAMES}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{label}: image is too large (over {MAX_PIXELS / 1e6:.0f} megapixels)") from None
    except Exception as exc:  # PIL raises many types on garbage headers
        raise ImageError(f"{label}: cannot read the image header ({exc})") from None
    if img.format not in SUPPORTED_FORMATS:
        raise ImageError(f"{label}: {img.format} images are not supported; "
                         f"supported formats: {FORMAT_NAMES}")
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ImageError(f"{label}: image is {width}×{height} px = {width * height / 1e6:.0f} megapixels; "
                         f"the limit is {MAX_PIXELS / 1e6:.0f} megapixels")
    if width == 0 or height == 0:
        raise ImageError(f"{label}: image has no pixels ({width}×{height})")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageError(f"{label}: image is {width}×{height} px, {max(width, height) / min(width, height):,.0f}:1; "
                         f"CarNet reads images up to {MAX_ASPECT}:1 (a model sees a square)")
    try:
        img.seek(0)  # first frame of GIF / animated WebP / multi-page TIFF
        if draft and img.format in ("JPEG", "MPO"):
            img.draft("RGB", (draft, draft))
        img.load()
        if img.mode == "F" and not np.isfinite(np.asarray(img)).all():
            raise ImageError(f"{label}: the image holds NaN or infinite pixel values")
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageError:
        raise
    except OSError as exc:
        reason = "the file is truncated or corrupt" if "truncated" in str(exc) or "broken" in str(exc) else str(exc)
        raise ImageError(f"{label}: cannot decode the image: {reason}") from None
    except Exception as exc:
        raise ImageError(f"{label}: cannot decode the image ({type(exc).__name__}: {exc})") from None


def dim_outside(image: Image.Image, box: tuple[float, float, float, float], brightness: float = 0.35) -> Image.Image:
    """``image`` (RGB) with everything outside ``box`` ((left, top, right, bottom), px, rounded to whole pixels)
    darkened to ``brightness`` (0-1) of its value: a picture of what a crop keeps. Returns ``image`` itself when the
    box covers it all."""
    left, top, right, bottom = (round(v) for v in box)
    if (left, top, right, bottom) == (0, 0, *image.size):
        return image
    out = image.point(lambda v: int(v * brightness))
    out.paste(image.crop((left, top, right, bottom)), (left, top))
    return out


def fit_within(image: Image.Image, px: int) -> Image.Image:
    """``image`` scaled down (never up) so that its longer side is at most ``px`` pixels, aspect ratio kept
    (Pillow's bicubic resize with ``reducing_gap=3.0``: a fast first reduction by an integer factor, then bicubic);
    ``image`` itself when it is that small already."""
    scale = min(1.0, px / max(image.size))
    if scale == 1.0:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BICUBIC,
                        reducing_gap=3.0)


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """``image`` (RGB) encoded as JPEG at ``quality`` (1-95): what a page hands to the browser to show."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def thumbnail(source: ImageSource, px: int = 160) -> bytes:
    """A JPEG of the image at ``source`` (anything :func:`load_image` takes), its longer side at most ``px`` pixels
    and upright (EXIF orientation applied): a sample gallery's picture of a photo. A few kB; a 12 MP JPEG is
    decoded at 1/8 of its size for it (``load_image(draft=px)``).

    Raises:
        ImageError: the image cannot be read (the message says why, as :func:`load_image`'s).
    """
    return jpeg_bytes(fit_within(load_image(source, draft=px), px), quality=85)


#: The first bytes of the formats CarNet reads: a file that starts so and still fails is a damaged one.
_MAGIC = ((b"GIF8", "GIF"), (b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _sniff(data: bytes) -> str:
    """A short hint of what a non-image file seems to be, for error messages."""
    head = data[:512]
    if head.startswith(b"%PDF"):
        return " (it looks like a PDF)"
    if head.startswith(b"PK\x03\x04"):
        return " (it looks like a zip archive)"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html")):  # "Save link as…" on a search result saves the page
        return " (it looks like a web page, not the image on it: open the image itself, then save that)"
    if b"<svg" in text:
        return " (it looks like an SVG drawing, which is not supported: export it as PNG)"
    for magic, kind in _MAGIC + (((b"BM", "BMP"),) if head[6:10] == b"\0\0\0\0" else ()):  # BM, then 4 zero bytes
        if head.startswith(magic):
            return f" (it starts as a {kind} but holds no picture that can be decoded: cut short or damaged)"
    try:
        head.decode("utf-8")
        return " (it looks like a text file)"
    except UnicodeDecodeError:
        return ""


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files (by extension, see :data:`IMAGE_EXTENSIONS`) directly in ``folder`` — or anywhere under it with
    ``recursive`` — sorted by path; [] if none. Hidden files and folders are left out: macOS writes a ``._photo.jpg``
    of metadata beside each photo on a USB stick, which is no image."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def image_entries(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """Everything under ``folder`` (recursively, hidden files and folders left out) that a classifier of a whole
    folder must account for: (entries named like images — by :data:`IMAGE_EXTENSIONS` — whatever they are: files,
    and also folders, links to nothing, pipes and devices, which :func:`load_image` then refuses with the reason;
    other files, by their names). Both sorted by path."""
    folder = Path(folder)
    named, other = [], []
    for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS:
            if not (path.is_dir() and list_images(path, recursive=True)):  # a folder "2019.jpg" of photos: its photos
                named.append(path)
        elif not path.is_dir():
            other.append(path)
    return named, other


def png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    """``image`` as PNG bytes, with ``text`` as the file's text chunks (PNG ``tEXt``/``iTXt``: keys such as
    ``Author``, ``Copyright``, ``Source``, ``Description``), which image viewers and ``exiftool`` show."""
    from PIL.PngImagePlugin import PngInfo  # lazy: only downloads with credits need it

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()
