"""File and process helpers: atomic writes, a file lock for shared state files, and this process's memory (for
progress reports, model cards and the benchmark; Linux /proc, elsewhere the ``resource`` module's peak, which is all
it offers)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

_HEAVY = threading.Lock()


@contextlib.contextmanager
def heavy_action(exclusive: bool, busy: Callable[[], None] | None = None) -> Iterator[None]:
    """Run a heavy action (an evaluation, a folder comparison, ROAD) — with ``exclusive``, one at a time in this
    process: a hosted demo's server does one visitor's heavy action while the others wait their turn, instead of
    all of them slowing each other down and adding up their memory. ``busy`` is called once when this one has to
    wait (a page says so)."""
    if not exclusive:
        yield
        return
    if not _HEAVY.acquire(blocking=False):
        if busy:
            busy()
        _HEAVY.acquire()
    try:
        yield
    finally:
        _HEAVY.release()


def temp_path(path: Path) -> Path:
    """A temporary name beside ``path`` for writing it: hidden (``.name.<pid>.<random>.tmp``), so listings and the
    checkpoint catalog skip it, and ending in ``.tmp``, so cleanups of interrupted writes find it."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Write ``path`` all or nothing: ``write(tmp)`` writes a temporary file beside it, which then replaces ``path``
    in one rename (``os.replace``), so a reader never sees half a file, even after a crash. The temporary file is
    removed when ``write`` fails. Returns ``path``.

    Raises:
        whatever ``write`` raises; OSError when the folder cannot be written.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # after a failure; after os.replace it is gone already
            tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write` of a text file (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of a binary file."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> Path:
    """:func:`atomic_write` of ``data`` as JSON (values JSON cannot hold are written as their ``str``)."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=str))


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON in ``path``, or ``default`` when it is missing, unreadable or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        pass
    return None


def _ru_maxrss_mb() -> float:
    import resource  # lazy: only where /proc is missing

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Resident memory now, MB."""
    value = _status_mb("VmRSS")
    return value if value is not None else _ru_maxrss_mb()


def peak_rss_mb() -> float:
    """Resident-memory high-water mark of this process, MB."""
    value = _status_mb("VmHWM")
    return value if value is not None else _ru_maxrss_mb()


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on ``path`` (created if missing) for the ``with`` block:
    serialises read-modify-write of shared files between processes and threads. A no-op where ``fcntl`` does not
    exist (Windows, where one app process is the common case)."""
    try:
        import fcntl  # lazy: POSIX only, Windows has none
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def release_free_memory() -> None:
    """Hand the memory the process has freed back to the operating system, where the C library keeps it for reuse
    (glibc's ``malloc_trim``; nothing elsewhere). A server whose sessions decoded big photos in several threads kept
    hundreds of MB freed but resident; trimmed, a process that decoded nine 49 MP pictures went back below its
    idle size."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
