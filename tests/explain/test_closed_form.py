"""The torch-free CAMs (closed forms at a GAP + linear head) equal pytorch-grad-cam's maps on the same model and
photo, per method, on three architectures."""

import numpy as np
import pytest
import torch
from conftest import CARS_VAL, need
from PIL import Image

from carnet_core import CarNetError
from carnet_core.explain.cams import explain, resolve_layer
from carnet_core.explain.closed_form import CLOSED_FORM_METHODS, closed_form_cam, logit_gradient, resize_bilinear
from test_explain import tiny_model


def _features_and_logits(model, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The target layer's output (C, h, w) and the logits (num_classes,), from one forward pass."""
    _, layer = resolve_layer(model, None)
    caught = []
    handle = layer.register_forward_hook(lambda _m, _i, out: caught.append(out.detach()))
    try:
        with torch.inference_mode():
            logits = model.module(model.preprocess([image]))
    finally:
        handle.remove()
    return caught[0][0].numpy(), logits[0].numpy()


@pytest.fixture(scope="module")
def cases(lite0):
    """(name, model, photo): EfficientNet-Lite0 with its ImageNet weights on a real car photo; random ResNet-18 and
    MobileNetV2 at 224 px on another real photo (the closed forms do not depend on the weights)."""
    photos = sorted(need(CARS_VAL).glob("*/*.jpg"))
    resnet, mobilenet = tiny_model("resnet", 40, 224), tiny_model("mobilenetv2", 40, 224)
    return [("efficientnet_lite0", lite0, Image.open(photos[0]).convert("RGB")),
            ("resnet18", resnet, Image.open(photos[7]).convert("RGB")),
            ("mobilenetv2_050", mobilenet, Image.open(photos[13]).convert("RGB"))]


@pytest.mark.slow
@pytest.mark.parametrize("method", CLOSED_FORM_METHODS)
def test_each_method_equals_pytorch_grad_cam(cases, method):
    for name, model, image in cases:
        activations, logits = _features_and_logits(model, image)
        weight = model.module.get_classifier().weight.detach().numpy()
        size = tuple(model.data_config["input_size"][1:])
        # the top-1; for GradCAM also the third class (the class enters every method the same way: one row of W)
        for index in (None, int(np.argsort(logits)[-3])) if method == "gradcam" else (None,):
            ours, explained = closed_form_cam(method, activations, weight, logits, index, size)
            theirs = explain(model, image, method, class_name=None if index is None else model.class_names[index])
            assert explained == theirs.class_index
            assert ours.shape == theirs.heatmap.shape == size
            assert np.abs(ours - theirs.heatmap).max() <= 1e-4, (name, method, index)
            assert ours.max() == pytest.approx(1.0, abs=1e-6) and ours.min() == pytest.approx(0.0, abs=1e-6)


def test_eigen_smoothing_equals_pytorch_grad_cam(cases):
    name, model, image = cases[0]
    activations, logits = _features_and_logits(model, image)
    weight = model.module.get_classifier().weight.detach().numpy()
    ours, _ = closed_form_cam("gradcam", activations, weight, logits, None, (224, 224), eigen_smooth=True)
    theirs = explain(model, image, "gradcam", eigen_smooth=True)
    assert np.abs(ours - theirs.heatmap).max() <= 1e-4


def test_finer_gradient_matches_autograd():
    z = torch.tensor([2.0, 1.5, 1.4, -0.3, 1.9, 0.2], dtype=torch.float64, requires_grad=True)
    from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget

    FinerWeightedTarget(0, [4, 1, 2], 1.0)(z).backward()
    assert np.allclose(logit_gradient("finercam", z.detach().numpy(), 0), z.grad.numpy(), atol=1e-12)
    assert np.array_equal(logit_gradient("gradcam", z.detach().numpy(), 3), np.eye(6)[3])


def test_resize_is_opencv_bilinear():
    import cv2

    rng = np.random.default_rng(0)
    for src, dst in [((7, 7), (224, 224)), ((9, 9), (260, 260)), ((5, 8), (33, 17))]:
        image = rng.random(src).astype(np.float32)
        assert np.abs(resize_bilinear(image, dst) - cv2.resize(image, dst[::-1])).max() < 1e-6


def test_bad_shapes_and_methods_are_refused():
    with pytest.raises(CarNetError, match="no closed form"):
        closed_form_cam("scorecam", np.ones((4, 2, 2)), np.ones((3, 4)), np.ones(3))
    with pytest.raises(CarNetError, match="do not fit"):
        closed_form_cam("gradcam", np.ones((4, 2, 2)), np.ones((3, 5)), np.ones(3))


@pytest.mark.slow
def test_the_serving_export_gives_the_same_cams_without_torch(cases, tmp_path):
    """The serving export (ONNX with the pooled feature map as an output, the classifier in an .npz): ONNX Runtime's
    outputs and numpy alone give the probabilities (within 1e-4) and the CAMs (within 1e-4) of the full install."""
    import json

    from carnet_core.explain.cams import default_layer
    from carnet_core.inference.engines import onnxruntime_session
    from carnet_core.inference.export import export_serving_onnx

    for name, model, image in cases:
        path = export_serving_onnx(model, tmp_path / f"{name}.onnx")
        meta = json.loads((tmp_path / f"{name}.onnx.json").read_text())
        assert meta["outputs"] == ["logits", "probabilities", "features"] and meta["cam_layer"] == default_layer(model)
        head = np.load(tmp_path / f"{name}.onnx.npz")
        x = model.preprocess([image]).numpy()
        logits, probs, features = onnxruntime_session(path).run(None, {"input": x})
        with torch.no_grad():
            reference = torch.softmax(model.module(torch.from_numpy(x)), 1).numpy()
        assert np.abs(probs - reference).max() <= 1e-4
        size = tuple(model.data_config["input_size"][1:])
        for method in ("gradcam", "gradcam++", "layercam", "eigencam"):
            ours, index = closed_form_cam(method, features[0], head["weight"], logits[0], None, size)
            theirs = explain(model, image, method)
            assert index == theirs.class_index and np.abs(ours - theirs.heatmap).max() <= 1e-4, (name, method)
    with pytest.raises(CarNetError, match="needs global average pooling and a linear classifier"):
        from carnet_core.models.classifier import Classifier, build_module
        from carnet_core.models.weights import WeightsSource

        decoder = Classifier(module=build_module("mobilenetv2_050", head="ml_decoder", num_classes=4).eval(),
                             name="d", arch="mobilenetv2_050", family="mobilenetv2", head="ml_decoder",
                             class_names=tuple("abcd"), data_config=cases[2][1].data_config,
                             weights=WeightsSource("random"), label_set="x")
        export_serving_onnx(decoder, tmp_path / "d.onnx")


@pytest.mark.parametrize("colormap", ["jet", "turbo", "inferno", "viridis", "magma", "hot"])
def test_overlay_is_pytorch_grad_cams_show_cam_on_image_pixel_for_pixel(colormap):
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    from carnet_core.explain.cams import overlay

    rng = np.random.default_rng(1)
    image = rng.random((48, 64, 3), dtype=np.float32)
    heatmap = rng.random((48, 64), dtype=np.float32)
    for alpha in (0.0, 0.35, 0.5, 1.0):
        ours = np.asarray(overlay(image, heatmap, alpha, colormap))
        theirs = show_cam_on_image(image, heatmap, use_rgb=True, colormap=getattr(cv2, f"COLORMAP_{colormap.upper()}"),
                                   image_weight=1.0 - alpha)
        assert np.array_equal(ours, theirs), (colormap, alpha)
