"""Process helpers: this process's memory, for progress reports, model cards and the benchmark (Linux /proc;
elsewhere the ``resource`` module's peak, which is all it offers), and a file lock for shared state files."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB -> MB
    except OSError:
        pass
    return None


def _ru_maxrss_mb() -> float:
    import resource

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
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
