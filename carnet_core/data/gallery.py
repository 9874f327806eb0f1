"""The sample gallery's credits: who made each photo, under which licence, and the attribution to show with it,
read from the ``SOURCES.md`` table beside the photos (columns ``file``, ``author``, ``licence``, ``origin URL``,
``attribution to show``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SOURCES_FILE = "SOURCES.md"
#: "none required; suggested: "…"" and "keep Apache-2.0 notice: "…"": the quoted text is what to show
_QUOTED = re.compile(r"^(?:(?:none|not) required;\s*suggested|keep [^:]+ notice):\s*\"(.+)\"\s*$", re.I)


@dataclass(frozen=True)
class Credit:
    """A gallery photo's provenance."""

    file: str
    author: str
    licence: str
    url: str
    attribution: str  # what its licence asks to show, or the suggested credit where none is required

    @property
    def short(self) -> str:
        """A caption-sized credit: ``"Photo via Pexels (CC0)"``, or ``"by Rex Gray · CC BY 2.0"``."""
        if _QUOTED.match(self.attribution) or not self.author or self.author.startswith("not stated"):
            return self.text
        author = self.author.split(",")[0] + " et al." if self.author.count(",") > 1 else self.author
        licence = re.split(r" \(|;", self.licence)[0]  # "BSD-3-Clause (licence of the package); …": its name
        return f"by {author} · {licence}"

    @property
    def text(self) -> str:
        """The attribution to show in full."""
        m = _QUOTED.match(self.attribution)
        return m.group(1) if m else self.attribution

    def png_text(self) -> dict[str, str]:
        """The credit as a PNG's text chunks (:func:`carnet_core.data.images.png_bytes`): what travels with a
        downloaded picture made from the photo."""
        return {"Author": self.author, "Copyright": self.licence, "Source": self.url, "Description": self.text}


def _cells(line: str) -> list[str]:
    return [c.strip().strip("`") for c in line.strip().strip("|").split("|")]


@lru_cache(maxsize=8)
def _read(path: str, mtime_ns: int) -> dict[str, Credit]:
    rows = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    header = next((_cells(r) for r in rows if "file" in _cells(r) and "licence" in _cells(r)), None)
    if header is None:
        return {}
    col = {name: i for i, name in enumerate(header)}
    want = {"file": "file", "author": "author", "licence": "licence", "url": "origin URL",
            "attribution": "attribution to show"}
    if any(v not in col for v in want.values()):
        return {}
    credits = {}
    for row in rows:
        cells = _cells(row)
        if len(cells) != len(header) or cells == header or set(cells[0]) <= set("-: "):
            continue
        credit = Credit(**{k: cells[col[v]] for k, v in want.items()})
        credits[credit.file] = credit
    return credits


def credits(folder: str | Path) -> dict[str, Credit]:
    """{file name: :class:`Credit`} from ``folder/SOURCES.md``; empty when there is none or it has no such table."""
    path = Path(folder) / SOURCES_FILE
    try:
        mtime_ns = path.stat().st_mtime_ns
    except OSError:
        return {}
    return _read(str(path), mtime_ns)


def credit(photo: str | Path) -> Credit | None:
    """The :class:`Credit` of the gallery photo at ``photo``, from the ``SOURCES.md`` beside it; None without one."""
    photo = Path(photo)
    return credits(photo.parent).get(photo.name)
