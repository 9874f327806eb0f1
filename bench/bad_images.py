"""The bad-image corpus: odd and hostile files of 60 kinds, and `predict` run over a folder of them.

    python bench/bad_images.py [--out DIR] [--keep]

Writes the corpus (each file's kind in its name), runs ``python -m carnet_core predict FOLDER --json`` on it in a
child process, and prints per file whether it got a prediction or the reason it was refused, then the child's exit
code, wall time and peak RSS (MB). Targets (the hardening issue): no traceback, no hang (a named pipe, /dev/zero
behind a link), every file a result or a specific reason, non-finite float images refused, peak RSS <= 2 GB.
``tests/data/test_bad_images.py`` runs the same corpus.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def _png(size=(64, 48), mode="RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, **kw).save(buf, "PNG")
    return buf.getvalue()


def _photo(fmt="JPEG", size=(320, 240), mode="RGB", **kw) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _float_tiff(value: float) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32), value, dtype=np.float32), mode="F").save(buf, "TIFF")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` with almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _exif_jpeg(orientation: int) -> bytes:
    image = Image.new("RGB", (80, 40), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.new("P", (40, 40), i) for i in range(5)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def _multipage_tiff() -> bytes:
    frames = [Image.new("RGB", (40, 40), (i * 40, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _bad_crc_png() -> bytes:
    data = bytearray(_png())
    data[29] ^= 0xFF  # inside IHDR's CRC
    return bytes(data)


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.jpg", _photo())
    return buf.getvalue()


#: (file name, bytes or a callable making the file at a path) — the corpus, ≥ 55 kinds.
def corpus() -> list[tuple[str, object]]:
    jpeg = _photo()
    heic = (ROOT / "tests" / "data" / "portrait.heic").read_bytes()
    return [
        ("01_empty.jpg", b""),
        ("02_one_byte.jpg", b"\xff"),
        ("03_truncated.jpg", jpeg[: len(jpeg) // 2]),
        ("04_truncated.png", _png()[:40]),
        ("05_text.jpg", b"just some text, not an image\n" * 20),
        ("06_web_page.jpg", b"<!DOCTYPE html><html><body><img src='car.jpg'></body></html>"),
        ("07_pdf.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\n"),
        ("08_zip.jpg", _zip()),
        ("09_svg.svg", b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>"),
        ("10_wide_65000x1.png", _png((65000, 1))),
        ("11_tall_1x65000.png", _png((1, 65000))),
        ("12_wide_200000x1.png", _png_claiming(200000, 1)),
        ("13_tall_1x200000.png", _png_claiming(1, 200000)),
        ("14_bomb_header_100000x100000.png", _png_claiming(100000, 100000)),
        ("15_bomb_60MP.png", _png((10000, 6000))),
        ("16_one_pixel.png", _png((1, 1))),
        ("17_two_pixels.png", _png((2, 1))),
        ("18_huge_7000x7000.gif", (lambda p: Image.new("P", (7000, 7000), 3).save(p))),
        ("19_animated.gif", _animated_gif()),
        ("20_16bit.png", _png(mode="I;16")),
        ("21_grey.png", _png(mode="L", color=128)),
        ("22_grey_alpha.png", _png(mode="LA", color=(128, 0))),
        ("23_rgba.png", _png(mode="RGBA", color=(10, 200, 10, 100))),
        ("24_palette.png", _png(mode="P", color=5)),
        ("25_bilevel.bmp", _photo("BMP", mode="1")),
        ("26_cmyk.jpg", _photo("JPEG", mode="CMYK")),
        ("27_float_nan.tif", _float_tiff(float("nan"))),
        ("28_float_inf.tif", _float_tiff(float("inf"))),
        ("29_float_ok.tif", _float_tiff(0.5)),
        ("30_int32.tif", (lambda p: Image.fromarray(np.full((32, 32), 70000, np.int32), mode="I").save(p))),
        ("31_multipage.tif", _multipage_tiff()),
        ("32_lossy.webp", _photo("WEBP")),
        ("33_lossless_alpha.webp", (lambda p: Image.new("RGBA", (50, 50), (1, 2, 3, 50)).save(p, lossless=True))),
        ("34_exif_rotated.jpg", _exif_jpeg(6)),
        ("35_exif_bogus_orientation.jpg", _exif_jpeg(9)),
        ("36_progressive.jpg", _photo("JPEG", progressive=True)),
        ("37_quality_1.jpg", _photo("JPEG", quality=1)),
        ("38_trailing_garbage.jpg", jpeg + b"\0garbage" * 1000),
        ("39_png_named.jpg", _png()),
        ("40_jpeg_named.png", jpeg),
        ("41_UPPER.JPG", jpeg),
        ("42_long.jpeg", jpeg),
        ("43_spaces in name.jpg", jpeg),
        ("44_ünïcødé_名前.jpg", jpeg),
        ("45_bad_crc.png", _bad_crc_png()),
        ("46_phone.heic", heic),
        ("47_icon.ico", (lambda p: Image.new("RGB", (32, 32), (1, 100, 200)).save(p, sizes=[(32, 32)]))),
        ("48_targa.tga", (lambda p: Image.new("RGB", (32, 32)).save(p))),
        ("49_folder.jpg", (lambda p: p.mkdir())),
        ("50_link_to_photo.jpg", (lambda p: p.symlink_to(p.parent / "42_long.jpeg"))),
        ("51_dangling_link.jpg", (lambda p: p.symlink_to(p.parent / "does_not_exist.jpg"))),
        ("52_link_loop.jpg", (lambda p: p.symlink_to(p))),
        ("53_named_pipe.jpg", (lambda p: os.mkfifo(p))),
        ("54_dev_zero.jpg", (lambda p: p.symlink_to("/dev/zero"))),
        ("55_proc_mem.jpg", (lambda p: p.symlink_to("/proc/self/mem"))),
        ("56_gif_no_frames.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"),
        ("57_bmp_lying_header.bmp", b"BM" + struct.pack("<IHHI", 0, 0, 0, 54) + struct.pack(
            "<IiiHHIIiiII", 40, 60000, 60000, 1, 24, 0, 0, 0, 0, 0, 0)),
        ("58_psd_like.psd", b"8BPS\x00\x01" + b"\0" * 100),
        ("59_jpeg2000_header.jp2", b"\0\0\0\x0cjP  \r\n\x87\n" + b"\0" * 50),
        ("60_big_but_fine_4000x3000.jpg", _photo("JPEG", size=(4000, 3000))),
    ]


def write_corpus(folder: Path) -> list[str]:
    """Write the corpus into ``folder`` (created); returns the names written."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for name, content in corpus():
        path = folder / name
        if callable(content):
            content(path)
        else:
            path.write_bytes(content)
        names.append(name)
    return names


