"""Class activation maps without PyTorch: closed forms at the last feature map of a global-average-pooling +
linear-classifier head, in numpy.

Why not pytorch-grad-cam: it needs torch (autograd and hooks), which the torch-free serving tier (ONNX Runtime) does
not have. For these heads no autograd is needed. With activations ``A`` (C, h, w) at the layer whose output is
pooled, ``logits = W · mean_hw(A) + b``, so the gradient of a class logit ``z_c`` with respect to ``A[k, i, j]`` is
``W[c, k] / (h·w)`` at every position (Zhou et al. 2016, "Learning Deep Features for Discriminative Localization";
Selvaraju et al. 2017, "Grad-CAM"). Each method below is pytorch-grad-cam's own formula applied to that constant
gradient, followed by its post-processing (ReLU, min-max scaling, bilinear resize as OpenCV's ``INTER_LINEAR``,
scaling again), so the maps equal pytorch-grad-cam's on the same model and photo
(``tests/explain/test_closed_form.py``). Other layers, ML-Decoder heads and the perturbation methods (ScoreCAM,
AblationCAM) need the network itself and stay with :func:`carnet_core.explain.cams.explain`.

Shapes: ``activations`` (C, h, w) float32; ``weight`` (num_classes, C); ``logits`` (num_classes,); maps (H, W) in
[0, 1] at the input size H×W px.
"""

from __future__ import annotations

import numpy as np

from carnet_core.errors import CarNetError

#: The methods with a closed form at a GAP + linear head (keys as in :data:`carnet_core.explain.cams.METHODS`).
CLOSED_FORM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam",
                                        "finercam")
#: FinerCAM's defaults in pytorch-grad-cam: compare with the 2nd–4th closest logits, at full strength.
FINER_COMPARISONS: tuple[int, ...] = (1, 2, 3)
FINER_ALPHA = 1.0


def logit_gradient(method: str, logits: np.ndarray, index: int) -> np.ndarray:
    """d(target)/d(logits), shape (num_classes,): one-hot at ``index`` for the class-logit target of the gradient
    methods; for FinerCAM, the gradient of pytorch-grad-cam's ``FinerWeightedTarget`` (the probability-weighted
    difference between the target logit and its closest classes' logits, Zhang et al. 2025), softmax included."""
    z = np.asarray(logits, dtype=np.float64)
    if method != "finercam":
        grad = np.zeros_like(z)
        grad[index] = 1.0
        return grad
    order = np.argsort(np.abs(z - z[index]), kind="stable")
    main = int(order[0])
    others = [int(order[i]) for i in FINER_COMPARISONS[: max(len(z) - 1, 0)]]
    p = np.exp(z - z.max())
    p /= p.sum()
    eye = np.eye(len(z))
    dp = p[:, None] * (eye - p[None, :])             # dp_i/dz_j
    gaps = z[main] - FINER_ALPHA * z[others]           # (m,)
    num = float(np.sum(p[others] * gaps))
    den = float(np.sum(p[others])) + 1e-9
    dnum = dp[others].T @ gaps + np.sum(p[others]) * eye[main] - FINER_ALPHA * (p[others] @ eye[others])
    dden = dp[others].sum(axis=0)
    return (dnum * den - num * dden) / den ** 2


def feature_gradient(weight: np.ndarray, dlogits: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """d(target)/d(activations), shape (C, h, w): ``dlogits @ W`` spread evenly over the h·w positions (global
    average pooling)."""
    c, h, w = shape
    per_channel = (np.asarray(dlogits, dtype=np.float64) @ np.asarray(weight, dtype=np.float64)) / (h * w)
    return np.broadcast_to(per_channel[:, None, None], (c, h, w)).astype(np.float32)


def project_first_component(maps: np.ndarray) -> np.ndarray:
    """(C, h, w) → (h, w): projection on the first principal component over positions, as pytorch-grad-cam's
    ``get_2d_projection`` (EigenCAM, eigen smoothing; Muhammad & Yeasin 2020). The sign is the SVD's."""
    flat = np.nan_to_num(maps).reshape(maps.shape[0], -1).T
    flat = flat - flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=True)
    return (flat @ vt[0, :]).reshape(maps.shape[1:]).astype(np.float32)


