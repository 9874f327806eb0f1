"""How faithful a CAM is to the model, by ROAD — RemOve And Debias (Rong et al., ICML 2022, "A Consistent and
Efficient Evaluation Strategy for Attribution Methods") — as pytorch-grad-cam implements it: the pixels a heatmap
ranks most relevant (MoRF) or least relevant (LeRF) are removed and filled in by noisy linear imputation, and the
class probability is read again. A faithful heatmap loses the class fast when its top pixels go (low MoRF curve)
and keeps it when its bottom pixels go (high LeRF curve); ROAD combined = mean over the removal levels of
(LeRF − MoRF) / 2, pytorch-grad-cam's ``ROADCombined``. Higher is better; RandomCAM (random channel weights) is the
floor a method has to beat to say anything about the model.

No metric math here: the perturbation, the imputation and the scores are pytorch-grad-cam's.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from carnet_core.data.images import ImageSource, load_image
from carnet_core.errors import CarNetError, ImageError
from carnet_core.explain.cams import FLOOR_METHOD, METHOD_NAMES, METHOD_TABLE, explain
from carnet_core.models.classifier import Classifier

#: Share of the pixels removed (%) at each point of the curves; ROAD's paper uses 10–90 %, four levels keep one photo
#: under about 2 s on a CPU (each level solves a sparse system the size of the removed pixels).
REMOVED_PCT: tuple[int, ...] = (20, 40, 60, 80)
#: What a ranking over a folder compares by default: every method but the per-channel ones (ScoreCAM, AblationCAM:
#: a minute each per photo on a CPU), and the floor.
RANKED_METHODS: tuple[str, ...] = tuple(m.key for m in METHOD_TABLE if not m.expensive)


@dataclass
class RoadCurves:
    """ROAD of one heatmap.

    Attributes:
        removed_pct: share of the pixels removed at each point (%), ascending.
        morf: the class probability with the most relevant ``removed_pct`` % removed (and imputed), in [0, 1].
        lerf: the class probability with the least relevant removed.
        probability: the class probability of the photo itself.
        class_name: the class explained.
    """

    removed_pct: list[int]
    morf: list[float]
    lerf: list[float]
    probability: float
    class_name: str

    @property
    def combined(self) -> float:
        """ROAD combined: mean of (LeRF − MoRF) / 2 over the removal levels (pytorch-grad-cam's ``ROADCombined``);
        in [−0.5, 0.5], higher is more faithful."""
        return float(np.mean([(le - mo) / 2 for le, mo in zip(self.lerf, self.morf)]))

    def text(self) -> str:
        """The curves in words for a page or the CLI (Markdown)."""
        worst, best = self.removed_pct[-1], self.removed_pct[0]
        return (f"ROAD combined **{self.combined:+.3f}** (higher is more faithful). Removing the {worst} % of pixels "
                f"the heatmap ranks highest leaves {self.morf[-1]:.1%} for **{self.class_name}** (from "
                f"{self.probability:.1%}); removing its lowest {worst} % leaves {self.lerf[-1]:.1%}. At {best} %: "
                f"{self.morf[0]:.1%} and {self.lerf[0]:.1%}.")


def road(model: Classifier, image: ImageSource | Image.Image, heatmap: np.ndarray, class_index: int,
         removed_pct: Sequence[int] = REMOVED_PCT, seed: int = 0) -> RoadCurves:
    """The ROAD curves of ``heatmap`` for class ``class_index`` on ``image``.

    Args:
        model: the classifier the heatmap explains (this call holds ``model.lock``).
        image: the photo (RGB PIL image or anything :func:`load_image` reads).
        heatmap: (H, W) in [0, 1], aligned with the model's input (:attr:`Explanation.heatmap`).
        class_index: the class whose softmax probability is read.
        removed_pct: removal levels in (0, 100), %.
        seed: seeds the imputer's noise, so the same heatmap gets the same score.

    Raises:
        CarNetError: a removal level outside (0, 100) or a heatmap whose size is not the model's input.
    """
    import torch  # lazy: the serving tier has no torch (carnet_core.inference.serving)

    # lazy: pytorch-grad-cam (OpenCV, SciPy), as in carnet_core.explain.cams
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    levels = sorted(int(r) for r in removed_pct)
    if not levels or not all(0 < r < 100 for r in levels):
        raise CarNetError(f"removal levels must be between 0 and 100 %, got {list(removed_pct)}")
    pil = image if isinstance(image, Image.Image) and image.mode == "RGB" else load_image(image)
    x = model.preprocess([pil])
    if tuple(heatmap.shape) != tuple(x.shape[-2:]):
        raise CarNetError(f"the heatmap is {heatmap.shape[1]}×{heatmap.shape[0]} px, the model's input "
                          f"{x.shape[-1]}×{x.shape[-2]} px")
    targets = [ClassifierOutputSoftmaxTarget(class_index)]
    cams = heatmap[None].astype(np.float32)
    with model.lock, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.inference_mode():
            probability = float(torch.softmax(model.module(x).float(), 1)[0, class_index])
        # ROAD's "percentile" p keeps the pixels below the heatmap's p-th percentile: p = 100 − removed
        morf = [float(np.ravel(ROADMostRelevantFirst(100 - r)(x, cams, targets, model.module, return_diff=False))[0])
                for r in levels]
        lerf = [float(np.ravel(ROADLeastRelevantFirst(100 - r)(x, cams, targets, model.module, return_diff=False))[0])
                for r in levels]
    return RoadCurves(levels, morf, lerf, probability, model.class_names[class_index])


@dataclass
class MethodScore:
    """One CAM method's ROAD combined over a set of photos: ``scores`` per photo, their mean and standard deviation,
    and whether it beat the RandomCAM floor's mean."""

    method: str
    name: str
    scores: list[float] = field(default_factory=list)
    beats_floor: bool = False

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores)) if self.scores else float("nan")

    @property
    def std(self) -> float:
        return statistics.pstdev(self.scores) if len(self.scores) > 1 else 0.0


