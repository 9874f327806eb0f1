import json

import pytest
import torch
from conftest import CARS_VAL, MOBILENET_TIMM, ROOT, need
from PIL import Image

from carnet_core import CarNetError, load_model
from carnet_core.data.images import load_image
from carnet_core.inference.engines import (
    OnnxRuntimeEngine,
    OpenVinoBF16Engine,
    TorchEngine,
    onnxruntime_session,
    openvino_bf16_missing,
)
from carnet_core.inference.export import STALE_TMP_S, fingerprint, prune_cache
from carnet_core.inference.gate_set import labelled_photos
from carnet_core.inference.parity import (
    MIN_TOP1_AGREEMENT,
    PARITY_ATOL,
    REDUCED_ENGINES,
    LabelledPhotos,
    accuracy_gate,
    parity,
)
from carnet_core.inference.predict import predict
from carnet_core.inference.selection import select_engine


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "seresnet50"])
def test_onnxruntime_matches_torch_for_default_architectures(name):
    """Random weights: the same graph and numerics are checked; real weights are checked below."""
    model = load_model(name, weights="random", device="cpu")
    choice = select_engine(model, "onnxruntime")
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = torch.softmax(model.module(x), 1)
    assert (torch.softmax(choice.engine.logits(x), 1) - ref).abs().max() <= PARITY_ATOL


@pytest.mark.slow
@pytest.mark.shared
def test_fast_path_is_chosen_and_gated_on_a_labelled_set(lite0, car_photos, tmp_path, monkeypatch):
    """With a labelled set every candidate, bf16 and int8 included, is gated (reduced precision by the accuracy gate
    on real car photos: a vehicle at top-1); whatever is chosen passed its gate, and keeps torch's top-1 on other
    photos as often as the gate asks."""
    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path))  # the stored choices stay with this test
    mnv2 = load_model("mobilenetv2_100", checkpoint=need(MOBILENET_TIMM), device="cpu")
    check = car_photos[3::9]
    for model in (lite0, mnv2):
        gate_set = labelled_photos(model, CARS_VAL, limit=120)
        assert gate_set.measure == "vehicle at top-1" and len(gate_set.images) == 120
        choice = select_engine(model, photos=car_photos[::40], calibration=gate_set)
        tried = {c.name: c for c in choice.candidates}
        assert set(tried) == {"torch", "onnxruntime", *REDUCED_ENGINES}, choice.table()
        assert tried["onnxruntime"].parity.passed and tried["onnxruntime"].parity.inputs == "7 photos"
        for name in REDUCED_ENGINES:
            gate = tried[name].gate
            if name == "openvino-bf16" and openvino_bf16_missing():  # no bf16 instructions on this CPU
                assert gate is None and tried[name].note == f"not on this machine: {openvino_bf16_missing()}"
                continue
            assert gate is not None and gate.photos == 90 and gate.set_name == "stanford_cars_40/val (120 photos)", name
            assert gate.reference_accuracy > 0.8  # ImageNet models put a vehicle first on most car photos
            assert gate.passed == (gate.accuracy >= 0.99 * gate.reference_accuracy and gate.agreement >= 0.98
                                   and gate.mean_top1_prob_diff <= 0.05)
        assert tried[choice.engine.name].passed or choice.engine.name == "torch"
        assert choice.engine.name != "torch", choice.reason  # ONNX Runtime fp32 beats eager torch on a CPU
        fast, ref = predict(model, check), predict(model, check, engine="torch")
        same = [a.class_names[0] == b.class_names[0] for a, b in zip(fast.predictions, ref.predictions)]
        assert sum(same) >= MIN_TOP1_AGREEMENT * len(same) - 1, choice.table()
        if choice.engine.name not in REDUCED_ENGINES:
            for a, b in zip(fast.predictions, ref.predictions):
                assert a.probabilities[0] == pytest.approx(b.probabilities[0], abs=PARITY_ATOL)
        model._engine_choice = None  # the session's lite0 goes back to the default choice


@pytest.mark.slow
@pytest.mark.shared
def test_openvino_bf16_runs_in_bf16_and_keeps_the_top1_on_real_photos(lite0, car_photos):
    """On a CPU with bf16 instructions, OpenVINO runs the export in bf16 (not silently in fp32: its probabilities
    differ from fp32's by more than fp32 rounding) and keeps torch's top-1 class on real car photos."""
    if (missing := openvino_bf16_missing()) is not None:
        pytest.skip(f"openvino-bf16: {missing}")
    engine = OpenVinoBF16Engine(lite0)
    assert engine.precision == "bf16"
    x = lite0.preprocess([load_image(p) for p in car_photos[::12][:20]])
    single = engine.one_by_one(x.numpy())  # what single photos get: batch-1 calls
    assert engine.batching is None
    assert torch.allclose(engine.probabilities(x[:3]), single[:3], atol=PARITY_ATOL)
    assert "(batch 3: " in engine.batching  # the first batch of more than one image: how batches run is measured
    probs, reference = engine.probabilities(x), TorchEngine(lite0).probabilities(x)
    # a larger batch is measured again; a model compiled for a batch is used only if it gives the batch-1 calls'
    # probabilities
    assert engine.batching.startswith("batches run ") and "(batch 20: " in engine.batching
    assert torch.allclose(probs, single, atol=PARITY_ATOL)
    assert probs.shape == reference.shape == (20, 1000) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(20), atol=1e-2)
    assert (probs.argmax(1) == reference.argmax(1)).sum() >= 19
    assert 1e-4 < float((probs - reference).abs().max()) < 0.1  # bf16: more than fp32's 1e-4, still close
    assert torch.equal(engine.logits(x[:0]), torch.zeros(0, 1000))
    assert engine.probabilities(x[:7]).shape == (7, 1000)  # smaller than the batched model's: batch-1 calls
    longer = engine.probabilities(torch.cat([x, x, x[:5]]))  # measured at 32 at most; in chunks, then the rest
    assert "(batch 32: " in engine.batching
    assert torch.allclose(longer, torch.cat([probs, probs, probs[:5]]), atol=PARITY_ATOL)


