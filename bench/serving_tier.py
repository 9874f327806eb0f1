"""The serving tier against the full install, side by side in one run (hosted issue's targets).

    python bench/serving_tier.py [--sessions 8] [--bundle DIR]

Builds a bundle of EfficientNet-Lite0 and Lite1 (or uses ``--bundle``), makes a venv from its requirements.txt
(cached by their hash, bench/soak_hosted.py), and prints:

- the venv's installed size (the files' bytes, and ``du``'s disk use), ``tar czf`` of venv + bundle, and whether
  ``import torch`` fails in it;
- for each tier, its Procfile server (``CARNET_HOSTED=1``) driven in Chromium: server start → first bars (the
  uploader used as soon as it is there), a warm upload → bars for one photo (median of 5), resident memory after
  one session of Classify (3 photos), Explain (GradCAM) and Compare (2 models), and the peak with ``--sessions``
  sessions doing the same at once.

Targets: venv ≤ 600 MB, tar.gz ≤ 250 MB, import torch fails; serving RSS ≤ 400 MB after one session, ≤ 500 MB with
8; start → first bars ≤ 5 s; warm upload → bars ≤ 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soak_hosted import ARGS, CHROMIUM, ROOT, Sampler, procfile_server, rss_mb, serving_venv  # noqa: E402

GALLERY = sorted((ROOT / "gallery").glob("*.jpg"))


def tree_mb(folder: Path) -> tuple[float, float]:
    """(the files' bytes, ``du``'s disk use), MB."""
    files = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    du = subprocess.run(["du", "-sm", str(folder)], capture_output=True, text=True).stdout.split()[0]
    return files / 2**20, float(du)


def targz_mb(paths: list[Path]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "site.tar.gz"
        with tarfile.open(out, "w:gz") as tar:
            for p in paths:
                tar.add(p, arcname=p.name)
        return out.stat().st_size / 2**20


def upload(page, url: str, route: str, files: list[Path], done: str, timeout_ms: int = 300_000) -> None:
    page.goto(f"{url}/{route}")
    page.locator("input[type=file]").first.set_input_files([str(f) for f in files], timeout=timeout_ms)
    page.get_by_text(done).first.wait_for(timeout=timeout_ms)


SESSION = [("classify", GALLERY[:3], "engine:"), ("explain", GALLERY[3:4], "keeping only the highlighted region"),
           ("compare", GALLERY[4:5], "Ensemble (soft)")]


def one_tier(root: Path, bin_dir: Path, sessions: int) -> dict[str, float]:
    from playwright.sync_api import sync_playwright  # lazy: only this script drives a browser

    row: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARNET_")}
        os.environ.clear()
        os.environ.update(env)
        t0 = time.perf_counter()
        with procfile_server(root, bin_dir, CARNET_CACHE_DIR=cache, CARNET_STUN="none") as (url, pid), \
                sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page()
            upload(page, url, "classify", GALLERY[:1], "engine:")
            row["start → first bars (s)"] = time.perf_counter() - t0
            warm = []
            for photo in GALLERY[5:10]:
                page.goto(f"{url}/classify")
                page.locator("input[type=file]").first.wait_for(state="attached", timeout=120_000)
                page.wait_for_timeout(300)  # the page settled: time the upload alone
                t = time.perf_counter()
                page.locator("input[type=file]").first.set_input_files(str(photo))
                page.get_by_text("engine:").first.wait_for(timeout=120_000)
                warm.append(time.perf_counter() - t)
            row["warm upload → bars (s)"] = statistics.median(warm)
            for route, files, done in SESSION:
                upload(page, url, route, files, done)
            row["RSS after one session (MB)"] = rss_mb(pid)
            sampler = Sampler(pid)
            sampler.start()
            pages = [browser.new_context().new_page() for _ in range(sessions)]
            for route, files, done in SESSION:  # each step started in every session, then awaited in each
                for pg in pages:
                    pg.goto(f"{url}/{route}")
                    pg.locator("input[type=file]").first.set_input_files([str(f) for f in files], timeout=300_000)
                for pg in pages:
                    pg.get_by_text(done).first.wait_for(timeout=600_000)
            sampler.stop.set()
            sampler.join()
            row[f"peak RSS, {sessions} sessions (MB)"] = max(sampler.peak, rss_mb(pid))
            browser.close()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--bundle", type=Path)
    args = parser.parse_args()
    site = args.bundle
    if site is None:
        from carnet_core import load_model
        from carnet_core.cli.bundle import write_bundle

        site = Path(tempfile.mkdtemp(prefix="carnet-bench-")) / "site"
        write_bundle(site, [load_model(n, device="cpu", use_hub=False)
                            for n in ("efficientnet_lite0", "efficientnet_lite1")])
    bin_dir = serving_venv(site / "requirements.txt")
    venv = bin_dir.parent
    files_mb, du_mb = tree_mb(venv)
    torch = subprocess.run([str(bin_dir / "python"), "-c", "import torch"], capture_output=True).returncode
    print(f"# serving tier: {site}")
    print(f"venv installed size: {files_mb:.0f} MB of files ({du_mb:.0f} MB on disk) · target ≤ 600")
    print(f"tar czf venv + bundle: {targz_mb([venv, site]):.0f} MB · target ≤ 250")
    print(f"import torch in the venv: {'fails' if torch else 'WORKS'} · target: fails")
    rows = {"serving tier (bundle, its venv)": one_tier(site, bin_dir, args.sessions),
            "full install (this project)": one_tier(ROOT, Path(sys.executable).parent, args.sessions)}
    keys = list(next(iter(rows.values())))
    print(f"\n{'':<34}" + "".join(f"{k:>32}" for k in rows))
    for k in keys:
        print(f"{k:<34}" + "".join(f"{r[k]:>32.2f}" for r in rows.values()))
    print("\ntargets (serving tier): start → first bars ≤ 5 s, warm upload → bars ≤ 0.5 s, RSS ≤ 400 MB after one "
          f"session, ≤ 500 MB with {args.sessions}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
