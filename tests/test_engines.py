import json

import pytest
import torch

from carnet_core import load_model, predict
from carnet_core.engines import PARITY_ATOL, OnnxRuntimeEngine, fingerprint, select_engine

from conftest import MOBILENET_TIMM, need


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "seresnet50"])
def test_onnxruntime_matches_torch_for_default_architectures(name):
    """Random weights: the same graph and numerics are checked; real weights are checked below."""
    model = load_model(name, weights="random", device="cpu")
    choice = select_engine(model, "onnxruntime")
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = torch.softmax(model.module(x), 1)
    assert (torch.softmax(choice.engine.logits(x), 1) - ref).abs().max() <= PARITY_ATOL


def test_fast_path_is_chosen_and_equal_on_real_photos(lite0, car_photos):
    mnv2 = load_model("mobilenetv2_100", checkpoint=need(MOBILENET_TIMM), device="cpu")
    photos = car_photos[::9]
    for model in (lite0, mnv2):
        choice = select_engine(model)
        assert choice.engine.name == "onnxruntime", choice.reason  # faster than torch on this CPU
        fast, ref = predict(model, photos), predict(model, photos, engine="torch")
        for a, b in zip(fast.predictions, ref.predictions):
            assert a.class_names == b.class_names
            assert a.probabilities == pytest.approx(b.probabilities, abs=PARITY_ATOL)


def test_export_cache_is_reused_and_invalidated_by_new_weights():
    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    first = OnnxRuntimeEngine(model).path
    mtime = first.stat().st_mtime_ns
    assert OnnxRuntimeEngine(model).path == first and first.stat().st_mtime_ns == mtime  # reused, not re-exported
    before = fingerprint(model)
    with torch.no_grad():
        model.module.classifier.bias.add_(1.0)
    assert fingerprint(model) != before
    second = OnnxRuntimeEngine(model).path
    assert second != first and second.is_file()
    meta = json.loads(second.with_name(second.name + ".json").read_text())
    assert meta["arch"] == "mobilenetv2_100" and len(meta["class_names"]) == 1000


def test_carnet_engine_torch_forces_the_reference(monkeypatch):
    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    monkeypatch.setenv("CARNET_ENGINE", "torch")
    assert select_engine(model).engine.name == "torch"


def test_export_cli(tmp_path):
    from test_cli import run_cli

    out = run_cli("export", "efficientnet_lite0", "--format", "onnx", "--out", str(tmp_path / "m.onnx"))
    assert out.returncode == 0, out.stderr
    assert "max probability difference vs torch" in out.stdout
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["data_config"]["mean"] == [0.5, 0.5, 0.5] and meta["class_names"][817] == "sports car"