@pytest.mark.slow
@pytest.mark.shared
def test_an_openvino_bf16_choice_is_stored_and_reopened(tmp_path, monkeypatch):
    """openvino-bf16 chosen on a labelled set (fixed timings make it the fastest; the gate's numbers are real) is
    stored beside the export and reopened by a new model object of the same weights without measuring."""
    if (missing := openvino_bf16_missing()) is not None:
        pytest.skip(f"openvino-bf16: {missing}")
    from carnet_core.inference.selection import stored_engine_text

    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path))
    ms = iter([30.0, 10.0, 40.0, 12.0, 5.0])  # torch, onnxruntime, torch-bf16, onnxruntime-int8, openvino-bf16
    monkeypatch.setattr("carnet_core.inference.selection.median_ms", lambda fn, *a, **k: next(ms))
    monkeypatch.setattr("carnet_core.inference.parity.MIN_TOP1_AGREEMENT", 0.9)  # 30 photos: one change is 3 %
    model = load_model("efficientnet_lite0", device="cpu", use_hub=False)
    choice = select_engine(model, calibration=labelled_photos(model, CARS_VAL, limit=40))
    assert choice.engine.name == "openvino-bf16", choice.table()
    assert "Engine **openvino-bf16**, 5.0 ms at batch 1" in stored_engine_text(model)
    monkeypatch.setattr("carnet_core.inference.selection.median_ms", lambda *a, **k: pytest.fail("measured again"))
    again = select_engine(load_model("efficientnet_lite0", device="cpu", use_hub=False))
    assert isinstance(again.engine, OpenVinoBF16Engine) and "stored with the export" in again.reason


def test_openvino_bf16_is_no_candidate_where_it_cannot_run(monkeypatch, tmp_path):
    """Without bf16 instructions (OpenVINO would run fp32 under the bf16 hint) or without OpenVINO, openvino-bf16
    is listed as not on this machine, not timed, not named in the reason; asked for by name, it is refused."""
    import numpy as np

    import carnet_core.inference.engines as E

    class NoBF16:
        def get_property(self, device, name):
            assert (device, name) == ("CPU", "OPTIMIZATION_CAPABILITIES")
            return ["FP32", "INT8", "EXPORT_IMPORT"]

    def not_installed():
        raise ImportError("No module named 'openvino'")

    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path))
    model = _six_classes()
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)) for _ in range(16)]
    gate_set = LabelledPhotos(photos, lambda probs, idx: np.asarray(probs).argmax(1) == 0, "noise")
    for core, why in ((NoBF16, "this CPU has no bf16 instructions (AMX or AVX-512-BF16)"),
                      (not_installed, "OpenVINO is not installed")):
        monkeypatch.setattr(E, "_openvino_core", core)
        assert openvino_bf16_missing() == why
        with pytest.raises(CarNetError, match=rf"openvino-bf16 cannot run here: {why}".replace("(", r"\(")
                           .replace(")", r"\)")):
            OpenVinoBF16Engine(model)
        choice = select_engine(model, calibration=gate_set)
        row = next(c for c in choice.candidates if c.name == "openvino-bf16")
        assert row.note == f"not on this machine: {why}" and row.ms is None and row.gate is None
        assert "openvino" not in choice.reason and choice.engine.name != "openvino-bf16"
        with pytest.raises(CarNetError, match="openvino-bf16 is not available for rgb: openvino-bf16 cannot run here"):
            select_engine(model, "openvino-bf16", calibration=gate_set)
        model._engine_choice = None


@pytest.mark.shared
def test_onnxruntime_sessions_on_real_photos(lite0, car_photos):
    """Single images run on a session whose batch dimension is fixed to 1 (it refuses two images); a batch is run
    either way after a measurement, and both ways match torch on real photos."""
    engine = OnnxRuntimeEngine(lite0)
    x = lite0.preprocess([load_image(p) for p in car_photos[::12][:10]])
    with pytest.raises(Exception, match="dimensions"):
        engine.session.run(None, {"input": x[:2].numpy()})
    with torch.no_grad():
        ref = torch.softmax(lite0.module(x), 1)
    assert engine.batching is None
    assert (engine.probabilities(x[:1]) - ref[:1]).abs().max() <= PARITY_ATOL  # the export's softmax output
    assert (torch.softmax(engine.logits(x[:1]), 1) - ref[:1]).abs().max() <= PARITY_ATOL
    assert engine.batching is None  # one image: no batching decision yet
    probs = engine.probabilities(x)  # whichever way was measured faster
    assert engine.batching.startswith("batches run ") and "batch 8:" in engine.batching
    assert (probs - ref).abs().max() <= PARITY_ATOL
    assert (torch.softmax(engine.logits(x), 1) - ref).abs().max() <= PARITY_ATOL
    one_by_one = engine.one_by_one(x.numpy())
    one_call = torch.from_numpy(onnxruntime_session(engine.path).run(["probabilities"], {"input": x.numpy()})[0])
    assert (one_by_one - ref).abs().max() <= PARITY_ATOL and (one_call - ref).abs().max() <= PARITY_ATOL
    assert engine.probabilities(x[:0]).shape == (0, 1000) and engine.logits(x[:0]).shape == (0, 1000)


