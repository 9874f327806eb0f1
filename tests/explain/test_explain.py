import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from carnet_core import CarNetError
from carnet_core.explain.cams import METHOD_NAMES, METHODS, Explanation, default_layer, explain, spatial_layers
from carnet_core.inference.predict import predict
from carnet_core.models.classifier import Classifier, build_module
from carnet_core.models.weights import WeightsSource

TINY = {"resnet": "resnet18", "mobilenetv2": "mobilenetv2_050", "seresnet": "seresnet18"}


def tiny_model(family: str, num_classes: int = 10, size: int = 64) -> Classifier:
    """A small random network at a small input size: CAM plumbing without the cost of a real model."""
    torch.manual_seed(0)
    return Classifier(module=build_module(TINY[family], num_classes=num_classes).eval(), name=TINY[family],
                      arch=TINY[family], family=family, head="linear",
                      class_names=tuple(f"class {i}" for i in range(num_classes)),
                      data_config={"input_size": [3, size, size], "interpolation": "bilinear", "mean": [0.5] * 3,
                                   "std": [0.25] * 3, "crop_pct": 1.0, "crop_mode": "center"},
                      weights=WeightsSource("random"), label_set="tiny")


def photo(seed: int = 0, size=(96, 80)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size[::-1], 3), dtype=np.uint8))


def no_hooks(model: Classifier) -> bool:
    return all(not m._forward_hooks and not m._backward_hooks for m in model.module.modules())


@pytest.mark.slow
@pytest.mark.parametrize("family", list(TINY))
@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_three_architectures(family, method):
    model = tiny_model(family)
    result = explain(model, photo(), method=method, class_name="class 3")
    assert result.heatmap.shape == (64, 64) and result.image.shape == (64, 64, 3)
    assert not np.isnan(result.heatmap).any()
    assert result.heatmap.min() >= 0 and result.heatmap.max() <= 1
    assert result.class_name == "class 3" and 0 <= result.probability <= 1
    assert result.layer == default_layer(model) and np.isfinite(result.faithfulness)
    assert no_hooks(model)
    assert all(p.grad is None and p.requires_grad for p in model.module.parameters())  # restored after the CAM


GRADIENT_METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam")


@pytest.mark.parametrize("family", list(TINY))
@pytest.mark.parametrize("method", GRADIENT_METHODS)
@pytest.mark.parametrize("layer", [None, "in-place"])
def test_heatmap_equals_pytorch_grad_cam_run_plainly(family, method, layer):
    """explain() stops the backward pass at the target layer; the heatmap is still pytorch-grad-cam's own result,
    computed here as its examples do (input and weights in the autograd graph). "in-place": a layer whose output
    the next module overwrites (ResNet's stem BN, then ``ReLU(inplace=True)``)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from carnet_core.explain.cams import _methods

    model = tiny_model(family)
    name = {"resnet": "bn1", "seresnet": "bn1", "mobilenetv2": "blocks.5.0.bn1"}[family] \
        if layer == "in-place" else default_layer(model)
    result = explain(model, photo(), method=method, class_name="class 1", layer=name)
    module = dict(model.module.named_modules())[name]
    with _methods()[method](model.module, [module]) as cam:
        reference = cam(model.preprocess([photo()]), targets=[ClassifierOutputTarget(1)])[0]
    model.module.zero_grad(set_to_none=True)
    assert result.layer == name and result.heatmap.std() > 0.01
    np.testing.assert_allclose(result.heatmap, reference, atol=1e-5)


def test_backward_pass_stops_at_the_target_layer():
    """No layer before the target takes part in the gradient computation (that is what makes a CAM cost little
    more than a forward pass)."""
    model = tiny_model("resnet")
    spatial_layers(model)  # its own (inference-mode) forward pass first
    seen = {}

    def record(name):
        def hook(_module, _inputs, output):
            seen.setdefault(name, output.requires_grad)  # the CAM's own forward pass, not the faithfulness check
        return hook

    handles = [model.module.get_submodule(n).register_forward_hook(record(n)) for n in ("conv1", "layer3", "fc")]
    try:
        explain(model, photo(), method="gradcam")
    finally:
        for h in handles:
            h.remove()
    assert seen == {"conv1": False, "layer3": False, "fc": True}


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("scorecam", "ablationcam")])
@pytest.mark.parametrize("class_name", [None, "class 3"])
def test_one_forward_pass_per_cam(method, class_name):
    """The CAM's own forward pass gives the probabilities (and FinerCAM's top-1 class) and the faithfulness check's
    starting point; the only other pass is the check's own, on the photo times the heatmap."""
    from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    model = tiny_model("mobilenetv2")
    spatial_layers(model)
    calls = []
    handle = model.module.register_forward_hook(lambda _m, _i, out: calls.append(out.requires_grad))
    try:
        result = explain(model, photo(), method=method, class_name=class_name)
    finally:
        handle.remove()
    assert calls == [True, False]  # the CAM's, with gradients; the metric's, without
    with torch.no_grad():
        top1 = int(model.module(model.preprocess([photo()])).argmax())
    assert result.class_index == (top1 if class_name is None else 3)
    plain = CamMultImageConfidenceChange()(model.preprocess([photo()]), result.heatmap[None],
                                           [ClassifierOutputSoftmaxTarget(result.class_index)], model.module)
    assert result.faithfulness == pytest.approx(float(plain[0]), abs=1e-6)  # as the metric computes it alone


