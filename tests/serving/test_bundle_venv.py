"""A serving bundle as a host builds and runs it: a fresh venv from the bundle's requirements.txt (no PyTorch in
it), the bundle's Procfile command on a free port, and Classify, Explain and Compare driven in Chromium.

The venv is cached by the hash of requirements.txt (``bench/soak_hosted.py: serving_venv``): made once per set of
requirements, it takes about half a minute from the package index.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import soak_hosted  # noqa: E402  (bench/ is scripts, not a package)

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.subprocess]

CHROMIUM = Path("/usr/bin/chromium")
GALLERY = sorted((ROOT / "gallery").glob("*.jpg"))[:3]


@pytest.fixture(scope="module")
def site(tmp_path_factory, lite0):
    from carnet_core import load_model
    from carnet_core.cli.bundle import write_bundle

    out = tmp_path_factory.mktemp("hosted") / "site"
    write_bundle(out, [lite0, load_model("efficientnet_lite1", device="cpu", use_hub=False)])
    return out


def test_the_bundle_deploys_on_a_torch_free_venv_and_serves_its_pages_in_a_browser(site, lite0):
    playwright = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("no Chromium at /usr/bin/chromium (apt-get install chromium)")
    from carnet_core.inference.predict import predict

    bin_dir = soak_hosted.serving_venv(site / "requirements.txt")
    no_torch = subprocess.run([str(bin_dir / "python"), "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    expected = [f"Top-5: {p.top1}" for p in predict(lite0, GALLERY)]  # the full install's answers
    clean = {k: v for k, v in os.environ.items() if k.startswith("CARNET_")}  # the tests' folders: not the bundle's
    for name in clean:
        os.environ.pop(name)
    try:
        with soak_hosted.procfile_server(site, bin_dir, CARNET_CACHE_DIR=str(site / ".cache"),
                                         CARNET_STUN="none") as (url, _), \
                playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=soak_hosted.ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            texts = []

            page.goto(f"{url}/classify")
            page.locator("input[type=file]").first.set_input_files([str(g) for g in GALLERY], timeout=120_000)
            page.get_by_text("engine: chosen when the bundle was made").first.wait_for(timeout=120_000)
            page.locator(".gtitle").nth(len(GALLERY) - 1).wait_for(timeout=60_000)
            assert page.locator(".gtitle").all_text_contents() == expected
            texts.append(page.inner_text("body"))

            page.goto(f"{url}/explain")
            page.locator("input[type=file]").first.set_input_files(str(GALLERY[0]), timeout=120_000)
            page.get_by_text("GradCAM heatmap · layer bn2").first.wait_for(timeout=120_000)
            page.get_by_text("keeping only the highlighted region").first.wait_for(timeout=60_000)
            page.get_by_text("without PyTorch").first.wait_for(timeout=60_000)
            texts.append(page.inner_text("body"))

            page.goto(f"{url}/compare")
            page.locator("input[type=file]").first.set_input_files(str(GALLERY[0]), timeout=120_000)
            page.get_by_text("Ensemble (soft)").first.wait_for(timeout=120_000)
            assert page.get_by_text("Grad-CAM for").count() == 2
            texts.append(page.inner_text("body"))
            browser.close()
    finally:
        os.environ.update(clean)
    text = "\n".join(texts)
    assert "Fine-tune" not in text and "Something went wrong" not in text
    for secret in (str(site), str(Path.home()), "/tmp/", "CARNET_", "python -m carnet_core"):
        assert secret not in text, secret