@pytest.mark.parametrize("single_ms, whole_ms, atol, batched", [(2.0, 1.0, PARITY_ATOL, True),
                                                                 (1.0, 2.0, PARITY_ATOL, False),
                                                                 (2.0, 1.0, -1.0, False)])
def test_batching_follows_the_measurement_and_parity(monkeypatch, single_ms, whole_ms, atol, batched):
    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    engine = OnnxRuntimeEngine(model)
    times = iter([single_ms * 4, whole_ms * 4])  # median_ms of the 4 batch-1 calls, then of the one call
    monkeypatch.setattr("carnet_core.inference.engines.median_ms", lambda fn, *a, **k: next(times))
    monkeypatch.setattr("carnet_core.inference.parity.PARITY_ATOL", atol)
    engine.logits(torch.randn(4, 3, 224, 224))
    assert (engine.batched_session is not None) == batched, engine.batching
    assert ("in one call (" in engine.batching) == batched
    assert ("fails parity" in engine.batching) == (atol < 0)


@pytest.mark.shared
def test_the_one_off_batching_choice_is_not_a_batchs_model_time(lite0, car_photos, monkeypatch, fake_clock):
    """The first batch of several photos makes ONNX Runtime's engine choose how batches run (timing both ways): that
    choice is made before the model-time timer starts, and made once. The choice is made to take 1000 s on a fake
    clock that otherwise ticks 1 ms a reading."""
    from carnet_core.inference.selection import select_engine

    engine = select_engine(lite0, "onnxruntime").engine
    engine.batching = engine.batched_session = None  # as for a model's first batch
    choose, calls = engine.choose_batching, []

    def slow_choice(x, repeats=5):
        calls.append(len(x))
        fake_clock.advance(1000.0)
        return choose(x, repeats)

    monkeypatch.setattr(engine, "choose_batching", slow_choice)
    first = predict(lite0, car_photos[:3], engine="onnxruntime")
    second = predict(lite0, car_photos[3:6], engine="onnxruntime")
    assert calls == [3] and engine.batching.startswith("batches run")
    assert first.latency_ms < 10 and second.latency_ms < 10, (first.latency_ms, second.latency_ms)


def test_parity_rules():
    ref = torch.softmax(torch.randn(6, 1000, generator=torch.Generator().manual_seed(0)) * 3, 1)
    assert parity(ref, ref + 5e-5, "onnxruntime", "x").passed
    assert not parity(ref, ref + 2e-4, "onnxruntime", "x").passed
    report = parity(ref, ref, "torch-bf16", "6 photos")  # reduced precision passes only the labelled accuracy gate
    assert not report.passed and report.top5_identical == 1.0 and "labelled set" in report.rule


def test_accuracy_gate_rules():
    """MLPerf's rule (≥ 99 % of fp32's top-1 accuracy) and ours (same top-1 on ≥ 98 %, |Δp| ≤ 0.05 on average), each
    one failing on its own."""
    n = 200
    ref = torch.softmax(torch.randn(n, 10, generator=torch.Generator().manual_seed(0)) * 3, 1)
    right = torch.ones(n, dtype=torch.bool)
    right[:40] = False  # fp32: 80 % top-1
    gate = accuracy_gate(ref, ref.clone(), right.clone(), right, "onnxruntime-int8", "set")
    assert gate.passed and gate.agreement == 1.0 and gate.mean_top1_prob_diff == 0.0
    assert gate.to_dict()["reference_accuracy"] == pytest.approx(0.8)
    one_less = right.clone()
    one_less[40] = False  # 159/160 = 99.4 % of fp32's accuracy: passes
    assert accuracy_gate(ref, ref, one_less, right, "e", "set").passed
    two_less = one_less.clone()
    two_less[41] = False  # 158/160 = 98.75 %: fails on accuracy alone
    assert not accuracy_gate(ref, ref, two_less, right, "e", "set").passed
    flipped = ref.clone()  # the top-1 class changes on 5 photos (97.5 % agreement), accuracy kept
    top = ref.argmax(1)
    for i in range(100, 105):
        flipped[i, top[i]] = 0.0
    gate = accuracy_gate(ref, flipped, right, right, "e", "set")
    assert gate.agreement == pytest.approx(0.975) and not gate.passed
    shifted = ref.clone()
    shifted[torch.arange(n), top] -= 0.06  # same top-1 everywhere, probabilities 0.06 lower on average
    shifted = shifted.clamp(min=0)
    gate = accuracy_gate(ref, shifted, right, right, "e", "set")
    assert gate.agreement < 1 or gate.mean_top1_prob_diff > 0.05
    assert not gate.passed and "FAILS the accuracy gate on 200 photos of set" in gate.summary()


