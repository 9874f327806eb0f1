"""Is the Hugging Face Hub reachable? Answered once per process, quickly.

timm downloads pretrained weights through ``huggingface_hub``, which retries for about a minute when there is
no network. CarNet asks once with a short TCP connect and remembers the answer, and respects
``HF_HUB_OFFLINE=1`` (and ``CARNET_OFFLINE=1``) without touching the network at all.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

from carnet_core.config import offline_by_env

_lock = threading.Lock()
_reachable: bool | None = None


def hub_reachable(timeout_s: float = 1.5) -> bool:
    """Whether ``HF_ENDPOINT`` (default huggingface.co:443) accepts a TCP connection within ``timeout_s`` s.

    The first answer is remembered for the life of the process (see :func:`reset`); the environment variables
    are read on every call, so setting ``HF_HUB_OFFLINE=1`` later still takes effect.
    """
    global _reachable
    if offline_by_env():
        return False
    with _lock:
        if _reachable is None:
            url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout_s):
                    _reachable = True
            except OSError:
                _reachable = False
        return _reachable


def reset() -> None:
    """Forget the remembered answer (tests; a laptop that came back online)."""
    global _reachable
    with _lock:
        _reachable = None