def run_predict(folder: Path, timeout: float = 600, env: dict[str, str] | None = None) -> dict:
    """``python -m carnet_core predict FOLDER --json`` in a child process: its exit code, stdout/stderr, JSON
    results, wall time (s) and its own peak RSS (MB): the kernel's high-water mark of the program's memory (VmHWM),
    read while it runs. Not ``ru_maxrss``, which also counts the pages a large parent (a test process) shared with the
    child between its fork and its exec."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "carnet_core", "predict", str(folder), "--json"], cwd=ROOT,
                                stdout=out, stderr=err, env={**os.environ, **(env or {})})
        status, cmdline, peak_kb = Path(f"/proc/{proc.pid}/status"), Path(f"/proc/{proc.pid}/cmdline"), 0
        while proc.poll() is None:
            if time.perf_counter() - t0 > timeout:  # a hang is a kill, then a failed run, not a stuck caller
                proc.kill()
                proc.wait()
                break
            try:
                if b"carnet_core" in cmdline.read_bytes():  # past the exec: the program's own memory
                    peak_kb = max(peak_kb, int(status.read_text().split("VmHWM:")[1].split()[0]))
            except (OSError, IndexError, ValueError):  # gone, or a zombie with no memory left
                pass
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    try:
        results = json.loads(stdout)["results"]
    except (ValueError, KeyError):
        results = []
    return {"code": proc.returncode, "stdout": stdout, "stderr": stderr, "results": results, "seconds": wall,
            "peak_rss_mb": peak_kb / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where to write the corpus (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the corpus folder")
    args = parser.parse_args()
    folder = args.out or Path(tempfile.mkdtemp(prefix="carnet-bad-images-"))
    try:
        names = write_corpus(folder / "corpus")
        run = run_predict(folder / "corpus")
        for r in run["results"]:
            outcome = f"error: {r['error']}" if "error" in r else f"{r['topk'][0]['class']}"
            print(f"{Path(r['image']).name:<36} {outcome[:110]}")
        print(f"\n{len(names)} kinds; {len(run['results'])} results; exit code {run['code']}; "
              f"{run['seconds']:.1f} s; peak RSS {run['peak_rss_mb']:,.0f} MB; "
              f"traceback: {'yes' if 'Traceback' in run['stderr'] else 'no'}")
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