@pytest.mark.shared
def test_the_gate_set_reads_labels_through_a_mapping(lite0):
    """tiny_vehicles_6 val mapped to ImageNet classes: a photo is right when its top-1 is one of its class's mapped
    ImageNet classes; classes that are not the model's and no mapping are refused for a fine-tuned label set."""
    from conftest import SHARED

    from carnet_core.models.labels import load_mapping

    folder = need(SHARED / "data" / "tiny_vehicles_6")
    mapping = load_mapping(ROOT / "mappings" / "tiny_vehicles_6_to_imagenet.json")
    gate_set = labelled_photos(lite0, folder, mapping)
    assert gate_set.measure == "top-1 accuracy"
    assert gate_set.name.startswith("tiny_vehicles_6/val, mapped to the model's classes (")
    probs = lite0.preprocess(gate_set.images[:4])
    with torch.no_grad():
        probs = torch.softmax(lite0.module(probs), 1)
    right = gate_set.correct(probs, [0, 1, 2, 3])
    from carnet_core.data.datasets import read_labelled_folder
    from carnet_core.models.labels import find_class

    items = read_labelled_folder(folder)
    for i in range(4):
        allowed = {find_class(lite0.class_names, m) for m in mapping[items[i][1]]}
        assert bool(right[i]) == (int(probs[i].argmax()) in allowed)
    with pytest.raises(CarNetError, match="give a mapping file"):
        labelled_photos(_six_classes(), folder)


def _six_classes():
    from carnet_core.models.classifier import Classifier, build_module
    from carnet_core.models.weights import WeightsSource

    return Classifier(module=build_module("mobilenetv2_050", num_classes=3).eval(), name="rgb",
                      arch="mobilenetv2_050", family="mobilenetv2", head="linear", class_names=("r", "g", "b"),
                      weights=WeightsSource("random"), label_set="rgb",
                      data_config={"input_size": [3, 64, 64], "interpolation": "bilinear", "mean": [0.5] * 3,
                                   "std": [0.25] * 3, "crop_pct": 1.0, "crop_mode": "center"})


@pytest.mark.shared
def test_reduced_precision_needs_a_labelled_set_and_a_passing_gate(lite0, monkeypatch):
    with pytest.raises(CarNetError, match="accuracy gate on a labelled set"):
        select_engine(lite0, "torch-bf16", photos=[])
    gate_set = labelled_photos(lite0, CARS_VAL, limit=40)
    monkeypatch.setattr("carnet_core.inference.parity.MIN_ACCURACY_RATIO", 2.0)  # nothing can pass
    with pytest.raises(CarNetError, match="torch-bf16 fails its gate .*FAILS the accuracy gate on 30 photos"):
        select_engine(lite0, "torch-bf16", calibration=gate_set)
    monkeypatch.setenv("CARNET_ENGINE", "fp8")
    with pytest.raises(CarNetError, match="unknown engine 'fp8'"):
        select_engine(lite0)


@pytest.mark.slow
def test_the_carnet_model_runs_on_onnxruntime_and_an_int8_graph_that_fails_to_run_is_no_candidate(tmp_path,
                                                                                                   monkeypatch, capfd):
    """The ML-Decoder head (the CarNet model) exports and passes the fp32 gate. ONNX Runtime's quantizer makes an
    int8 graph of it that ONNX Runtime cannot run (a Reshape of the attention's keys); that raised out of
    select_engine, a traceback in `engines --photos` and on every page once $CARNET_PARITY_PHOTOS was set."""
    import logging

    import numpy as np

    from carnet_core.models.classifier import Classifier, build_module
    from carnet_core.models.weights import WeightsSource

    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = Classifier(module=build_module("tf_efficientnet_lite0", head="ml_decoder", num_classes=6).eval(),
                       name="carnet-tiny", arch="tf_efficientnet_lite0", family="efficientnet", head="ml_decoder",
                       class_names=tuple("abcdef"), weights=WeightsSource("random"), label_set="tiny",
                       data_config={"input_size": [3, 64, 64], "interpolation": "bicubic", "mean": [0.5] * 3,
                                    "std": [0.5] * 3, "crop_pct": 1.0, "crop_mode": "center"})
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)) for _ in range(16)]
    gate_set = LabelledPhotos(photos, lambda probs, idx: probs.argmax(1) == 0, "noise")
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # as in the CLI (pytest gives the root logger its own)
    monkeypatch.setattr("carnet_core.inference.selection.missing_here",
                        lambda name: "left out of this test" if name == "openvino-bf16" else None)
    choice = select_engine(model, photos=photos[:8], calibration=gate_set)
    assert choice.engine.name == "onnxruntime"
    table = {c.name: c for c in choice.candidates}
    assert table["onnxruntime"].parity.passed and table["onnxruntime"].parity.inputs == "8 photos"
    int8 = table["onnxruntime-int8"]
    assert int8.gate is None and int8.note.startswith("unavailable (Fail: [ONNXRuntimeError]"), int8.note
    assert "onnxruntime-int8 unavailable" in choice.reason
    # the quantizer's notes and ONNX Runtime's error log are not printed, nor is a log handler left behind
    assert logging.getLogger().handlers == [] and not capfd.readouterr().err
    with pytest.raises(CarNetError, match="onnxruntime-int8 is not available for carnet-tiny: .*Reshape"):
        select_engine(model, "onnxruntime-int8", calibration=gate_set)
    batch = predict(model, photos[:3])  # batches: the export's dynamic batch dimension reaches the attention too
    with torch.no_grad():
        reference = torch.softmax(model.module(model.preprocess(photos[:3])), 1)
    assert torch.allclose(torch.tensor([p.probabilities[0] for p in batch.predictions]),
                          reference.max(1).values, atol=PARITY_ATOL)