def rank_methods(model: Classifier, images: Sequence[ImageSource], methods: Sequence[str] = RANKED_METHODS,
                 removed_pct: Sequence[int] = REMOVED_PCT, seed: int = 0,
                 progress: Callable[[float], None] | None = None) -> tuple[list[MethodScore], list[tuple[str, str]]]:
    """Which CAM method is most faithful for ``model``: each method's mean ROAD combined over ``images`` (the
    model's top-1 class of each photo explained), with RandomCAM as the floor.

    Args:
        images: photos (paths or bytes); unreadable ones are skipped and reported.
        methods: keys of :data:`~carnet_core.explain.cams.METHODS`; the floor is added.
        seed: seeds RandomCAM's weights and the imputer's noise.
        progress: called with the fraction done (0–1) after each photo and method.

    Returns:
        (scores, most faithful first and the floor among them, (photo, reason) of the photos skipped).

    Raises:
        CarNetError: an unknown method, or no photo could be read.
    """
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise CarNetError(f"unknown CAM method {', '.join(unknown)}; choose from {', '.join(METHOD_NAMES)}")
    keys = [m for m in dict.fromkeys(methods)] + [FLOOR_METHOD.key]
    ranked = {k: MethodScore(k, METHOD_NAMES.get(k, FLOOR_METHOD.name)) for k in keys}
    skipped: list[tuple[str, str]] = []
    state = np.random.get_state()  # RandomCAM draws from NumPy's global generator
    try:
        for i, source in enumerate(images):
            try:
                pil = load_image(source)
            except ImageError as exc:
                skipped.append((str(source), str(exc)))
                continue
            for j, key in enumerate(keys):
                np.random.seed(seed + i)
                random.seed(seed + i)
                cam = explain(model, pil, method=key)
                ranked[key].scores.append(road(model, pil, cam.heatmap, cam.class_index, removed_pct, seed).combined)
                if progress:
                    progress((i + (j + 1) / len(keys)) / len(images))
    finally:
        np.random.set_state(state)
    if not ranked[FLOOR_METHOD.key].scores:
        raise CarNetError(f"none of the {len(images)} photos could be read")
    floor = ranked[FLOOR_METHOD.key].mean
    for score in ranked.values():
        score.beats_floor = score.method != FLOOR_METHOD.key and score.mean > floor
    return sorted(ranked.values(), key=lambda s: -s.mean), skipped


#: Rough cost of ROAD for one photo and one method on a laptop CPU (s): the imputation's sparse solves dominate.
SECONDS_PER_PHOTO_AND_METHOD = 2.0


def ranking_summary(scores: Sequence[MethodScore]) -> str:
    """:func:`rank_methods`' result in a sentence (Markdown): the most faithful method, the floor's score, and the
    methods that do not beat the floor (their heatmaps say no more about this model than random ones)."""
    floor = next(s for s in scores if s.method == FLOOR_METHOD.key)
    methods = [s for s in scores if s.method != FLOOR_METHOD.key]
    below = [s.name for s in methods if not s.beats_floor]
    text = (f"Most faithful for this model: **{methods[0].name}** (ROAD combined {methods[0].mean:+.3f}); the "
            f"{FLOOR_METHOD.name} floor scores {floor.mean:+.3f}.")
    if below:
        text += f" Not above the floor: {', '.join(below)} — on these photos their heatmaps say no more than random ones."
    return text