def test_every_method_has_its_display_name():
    assert list(METHOD_NAMES) == list(METHODS) and METHOD_NAMES["gradcam++"] == "GradCAM++"


def test_default_layers_per_family():
    assert default_layer(tiny_model("resnet")) == "layer4"
    assert default_layer(tiny_model("seresnet")) == "layer4"
    assert default_layer(tiny_model("mobilenetv2")) == "bn2"
    assert spatial_layers(tiny_model("resnet"))["layer4"] == (512, 2, 2)


def test_bad_class_layer_and_method_name_the_valid_choices():
    model = tiny_model("resnet")
    with pytest.raises(CarNetError, match="no class 'class 42'.*did you mean"):
        explain(model, photo(), class_name="class 42")
    with pytest.raises(CarNetError, match="'fc'.*no spatial output.*layer4"):
        explain(model, photo(), layer="fc")
    with pytest.raises(CarNetError, match="no layer 'layer9'"):
        explain(model, photo(), layer="layer9")
    with pytest.raises(CarNetError, match="unknown CAM method.*gradcam"):
        explain(model, photo(), method="magic")
    assert no_hooks(model)


def test_other_layers_and_overlay():
    model = tiny_model("resnet")
    result = explain(model, photo(), layer="layer3")
    assert result.layer == "layer3" and result.heatmap.shape == (64, 64)
    ov = result.overlay(alpha=0.0)
    assert ov.size == (64, 64)
    # alpha 0 = the image (pytorch-grad-cam's show_cam_on_image rescales the blend to a maximum of 1)
    np.testing.assert_allclose(np.asarray(ov) / 255.0, result.image / result.image.max(), atol=1 / 255 + 1e-6)
    assert not np.array_equal(np.asarray(result.overlay(alpha=1.0)), np.asarray(ov))


def test_concurrent_explanations_equal_single_threaded():
    """Several sessions explaining and classifying at once on one shared model get their own results."""
    model = tiny_model("resnet")
    jobs = [(photo(i), m, f"class {i}") for i, m in enumerate(["gradcam", "gradcam++", "layercam", "hirescam"] * 2)]
    expected = [explain(model, *job).heatmap for job in jobs]
    start = threading.Event()

    def work(job):
        start.wait(timeout=30)
        predict(model, [photo(99)])  # a concurrent forward pass must not leak into a CAM
        return explain(model, *job).heatmap

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(work, job) for job in jobs * 2]
        start.set()
        got = [f.result(timeout=120) for f in futures]
    for g, e in zip(got, expected * 2):
        np.testing.assert_allclose(g, e, atol=1e-5)
    assert no_hooks(model)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.slow
def test_no_memory_growth_over_200_calls():
    model = tiny_model("mobilenetv2")
    image = photo()
    for _ in range(20):
        explain(model, image)
    before = _rss_mb()
    for _ in range(200):
        explain(model, image)
    growth = _rss_mb() - before
    assert growth < 40, f"RSS grew by {growth:.0f} MB over 200 calls"
    assert no_hooks(model)


