"""The embedding map: a dataset's penultimate-layer features (what the classifier head sees: the backbone's pooled
output), projected to 2-D by UMAP (McInnes, Healy & Melville 2018, umap-learn) or, where umap-learn is missing,
t-SNE (van der Maaten & Hinton 2008, scikit-learn), and the most similar photos by cosine similarity.

Features are cached per model fingerprint and dataset files (``$CARNET_CACHE_DIR/features``), so a second look at a
dataset costs no inference.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
from PIL import Image

from carnet_core.config import cache_dir as default_cache_dir
from carnet_core.data.datasets import ImageDataset
from carnet_core.errors import CarNetError
from carnet_core.evaluation.scoring import score_images
from carnet_core.inference.serving import ServedModel, pooled_features, weights_fingerprint
from carnet_core.models.classifier import Classifier

if TYPE_CHECKING:
    import torch

PROJECTIONS: tuple[str, ...] = ("umap", "tsne")
PROJECTION_NAMES = {"umap": "UMAP", "tsne": "t-SNE"}


def penultimate_features(model: Classifier, batch: torch.Tensor) -> torch.Tensor:
    """The features the classifier head reads, (N, D) float32 on the CPU, from a preprocessed batch (N, 3, H, W):
    timm's ``forward_head(forward_features(x), pre_logits=True)`` — the globally pooled backbone output (an ML-Decoder
    head, which pools nothing, gets the spatial mean of the feature map). Holds ``model.lock``."""
    if isinstance(model, ServedModel):
        return pooled_features(model, batch)
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)
    with model.lock, torch.inference_mode():
        net = model.module
        pre = net.forward_head(net.forward_features(batch.to(model.device)), pre_logits=True).float()
    return (pre.mean(dim=(2, 3)) if pre.ndim == 4 else pre.flatten(1)).cpu()


@dataclass
class Features:
    """Penultimate features of a dataset's readable images: ``features`` (N, D) float32, each image's ``paths``
    and ``labels`` (class names), and the images that could not be read as (path, reason)."""

    features: np.ndarray
    paths: list[str]
    labels: list[str]
    skipped: list[tuple[str, str]]

    def normalised(self) -> np.ndarray:
        """The features scaled to unit length (N, D), so a dot product is a cosine similarity."""
        return self.features / np.maximum(np.linalg.norm(self.features, axis=1, keepdims=True), 1e-12)


def dataset_features(model: Classifier, dataset: ImageDataset, batch_size: int = 32,
                     progress: Callable[[float], None] | None = None, cache_dir: str | Path | None = None) -> Features:
    """:func:`penultimate_features` of every image of ``dataset``, cached under ``cache_dir`` (default
    ``$CARNET_CACHE_DIR/features``) by the model's weights fingerprint and the dataset's files
    (:meth:`ImageDataset.fingerprint`).

    Raises:
        CarNetError: no image of the dataset could be read.
    """
    key = hashlib.sha256(f"{weights_fingerprint(model)}|{dataset.fingerprint()}".encode()).hexdigest()[:24]
    path = (Path(cache_dir) if cache_dir else default_cache_dir() / "features") / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as kept:
            return Features(kept["features"].astype(np.float32), list(kept["paths"]), list(kept["labels"]),
                            [tuple(s) for s in kept["skipped"].reshape(-1, 2)])
    except (OSError, KeyError, ValueError):  # not cached yet, or a damaged file: computed again
        pass
    items = [(str(item) if not isinstance(item, np.ndarray) else f"#{i}", label)
             for i, (item, label) in enumerate(dataset.items)]
    scored = score_images(items, lambda i: model.input_view(dataset.load(i)),  # views made by the loading threads
                          lambda views: penultimate_features(model, model.preprocess(views, cropped=True)),
                          batch_size, progress=progress)
    if scored is None:
        raise CarNetError(f"none of the {len(dataset)} images of {dataset.name} could be read")
    found = Features(scored.probs.astype(np.float32), scored.names,
                     [dataset.class_names[int(y)] for y in scored.labels], scored.unreadable)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".tmp"), "wb") as out:  # np.savez adds .npz to a name without it
            np.savez(out, features=found.features.astype(np.float16), paths=np.array(found.paths),
                     labels=np.array(found.labels), skipped=np.array(found.skipped, dtype=str).reshape(-1, 2))
        path.with_suffix(".tmp").replace(path)
    except OSError:  # an unwritable or full cache: the features are still returned
        pass
    return found


def project(features: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """2-D coordinates (N, 2) of features (N, D) by cosine distance: UMAP (umap-learn, 15 neighbours) or t-SNE
    (scikit-learn, perplexity 30, PCA start); both seeded, so the same features give the same map. ``"umap"`` falls
    back to t-SNE where umap-learn is not installed (the serving tier may leave it out).

    Raises:
        CarNetError: an unknown method, or fewer than 3 images.
    """
    if method not in PROJECTIONS:
        raise CarNetError(f"unknown projection {method!r}; choose one of {', '.join(PROJECTIONS)}")
    n = len(features)
    if n < 3:
        raise CarNetError(f"a map needs 3 or more images, got {n}")
    if method == "umap":
        try:
            import umap  # lazy: umap-learn compiles with numba on first import (seconds)
        except ImportError:
            method = "tsne"
        else:
            reducer = umap.UMAP(n_neighbors=min(15, n - 1), metric="cosine", random_state=seed, n_jobs=1,
                                init="random" if n < 10 else "spectral")  # spectral needs more points than dims
            return reducer.fit_transform(features).astype(np.float32)
    from sklearn.manifold import TSNE  # lazy: scikit-learn's t-SNE, only for a map

    return TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), metric="cosine", init="pca",
                random_state=seed).fit_transform(features).astype(np.float32)


def nearest(normalised: np.ndarray, query: np.ndarray | int, k: int = 6) -> list[tuple[int, float]]:
    """The ``k`` rows of ``normalised`` (N, D), unit-length, most similar to ``query`` by cosine similarity, as
    (row, similarity in [−1, 1]), most similar first. ``query``: a row index (left out of its own neighbours) or a
    feature vector (D,)."""
    if isinstance(query, (int, np.integer)):
        similarity = normalised @ normalised[int(query)]
        similarity[int(query)] = -np.inf
    else:
        q = np.asarray(query, dtype=np.float32).ravel()
        similarity = normalised @ (q / max(float(np.linalg.norm(q)), 1e-12))
    k = min(k, len(similarity) - (1 if isinstance(query, (int, np.integer)) else 0))
    rows = np.argpartition(-similarity, k - 1)[:k] if k > 0 else np.array([], dtype=int)
    rows = rows[np.argsort(-similarity[rows], kind="stable")]
    return [(int(r), float(similarity[r])) for r in rows]


def knn_accuracy(points: np.ndarray, labels: Sequence[str], k: int = 5, metric: str = "cosine",
                 block: int = 1024) -> float:
    """Leave-one-out k-nearest-neighbour accuracy of ``labels`` among ``points`` (N, D), in [0, 1]: majority vote of
    the ``k`` nearest, a tie going to the nearest of the tied classes. ``metric``: ``"cosine"`` (features) or
    ``"euclidean"`` (a 2-D map). How well the points separate the classes; chance is about 1 / classes. Computed
    ``block`` rows at a time: memory grows with N, not N²."""
    _, codes = np.unique(np.asarray(labels), return_inverse=True)
    x = np.asarray(points, dtype=np.float32)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    squared = (x * x).sum(1)
    k = min(k, len(x) - 1)
    hits = 0
    for start in range(0, len(x), block):
        part = x[start:start + block]
        # cosine: higher dot is closer; euclidean: lower |a|² − 2a·b + |b|² is closer (|a|² is the same in a row)
        closeness = part @ x.T if metric == "cosine" else 2 * part @ x.T - squared[None, :]
        closeness[np.arange(len(part)), np.arange(start, start + len(part))] = -np.inf  # not its own neighbour
        order = np.argsort(-closeness, axis=1, kind="stable")[:, :k]
        for i, row in enumerate(order):
            votes = np.bincount(codes[row], minlength=codes.max() + 1)
            tied = votes == votes.max()
            hits += next(codes[j] for j in row if tied[codes[j]]) == codes[start + i]
    return hits / len(x)


def features_of(model: Classifier, image: Image.Image) -> np.ndarray:
    """:func:`penultimate_features` of one RGB image: (D,) float32."""
    return np.asarray(penultimate_features(model, model.preprocess([image]))[0], np.float32)


def similar(found: Features, query: np.ndarray | int, k: int = 6, predictions: Sequence[dict] = ()) -> list[dict]:
    """The ``k`` images of ``found`` most like ``query`` (a row, or a feature vector (D,) from :func:`features_of`),
    most similar first, as entries ``{"path", "label", "similarity", …}`` carrying the fields of their entry in
    ``predictions`` (an evaluation's, matched by path) where there is one."""
    by_path = {p["path"]: p for p in predictions}
    return [{"path": found.paths[j], "label": found.labels[j], **by_path.get(found.paths[j], {}), "similarity": sim}
            for j, sim in nearest(found.normalised(), query, k)]


def neighbour_rows(found: Features, coordinates: np.ndarray, k: int = 5) -> list[dict]:
    """One row per image for a CSV: path, label, x, y and its ``k`` most similar images with their cosine
    similarities (``neighbour_1``, ``similarity_1``, …)."""
    unit = found.normalised()
    rows = []
    for i, (path, label) in enumerate(zip(found.paths, found.labels)):
        row = {"path": path, "label": label, "x": float(coordinates[i, 0]), "y": float(coordinates[i, 1])}
        for rank, (j, sim) in enumerate(nearest(unit, i, k), start=1):
            row[f"neighbour_{rank}"], row[f"similarity_{rank}"] = found.paths[j], round(sim, 6)
        rows.append(row)
    return rows


