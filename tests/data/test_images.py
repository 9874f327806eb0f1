"""Image loading on generated files of every accepted format and mode, and on the bad files people upload."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carnet_core import ImageError, load_image
from carnet_core.data.images import list_images


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


RED = (200, 30, 30)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "AVIF"])
def test_formats_decode_to_rgb(fmt):
    out = load_image(encode(Image.new("RGB", (64, 48), RED), fmt))
    assert out.mode == "RGB" and out.size == (64, 48)
    assert np.abs(np.asarray(out, dtype=int)[24, 32] - RED).max() <= 12  # lossy formats, GIF palette


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"),
                                      ("CMYK", "TIFF"), ("1", "PNG"), ("I;16", "PNG"), ("I", "TIFF"), ("F", "TIFF")])
def test_modes_convert_to_rgb(mode, fmt):
    img = Image.new("RGB", (32, 32), RED).convert(mode) if mode not in ("I;16", "I", "F") else \
        Image.fromarray(np.linspace(0, 60000, 32 * 32).reshape(32, 32).astype(
            {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    out = load_image(encode(img, fmt))
    assert out.mode == "RGB" and out.size == (32, 32)
    if mode in ("I;16", "I", "F"):  # 16-bit / float ramps keep their ordering after scaling to 8 bits
        arr = np.asarray(out)[..., 0].astype(int).ravel()
        assert arr[0] < arr[-1] and arr.max() > 150


def test_transparency_is_composited_on_white():
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert np.asarray(load_image(encode(img, "PNG")))[0, 0].tolist() == [255, 255, 255]


def test_gif_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    r, g, b = np.asarray(load_image(data))[8, 8]
    assert r > 200 and b < 50


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = load_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_heic_photos_decode_upright():
    """iPhones save HEIC. tests/data/*.heic were written by pillow-heif (x265) from a 96×64 image of four coloured
    quadrants — red, green / blue, white — portrait.heic with EXIF orientation 6, which HEIF keeps as a rotation of
    the image (irot). They were "HEIC/AVIF, which is not supported"."""
    from conftest import ROOT

    out = load_image(ROOT / "tests" / "data" / "quadrants.heic")
    assert out.mode == "RGB" and out.size == (96, 64)
    arr = np.asarray(out, dtype=int)
    for (y, x), colour in {(8, 8): (220, 30, 30), (8, 88): (30, 200, 30), (56, 8): (30, 30, 220),
                           (56, 88): (240, 240, 240)}.items():
        assert np.abs(arr[y, x] - colour).max() <= 6, (y, x, arr[y, x])
    upright = np.asarray(load_image(ROOT / "tests" / "data" / "portrait.heic"), dtype=int)
    assert upright.shape == (96, 64, 3)  # turned once, not twice (rotation and EXIF orientation both applied)
    assert np.abs(upright[8, 8] - (30, 30, 220)).max() <= 6 and np.abs(upright[8, 56] - (220, 30, 30)).max() <= 6
    data = (ROOT / "tests" / "data" / "quadrants.heic").read_bytes()
    with pytest.raises(ImageError, match=r"^cut.heic: a HEIC/AVIF file that cannot be decoded — cut short, or "):
        load_image(data[:300], name="cut.heic")


def test_zero_bytes(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.jpg: the file is empty"):
        load_image(p)


def test_truncated_jpeg():
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2], name="half.jpg")


def test_text_and_pdf_are_not_images():
    with pytest.raises(ImageError, match="not an image.*text file"):
        load_image(b"make,model\nAudi,S5\n", name="cars.csv")
    with pytest.raises(ImageError, match="PDF"):
        load_image(b"%PDF-1.7\n\x00\x01\xff", name="doc.pdf")


def test_a_saved_web_page_and_an_svg_are_named():
    """"Save link as…" on an image search result saves the HTML page under the photo's name; a logo may be an SVG.
    Both were "a text file"."""
    page = b"\n<!DOCTYPE html>\n<html lang=en><head><title>audi s5 - Search</title></head><body></body></html>"
    with pytest.raises(ImageError, match=r"^audi\.jpg: not an image .* \(it looks like a web page, not the image on "
                                         r"it: open the image itself, then save that\)"):
        load_image(page, name="audi.jpg")
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    with pytest.raises(ImageError, match=r"it looks like an SVG drawing, which is not supported: export it as PNG"):
        load_image(svg, name="logo.svg")


def test_huge_dimensions_are_refused_before_decoding():
    big = encode(Image.new("1", (10_000, 8_000)), "PNG")  # 80 MP, a few kB compressed
    with pytest.raises(ImageError, match="80 megapixels; the limit is 50"):
        load_image(big, name="big.png")
    bomb = encode(Image.new("1", (15_000, 15_000)), "PNG")  # 225 MP: PIL's own bomb guard fires at open
    with pytest.raises(ImageError, match="too large|megapixels"):
        load_image(bomb, name="bomb.png")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a folder"):
        load_image(tmp_path)
    # a web address (`predict https://…/car.jpg`) is said to be one, whole; it read "https:/…/car.jpg: no such file"
    with pytest.raises(ImageError, match=r"^https://example.com/car.jpg: a web address; CarNet reads image files on "
                                         r"this machine — download the image first"):
        load_image("https://example.com/car.jpg")


def test_list_images(tmp_path):
    for name in ("b.JPG", "a.png", "notes.txt", "c.HEIC", "d.avif"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.HEIC", "d.avif"]
    assert list_images(tmp_path / "missing") == []


def test_dim_outside_darkens_what_a_crop_cuts_off():
    from carnet_core.data.images import dim_outside

    photo = Image.new("RGB", (300, 100), (200, 100, 50))
    out = dim_outside(photo, (100.2, 0, 199.8, 100))  # rounded to whole pixels
    a = np.asarray(out)
    assert out.size == photo.size and (a[:, 100:200] == (200, 100, 50)).all()
    assert (a[:, :100] == (70, 35, 17)).all() and (a[:, 200:] == (70, 35, 17)).all()
    assert dim_outside(photo, (0, 0, 300, 100)) is photo


def test_thumbnail_is_a_small_upright_jpeg_and_a_bad_file_is_an_image_error(tmp_path):
    from carnet_core.data.images import fit_within, thumbnail

    photo = Image.new("RGB", (1200, 800), RED)
    photo.paste((30, 30, 200), (0, 0, 600, 800))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90° clockwise: the blue half on top
    (tmp_path / "car.jpg").write_bytes(encode(photo, "JPEG", exif=exif.tobytes()))
    thumb = Image.open(io.BytesIO(thumbnail(tmp_path / "car.jpg", px=96)))
    assert thumb.format == "JPEG" and thumb.size == (64, 96)  # upright and the longer side 96 px
    a = np.asarray(thumb).astype(int)
    assert a[10, 32, 2] > 150 > a[10, 32, 0] and a[85, 32, 0] > 150 > a[85, 32, 2]  # blue above, red below
    assert load_image(tmp_path / "car.jpg", draft=96).size == (100, 150)  # decoded at 1/8, still over 96 px a side
    assert load_image(tmp_path / "car.jpg").size == (800, 1200)
    small = Image.new("RGB", (40, 30))
    assert fit_within(small, 96) is small  # never enlarged
    (tmp_path / "notes.jpg").write_text("not a photo")
    with pytest.raises(ImageError, match="notes.jpg"):
        thumbnail(tmp_path / "notes.jpg")


def test_memory_bombs_that_pass_the_pixel_count_are_refused_by_their_shape(tmp_path):
    """A 200000×1 PNG is 664 bytes and 0.2 megapixels, but resized to a 224 px shorter side it is 44.8 gigapixels:
    it took a 24 GB machine down. The aspect ratio is bounded, both ways."""
    from carnet_core.data.images import MAX_ASPECT

    Image.new("L", (200_000, 1)).save(tmp_path / "wide.png")
    Image.new("L", (1, 65_000)).save(tmp_path / "tall.png")
    Image.new("RGB", (MAX_ASPECT * 10, 10)).save(tmp_path / "panorama.png")  # at the limit: read
    assert (tmp_path / "wide.png").stat().st_size < 1000
    with pytest.raises(ImageError, match=r"wide\.png: image is 200000×1 px, 200,000:1; CarNet reads images up to 20:1"):
        load_image(tmp_path / "wide.png")
    with pytest.raises(ImageError, match=r"tall\.png: image is 1×65000 px"):
        load_image(tmp_path / "tall.png")
    assert load_image(tmp_path / "panorama.png").size == (MAX_ASPECT * 10, 10)


def test_non_finite_float_images_are_refused(tmp_path):
    arr = np.array([[np.nan, 1.0], [2.0, 3.0]], dtype=np.float32)
    Image.fromarray(arr, "F").save(tmp_path / "nan.tif")
    Image.fromarray(np.where(np.isnan(arr), np.inf, arr), "F").save(tmp_path / "inf.tif")
    Image.fromarray(np.nan_to_num(arr), "F").save(tmp_path / "fine.tif")
    for name in ("nan.tif", "inf.tif"):
        with pytest.raises(ImageError, match=f"{name}: the image holds NaN or infinite pixel values"):
            load_image(tmp_path / name)
    assert load_image(tmp_path / "fine.tif").mode == "RGB"


def test_only_regular_files_are_read(tmp_path):
    """A named pipe made `predict` wait forever; /dev/zero was read until MemoryError; /proc/self/mem gave an
    'Input/output error' that named no file."""
    import os

    os.mkfifo(tmp_path / "pipe.jpg")
    with pytest.raises(ImageError, match=r"pipe\.jpg: not a regular file"):
        load_image(tmp_path / "pipe.jpg")  # returns at once: the pipe is never opened
    with pytest.raises(ImageError, match=r"zero: not a regular file"):
        load_image("/dev/zero")
    if Path("/proc/self/mem").exists():
        with pytest.raises(ImageError, match=r"mem: cannot read the file"):
            load_image("/proc/self/mem")


def test_decoded_pixels_in_flight_are_bounded_across_threads():
    """A second thread waits while the first holds most of the budget, and goes when it is released; a photo over the
    whole budget goes alone rather than never."""
    import threading

    from carnet_core.data.images import PixelBudget

    budget = PixelBudget(100)
    entered = threading.Event()

    def second():
        with budget.hold(50):
            entered.set()

    with budget.hold(80):
        waiting = threading.Thread(target=second)
        waiting.start()
        waiting.join(timeout=0.5)
        assert waiting.is_alive() and not entered.is_set() and budget.used == 80
    waiting.join(timeout=10)
    assert entered.is_set() and budget.used == 0
    with budget.hold(10**9):  # larger than the budget: held as the whole of it
        assert budget.used == 100
    assert budget.used == 0


def test_an_image_size_is_read_from_its_header():


    from carnet_core.data.images import peek_size

    data = io.BytesIO()
    Image.new("RGB", (7000, 30)).save(data, "PNG")
    assert peek_size(data.getvalue()) == (7000, 30) and peek_size(b"not an image") is None
