"""Presentation mode, for a projector in a classroom: a sidebar toggle and a URL parameter (``?present=1``, to
bookmark) that turn it on; large high-contrast type; one photo's result per screen; the gallery stepped through with
← → and PageUp / PageDown (what presentation clickers send), through a small ``st.components.v2`` component that
listens to the keys in the page (Streamlit has no key bindings of its own)."""

from __future__ import annotations

import streamlit as st

#: Session-state key of the toggle, and the URL parameter that turns it on.
PRESENT_KEY = "present"

#: Large type and high contrast, readable from the back of a room at 1280×720: body text and captions in near-black,
#: headings and widget labels larger. Applied only in presentation mode.
_CSS = """
<style>
html, body, [data-testid="stAppViewContainer"] { font-size: 22px; }
[data-testid="stAppViewContainer"] p, [data-testid="stAppViewContainer"] li,
[data-testid="stAppViewContainer"] label, [data-testid="stCaptionContainer"],
[data-testid="stCaptionContainer"] p { color: #111 !important; font-size: 1.05rem !important; }
[data-testid="stCaptionContainer"] { opacity: 1 !important; }
[data-testid="stCaptionContainer"] p { font-size: 0.95rem !important; }
[data-testid="stImageCaption"] { color: #111 !important; font-size: 0.85rem !important; }
h1 { font-size: 2.4rem !important; } h2, h3 { font-size: 1.8rem !important; }
[data-testid="stWidgetLabel"] p { font-size: 1.05rem !important; font-weight: 600; }
[data-testid="stMainBlockContainer"] { padding-top: 4rem; padding-bottom: 2rem; max-width: 100%; }
.st-key-present_stage [data-testid="stImage"] img { max-height: 46vh; object-fit: contain; }
</style>
"""

_KEYS_JS = """
export default function(component) {
  window.__carnetStep = component.setTriggerValue;
  if (window.__carnetKeys) return;
  window.__carnetKeys = true;
  document.addEventListener('keydown', (ev) => {
    const t = ev.target;
    const typing = t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName));
    if (typing || ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const step = {ArrowRight: 1, PageDown: 1, ArrowLeft: -1, PageUp: -1}[ev.key];
    if (step && window.__carnetStep) { ev.preventDefault(); window.__carnetStep('step', step); }
  });
}
"""

_keys = st.components.v2.component("carnet_presentation_keys", js=_KEYS_JS)


def presenting() -> bool:
    """Whether presentation mode is on for this session: the sidebar toggle, which starts from ``?present=1``."""
    if PRESENT_KEY not in st.session_state:
        st.session_state[PRESENT_KEY] = st.query_params.get(PRESENT_KEY) == "1"
    return bool(st.session_state[PRESENT_KEY])


def _follow_toggle() -> None:
    """Keep the URL in step with the toggle, so the address bar is the bookmark."""
    if st.session_state.get(PRESENT_KEY):
        st.query_params[PRESENT_KEY] = "1"
    else:
        st.query_params.pop(PRESENT_KEY, None)


def presentation_toggle() -> bool:
    """The sidebar's "Presentation mode" toggle, and the large type when it is on; returns whether it is on."""
    on = presenting()
    st.sidebar.toggle("Presentation mode", key=PRESENT_KEY, on_change=_follow_toggle,
                      help="Large type for a projector, one result per screen; step through the gallery with ← → "
                           "or a presentation clicker. Bookmark with ?present=1.")
    if on:
        st.html(_CSS)
    return on


def step_keys(key: str) -> int:
    """-1, +1 or 0: the ← / → (PageUp / PageDown) key pressed since the last run, anywhere on the page outside a text
    field."""
    result = _keys(key=f"{key}_keys", on_step_change=lambda: None)
    step = getattr(result, "step", None)
    return int(step) if step in (-1, 1) else 0


#: Height of a result's chart in presentation mode, px: one result (photo beside its bars) fits a 1280×720 screen
#: at 150 % zoom (853×480 CSS px) under the page's header and the stepper.
PRESENT_CHART_PX = 300


def stage():
    """The container a presentation-mode page draws its stepper and one result in, at the top of the page: the
    photo's height is bounded there so that the result fits the screen."""
    return st.container(key="present_stage")


def stepper(key: str, count: int, where=None) -> int:
    """The index (0 … ``count`` - 1) of the item shown one per screen, moved by ← → keys and the Previous / Next
    buttons, wrapping around; kept in session state under ``key``; drawn in ``where`` (default: the page)."""
    where = where or st.container()
    index = st.session_state.get(key, 0) % max(count, 1)
    index = (index + step_keys(key)) % max(count, 1)
    left, middle, right = where.columns([2, 3, 2], vertical_alignment="center")
    if left.button("◀ Previous", key=f"{key}_previous", width="stretch"):
        index = (index - 1) % count
    if right.button("Next ▶", key=f"{key}_next", width="stretch"):
        index = (index + 1) % count
    middle.markdown(f"<div style='text-align:center'>Photo {index + 1} of {count} · ← → to step</div>",
                    unsafe_allow_html=True)
    st.session_state[key] = index
    return index
