"""The loop's own callbacks, in the shape of Lightning's (``on_epoch_end(trainer, metrics)``,
``should_stop(trainer)``): the metrics files of a run folder and early stopping. The trainer runs them before the
callers' callbacks (:class:`carnet_core.training.trainer.Trainer`), after an epoch's checkpoint and resume state are
saved: a metrics row is visible only once its epoch can be resumed from."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from carnet_core.models.runs import METRICS_CSV, METRICS_JSONL
from carnet_core.training.config import EpochMetrics


class MetricsWriter:
    """One row per epoch in ``metrics.csv`` and ``metrics.jsonl`` of the run folder, and in Fabric's loggers
    (TensorBoard, MLflow, W&B), on the first process only."""

    def __init__(self, out: Path):
        self.out = Path(out)

    def restart(self, history: Sequence[EpochMetrics]) -> None:
        """Write the files anew from ``history`` (on resume: drops rows of an epoch that was written but not saved
        for resuming)."""
        for name in (METRICS_CSV, METRICS_JSONL):
            (self.out / name).unlink(missing_ok=True)
        for row in history:
            self.write(row)

    def write(self, metrics: EpochMetrics) -> None:
        """Append one epoch's row to both files."""
        row = asdict(metrics)
        csv_path = self.out / METRICS_CSV
        new = not csv_path.exists()
        with open(csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        with open(self.out / METRICS_JSONL, "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_epoch_end(self, trainer: Any, metrics: EpochMetrics) -> None:
        if trainer.fabric.is_global_zero:
            self.write(metrics)
            trainer.fabric.log_dict({k: v for k, v in asdict(metrics).items() if k != "epoch"}, step=metrics.epoch)


class EarlyStopping:
    """Stop when val top-1 has not improved for ``patience`` epochs (Lightning's ``EarlyStopping`` on a maximised
    metric; the best epoch is the run's best checkpoint, :func:`carnet_core.models.runs.preference`)."""

    def __init__(self, patience: int | None):
        self.patience, self.since_best, self.stopped = patience, 0, False

    def on_epoch_end(self, trainer: Any, metrics: EpochMetrics) -> None:
        self.since_best = 0 if trainer.best_epoch == metrics.epoch else self.since_best + 1
        self.stopped = bool(self.patience) and self.since_best >= self.patience

    def message(self) -> str:
        return f"early stopping: no better val top-1 for {self.since_best} epochs"
