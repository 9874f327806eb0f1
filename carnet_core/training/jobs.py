"""Background fine-tune jobs: one process per job, queued one at a time per device, persisted on disk.

A job is a folder under the jobs root (``$CARNET_JOBS_DIR``, default ``runs/jobs``)::

    <id>/spec.json        the TrainConfig (the job's out folder is the job folder itself)
    <id>/status.json      state (queued, running, done, failed, cancelled), pid, times, error, best top-1
    <id>/progress.json    epoch / step / device / memory, rewritten about once a second while it runs
    <id>/log.txt          the worker's stdout and stderr
    <id>/metrics.jsonl, probe.json, best-*.safetensors, last.safetensors, last_state.pt   written by carnet_core.training.trainer

The worker is ``python -m carnet_core.training.jobs JOB_FOLDER`` in its own process session, never the caller's thread, so
a Streamlit rerun, a browser reload or an app restart changes nothing: a new :class:`JobRunner` reads the same
folders. A worker that died (``kill -9``, OOM killer, power) is found by :meth:`JobRunner.pump` and marked failed
with its last log lines; :meth:`JobRunner.resume` continues it from its last finished epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from carnet_core._io import atomic_write_json as _write_json  # a name the tests replace with a full disk
from carnet_core._io import file_lock, read_json, rss_mb
from carnet_core.config import child_env, hosted_mode, jobs_dir
from carnet_core.errors import CarNetError
from carnet_core.models.runs import METRICS_JSONL, PROBE_FILE, STATE_FILE, best_checkpoint

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
_children: dict[int, subprocess.Popen] = {}  # workers started by this process, reaped on poll


def _reap_finished_workers() -> None:
    """Collect the exit status of every worker this process started that has ended: a worker that wrote "done"
    itself is never polled as a running job, and stayed a ``<defunct>`` process under the server until it exited."""
    for pid, child in list(_children.items()):
        if child.poll() is not None:
            _children.pop(pid, None)


def _pid_alive(pid: int | None, token: str = "") -> bool:
    """Whether process ``pid`` runs (not a zombie) and, where /proc tells, is the worker of job ``token``."""
    if not pid:
        return False
    child = _children.get(pid)
    if child is not None:  # started by this process: its pid cannot be reused before we reap it
        if child.poll() is None:
            return True
        _children.pop(pid, None)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                return False
            cmdline = proc.joinpath("cmdline").read_bytes().decode(errors="replace")
            # empty while the new worker is still in exec (seen here right after Popen): alive, not a reused pid
            if token and cmdline and token not in cmdline:
                return False  # the pid was reused by another program
        except (OSError, IndexError):
            return False
    return True


@dataclass
class Job:
    """A snapshot of one job folder (re-read with :meth:`JobRunner.get`)."""

    id: str
    dir: Path
    spec: dict[str, Any]
    status: dict[str, Any]

    @property
    def state(self) -> str:
        return self.status.get("state", "queued")

    @property
    def label(self) -> str:
        return self.status.get("label") or f"{self.spec.get('model')} on {Path(self.spec.get('data', '?')).name}"

    @property
    def history(self) -> list[dict[str, float]]:
        """Per-epoch metrics (epoch, train_loss, val_loss, top1, top5, lr, images_per_s, seconds), oldest first."""
        rows = []
        path = self.dir / METRICS_JSONL
        if path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    rows.append(json.loads(line))
        return rows

    @property
    def progress(self) -> dict[str, Any]:
        """Latest progress: epoch, epochs, step, num_steps, fraction (0–1), elapsed_s, eta_s (None until the second
        report: it is timed from the first, a batch into training), device, memory_mb."""
        return read_json(self.dir / "progress.json", {}) or {}

    @property
    def probe_top1(self) -> float | None:
        """Val top-1 of the run's linear probe (LP-FT's first stage, scored before the first epoch): the baseline its
        fine-tune should beat. None when the run fitted no probe, or has not yet."""
        probe = read_json(self.dir / PROBE_FILE)
        value = probe.get("top1") if isinstance(probe, dict) else None
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    @property
    def best_top1(self) -> float | None:
        """The best val top-1 of the run's epochs and its linear probe (which is kept when no epoch beats it)."""
        scores = [r["top1"] for r in self.history] + ([] if self.probe_top1 is None else [self.probe_top1])
        return max(scores) if scores else None

    @property
    def best_checkpoint(self) -> Path | None:
        """The best-top-1 checkpoint of this run, if any epoch finished."""
        return best_checkpoint(self.dir)

    @property
    def duration_s(self) -> float | None:
        start = self.status.get("started")
        if not start:
            return None
        return (self.status.get("ended") or time.time()) - start

    @property
    def resumable(self) -> bool:
        return self.state in ("failed", "cancelled") and (self.dir / STATE_FILE).exists()

    def log_tail(self, lines: int = 20) -> str:
        path = self.dir / "log.txt"
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 64_000))
            text = f.read().decode(errors="replace").replace("\r", "\n")
        return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])