def _in_quadrant(img: Image.Image, quadrant: int) -> Image.Image:
    """``img`` pasted, scaled to fit, in the middle of one quadrant of a square neutral-grey canvas."""
    side = 2 * max(img.size)
    canvas = Image.new("RGB", (side, side), (128, 128, 128))
    half = side // 2
    fitted = img.copy()
    fitted.thumbnail((half, half))
    ox, oy = (quadrant % 2) * half, (quadrant // 2) * half
    canvas.paste(fitted, (ox + (half - fitted.width) // 2, oy + (half - fitted.height) // 2))
    return canvas


@pytest.mark.slow
@pytest.mark.shared
def test_gradcam_finds_the_car_on_a_neutral_canvas(lite0, car_photos):
    """Real-input localisation: 40 real car photos (every 7th val photo), each pasted into one quadrant (cycling)
    of a grey canvas twice its size. With EfficientNet-Lite0 and GradCAM on its top vehicle class, the share of
    heatmap mass inside the photo's quadrant (of the model's 224 px view) is measured.

    Measured here: that share is above 0.5 for 40/40 photos; median share 0.77. Asserted: ≥ 80 % of photos.
    """
    photos = car_photos[::7][:40]
    shares = []
    for i, path in enumerate(photos):
        from carnet_core import load_image

        img = load_image(path)
        canvas = _in_quadrant(img, i % 4)
        target = predict(lite0, [canvas])[0].vehicle_class_names[0]
        heat = explain(lite0, canvas, method="gradcam", class_name=target).heatmap
        h, w = heat.shape
        q = heat[(i % 4 // 2) * h // 2:(i % 4 // 2 + 1) * h // 2, (i % 2) * w // 2:(i % 2 + 1) * w // 2]
        shares.append(float(q.sum() / max(heat.sum(), 1e-8)))
    hits = sum(s > 0.5 for s in shares)
    print(f"quadrant share > 0.5: {hits}/{len(shares)}; median {np.median(shares):.2f}")
    assert hits >= 0.8 * len(shares)


@pytest.mark.shared
def test_smoothing_is_pytorch_grad_cams_and_augmentation_smoothing_is_mirror_consistent(lite0, car_photos):
    """A real photo at the model's 224 px (so the model sees exactly it, and exactly its mirror image when mirrored).
    Augmentation smoothing averages over the photo and its mirror image, so the map of the mirrored photo is the
    mirrored map — which plain GradCAM's is not; the class and probability stay the photo's own. Both smoothings are
    pytorch-grad-cam's own results for that class."""
    from PIL import ImageOps
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from carnet_core import load_image

    img = load_image(car_photos[3]).resize((224, 224), Image.BICUBIC)
    x, x_mirror = lite0.preprocess([img]), lite0.preprocess([ImageOps.mirror(img)])
    assert torch.equal(x_mirror, torch.flip(x, dims=[3]))
    plain = explain(lite0, img)
    aug = explain(lite0, img, aug_smooth=True)
    assert aug.aug_smooth and not aug.eigen_smooth and aug.class_name == plain.class_name
    assert aug.probability == pytest.approx(plain.probability, abs=1e-6)
    mirrored = explain(lite0, ImageOps.mirror(img), class_name=aug.class_name, aug_smooth=True)
    plain_mirrored = explain(lite0, ImageOps.mirror(img), class_name=aug.class_name)
    np.testing.assert_allclose(mirrored.heatmap[:, ::-1], aug.heatmap, atol=1e-4)
    assert np.abs(plain_mirrored.heatmap[:, ::-1] - plain.heatmap).max() > 0.05  # what the smoothing adds

    with GradCAM(lite0.module, [lite0.module.bn2]) as cam:
        target = [ClassifierOutputTarget(plain.class_index)]
        reference_aug = cam(x, targets=target, aug_smooth=True)[0]
        reference_eigen = cam(x, targets=target, eigen_smooth=True)[0]
    lite0.module.zero_grad(set_to_none=True)
    np.testing.assert_allclose(aug.heatmap, reference_aug, atol=1e-5)
    eigen = explain(lite0, img, eigen_smooth=True)
    assert eigen.eigen_smooth and eigen.class_name == plain.class_name
    np.testing.assert_allclose(eigen.heatmap, reference_eigen, atol=1e-5)
    assert np.abs(eigen.heatmap - plain.heatmap).max() > 0.05


def test_augmentation_smoothing_is_refused_where_it_washes_out():
    """FinerCAM does not take it; EigenCAM's and eigen-smoothed maps can flip sign on the mirrored photo."""
    from carnet_core.explain.cams import aug_smooth_refusal, usable_smoothing

    model = tiny_model("mobilenetv2")
    for method, eigen, message in [("finercam", False, "FinerCAM has no augmentation smoothing"),
                                   ("eigencam", False, "does not go with EigenCAM"),
                                   ("gradcam", True, "does not go with eigen smoothing")]:
        with pytest.raises(CarNetError, match=message):
            explain(model, photo(), method=method, aug_smooth=True, eigen_smooth=eigen)
        assert usable_smoothing(method, True, eigen) == {"aug_smooth": False, "eigen_smooth": eigen}
    assert aug_smooth_refusal("gradcam++") is None
    assert usable_smoothing("gradcam++", True, False) == {"aug_smooth": True, "eigen_smooth": False}
    assert explain(model, photo(), method="finercam", eigen_smooth=True).eigen_smooth


def test_faithfulness_in_words():
    """The Explain page said "changes the probability … by -31.5 points"; it now says from what to what, and what that
    says of the heatmap: it supports the class, carries most of the evidence, or misses most of it (over half lost)."""
    blank = np.zeros((2, 2), np.float32)

    def words(probability, change):
        return Explanation(blank, np.zeros((2, 2, 3), np.float32), "convertible", 511, probability, "gradcam", "bn2",
                           change, 1.0).faithfulness_text()

    assert words(0.664, -0.315) == ("keeping only the highlighted region lowers the probability of **convertible** "
                                    "from 66.4% to 34.9% (-31.5 points): the highlighted region carries much of the "
                                    "evidence, not all")
    assert words(0.664, -0.4).endswith("to 26.4% (-40.0 points): most of the evidence lies outside the highlighted "
                                       "region: do not read this heatmap alone")
    assert words(0.5, 0.3).startswith("keeping only the highlighted region raises the probability of **convertible** "
                                      "from 50.0% to 80.0% (+30.0 points): the highlighted region alone supports")
    assert words(0.5, 0.00004).startswith("keeping only the highlighted region keeps the probability of "
                                          "**convertible** at 50.0% (+0.0 points): the highlighted region alone")
    assert "to 100.0%" in words(0.9, 0.2) and "to 0.0%" in words(0.1, -0.2)  # a probability, whatever the metric says


def test_the_method_table_is_the_one_the_cli_and_the_page_read():
    from carnet_core.cli.parser import build_parser
    from carnet_core.explain.cams import EXPENSIVE_METHODS, FLOOR_METHOD, METHOD_NAMES, METHOD_TABLE, METHODS, _methods
    from carnet_core.explain.faithfulness import RANKED_METHODS

    assert METHODS == tuple(m.key for m in METHOD_TABLE) and set(METHOD_NAMES) == set(METHODS)
    assert EXPENSIVE_METHODS == {"scorecam", "ablationcam"}
    assert {k: c.__name__ for k, c in _methods().items()} == {m.key: m.cls for m in (*METHOD_TABLE, FLOOR_METHOD)}
    assert FLOOR_METHOD.key not in METHODS  # the floor of a faithfulness ranking, not an explanation offered
    assert RANKED_METHODS == tuple(m for m in METHODS if m not in EXPENSIVE_METHODS)
    explain = build_parser()._subparsers._group_actions[0].choices["explain"]
    method = next(a for a in explain._actions if a.dest == "method")
    assert tuple(method.choices) == METHODS


def test_the_short_layer_list_is_the_last_stages_and_the_default(lite0):
    from carnet_core.explain.cams import stage_layers

    assert stage_layers(lite0) == ["blocks.2", "blocks.4", "blocks.6", "bn2"]
    assert stage_layers(tiny_model("resnet")) == ["layer2", "layer3", "layer4"]
