"""The Procfile's web command run as a host runs it (``bash -c`` with ``$PORT`` set): a real Streamlit server that
answers on that port and refuses uploads over CarNet's cap, through the same upload endpoint the browser uses."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.cookiejar
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from conftest import ROOT

from carnet_core.data.images import MAX_FILE_BYTES

MB = 2**20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def procfile_server(**env_extra: str):
    """Start the Procfile's ``web:`` command under bash; yield (port, XSRF cookie name, token) once it is healthy."""
    command = (ROOT / "Procfile").read_text().strip().removeprefix("web: ")
    port = _free_port()
    env = {**os.environ, "PORT": str(port), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           **env_extra}
    server = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        deadline = time.time() + 90
        while True:
            try:
                opener.open(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the Procfile's server did not come up: {server.stdout.read().decode()[-2000:]}")
                time.sleep(0.3)
        cookie = next(c for c in jar if "xsrf" in c.name)  # set by the health endpoint, as for a browser
        yield port, cookie.name, cookie.value
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def in_session(port: int, cookie: str, token: str, fn):
    """``fn(session_id)`` while a browser-like session is connected (websocket open, its first script run finished)."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    async def connected():
        async with websockets.connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit", token],
                                      additional_headers={"Cookie": f"{cookie}={token}",
                                                          "Origin": f"http://127.0.0.1:{port}"}) as ws:
            rerun = BackMsg()
            rerun.rerun_script.query_string = ""
            await ws.send(rerun.SerializeToString())
            while True:
                msg = ForwardMsg()
                msg.ParseFromString(await asyncio.wait_for(ws.recv(), 60))
                kind = msg.WhichOneof("type")
                if kind == "new_session":
                    session_id = msg.new_session.initialize.session_id
                elif kind == "script_finished":  # the app has run once (imports, models): it is what a visitor meets
                    return await asyncio.to_thread(fn, session_id)

    return asyncio.run(connected())


def upload_status(port: int, cookie: str, token: str, session: str, nbytes: int) -> int:
    """HTTP status of a photo upload of ``nbytes`` to the session, as the browser's uploader sends it (multipart PUT).
    A server that refuses on the Content-Length header answers before the body; otherwise the body is sent."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"car.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest("PUT", f"/_stcore/upload_file/{session}/{uuid.uuid4().hex}")
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(len(head) + nbytes + len(tail)))
        conn.putheader("X-Xsrftoken", token)
        conn.putheader("Cookie", f"{cookie}={token}")
        conn.endheaders()
        answered_early, _, _ = select.select([conn.sock], [], [], 2.0)
        if not answered_early:
            conn.send(head + b"\xff" * nbytes + tail)
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.subprocess
def test_procfile_server_refuses_uploads_over_the_cap():
    assert MAX_FILE_BYTES == 50 * MB  # what the Procfile's default cap is for (Streamlit's own default is 200 MB)
    for env, accepted_mb, refused_mb in (({}, 45, 51), ({"CARNET_MAX_UPLOAD_MB": "1"}, 0.5, 2)):
        with procfile_server(**env) as (port, cookie, token):
            statuses = in_session(port, cookie, token, lambda session: [
                upload_status(port, cookie, token, session, int(accepted_mb * MB)),
                upload_status(port, cookie, token, session, int(refused_mb * MB))])
        assert statuses == [204, 413], env  # a big photo goes in; over the cap is refused (the operator's, if set)


def test_hosts_get_the_python_that_is_tested():
    """Heroku's Python buildpack (and uv, pyenv) read `.python-version`; without it a host takes its own default
    Python, which CI never ran. It names a major.minor release (a host then keeps the patch releases current), the
    lowest that pyproject.toml allows, the one the README asks for and CI tests on."""
    import tomllib

    pinned = (ROOT / ".python-version").read_text().strip()
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert pinned.count(".") == 1 and required == f">={pinned}"
    assert f"Python {pinned}." in (ROOT / "README.md").read_text()


def test_procfile_serves_headless_on_port_in_hosted_mode():
    line = (ROOT / "Procfile").read_text().strip()
    assert line.startswith("web: ") and "streamlit run app.py" in line
    assert "--server.headless true" in line and "--server.port $PORT" in line
    assert "--server.fileWatcherType none" in line  # no recursive watch over the deployed tree (its venv included)
    assert "CARNET_HOSTED=${CARNET_HOSTED:-1}" in line  # public deployments cannot train unless told otherwise
    # Streamlit holds uploads in memory, up to 200 MB per file by default: a public host takes no more than a photo
    upload_mb = int(re.search(r"--server\.maxUploadSize \$\{CARNET_MAX_UPLOAD_MB:-(\d+)\}", line).group(1))
    assert upload_mb == MAX_FILE_BYTES // 2**20


def server_rss_mb(port: int) -> float:
    """Resident memory (MB) of the Streamlit server listening on ``port`` (bench/soak_hosted.py's helpers)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import soak_hosted  # bench/ is scripts, not a package

    return soak_hosted.rss_mb(soak_hosted.streamlit_pid(port))


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_session_holds_a_bounded_amount_of_uploads():
    """Ten 45 MB uploads that no widget uses were all kept by the server (RSS +450 MB, 390 MB still after the session
    closed). A session now holds at most CARNET_SESSION_UPLOAD_MB (here 100 MB): its oldest files are dropped; one
    file over the bound alone is refused."""
    with procfile_server(CARNET_SESSION_UPLOAD_MB="100") as (port, cookie, token):
        def upload_many(session):
            before = server_rss_mb(port)
            statuses = [upload_status(port, cookie, token, session, 45 * MB) for _ in range(10)]
            return statuses, server_rss_mb(port) - before

        statuses, grown = in_session(port, cookie, token, upload_many)
        assert statuses == [204] * 10
        assert grown < 250, f"the server grew {grown:.0f} MB for a session allowed 100 MB"
    with procfile_server(CARNET_SESSION_UPLOAD_MB="10") as (port, cookie, token):
        assert in_session(port, cookie, token, lambda s: upload_status(port, cookie, token, s, 20 * MB)) == 413


def test_no_traceback_reaches_a_browser_however_the_app_is_started():
    """showErrorDetails is "none" in the Procfile and in .streamlit/config.toml, which `streamlit run app.py` reads
    wherever it runs (a host that ignores the Procfile's flags included)."""
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] == "none"
    assert "--client.showErrorDetails none" in (ROOT / "Procfile").read_text()