class JobRunner:
    """Queue, start, watch, cancel, resume and delete fine-tune jobs stored under ``root``.

    Jobs run one at a time per device slot: one per GPU (the worker sees only its GPU through
    ``CUDA_VISIBLE_DEVICES``), or a single slot on a machine without one. Every call re-reads the folders, so any
    number of runner objects (sessions, app restarts, the CLI) agree.
    """

    def __init__(self, root: str | os.PathLike | None = None, slots: int | None = None):
        self.root = Path(root).resolve() if root else jobs_dir()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CarNetError(f"cannot keep fine-tune jobs in {self.root} ({exc.strerror}): set CARNET_JOBS_DIR to a "
                              "folder this app can write") from None
        if slots is None:
            slots = max(1, torch.cuda.device_count())
        self.slots = slots

    # --- queries -------------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        """The job ``job_id``. Raises CarNetError if there is none."""
        folder = self.root / job_id
        spec = read_json(folder / "spec.json")
        if spec is None:
            raise CarNetError(f"no job {job_id!r} in {self.root}")
        return Job(job_id, folder, spec, read_json(folder / "status.json", {}) or {})

    def jobs(self) -> list[Job]:
        """All jobs, newest first (after :meth:`pump`, so dead workers already show as failed)."""
        self.pump()
        return self._all()

    def _all(self) -> list[Job]:
        found = []
        for folder in self.root.iterdir():
            if folder.is_dir() and (folder / "spec.json").exists():
                with contextlib.suppress(CarNetError):
                    found.append(self.get(folder.name))
        return sorted(found, key=lambda j: j.status.get("created", 0), reverse=True)

    def checkpoints(self) -> list[Path]:
        """The best checkpoint of every finished job that has one (done, or cancelled after an epoch)."""
        return [j.best_checkpoint for j in self._all() if j.state in ("done", "cancelled") and j.best_checkpoint]

    # --- commands ------------------------------------------------------------------------------------------
    def submit(self, cfg: Any, label: str | None = None) -> Job:
        """Queue a fine-tune described by a :class:`carnet_core.training.trainer.TrainConfig`; start it if a slot is free.

        Raises:
            CarNetError: in hosted mode (``CARNET_HOSTED``), when the dataset folder does not exist, or when the
                settings cannot be trained with (:meth:`~carnet_core.training.trainer.TrainConfig.check`): said at once, not
                as a failed job.
        """
        if hosted_mode():
            raise CarNetError("training is switched off on this hosted demo (CARNET_HOSTED is set)")
        if not Path(cfg.data).is_dir():
            raise CarNetError(f"dataset folder {cfg.data} does not exist")
        cfg.check()
        job_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        folder = self.root / job_id
        spec = {**asdict(cfg), "out": str(folder), "data": str(Path(cfg.data).resolve())}
        spec["loggers"] = list(spec.get("loggers") or ())
        try:
            folder.mkdir(parents=True)
            _write_json(folder / "spec.json", spec)
            _write_json(folder / "status.json", {"state": "queued", "created": time.time(), "label": label})
        except OSError as exc:  # a read-only or full disk: no half-written job is left to list
            shutil.rmtree(folder, ignore_errors=True)
            raise CarNetError(f"cannot write a new job in {self.root} ({exc.strerror}): set CARNET_JOBS_DIR to a "
                              "folder this app can write") from None
        self.pump()
        return self.get(job_id)

    def cancel(self, job_id: str) -> Job:
        """Stop a job: a queued one is cancelled at once; a running one stops after its current batch."""
        with self._lock():
            job = self.get(job_id)
            if job.state == "queued":
                self._set(job, state="cancelled", ended=time.time())
            elif job.state == "running":
                (job.dir / "cancel").touch()
                with contextlib.suppress(ProcessLookupError, PermissionError, TypeError):
                    os.kill(job.status.get("pid"), signal.SIGTERM)
        return self.get(job_id)

    def resume(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again; it continues after its last finished epoch.

        Raises:
            CarNetError: the job is not failed/cancelled or has no saved state.
        """
        job = self.get(job_id)
        if job.state not in ("failed", "cancelled"):
            raise CarNetError(f"job {job_id} is {job.state}; only failed or cancelled jobs can be resumed")
        with contextlib.suppress(FileNotFoundError):
            (job.dir / "cancel").unlink()
        spec = dict(job.spec, resume=True)
        _write_json(job.dir / "spec.json", spec)
        self._set(job, state="queued", error=None, ended=None, pid=None, resumed=job.status.get("resumed", 0) + 1)
        self.pump()
        return self.get(job_id)

    def delete(self, job_id: str) -> None:
        """Delete a job folder and its checkpoints. Raises CarNetError while it runs."""
        job = self.get(job_id)
        if job.state == "running" and _pid_alive(job.status.get("pid"), job.id):
            raise CarNetError(f"job {job_id} is running; stop it first")
        shutil.rmtree(job.dir)

    def wait(self, job_id: str, timeout: float = 600.0, poll: float = 0.5) -> Job:
        """Block until the job is finished (for the CLI and tests). Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            self.pump()
            job = self.get(job_id)
            if job.state in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:.0f} s")
            time.sleep(poll)

    def pump(self) -> None:
        """Mark dead workers failed — cancelled, when Stop was asked (a worker stopped in its first second dies of the
        signal before it can say so itself) — then start queued jobs on free slots (oldest first)."""
        _reap_finished_workers()
        with self._lock():
            jobs = self._all()
            busy = set()
            for job in jobs:
                if job.state != "running":
                    continue
                if _pid_alive(job.status.get("pid"), job.id):
                    busy.add(job.status.get("slot", 0))
                    continue
                job = self.get(job.id)  # it may have just finished and written its own status
                if job.state == "running" and (job.dir / "cancel").exists():  # stopped before its handler was set
                    self._set(job, state="cancelled", ended=time.time())
                elif job.state == "running":
                    tail = job.log_tail(8)
                    self._set(job, state="failed", ended=time.time(),
                              error=f"the worker process (pid {job.status.get('pid')}) stopped without finishing"
                                    + (f"; last log lines:\n{tail}" if tail else ""))
            free = [s for s in range(self.slots) if s not in busy]
            for job in sorted((j for j in jobs if j.state == "queued"), key=lambda j: j.status.get("created", 0)):
                if not free:
                    break
                self._start(job, free.pop(0))

    # --- internals -----------------------------------------------------------------------------------------
    def _start(self, job: Job, slot: int) -> None:
        env = child_env(PYTHONUNBUFFERED="1", CARNET_JOB_SLOT=str(slot))
        if self.slots > 1 or os.environ.get("CUDA_VISIBLE_DEVICES") is None:
            if torch.cuda.is_available():
                env["CUDA_VISIBLE_DEVICES"] = str(slot)
        log = open(job.dir / "log.txt", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "carnet_core.training.jobs", str(job.dir)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        log.close()
        _children[proc.pid] = proc
        self._set(job, state="running", pid=proc.pid, slot=slot, started=job.status.get("started") or time.time())

    def _set(self, job: Job, **changes: Any) -> None:
        status = {**(read_json(job.dir / "status.json", {}) or {}), **changes}
        _write_json(job.dir / "status.json", status)

    def _lock(self):
        return file_lock(self.root / ".lock")


class _WorkerCallbacks:
    """Trainer callbacks of a job worker: progress file, cancel flag and SIGTERM."""

    def __init__(self, folder: Path, epochs: int):
        self.folder, self.epochs = folder, epochs
        self.stop = False
        self.t0 = time.time()
        self._origin: tuple[float, float] | None = None  # (time, fraction) of the first progress report
        self._last_write = 0.0
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, *_: Any) -> None:
        self.stop = True

    def should_stop(self, trainer: Any) -> bool:
        return self.stop or (self.folder / "cancel").exists()

    def on_train_batch_end(self, trainer: Any, epoch: int, step: int, num_steps: int) -> None:
        now = time.time()
        if now - self._last_write >= 1.0 or step == num_steps:
            self._last_write = now
            self.write(trainer, epoch, step, num_steps)

    def on_epoch_end(self, trainer: Any, metrics: Any) -> None:
        self.write(trainer, metrics.epoch, 1, 1)

    def write(self, trainer: Any, epoch: int, step: int, num_steps: int) -> None:
        now = time.time()
        fraction = ((epoch - 1) + step / max(num_steps, 1)) / max(self.epochs, 1)
        # the ETA is timed from the first progress report, a batch into training: the minutes before it (loading
        # the model, reading the dataset, the linear probe's feature pass) said "ETA 49:52" of a 4-minute run
        if self._origin is None:
            self._origin = (now, fraction)
        t0, f0 = self._origin
        eta = (now - t0) / (fraction - f0) * (1 - fraction) if fraction > f0 else None
        device = trainer.fabric.device
        if device.type == "cuda":
            name, memory = torch.cuda.get_device_name(device), torch.cuda.max_memory_allocated(device) / 2**20
        else:
            name, memory = "CPU", rss_mb()
        _write_json(self.folder / "progress.json", {
            "epoch": epoch, "epochs": self.epochs, "step": step, "num_steps": num_steps, "fraction": fraction,
            "elapsed_s": now - self.t0, "eta_s": eta, "device": name, "memory_mb": memory,
            "updated": time.time()})