def test_export_cache_is_reused_and_invalidated_by_new_weights():
    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    first = OnnxRuntimeEngine(model).path
    assert not model.module.training  # exporting left the model in eval mode (BatchNorm on its running statistics)
    inode = first.stat().st_ino  # an export writes a new file (os.replace): a reuse keeps the inode
    assert OnnxRuntimeEngine(model).path == first and first.stat().st_ino == inode  # reused, not re-exported
    first.write_bytes(first.read_bytes()[:1000])  # damaged on disk: it was "onnxruntime unavailable
    engine = OnnxRuntimeEngine(model)             # (InvalidProtobuf …)" from then on, and torch 4x slower
    assert engine.path == first and first.stat().st_size > 10_000_000
    assert engine.probabilities(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
    before = fingerprint(model)
    with torch.no_grad():
        model.module.classifier.bias.add_(1.0)
    assert fingerprint(model) != before
    second = OnnxRuntimeEngine(model).path
    assert second != first and second.is_file()
    meta = json.loads(second.with_name(second.name + ".json").read_text())
    assert meta["arch"] == "mobilenetv2_100" and len(meta["class_names"]) == 1000


def test_an_export_that_onnxruntime_cannot_load_is_made_once(tmp_path, monkeypatch):
    """Only a cached file is made again when it does not load; a new export that does not load fails, once."""
    import carnet_core.inference.engines as E
    import carnet_core.inference.export as X

    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path))
    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    exports, real_export = [], X.export_onnx
    monkeypatch.setattr(X, "export_onnx", lambda m, path: exports.append(path) or real_export(m, path))
    monkeypatch.setattr(E, "onnxruntime_session", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("cannot load")))
    with pytest.raises(RuntimeError, match="cannot load"):
        OnnxRuntimeEngine(model)
    assert len(exports) == 1


def test_a_damaged_int8_file_is_quantized_again(tmp_path, monkeypatch):
    from carnet_core.inference.engines import OnnxInt8Engine
    from carnet_core.models.classifier import Classifier, build_module
    from carnet_core.models.weights import WeightsSource

    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = Classifier(module=build_module("mobilenetv2_050", num_classes=4).eval(), name="tiny",
                       arch="mobilenetv2_050", family="mobilenetv2", head="linear", class_names=tuple("abcd"),
                       weights=WeightsSource("random"), label_set="tiny",
                       data_config={"input_size": [3, 64, 64], "interpolation": "bilinear", "mean": [0.5] * 3,
                                    "std": [0.5] * 3, "crop_pct": 1.0, "crop_mode": "center"})
    calibration = torch.rand(4, 3, 64, 64)
    path = OnnxInt8Engine(model, calibration).path
    path.write_bytes(b"")
    engine = OnnxInt8Engine(model, calibration)
    assert engine.path == path and path.stat().st_size > 100_000
    assert engine.one_by_one(calibration.numpy()).shape == (4, 4)


def test_prune_cache_drops_the_least_recently_used_exports(tmp_path, monkeypatch):
    import os
    import time

    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "onnx"
    folder.mkdir()
    now = time.time()

    def put(name, age_s, mb=1.0):
        p = folder / name
        p.write_bytes(b"x" * int(mb * 2**20))
        os.utime(p, (now - age_s, now - age_s))
        return p

    kept = put("a.onnx", 400)  # the oldest, but the caller is using it
    old, old_json = put("b.onnx", 300), put("b.onnx.json", 300, 0.01)
    new, new_json = put("c.onnx", 100), put("c.onnx.json", 100, 0.01)
    stale, fresh = put("d.123.tmp", STALE_TMP_S + 60, 0.1), put("e.456.tmp", 10, 0.1)  # a crashed / a running export
    removed = prune_cache(max_mb=2.5, keep=[kept])
    assert sorted(p.name for p in removed) == ["b.onnx", "b.onnx.json", "d.123.tmp"]
    assert kept.exists() and new.exists() and new_json.exists() and fresh.exists()
    assert not old.exists() and not old_json.exists() and not stale.exists()
    assert prune_cache(max_mb=2.5, keep=[kept]) == []  # within the bound now
    assert {p.name for p in prune_cache(max_mb=0)} == {"a.onnx", "c.onnx", "c.onnx.json"}


