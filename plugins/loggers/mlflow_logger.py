"""MLflow, offline by default: a file store under the run folder (``mlruns/``) read by ``MlflowClient`` or
``mlflow ui``. The manifest is logged as the run's parameters (flattened, dotted keys) and as the artifact
``manifest.json``; per-step and per-epoch records are metrics at the global step; the final results are
metrics; checkpoints are artifacts. A resumed run reopens the same run id and asks the store which steps
of each metric the run holds: a record handed again (after a kill) keeps its first value, once.

MLflow 3 keeps its file store behind ``MLFLOW_ALLOW_FILE_STORE``: a ``file:`` store is opted into here.
Metric names keep letters, digits and ``_-./ :``; anything else becomes ``_`` (``val_pgd_steps_10_``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from pydantic import Field

from igdm_kit.interfaces import Options, Tracker

_BAD = re.compile(r"[^\w\-./ :]")


def metric_name(key: str) -> str:
    return _BAD.sub("_", key)


def flatten(d, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[metric_name(key)] = str(v)[:6000]
    return out


class MLflowOptions(Options):
    tracking_uri: str | None = Field(None, description="default: a file store in the run folder (mlruns/)")
    experiment: str = Field("igdm-kit", description="the MLflow experiment")


class MLflow(Tracker):
    description = "MLflow, a file store in the run folder by default (pip install 'igdm-kit[mlflow]')"
    Options = MLflowOptions
    requires = ("mlflow",)
    install = "pip install 'igdm-kit[mlflow]'"

    def start(self, run):
        import os

        store = Path(run.folder).resolve() / "mlruns"
        self.made = None if self.options.tracking_uri or store.exists() else store
        uri = self.options.tracking_uri or store.as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.held: dict[str, int] = {}
        if run.run_id is not None:
            self.run_id = run.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            self.held = self._held()
        else:
            exp = self.client.get_experiment_by_name(self.options.experiment)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(self.options.experiment)
            self.run_id = self.client.create_run(exp_id, run_name=run.name).info.run_id
            self._params(run.config)
        self.step = run.step
        return self.run_id

    def created(self):
        return [str(self.made)] if self.made is not None else []

    def _held(self) -> dict[str, int]:
        """The last step of each metric the run holds (records are handed in step order)."""
        keys = self.client.get_run(self.run_id).data.metrics
        return {k: max(m.step for m in self.client.get_metric_history(self.run_id, k)) for k in keys}

    def _params(self, config) -> None:
        import json
        import tempfile

        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "manifest.json"
            path.write_text(json.dumps(config, indent=2, sort_keys=True))
            self.client.log_artifact(self.run_id, str(path))

    def log(self, metrics, *, step, epoch):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        fresh = [Metric(metric_name(k), float(v), now, step) for k, v in metrics.items()
                 if step > self.held.get(metric_name(k), -1)]
        if fresh:
            self.client.log_batch(self.run_id, metrics=fresh)
        self.step = step

    def summary(self, results):
        self.log(results, step=self.step, epoch=None)

    def artifact(self, path, name):
        self.client.log_artifact(self.run_id, path, artifact_path="checkpoints")

    def finish(self, ok):
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "KILLED")
