"""A thumbnail that follows the mouse over a Plotly chart's dots: Plotly's hover label takes no images, and
Streamlit's ``st.plotly_chart`` reports clicks and selections but not hover, so a small ``st.components.v2``
component listens to the chart's own ``plotly_hover`` events in the page and shows the dot's picture."""

from __future__ import annotations

import base64
from typing import Callable, Sequence

import streamlit as st

from carnet_core import ImageError
from carnet_core.data.images import thumbnail

#: Hover pictures are sent to the browser with the page: up to this many dots get one (about 3 kB each).
MAX_HOVER_THUMBNAILS = 1500
HOVER_PX = 112

_JS = """
export default function(component) {
  const { data } = component;
  const id = 'carnet-hover-' + data.box;
  let tip = document.getElementById(id);
  if (!tip) {
    tip = document.createElement('img');
    tip.id = id;
    tip.alt = '';
    tip.style.cssText = 'position:fixed;display:none;z-index:1000;width:' + data.px + 'px;pointer-events:none;' +
      'border:3px solid #fff;border-radius:4px;box-shadow:0 2px 10px rgba(0,0,0,.45)';
    document.body.appendChild(tip);
  }
  let tries = 0;
  const attach = () => {
    const gd = document.querySelector('.st-key-' + data.box + ' .js-plotly-plot');
    if (!gd || !gd.on) { if (tries++ < 50) setTimeout(attach, 200); return; }
    gd.__carnetThumbnails = data.thumbnails;
    if (gd.__carnetHover) return;
    gd.__carnetHover = true;
    gd.on('plotly_hover', (ev) => {
      const src = gd.__carnetThumbnails[ev.points[0].customdata];
      if (!src) return;
      tip.src = src;
      tip.style.left = (ev.event.clientX + 18) + 'px';
      tip.style.top = (ev.event.clientY + 18) + 'px';
      tip.style.display = 'block';
    });
    gd.on('plotly_unhover', () => { tip.style.display = 'none'; });
  };
  attach();
}
"""

_hover = st.components.v2.component("carnet_hover_thumbnails", js=_JS)


def hover_thumbnails(paths: Sequence[str], progress: Callable[[float], None] | None = None) -> list[str | None]:
    """A small JPEG (longer side :data:`HOVER_PX` px) of each of the first :data:`MAX_HOVER_THUMBNAILS` paths as a
    data URI, None for a file that cannot be read or past the limit."""
    found: list[str | None] = []
    for i, path in enumerate(paths):
        uri = None
        if i < MAX_HOVER_THUMBNAILS:
            try:
                uri = "data:image/jpeg;base64," + base64.b64encode(thumbnail(path, HOVER_PX)).decode()
            except ImageError:
                pass
        found.append(uri)
        if progress and i % 50 == 0:
            progress(i / max(len(paths), 1))
    return found


def show_on_hover(box_key: str, thumbnails: Sequence[str | None]) -> None:
    """Show ``thumbnails[row]`` beside the mouse over a dot whose ``customdata`` is ``row``, in the Plotly chart
    drawn inside ``st.container(key=box_key)``."""
    _hover(data={"box": box_key, "thumbnails": list(thumbnails), "px": HOVER_PX}, key=f"{box_key}_hover")