def test_a_bounded_cache_evicts_older_exports_and_their_engines_keep_working(tmp_path, monkeypatch):
    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CARNET_CACHE_MAX_MB", "1")  # below one export: each new one evicts the others
    first_model, second_model = (load_model("mobilenetv2_100", weights="random", device="cpu") for _ in range(2))
    first = OnnxRuntimeEngine(first_model)
    second = OnnxRuntimeEngine(second_model)
    assert second.path.is_file() and not first.path.exists()  # the new export is kept, the older one evicted
    assert not first.path.with_name(first.path.name + ".json").exists()
    x = torch.randn(4, 3, 224, 224)
    ref = TorchEngine(first_model).probabilities(x)
    assert (first.probabilities(x[:1]) - ref[:1]).abs().max() <= PARITY_ATOL  # its open session still runs
    assert (first.probabilities(x) - ref).abs().max() <= PARITY_ATOL  # a batch, with no file to open
    assert "as batch-1 calls (no dynamic-batch session" in first.batching
    assert OnnxRuntimeEngine(first_model).path == first.path and first.path.is_file()  # exported again on demand


def test_a_dropped_model_is_freed_with_its_engine():
    """The app keeps 8 models (st.cache_resource max_entries); the engine choice used to live in a module-level table
    keyed by the module, which kept every model ever classified with, and its ONNX Runtime sessions, alive."""
    import gc
    import weakref

    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    choice = select_engine(model)
    assert select_engine(model) is choice  # decided once per model
    module, session = weakref.ref(model.module), weakref.ref(choice.engine)
    del model, choice
    gc.collect()
    assert module() is None and session() is None


def test_choosing_one_models_engine_does_not_hold_up_another(monkeypatch):
    """A hosted demo: one session's first use of a model (export + measurement, seconds) used to block every other
    session's classification behind one global lock, whatever model it used."""
    import threading

    import carnet_core.inference.selection as S

    slow, fast = (load_model("mobilenetv2_100", weights="random", device="cpu") for _ in range(2))
    fast_choice = select_engine(fast, "torch")
    fast._engine_choice = S.EngineChoice(fast_choice.engine, "known")
    entered, release = threading.Event(), threading.Event()
    def measure(model, engine, photos, calibration):  # an export and a measurement that take as long as the test wants
        entered.set()
        assert release.wait(30)
        return S.EngineChoice(TorchEngine(model), "measured")

    monkeypatch.setattr(S, "_measure", measure)
    worker = threading.Thread(target=select_engine, args=(slow,))
    worker.start()
    assert entered.wait(30)
    done = threading.Event()
    threading.Thread(target=lambda: (select_engine(fast), done.set()), daemon=True).start()
    try:
        assert done.wait(5), "select_engine(fast) waited for another model's measurement"
    finally:
        release.set()
        worker.join(60)
    assert select_engine(slow).reason == "measured" and select_engine(fast).reason == "known"


def test_an_unwritable_cache_falls_back_to_the_temporary_folder(tmp_path, monkeypatch):
    """A read-only home (some hosts): exports go to the system's temporary folder, and ONNX Runtime is still used."""
    import tempfile

    from carnet_core.config import cache_dir

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("CARNET_CACHE_DIR", str(blocker / "cache"))  # cannot be created: a file is in the way
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert cache_dir().parent == tmp_path / "tmp" and cache_dir().name.startswith("carnet-cache-")
    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    engine = OnnxRuntimeEngine(model)
    assert engine.path.is_relative_to(tmp_path / "tmp")
    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path / "ok"))
    assert cache_dir() == tmp_path / "ok"


def test_a_bad_cache_bound_is_named_in_the_engine_reason(tmp_path, monkeypatch):
    """CARNET_CACHE_MAX_MB=abc made the export fail with a bare ValueError; classification then ran on torch, about 4x
    slower, and the engine's reason (the Classify caption, `engines`) did not say why."""
    from carnet_core.config import CACHE_MAX_MB, cache_max_mb

    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path))
    for good, value in (("", CACHE_MAX_MB), ("100", 100.0), ("0", 0.0)):
        monkeypatch.setenv("CARNET_CACHE_MAX_MB", good)
        assert cache_max_mb() == value
    for bad in ("abc", "-1", "nan", "inf"):
        monkeypatch.setenv("CARNET_CACHE_MAX_MB", bad)
        with pytest.raises(CarNetError, match=f"CARNET_CACHE_MAX_MB must be a number of MB, at least 0, not '{bad}'"):
            cache_max_mb()
    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    choice = select_engine(model)
    assert choice.engine.name == "torch"
    assert "onnxruntime unavailable (CarNetError: CARNET_CACHE_MAX_MB must be a number" in choice.reason


def test_a_bad_carnet_device_is_a_message(monkeypatch):
    from carnet_core.models.classifier import default_device

    for bad, message in (("gpu", "is not a device name"), ("cuda:99", "this machine has"), ("cuda:x", "not a device")):
        monkeypatch.setenv("CARNET_DEVICE", bad)
        with pytest.raises(CarNetError, match=message):
            load_model("mobilenetv2_100", weights="random")
    monkeypatch.setenv("CARNET_DEVICE", "cpu")
    assert default_device() == torch.device("cpu")


def test_carnet_engine_torch_forces_the_reference(monkeypatch):
    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    monkeypatch.setenv("CARNET_ENGINE", "torch")
    assert select_engine(model).engine.name == "torch"


