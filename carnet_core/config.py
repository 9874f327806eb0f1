"""Every setting CarNet reads from the environment, in one place.

| variable | meaning | default |
| --- | --- | --- |
| ``CARNET_WEIGHTS_DIR`` | folder scanned for weight files | ``weights/`` in the project |
| ``CARNET_JOBS_DIR`` | fine-tune jobs (one folder a run) | ``runs/jobs`` under the current folder |
| ``CARNET_CACHE_DIR`` | ONNX exports, evaluation reports, model costs | ``~/.cache/carnet`` |
| ``CARNET_CACHE_MAX_MB`` | bound of the export cache, MB | :data:`CACHE_MAX_MB` |
| ``CARNET_DATA_ROOT`` | labelled datasets offered by the pages | ``data/`` in the project |
| ``CARNET_GALLERY_DIR`` | the sample gallery | ``gallery/`` in the project |
| ``CARNET_MAPPINGS_DIR`` | label mapping files | ``mappings/`` in the project |
| ``CARNET_HOSTED`` | a public demo: no training, no server folders | off |
| ``CARNET_OFFLINE`` / ``HF_HUB_OFFLINE`` | never touch the network | off |
| ``CARNET_DEVICE`` | torch device name (``cpu``, ``cuda:1``) | first CUDA GPU, else the CPU |
| ``CARNET_ENGINE`` | force an inference engine everywhere | ``auto`` |
| ``CARNET_PARITY_PHOTOS`` | real photos for the fp32 engines' parity check | none |
| ``CARNET_CALIBRATION`` | labelled photos (class folders) for the reduced-precision accuracy gate | none |
| ``CARNET_CALIBRATION_MAPPING`` | its folder class → model classes file, for ImageNet models | none |
| ``CARNET_STUN`` | STUN/TURN server URLs (comma-separated, or ``none``) for the live camera across networks | none; hosted: Google's public STUN |
| ``CARNET_ENGINE_FIRST`` | the app measures a model's engine before its first prediction (not in the background) | off |

Values are read on every call (tests and a host's config may change them at run time); a blank value counts as
unset. Nothing here imports torch.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path

from carnet_core.errors import CarNetError

#: The folder holding ``app.py`` and ``carnet_core/``.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Default bound of the export cache, MB (``$CARNET_CACHE_MAX_MB`` overrides it).
CACHE_MAX_MB = 2000
_TRUE = ("1", "true", "yes", "on")


def env_text(name: str) -> str:
    """``$name`` stripped, or ``""`` when unset."""
    return os.environ.get(name, "").strip()


def env_flag(name: str) -> bool:
    """True when ``$name`` is 1, true, yes or on (any case)."""
    return env_text(name).lower() in _TRUE


def env_path(name: str, default: str | os.PathLike) -> Path:
    """The folder ``$name`` names (``~`` expanded), or ``default`` when it is unset or blank. A blank value (``X=``
    in a shell or a host's config) would otherwise be ``Path("")``: the current folder, which then fills up with
    exports, jobs or uploads."""
    value = env_text(name)
    return Path(value).expanduser() if value else Path(default)


def hosted_mode() -> bool:
    """True when ``CARNET_HOSTED`` is set (1/true/yes): a public demo that must not train or browse folders."""
    return env_flag("CARNET_HOSTED")


#: A serving bundle's manifest (``python -m carnet_core bundle``), beside ``app.py``: its presence puts the app in
#: the serving tier.
BUNDLE_MANIFEST = "bundle.json"


def serving_tier() -> bool:
    """True when the app runs from a serving bundle (:data:`BUNDLE_MANIFEST` beside ``app.py``), or
    ``CARNET_SERVING=1``: models are the bundle's ONNX exports, run by ONNX Runtime without PyTorch
    (:mod:`carnet_core.inference.serving`); there is no fine-tuning."""
    return env_flag("CARNET_SERVING") or (PROJECT_ROOT / BUNDLE_MANIFEST).is_file()


def can_train() -> bool:
    """Whether this app may fine-tune (and collect photos for it): not a hosted demo (:func:`hosted_mode`), not the
    serving tier (:func:`serving_tier`, which has no PyTorch)."""
    return not hosted_mode() and not serving_tier()


def served_models_dir() -> Path:
    """The serving tier's models (each ``NAME.onnx`` with its ``.json`` and ``.npz``): ``$CARNET_MODELS_DIR``, else
    the bundle's ``models`` folder."""
    return env_path("CARNET_MODELS_DIR", PROJECT_ROOT / "models")


#: What one visitor of a hosted demo may ask of it at once (hosted mode only: on their own machine people may spend
#: what they like): CAM methods in one comparison of methods on Explain, photos in one evaluation or folder comparison.
HOSTED_CAM_METHODS = 4
HOSTED_FOLDER_PHOTOS = 2000


def cam_methods_cap() -> int | None:
    """How many CAM methods one comparison may compute: :data:`HOSTED_CAM_METHODS` in hosted mode, else no cap."""
    return HOSTED_CAM_METHODS if hosted_mode() else None


def folder_photos_cap() -> int | None:
    """How many photos one evaluation or folder comparison may score: :data:`HOSTED_FOLDER_PHOTOS` in hosted mode,
    else no cap."""
    return HOSTED_FOLDER_PHOTOS if hosted_mode() else None


def session_upload_mb() -> int:
    """Megabytes of uploaded files one app session may hold on the server: ``$CARNET_SESSION_UPLOAD_MB`` or 200 (four
    of the largest photos Classify takes); older uploads are dropped past it (:mod:`ui.guard`)."""
    try:
        return max(1, int(env_text("CARNET_SESSION_UPLOAD_MB") or 200))
    except ValueError:
        return 200


def session_pixel_budget() -> int:
    """Pixels one app session may decode for Classify, in all: ``$CARNET_SESSION_MEGAPIXELS`` million or 4,000 MP
    (about 330 photos of 12 MP)."""
    try:
        return max(1, int(env_text("CARNET_SESSION_MEGAPIXELS") or 4000)) * 1_000_000
    except ValueError:
        return 4_000_000_000


def offline_by_env() -> bool:
    """True when the environment says not to use the network (``HF_HUB_OFFLINE`` or ``CARNET_OFFLINE``)."""
    return env_flag("HF_HUB_OFFLINE") or env_flag("CARNET_OFFLINE")


def weights_dir() -> Path:
    """The folder scanned for user-provided weight files: ``$CARNET_WEIGHTS_DIR`` or ``<project>/weights``."""
    return env_path("CARNET_WEIGHTS_DIR", PROJECT_ROOT / "weights")


def jobs_dir() -> Path:
    """The jobs root: ``$CARNET_JOBS_DIR`` or ``runs/jobs`` under the current folder (absolute)."""
    return env_path("CARNET_JOBS_DIR", "runs/jobs").resolve()


def data_root() -> Path:
    """Default folder offered for labelled datasets: ``$CARNET_DATA_ROOT`` or ``data/`` in the project."""
    return env_path("CARNET_DATA_ROOT", PROJECT_ROOT / "data")


def gallery_dir() -> Path:
    """Sample gallery folder: ``$CARNET_GALLERY_DIR`` or ``gallery/`` in the project."""
    return env_path("CARNET_GALLERY_DIR", PROJECT_ROOT / "gallery")


def mappings_dir() -> Path:
    """Label mapping files: ``$CARNET_MAPPINGS_DIR`` or ``mappings/`` in the project."""
    return env_path("CARNET_MAPPINGS_DIR", PROJECT_ROOT / "mappings")


def cache_dir() -> Path:
    """Where CarNet caches ONNX exports, evaluation reports and measured model costs: ``$CARNET_CACHE_DIR`` or
    ``~/.cache/carnet``; when that folder cannot be created or written (a read-only home on some hosts), a folder in
    the system's temporary directory instead, so the fast engine and the caches still work."""
    configured = env_path("CARNET_CACHE_DIR", Path.home() / ".cache" / "carnet")
    try:
        configured.mkdir(parents=True, exist_ok=True)
        if os.access(configured, os.W_OK | os.X_OK):
            return configured
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"carnet-cache-{getattr(os, 'getuid', lambda: 'user')()}"


def cache_max_mb() -> float:
    """The export cache's bound in MB: ``$CARNET_CACHE_MAX_MB`` or :data:`CACHE_MAX_MB`.

    Raises:
        CarNetError: ``$CARNET_CACHE_MAX_MB`` is not a number >= 0.
    """
    text = env_text("CARNET_CACHE_MAX_MB")
    if not text:
        return float(CACHE_MAX_MB)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise CarNetError(f"CARNET_CACHE_MAX_MB must be a number of MB, at least 0, not {text!r}")
    return value


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child Python process that imports ``carnet_core`` (a fine-tune worker, a measurement):
    this one's, the project first on ``PYTHONPATH``, and ``extra``."""
    path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def device_name() -> str:
    """``$CARNET_DEVICE`` (``""``: choose automatically); checked by
    :func:`carnet_core.models.classifier.default_device`."""
    return env_text("CARNET_DEVICE")


def forced_engine() -> str:
    """``$CARNET_ENGINE`` (``""``: not forced); checked by :func:`carnet_core.inference.engines.select_engine`."""
    return env_text("CARNET_ENGINE")


def parity_photos_dir() -> str:
    """``$CARNET_PARITY_PHOTOS``: a folder of real photos for the fp32 engines' parity check (``""``: none)."""
    return env_text("CARNET_PARITY_PHOTOS")


def calibration_set() -> tuple[str, str]:
    """(``$CARNET_CALIBRATION``, ``$CARNET_CALIBRATION_MAPPING``): the labelled set of the reduced-precision accuracy
    gate and its mapping file (``""``: none)."""
    return env_text("CARNET_CALIBRATION"), env_text("CARNET_CALIBRATION_MAPPING")


#: The STUN server a hosted demo's live camera offers visitors behind NAT (Google's public one).
PUBLIC_STUN = "stun:stun.l.google.com:19302"


def ice_servers() -> list[dict[str, list[str]]]:
    """The WebRTC ICE servers of the live camera (RTCConfiguration's ``iceServers``): ``$CARNET_STUN`` (URLs,
    comma-separated; ``none`` for none); else none on your own machine (browser and server on one host need none) and
    :data:`PUBLIC_STUN` in hosted mode."""
    setting = env_text("CARNET_STUN")
    if setting.lower() == "none":
        return []
    urls = [u.strip() for u in setting.split(",") if u.strip()]
    if not urls and hosted_mode():
        urls = [PUBLIC_STUN]
    return [{"urls": urls}] if urls else []


def measure_engine_first() -> bool:
    """``$CARNET_ENGINE_FIRST``: the app measures a model's engine before its first prediction instead of in the
    background (the behaviour before background measuring; the benchmark's baseline)."""
    return env_flag("CARNET_ENGINE_FIRST")


def server_folders() -> list[tuple[Path, str]]:
    """The server's folders a message may name, each with how a hosted demo's visitor reads it instead, the most
    specific first (a folder inside the project before the project)."""
    named = [(data_root(), "the data folder"), (weights_dir(), "the weights folder"), (jobs_dir(), "the runs folder"),
             (gallery_dir(), "the sample gallery"), (mappings_dir(), "the mappings folder"), (cache_dir(), "the cache"),
             (PROJECT_ROOT, "the app's folder"), (Path.home(), "the server's home folder")]
    found = []
    for folder, name in named:
        for form in {str(folder), str(folder.resolve())}:
            if form not in ("", "/") and form not in (f for f, _ in found):
                found.append((form, name))
    return [(Path(f), n) for f, n in sorted(found, key=lambda t: -len(t[0]))]


def operator_text(text: str) -> str:
    """``text`` — a note for whoever runs the server (a CLI command, where to put files) — or "" in hosted mode
    (:func:`hosted_mode`), whose visitors can act on neither."""
    return "" if hosted_mode() else text


def public_text(text: str) -> str:
    """``text`` as a hosted demo's visitor may read it (:func:`hosted_mode`): every server folder it names replaced —
    a path inside one by its part inside it (``/srv/carnet/data/cars/val`` → ``cars/val``), the folder itself by its
    name (``the weights folder``). Outside hosted mode ``text`` is returned as it is: on their own machine people need
    the paths."""
    if not hosted_mode():
        return text
    for folder, name in server_folders():
        root = re.escape(str(folder))
        text = re.sub(root + r"/([^\s`'\"),;:]+)", lambda m: m.group(1), text)
        text = re.sub(root + r"(?![\w.-])", name, text)
    return text
