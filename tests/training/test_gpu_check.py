"""bench/gpu_check.py, prepared for a CUDA machine, runs its steps end to end on the CPU (a dry run), so the one
GPU session it is for does not find it broken."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_gpu_check_runs_dry_on_the_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--epochs", "1",
                           "--batch", "8", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["device"] == "cpu" and results["peak_gpu_mb"] is None
    assert results["predict (bf16 autocast, channels_last)"] > 0 and results["gradcam_ms"] > 0
    assert 0 <= results["val_top1"] <= 1 and results["finetune_images_per_s"] > 0
    assert "fine-tune, 1 epochs at bf16" in proc.stdout
    refused = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "no CUDA device here" in refused.stderr
