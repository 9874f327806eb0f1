"""MLflow and Weights & Biases as Lightning Fabric loggers (Fabric ships TensorBoard and CSV only).

Each adapter implements ``lightning_fabric.loggers.Logger`` on the library's own client API; nothing here needs a
network: MLflow writes to ``<run>/mlruns`` (a local file store) unless ``MLFLOW_TRACKING_URI`` is set, and W&B runs
in offline mode (``wandb sync`` uploads later) unless ``WANDB_MODE`` is set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from lightning_fabric.loggers import Logger


def _flat(params: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in params.items()}


class MLflowLogger(Logger):
    """Per-epoch metrics and the recipe as params of one MLflow run (experiment ``carnet``)."""

    def __init__(self, out: Path, params: Mapping[str, Any], experiment: str = "carnet"):
        from mlflow.tracking import MlflowClient  # lazy: an optional logger

        self._uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not self._uri:  # a local file store: no server, no database package (mlflow-skinny has none)
            self._uri = (Path(out).resolve() / "mlruns").as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self._client = MlflowClient(tracking_uri=self._uri)
        found = self._client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else self._client.create_experiment(experiment)
        self._run = self._client.create_run(experiment_id, run_name=Path(out).name)
        self.log_hyperparams(params)

    @property
    def name(self) -> str:
        return "mlflow"

    @property
    def version(self) -> str:
        return self._run.info.run_id

    @property
    def tracking_uri(self) -> str:
        return self._uri

    def log_hyperparams(self, params: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        for key, value in _flat(params).items():
            self._client.log_param(self._run.info.run_id, key, value[:500])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self._client.log_metric(self._run.info.run_id, key, float(value), step=step or 0)

    def finalize(self, status: str) -> None:
        self._client.set_terminated(self._run.info.run_id, "FINISHED" if status == "success" else "KILLED")


class WandbLogger(Logger):
    """Per-epoch metrics and the recipe as config of one W&B run (project ``carnet``), offline by default."""

    def __init__(self, out: Path, params: Mapping[str, Any], project: str = "carnet"):
        import wandb  # lazy: an optional logger

        os.environ.setdefault("WANDB_SILENT", "true")
        self._run = wandb.init(project=project, name=Path(out).name, dir=str(out), config=_flat(params),
                               mode=os.environ.get("WANDB_MODE", "offline"), reinit="finish_previous")

    @property
    def name(self) -> str:
        return "wandb"

    @property
    def version(self) -> str:
        return self._run.id

    @property
    def run_dir(self) -> Path:
        return Path(self._run.dir).parent

    def log_hyperparams(self, params: Mapping[str, Any], *args: Any, **kwargs: Any) -> None:
        self._run.config.update(_flat(params), allow_val_change=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._run.log(dict(metrics), step=step)

    def finalize(self, status: str) -> None:
        self._run.finish(exit_code=0 if status == "success" else 1)
