"""What one session may hold on the server: a bound on the bytes of its uploaded files; and, on a hosted demo, one
heavy action at a time (:func:`heavy`).

Streamlit keeps every file PUT to ``/_stcore/upload_file/<session>/…`` in memory until the session ends, whether or
not a widget still shows it, and bounds only each file (``server.maxUploadSize``): ten 45 MB PUTs that no widget used
were all kept (450 MB). Streamlit has no setting for a session's total, so its upload manager's ``add_file`` is
wrapped here: a session over :func:`carnet_core.config.session_upload_mb` has its oldest files dropped to make room
(an uploader that still showed one shows it no more), and a single file that alone exceeds it is refused (HTTP 413).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import streamlit as st

from carnet_core._io import heavy_action
from carnet_core.config import hosted_mode, session_upload_mb

_LOG = logging.getLogger("carnet")


def cap_session_uploads() -> None:
    """Install the per-session bound on the running server's upload manager, once per process; nothing without a
    server (AppTest, bare mode) or with another kind of upload manager."""
    from streamlit import runtime  # lazy: only a running server has one

    if not runtime.exists():
        return
    manager = runtime.get_instance().uploaded_file_mgr
    if getattr(manager, "_carnet_capped", False) or not hasattr(manager, "file_storage"):
        return
    original = manager.add_file

    def add_file(session_id, file) -> None:
        cap = session_upload_mb() * 2**20
        if len(file.data) > cap:
            from starlette.exceptions import HTTPException  # lazy: Streamlit's server answers with it

            raise HTTPException(status_code=413, detail="This file is larger than a session may upload")
        stored = manager.file_storage.get(session_id, {})
        held = sum(len(f.data) for f in stored.values())
        for file_id in list(stored):  # oldest first: dicts keep insertion order
            if held + len(file.data) <= cap:
                break
            held -= len(stored[file_id].data)
            manager.remove_file(session_id, file_id)
            _LOG.info("session %s over its %d MB of uploads: dropped its oldest file", session_id, cap // 2**20)
        original(session_id, file)

    manager.add_file = add_file
    manager._carnet_capped = True


@contextlib.contextmanager
def heavy(what: str) -> Iterator[None]:
    """Around a heavy action (an evaluation, a folder comparison, ROAD): on a hosted demo, one at a time per server
    (:func:`carnet_core._io.heavy_action`), the page saying so while this visitor's ``what`` waits its turn."""
    note = st.empty()
    with heavy_action(hosted_mode(), busy=lambda: note.info(f"Another visitor's {what} is running on this demo; "
                                                            "yours starts as soon as it ends.")):
        note.empty()
        yield
