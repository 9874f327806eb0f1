"""The background job runner (lifecycle, cancel, kill -9, restart) and safe zip extraction."""

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import FAST

import carnet_core.training.jobs as jobs_module
from carnet_core import CarNetError, load_model
from carnet_core.models.catalog import list_checkpoints
from carnet_core.training.config import TrainConfig
from carnet_core.training.jobs import JobRunner


def _cfg(data, epochs=2, **kw):
    return TrainConfig(data=str(data), epochs=epochs, **{**FAST, **kw})


def _wait_for(predicate, timeout=240, poll=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError("condition not met")


@pytest.mark.slow
@pytest.mark.subprocess
def test_job_lifecycle_queue_and_restart(colour_folder, tmp_path):
    runner = JobRunner(tmp_path / "jobs", slots=1)
    first = runner.submit(_cfg(colour_folder, epochs=2), label="colours")
    second = runner.submit(_cfg(colour_folder, epochs=1, head="ml_decoder"))
    assert runner.get(first.id).state == "running" and runner.get(second.id).state == "queued"  # one per slot
    first = runner.wait(first.id, timeout=300)
    assert first.state == "done", first.log_tail()
    worker = Path(f"/proc/{first.status['pid']}/stat")  # the worker wrote "done"; once it has exited, the app's
    _wait_for(lambda: not worker.exists() or worker.read_text().rsplit(")", 1)[1].split()[0] == "Z", timeout=60)
    # the app's refreshes reap it: no <defunct> worker is left under the app. Pumped in the loop, as each page
    # refresh does: a worker whose other threads are still being torn down is not reapable at the first poll
    _wait_for(lambda: runner.pump() or not worker.exists(), timeout=30)
    assert [r["epoch"] for r in first.history] == [1, 2] and first.best_top1 >= 0.8
    assert first.progress["fraction"] == pytest.approx(1.0) and first.progress["device"] == "CPU"
    assert first.best_checkpoint.exists() and first.duration_s > 0 and first.status.get("error") is None

    second = runner.wait(second.id, timeout=300)  # started by the first worker when it finished
    assert second.state == "done", second.log_tail()

    # the registry lists both checkpoints, with their label set and metrics; each loads and predicts
    listed = {e.path: e for e in list_checkpoints([tmp_path / "jobs"])}
    assert set(listed) == {first.best_checkpoint, second.best_checkpoint}
    entry = listed[first.best_checkpoint]
    assert entry.class_names == ("blue", "green", "red") and entry.metrics["top1"] == first.best_top1
    assert entry.head == "linear" and listed[second.best_checkpoint].head == "ml_decoder"
    assert load_model(checkpoint=entry.path, device="cpu").class_names == entry.class_names

    # "an app restart": a new runner object sees the same history
    again = JobRunner(tmp_path / "jobs", slots=1)
    assert [(j.id, j.state) for j in again.jobs()] == [(second.id, "done"), (first.id, "done")]
    assert again.get(first.id).label == "colours"
    with pytest.raises(CarNetError, match="only failed or cancelled"):
        again.resume(first.id)
    again.delete(second.id)
    assert [j.id for j in again.jobs()] == [first.id]


@pytest.mark.slow
@pytest.mark.subprocess
def test_cancel_a_running_job_and_a_queued_one(colour_folder, tmp_path):
    runner = JobRunner(tmp_path / "jobs", slots=1)
    running = runner.submit(_cfg(colour_folder, epochs=50))
    queued = runner.submit(_cfg(colour_folder, epochs=1))
    assert runner.cancel(queued.id).state == "cancelled"
    _wait_for(lambda: runner.get(running.id).progress.get("step"))
    runner.cancel(running.id)
    job = runner.wait(running.id, timeout=120)
    assert job.state == "cancelled" and len(job.history) < 50
    assert runner.get(queued.id).state == "cancelled"  # never started
    assert not (runner.get(queued.id).dir / "log.txt").exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_stop_right_after_launch_is_cancelled_not_failed(colour_folder, tmp_path):
    """Stop pressed within half a second of Launch: the worker, still importing, dies of the signal before its own
    handler is set; it was marked "failed" ("stopped without finishing"). It is "cancelled", and can be resumed."""
    runner = JobRunner(tmp_path / "jobs", slots=1)
    job = runner.submit(_cfg(colour_folder, epochs=5))
    runner.cancel(job.id)  # at once: the worker has not imported torch yet
    job = runner.wait(job.id, timeout=120)
    assert job.state == "cancelled" and job.status.get("error") is None
    assert runner.resume(job.id).state in ("queued", "running")
    runner.cancel(job.id)
    assert runner.wait(job.id, timeout=120).state == "cancelled"


@pytest.mark.subprocess
def test_a_just_started_worker_is_alive_and_a_reused_pid_is_not(monkeypatch):
    """Right after Popen, /proc/PID/cmdline can still be empty (the worker is in exec): seen in CI, where the runner
    took its own new worker for a reused pid, marked it failed and started the queued job beside it on the same
    slot. A child of this process is judged by poll(); another process's by its cmdline, empty meaning in exec."""
    import subprocess

    from carnet_core.training import jobs

    proc = subprocess.Popen(["sleep", "30"])
    try:
        _wait_for(lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes(), timeout=30, poll=0.05)  # exec'd: "sleep 30"
        jobs._children[proc.pid] = proc
        assert jobs._pid_alive(proc.pid, "20261122-104318-a7ae24")  # ours and running
        del jobs._children[proc.pid]
        assert not jobs._pid_alive(proc.pid, "20261122-104318-a7ae24")  # someone else's program: a reused pid
        assert jobs._pid_alive(proc.pid, "sleep")
        real_read_bytes = Path.read_bytes
        monkeypatch.setattr(Path, "read_bytes", lambda self: b"" if self.name == "cmdline" else real_read_bytes(self))
        assert jobs._pid_alive(proc.pid, "20261122-104318-a7ae24")  # cmdline empty: a worker still in exec
        jobs._children[proc.pid] = proc
        proc.kill()
        proc.wait()
        assert not jobs._pid_alive(proc.pid, "20261122-104318-a7ae24") and proc.pid not in jobs._children
    finally:
        proc.kill()


@pytest.mark.slow
@pytest.mark.subprocess
def test_killed_worker_is_failed_then_resumed(colour_folder, tmp_path, monkeypatch):
    (tmp_path / "tmp").mkdir()  # what the killed worker leaves in the temporary directory (timm imports W&B, whose
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # two folders are removed at exit) stays in the test's own
    runner = JobRunner(tmp_path / "jobs", slots=1)
    job = runner.submit(_cfg(colour_folder, epochs=4))
    _wait_for(lambda: len(runner.get(job.id).history) >= 1)
    os.kill(runner.get(job.id).status["pid"], signal.SIGKILL)

    def failed():
        fresh = JobRunner(tmp_path / "jobs", slots=1)  # as after an app restart
        fresh.pump()
        found = fresh.get(job.id)
        return found if found.state == "failed" else None

    job = _wait_for(failed, timeout=30)
    assert "stopped without finishing" in job.status["error"] and job.resumable
    done_before = len(job.history)
    assert 1 <= done_before < 4
    job = runner.wait(runner.resume(job.id).id, timeout=300)
    assert job.state == "done", job.log_tail()
    assert [r["epoch"] for r in job.history] == [1, 2, 3, 4]  # continued, nothing redone
    assert f"resuming after epoch {done_before}" in (job.dir / "log.txt").read_text()


@pytest.mark.slow
@pytest.mark.subprocess
def test_bad_job_fails_with_a_message(tmp_path, monkeypatch):
    runner = JobRunner(tmp_path / "jobs", slots=1)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    job = runner.wait(runner.submit(_cfg(tmp_path / "empty")).id, timeout=120)
    assert job.state == "failed" and "image" in job.status["error"].lower()
    with pytest.raises(CarNetError, match="does not exist"):
        runner.submit(_cfg(tmp_path / "nowhere"))
    before = set((tmp_path / "jobs").iterdir())  # settings that cannot train: said at submit, not as a failed job
    with pytest.raises(CarNetError, match=r"freeze_epochs must be from 0 to epochs \(2\) \(got 5\)"):
        runner.submit(_cfg(tmp_path / "empty", epochs=2, freeze_epochs=5))
    assert set((tmp_path / "jobs").iterdir()) == before

    def full_disk(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jobs_module, "_write_json", full_disk)
    with pytest.raises(CarNetError, match=r"cannot write a new job in .* \(No space left on device\)"):
        runner.submit(_cfg(tmp_path / "empty"))
    assert set((tmp_path / "jobs").iterdir()) == before  # no half-written job left behind


@pytest.mark.subprocess
def test_hosted_mode_refuses_to_train(colour_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("CARNET_HOSTED", "1")
    with pytest.raises(CarNetError, match="hosted"):
        JobRunner(tmp_path / "jobs", slots=1).submit(_cfg(colour_folder))
    assert not any((tmp_path / "jobs").iterdir())


# --- zip uploads ------------------------------------------------------------------------------------------------


def test_gpu_out_of_memory_message_suggests_a_batch_size():
    import torch

    from carnet_core.training.jobs import _explain_failure

    message = _explain_failure(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                               {"batch_size": 64, "img_size": 224})
    assert "ran out of memory at batch size 64" in message and "try batch size 32" in message


def test_eta_is_timed_from_training_not_from_the_worker_start(tmp_path, monkeypatch):
    """A run whose model loading and linear-probe feature pass took 29 s said "ETA 49:52" at batch 2 of 152 (the
    whole run took 4 minutes): the ETA divided all the time since the worker started by the batches done. It is now
    timed from the first progress report, a batch into training."""
    import json
    import types

    import torch

    clock = [1000.0]
    monkeypatch.setattr(jobs_module.time, "time", lambda: clock[0])
    old_handler = signal.getsignal(signal.SIGTERM)
    try:
        callbacks = jobs_module._WorkerCallbacks(tmp_path, epochs=2)
    finally:
        signal.signal(signal.SIGTERM, old_handler)
    trainer = types.SimpleNamespace(fabric=types.SimpleNamespace(device=torch.device("cpu")))
    progress = lambda: json.loads((tmp_path / "progress.json").read_text())  # noqa: E731

    clock[0] += 30  # setup and the probe's feature pass
    callbacks.write(trainer, 1, 1, 76)
    assert progress()["eta_s"] is None and progress()["elapsed_s"] == pytest.approx(30)  # nothing to time yet
    clock[0] += 1.5  # then 1.5 s a batch
    callbacks.write(trainer, 1, 2, 76)
    assert progress()["eta_s"] == pytest.approx(150 * 1.5)  # 150 batches left; it said 49:52 here
    clock[0] += 1.5 * 74
    callbacks.write(trainer, 1, 76, 76)
    assert progress()["eta_s"] == pytest.approx(76 * 1.5) and progress()["elapsed_s"] == pytest.approx(30 + 1.5 * 75)
