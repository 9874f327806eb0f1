"""Settings read from the environment."""

from __future__ import annotations

import os
from pathlib import Path


def env_path(name: str, default: str | os.PathLike) -> Path:
    """The folder ``$name`` names (``~`` expanded), or ``default`` when it is unset or blank. A blank value (``X=``
    in a shell or a host's config) would otherwise be ``Path("")``: the current folder, which then fills up with
    exports, jobs or uploads."""
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else Path(default)