@pytest.mark.subprocess
def test_export_cli(cli, tmp_path, capsys):

    code, out, err = cli("export", "efficientnet_lite0", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert code == 0, err
    assert "max probability difference vs torch" in out
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["data_config"]["mean"] == [0.5, 0.5, 0.5] and meta["class_names"][817] == "sports car"
    assert meta["outputs"] == ["logits", "probabilities"]
    session = onnxruntime_session(tmp_path / "m.onnx")
    assert [o.name for o in session.get_outputs()] == meta["outputs"]
    logits, probs = session.run(None, {"input": torch.randn(2, 3, 224, 224).numpy()})
    assert probs.sum(1) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert (torch.softmax(torch.from_numpy(logits), 1) - torch.from_numpy(probs)).abs().max() <= 1e-6


def test_export_and_engines_cli_name_bad_paths_without_a_traceback(tmp_path, capsys):
    from carnet_core.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["export", "efficientnet_lite0", "--format", "onnx", "--out", str(blocker / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write the ONNX export to {blocker / 'm.onnx'}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [blocker]  # no temporary file left behind
    for missing in (str(tmp_path / "gone.safetensors"), "runs/x.pth"):
        assert main(["engines", missing]) == 2
        assert capsys.readouterr().err.strip() == f"error: {missing}: no such checkpoint file"


@pytest.mark.slow
@pytest.mark.subprocess
def test_engines_cli(cli, tmp_path, capsys):

    code, out, err = cli("engines", "efficientnet_lite0")
    assert code == 0, err
    *table, batching = out.splitlines()[2:]
    lines = {line.split()[0]: line for line in table}
    assert list(lines) == ["torch", "onnxruntime", "torch-bf16", "onnxruntime-int8", "openvino-bf16"]
    assert "used" in lines["onnxruntime"] and "passes" in lines["onnxruntime"]
    assert lines["torch-bf16"].endswith("-  not tried: the accuracy gate needs a labelled set (--calibration FOLDER "
                                        "or $CARNET_CALIBRATION)")  # the table said nothing of them
    assert batching.startswith("onnxruntime: batches run ") and "ms/image" in batching
    code, out, err = cli("engines", "efficientnet_lite0", "--photos", tmp_path)
    assert code == 2 and f"no photos under {tmp_path}" in err
    Image.new("RGB", (64, 48), "red").save(tmp_path / "one.jpg")  # unlabelled: fp32 is checked on it, nothing else
    (tmp_path / "two.jpg").write_text("not a photo")
    code, out, err = cli("engines", "efficientnet_lite0", "--photos", tmp_path)
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "on 1 photo:" in lines["onnxruntime"]
    assert "not tried: the accuracy gate needs a labelled set" in lines["onnxruntime-int8"]
    labelled = tmp_path / "labelled"
    for cls in ("red", "blue"):  # a labelled set too small for the gate is refused with its numbers
        (labelled / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 48), cls).save(labelled / cls / f"{i}.jpg")
    code, out, err = cli("engines", "efficientnet_lite0", "--calibration", labelled)
    assert code == 2 and "the accuracy gate needs at least 16 readable photos in labelled; it has 6" in err


@pytest.mark.shared
def test_engines_cli_on_a_plain_state_dict(cli, capsys):
    """A plain state dict (no CarNet metadata) needs its architecture: the error names the option, which exists."""

    weights = need(MOBILENET_TIMM)
    code, out, err = cli("engines", weights)
    assert code != 0 and "--model NAME" in err and "Traceback" not in err
    code, out, err = cli("engines", weights, "--model", "mobilenetv2_100")
    assert code == 0, err
    assert out.startswith("mobilenetv2_100 on the CPU: onnxruntime")


@pytest.mark.shared
def test_the_onnx_download_runs_elsewhere_as_the_model_does_here(lite0, car_photos):
    """The Models page's "Download as ONNX": a zip of the .onnx and its .json; a plain ONNX Runtime session on it,
    fed the photo as the .json's data config says, gives CarNet's probabilities on a real photo."""
    import io
    import json
    import zipfile

    import onnxruntime as ort
    from timm.data import create_transform

    from carnet_core import load_image
    from carnet_core.inference.export import export_bundle

    with zipfile.ZipFile(io.BytesIO(export_bundle(lite0))) as bundle:
        assert sorted(bundle.namelist()) == ["efficientnet_lite0.onnx", "efficientnet_lite0.onnx.json"]
        meta = json.loads(bundle.read("efficientnet_lite0.onnx.json"))
        session = ort.InferenceSession(bundle.read("efficientnet_lite0.onnx"), providers=["CPUExecutionProvider"])
    assert meta["name"] == "efficientnet_lite0" and meta["class_names"] == list(lite0.class_names)
    assert meta["outputs"] == ["logits", "probabilities"] and meta["data_config"]["mean"] == [0.5, 0.5, 0.5]
    image = load_image(car_photos[5])
    x = create_transform(**meta["data_config"])(image)[None].numpy()  # what a user elsewhere would write
    [probs] = session.run(["probabilities"], {"input": x})[0]
    expected = predict(lite0, [image], topk=5)[0]
    assert meta["class_names"][int(probs.argmax())] == expected.top1
    assert float(probs.max()) == pytest.approx(expected.probabilities[0], abs=1e-4)


@pytest.mark.slow
@pytest.mark.shared
def test_a_gated_choice_is_stored_with_the_export_and_reused(tmp_path, monkeypatch, cli):
    """An engine chosen on a labelled set is stored beside the model's export and used by a later process (a new
    model object of the same weights) without measuring again; `models` lists it and `export --calibration` writes
    it into the export's .json with the int8 file. The timings are fixed (int8 fastest), the gate's numbers real."""
    monkeypatch.setenv("CARNET_CACHE_DIR", str(tmp_path / "cache"))
    ms = iter([30.0, 10.0, 40.0, 4.0, 20.0])  # torch, onnxruntime, torch-bf16, onnxruntime-int8, openvino-bf16
    monkeypatch.setattr("carnet_core.inference.selection.median_ms", lambda fn, *a, **k: next(ms))
    monkeypatch.setattr("carnet_core.inference.parity.MIN_ACCURACY_RATIO", 0.0)  # the gate passes whatever it measures
    monkeypatch.setattr("carnet_core.inference.parity.MIN_TOP1_AGREEMENT", 0.0)
    monkeypatch.setattr("carnet_core.inference.parity.MAX_MEAN_TOP1_PROB_DIFF", 1.0)
    from carnet_core.inference.selection import stored_choice, stored_engine_text

    model = load_model("efficientnet_lite0", device="cpu", use_hub=False)
    gate_set = labelled_photos(model, CARS_VAL, limit=40)
    choice = select_engine(model, calibration=gate_set)
    assert choice.engine.name == "onnxruntime-int8", choice.table()
    stored = stored_choice(model)
    assert stored["engine"] == "onnxruntime-int8" and stored["int8_file"] == choice.engine.path.name
    gate = next(c for c in stored["candidates"] if c["name"] == "onnxruntime-int8")["gate"]
    assert gate["photos"] == 30 and gate["measure"] == "vehicle at top-1" and 0.5 < gate["reference_accuracy"] <= 1
    assert "Engine **onnxruntime-int8**, 4.0 ms at batch 1" in stored_engine_text(model)
    assert stored_engine_text(model, fingerprint(model)) == stored_engine_text(model)  # the card's fingerprint

    monkeypatch.setattr("carnet_core.inference.selection.median_ms", lambda *a, **k: pytest.fail("measured again"))
    again = select_engine(load_model("efficientnet_lite0", device="cpu", use_hub=False))
    assert again.engine.name == "onnxruntime-int8" and "stored with the export" in again.reason
    x = model.preprocess(gate_set.images[:3])
    assert torch.allclose(again.engine.probabilities(x), choice.engine.probabilities(x), atol=1e-6)

    code, out, _ = cli("models")
    assert code == 0 and "efficientnet_lite0" in out.split("engines chosen on a labelled set")[1]
    assert "onnxruntime-int8" in out.split("engines chosen on a labelled set")[1]

    ms = iter([30.0, 10.0, 40.0, 4.0, 20.0])
    monkeypatch.setattr("carnet_core.inference.selection.median_ms", lambda fn, *a, **k: next(ms))
    out_file = tmp_path / "lite0.onnx"
    code, out, err = cli("export", "efficientnet_lite0", "--out", out_file, "--calibration", CARS_VAL)
    assert code == 0, err
    meta = json.loads(out_file.with_name("lite0.onnx.json").read_text())
    assert meta["engine"]["engine"] == "onnxruntime-int8" and meta["engine"]["candidates"][3]["gate"]["passed"]
    assert out_file.with_name("lite0-int8.onnx").is_file()
    code, _, err = cli("engines", "efficientnet_lite0", "--mapping", ROOT / "mappings" / "x.json")
    assert code != 0 and "--mapping goes with --calibration" in err


def test_in_the_app_a_models_first_photos_do_not_wait_for_the_engine_measurement(monkeypatch):
    """A server (measure_in_background) classifies a model's first photos with torch at once while the measurement
    runs in a thread, says so, and uses the measured engine once it is there; a measurement that fails leaves torch
    with the reason. The measurement here waits for the test's signal (no sleeps, no timing)."""
    import threading

    import carnet_core.inference.selection as S

    model = load_model("mobilenetv2_100", weights="random", device="cpu")
    entered, release = threading.Event(), threading.Event()

    def measure(model, engine, photos, calibration):
        entered.set()
        assert release.wait(60)
        return S.EngineChoice(OnnxRuntimeEngine(model), "measured")

    monkeypatch.setattr(S, "_measure", measure)
    monkeypatch.setattr(S, "_background", False)
    S.measure_in_background()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    first = select_engine(model)
    assert first.pending and first.engine.name == "torch" and "measuring the fastest engine" in first.reason
    assert entered.wait(60)  # the measurement is running, and holds the model's engine decision …
    batch = predict(model, [Image.new("RGB", (64, 48), "red")])  # … while photos are classified, with torch
    assert len(batch.predictions) == 1 and select_engine(model).pending
    reference = TorchEngine(model).probabilities(x)
    release.set()
    model._engine_thread.join(60)
    assert not model._engine_thread.is_alive()
    after = select_engine(model)
    assert not after.pending and after.engine.name == "onnxruntime" and after.reason == "measured"
    assert (after.engine.probabilities(x) - reference).abs().max() <= PARITY_ATOL

    broken = load_model("mobilenetv2_100", weights="random", device="cpu")
    monkeypatch.setattr(S, "_measure", lambda *a: (_ for _ in ()).throw(RuntimeError("export failed")))
    select_engine(broken)
    broken._engine_thread.join(60)
    failed = select_engine(broken)
    assert failed.engine.name == "torch" and not failed.pending and "export failed" in failed.reason
    S.measure_in_background(False)