def raw_cam(method: str, activations: np.ndarray, grads: np.ndarray, eigen_smooth: bool = False) -> np.ndarray:
    """The unscaled map (h, w) of ``method`` from activations and gradients (C, h, w): pytorch-grad-cam's
    ``get_cam_weights`` / ``get_cam_image`` of that method, for one image."""
    a = np.asarray(activations, dtype=np.float32)
    g = np.asarray(grads, dtype=np.float32)
    if method == "eigencam":
        return project_first_component(a)
    if method == "hirescam":
        weighted = g * a
    elif method == "layercam":
        weighted = np.maximum(g, 0) * a
    else:
        if method in ("gradcam", "finercam"):
            weights = g.mean(axis=(1, 2))
        elif method == "xgradcam":
            weights = (g * a / (a.sum(axis=(1, 2), keepdims=True) + 1e-7)).sum(axis=(1, 2))
        elif method == "gradcam++":
            g2 = g ** 2
            aij = g2 / (2 * g2 + a.sum(axis=(1, 2), keepdims=True) * g2 * g + 1e-6)
            aij = np.where(g != 0, aij, 0)
            weights = (np.maximum(g, 0) * aij).sum(axis=(1, 2))
        else:
            raise CarNetError(f"{method!r} has no closed form; choose one of {', '.join(CLOSED_FORM_METHODS)}")
        weighted = weights[:, None, None] * a
    return project_first_component(weighted) if eigen_smooth else weighted.sum(axis=0)


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) → ``size`` = (H, W) by bilinear interpolation with half-pixel centres and edge clamping, the rule of
    OpenCV's ``cv2.resize(..., INTER_LINEAR)`` that pytorch-grad-cam uses (OpenCV is not in the serving tier)."""
    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(f).astype(int)
        t = f - i0
        t[i0 < 0], i0[i0 < 0] = 0.0, 0
        t[i0 >= n_in - 1], i0[i0 >= n_in - 1] = 0.0, n_in - 1
        return i0, np.minimum(i0 + 1, n_in - 1), t.astype(np.float32)

    y0, y1, ty = axis(image.shape[0], size[0])
    x0, x1, tx = axis(image.shape[1], size[1])
    img = image.astype(np.float32)
    rows = img[y0] * (1 - ty)[:, None] + img[y1] * ty[:, None]
    return (rows[:, x0] * (1 - tx)[None, :] + rows[:, x1] * tx[None, :]).astype(np.float32)


def _scale(cam: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image`` without the resize: min-max to [0, 1] with its epsilon."""
    cam = cam - cam.min()
    return (cam / (1e-7 + cam.max())).astype(np.float32)


def closed_form_cam(method: str, activations: np.ndarray, weight: np.ndarray, logits: np.ndarray,
                    index: int | None = None, size: tuple[int, int] | None = None,
                    eigen_smooth: bool = False) -> tuple[np.ndarray, int]:
    """A CAM at the last feature map of a GAP + linear head, without the network.

    Args:
        method: one of :data:`CLOSED_FORM_METHODS`.
        activations: (C, h, w) — the feature map that the head pools (e.g. the ONNX export's second output).
        weight: (num_classes, C) — the linear classifier's weight.
        logits: (num_classes,) — the network's logits for the photo.
        index: the class to explain; None: the top-1.
        size: (H, W) px of the map returned (the model's input size); None: (h, w).
        eigen_smooth: first principal component of the weighted activations instead of their sum.

    Returns:
        (map (H, W) float32 in [0, 1], the explained class index).

    Raises:
        CarNetError: an unknown method, or shapes that do not fit together.
    """
    if method not in CLOSED_FORM_METHODS:
        raise CarNetError(f"{method!r} has no closed form; choose one of {', '.join(CLOSED_FORM_METHODS)}")
    a = np.asarray(activations, dtype=np.float32)
    w = np.asarray(weight)
    z = np.asarray(logits).reshape(-1)
    if a.ndim != 3 or w.ndim != 2 or w.shape != (z.shape[0], a.shape[0]):
        raise CarNetError(f"activations (C, h, w) {a.shape}, weight (classes, C) {w.shape} and logits (classes,) "
                          f"{z.shape} do not fit together")
    index = int(z.argmax()) if index is None else int(index)
    grads = feature_gradient(w, logit_gradient(method, z, index), a.shape)
    cam = _scale(np.maximum(raw_cam(method, a, grads, eigen_smooth), 0))
    if size is not None:
        cam = resize_bilinear(cam, size)
    return _scale(cam), index
