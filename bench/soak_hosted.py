"""Soak the hosted demo: the Procfile's server in hosted mode, driven by real Chromium sessions (Playwright with
Debian's chromium), its resident memory sampled throughout.

    python bench/soak_hosted.py [--sessions 8] [--photos 32] [--requests 1000] [--settle 60]

1. Idle baseline: the server after one warm-up session (a photo classified: model loaded, engine chosen) has closed.
2. Burst: ``--sessions`` browser sessions at once, each uploading ``--photos`` pictures of 7000×7000 px (a few kB
   each as GIFs) to Classify; peak RSS while they run, then RSS ``--settle`` s after they close.
3. Soak: ``--requests`` page requests in turn on Classify and Explain, each a new photo; RSS after the first 50 and
   at the end.

Targets (the hardening issue): burst peak <= 1 GB above the idle baseline; within 100 MB of it after settling; the
soak grows <= 50 MB after its first 50 requests. Prints MB figures and the pass/fail of each target.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def procfile_server(root: Path = ROOT, python_bin: Path | None = None, **env_extra: str):
    """The Procfile's web command of the app in ``root`` (a serving bundle's folder, say) under bash, as a host runs
    it, with ``python_bin`` (a venv's ``bin``; default this Python's) first on PATH; yields (URL, the server's pid)."""
    command = (Path(root) / "Procfile").read_text().strip().removeprefix("web: ")
    port = free_port()
    bin_dir = Path(python_bin) if python_bin is not None else Path(sys.executable).parent
    env = {**os.environ, "PORT": str(port), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", **env_extra}
    server = subprocess.Popen(["bash", "-c", command], cwd=root, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the Procfile's server did not come up") from None
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}", streamlit_pid(port)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a session still connected can hold Streamlit's shutdown up
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)


def serving_venv(requirements: Path) -> Path:
    """A venv with ``requirements`` installed (a serving bundle's), cached by their hash under ``$CARNET_TEST_VENVS``
    (default ``~/.cache/carnet-test-venvs``); its ``bin`` folder. Made once per set of requirements (about half a
    minute from the package index).

    Raises:
        RuntimeError: pip could not install them (its last lines).
    """
    key = hashlib.sha256(Path(requirements).read_bytes() + sys.version.encode()).hexdigest()[:16]
    root = Path(os.environ.get("CARNET_TEST_VENVS", Path.home() / ".cache" / "carnet-test-venvs")) / key
    if not (root / "ready").is_file():
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
        proc = subprocess.run([str(root / "bin" / "pip"), "install", "-q", "-r", str(requirements)],
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"pip install -r {requirements} failed: {proc.stderr[-2000:]}")
        (root / "ready").write_text(Path(requirements).read_text())
    return root / "bin"


def streamlit_pid(port: int) -> int:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if b"streamlit" in b" ".join(args) and str(port).encode() in args:
                return int(cmdline.parent.name)
    raise RuntimeError(f"no server on port {port}")


def rss_mb(pid: int) -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024


class Sampler(threading.Thread):
    """The peak of a process's RSS, sampled every 0.2 s while it runs."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(OSError, AttributeError):
                self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.2)


def classify(page, url: str, files: list[Path], timeout_ms: int = 600_000) -> None:
    """Open Classify in ``page``, upload ``files``, wait for the results."""
    page.goto(f"{url}/classify")
    page.locator("input[type=file]").first.set_input_files([str(f) for f in files])
    page.get_by_text("engine:").first.wait_for(timeout=timeout_ms)


def explain(page, url: str, photo: Path, timeout_ms: int = 120_000) -> None:
    page.goto(f"{url}/explain")
    page.locator("input[type=file]").first.set_input_files(str(photo))
    page.get_by_text("Faithfulness (pytorch-grad-cam").first.wait_for(timeout=timeout_ms)


def main() -> int:
    from playwright.sync_api import sync_playwright  # lazy: only this script drives a browser

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=60.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="carnet-soak-"))
    huge = [work / f"huge{i}.gif" for i in range(args.photos)]
    Image.new("P", (7000, 7000), 3).save(huge[0])
    for path in huge[1:]:
        path.write_bytes(huge[0].read_bytes())
    rng = np.random.default_rng(0)
    photos = []
    for i in range(20):
        photos.append(work / f"photo{i}.jpg")
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(photos[-1], quality=85)

    with procfile_server() as (url, pid), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        warm = browser.new_context()
        classify(warm.new_page(), url, photos[:1])
        warm.close()
        time.sleep(10)
        idle = rss_mb(pid)
        print(f"idle baseline (model loaded, warm-up session closed): {idle:,.0f} MB")

        sampler = Sampler(pid)
        sampler.start()
        contexts = [browser.new_context() for _ in range(args.sessions)]
        pages = [c.new_page() for c in contexts]
        t0 = time.perf_counter()
        for page in pages:  # all uploads started before any is waited for: the server works on them at once
            page.goto(f"{url}/classify")
            page.locator("input[type=file]").first.set_input_files([str(f) for f in huge])
        for page in pages:
            page.get_by_text("engine:").first.wait_for(timeout=900_000)
        burst_s = time.perf_counter() - t0
        for c in contexts:
            c.close()
        sampler.stop.set()
        sampler.join()
        time.sleep(args.settle)
        settled = rss_mb(pid)
        print(f"burst: {args.sessions} sessions × {args.photos} pictures of 7000×7000 px in {burst_s:.0f} s; peak "
              f"{sampler.peak:,.0f} MB (+{sampler.peak - idle:,.0f}); {args.settle:.0f} s after they closed "
              f"{settled:,.0f} MB (+{settled - idle:,.0f})")

        context = browser.new_context()
        page = context.new_page()
        marks = {}
        t0 = time.perf_counter()
        for i in range(args.requests):
            (classify(page, url, [photos[i % len(photos)]]) if i % 2 == 0 else explain(page, url, photos[i % len(photos)]))
            if i + 1 in (50, args.requests) or (i + 1) % 100 == 0:
                marks[i + 1] = rss_mb(pid)
                print(f"  after {i + 1} requests: {marks[i + 1]:,.0f} MB", flush=True)
        soak_s = time.perf_counter() - t0
        context.close()
        browser.close()

    growth = marks[args.requests] - marks.get(50, marks[args.requests])
    print(f"soak: {args.requests} requests (Classify and Explain in turn) in {soak_s:.0f} s; grew {growth:+,.0f} MB "
          f"after the first 50")
    checks = [("burst peak <= idle + 1024 MB", sampler.peak - idle <= 1024),
              ("settled within 100 MB of idle", settled - idle <= 100),
              ("soak growth after 50 requests <= 50 MB", growth <= 50)]
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