def run_worker(folder: str | os.PathLike) -> int:
    """The worker process body: run the job in ``folder``, record how it ended, then start the next queued job."""
    # lazy: only the worker process trains (Lightning, timm's training parts), not the app that runs the jobs
    from carnet_core.training.config import TrainConfig
    from carnet_core.training.trainer import Trainer

    folder = Path(folder).resolve()
    runner_root = folder.parent
    spec = read_json(folder / "spec.json")
    status_path = folder / "status.json"

    def finish(**changes: Any) -> None:
        _write_json(status_path, {**(read_json(status_path, {}) or {}), "ended": time.time(), **changes})

    code = 0
    try:
        cfg = TrainConfig(**spec)
        callbacks = _WorkerCallbacks(folder, cfg.epochs)
        result = Trainer(cfg, [callbacks]).fit()
        best = result.best_checkpoint
        finish(state="cancelled" if result.cancelled else "done", error=None, best_top1=result.best_top1,
               best_checkpoint=str(best) if best else None, stopped_early=result.stopped_early)
    except CarNetError as exc:
        print(f"error: {exc}", flush=True)
        finish(state="failed", error=str(exc))
        code = 2
    except Exception as exc:  # the job's own log keeps the traceback; the status keeps a readable message

        traceback.print_exc()
        finish(state="failed", error=_explain_failure(exc, spec))
        code = 1
    with contextlib.suppress(Exception):
        JobRunner(runner_root).pump()
    return code


def _explain_failure(exc: BaseException, spec: dict[str, Any]) -> str:
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
        batch = int(spec.get("batch_size", 32))
        return (f"the GPU ran out of memory at batch size {batch} and image size {spec.get('img_size') or 'default'}: "
                f"try batch size {max(1, batch // 2)} (or a smaller image size) and resume")
    return f"{type(exc).__name__}: {exc}"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m carnet_core.training.jobs JOB_FOLDER", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(run_worker(sys.argv[1]))
