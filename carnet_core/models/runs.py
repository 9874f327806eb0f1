"""The run-folder contract: the file names a fine-tune writes in its run folder, written and parsed only here.

A run folder (``runs/jobs/<id>/`` for a job, or the ``--out`` of ``python -m carnet_core train``) holds::

    best-eNNN-top1-XX.X.safetensors   the best checkpoints by val top-1 (epoch 0: the linear probe)
    last.safetensors                  the weights after the last finished epoch
    last_state.pt                     optimizer, schedule and progress, to resume (tensors only)
    metrics.csv, metrics.jsonl        one row per epoch
    probe.json                        the fitted linear probe's val top-1 / top-5, written before the first epoch
    data_report.json                  the dataset check

The trainer (:mod:`carnet_core.training.trainer`) writes these names; the checkpoint catalog, the job runner and the
checkpoint loader read them through the functions here. It sits with the models, below training, because the model
pickers and loaders must find a run's best checkpoint without importing the training loop.
"""

from __future__ import annotations

from pathlib import Path

LAST_CHECKPOINT = "last.safetensors"
STATE_FILE = "last_state.pt"
PROBE_FILE = "probe.json"
METRICS_CSV = "metrics.csv"
METRICS_JSONL = "metrics.jsonl"
DATA_REPORT = "data_report.json"
_BEST_GLOB = "best-e*-top1-*.safetensors"
#: The epoch number of the linear probe's checkpoint: it loses a tie with any fine-tuned epoch.
PROBE_EPOCH = 0


def best_name(epoch: int, top1: float) -> str:
    """``best-eNNN-top1-XX.X.safetensors`` for ``epoch`` (0: the linear probe) and val ``top1`` (a fraction)."""
    return f"best-e{epoch:03d}-top1-{top1 * 100:.1f}.safetensors"


def is_best_name(name: str) -> bool:
    """Whether ``name`` is a best-checkpoint file name (:func:`best_name`)."""
    return name.startswith("best-e") and name.endswith(".safetensors")


def best_top1(path: Path) -> float:
    """The val top-1 (in %) a best-checkpoint file name carries; 0.0 when it carries none."""
    try:
        return float(path.stem.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0.0


def best_epoch(path: Path) -> int:
    """The epoch a best-checkpoint file name carries (0: the linear probe); -1 when it carries none."""
    try:
        return int(path.name.split("-", 2)[1].lstrip("e"))
    except (IndexError, ValueError):
        return -1


def preference(top1: float, epoch: int) -> tuple[float, bool, int]:
    """Sort key of best-checkpoint candidates, best first: higher val top-1; on a tie a fine-tuned epoch before the
    linear probe (epoch 0), then the earlier epoch. The trainer keeps its best-k by it; :func:`best_checkpoints` reads
    the files back by it."""
    return (-top1, epoch == PROBE_EPOCH, epoch)


def best_checkpoints(run_dir: Path) -> list[Path]:
    """The best checkpoints of a run folder, best first (:func:`preference`)."""
    return sorted(Path(run_dir).glob(_BEST_GLOB), key=lambda p: (*preference(best_top1(p), best_epoch(p)), p.name))


def best_checkpoint(run_dir: Path) -> Path | None:
    """The best-top-1 checkpoint of a fine-tune's run folder (``best-eNNN-top1-XX.X.safetensors``), if any epoch
    finished or the run's linear probe was saved (``best-e000-…``: the probe, which loses a tie with an epoch)."""
    found = best_checkpoints(run_dir)
    return found[0] if found else None


def run_rank(path: Path) -> tuple[int, float]:
    """Order of preference of a checkpoint inside a run folder: any best-* (by top-1) over last.safetensors."""
    return (1, best_top1(path)) if is_best_name(path.name) else (0, 0.0)


def is_run_checkpoint(path: Path) -> bool:
    """Whether a ``.safetensors`` file is one of a run folder's checkpoints (best-* or last), of which a listing shows
    only the run's best."""
    return is_best_name(path.name) or path.name == LAST_CHECKPOINT


def remove_partial_writes(run_dir: Path) -> list[Path]:
    """Remove what writes of the run's own files, interrupted by a kill, left in a run folder: the temporary files
    its checkpoints and resume state are written to before the rename (``.best-….tmp``, ``.last.safetensors….tmp``,
    ``.last_state.pt….tmp``, and ``last_state.pt.tmp`` of earlier versions). Never a finished file, and never another
    writer's temporary file (a job's folder is also the app's: ``status.json`` is written there while the run starts).
    A run calls it when it starts or resumes. Returns what was removed."""
    ours = (".best-e", f".{LAST_CHECKPOINT}.", f".{STATE_FILE}.")
    removed = []
    for path in Path(run_dir).glob("*.tmp"):  # hidden ones too (pathlib's * matches a leading dot)
        if not (path.name.startswith(ours) or path.name == f"{STATE_FILE}.tmp"):
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:  # gone already: nothing a run needs
            pass
    return removed


def reconcile_best(run_dir: Path, best: list[tuple[float, int, Path | str]]) -> list[tuple[float, int, Path]]:
    """Make a resumed run's best checkpoints on disk agree with its resume state's best-k list ``best`` — (top-1,
    epoch, path) — after a kill between an epoch's checkpoint writes and its state save: best-* files the state does
    not list (that epoch's, which runs again, or whose pruning was not recorded) are removed, and entries whose file
    is gone (pruned by that epoch) are dropped. Paths are read in ``run_dir`` by file name, so a moved run folder
    resumes too. Returns the entries kept, in order."""
    run_dir = Path(run_dir)
    listed = {Path(p).name for _, _, p in best}
    for path in run_dir.glob(_BEST_GLOB):
        if path.name not in listed:
            path.unlink(missing_ok=True)
    kept = [(t, e, run_dir / Path(p).name) for t, e, p in best]
    return [(t, e, p) for t, e, p in kept if p.exists()]
