"""Weights & Biases, offline by default: the run lives under the run folder (``wandb/offline-run-*``)
until ``wandb sync``. The manifest is the run's config; per-step and per-epoch records go to its history at
the global step (``epoch/...`` records carry ``epoch``), the final results to its summary; checkpoints are
logged as a ``model`` artifact. A resumed run reopens the same run id (``resume = "allow"``).

W&B offline cannot say which steps a run holds, nor drop any: a record handed again after a kill (one the
killed process had handed but not yet noted in ``trackers.json``) may appear twice in the synced history,
at the same step — at least once, never lost once handed.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field

from igdm_kit.interfaces import Options, Tracker


class WandBOptions(Options):
    project: str = Field("igdm-kit", description="the W&B project")
    entity: str | None = Field(None, description="the W&B entity (team or user)")
    mode: Literal["offline", "online", "disabled"] = Field("offline", description="offline: sync later with "
                                                           "`wandb sync`")
    dir: str | None = Field(None, description="where W&B keeps its files; default: the run folder")
    group: str | None = None
    tags: list[str] = Field(default_factory=list)


class WandB(Tracker):
    description = "Weights & Biases, offline by default (pip install 'igdm-kit[wandb]')"
    Options = WandBOptions
    requires = ("wandb",)
    install = "pip install 'igdm-kit[wandb]'"

    def start(self, run):
        import wandb

        o = self.options
        self.made = None if o.dir is not None or (Path(run.folder) / "wandb").exists() else Path(run.folder) / "wandb"
        run_id = run.run_id or secrets.token_hex(4)
        self.run = wandb.init(project=o.project, entity=o.entity, mode=o.mode, dir=o.dir or str(Path(run.folder)),
                              id=run_id, resume="allow", name=run.name, group=o.group, tags=o.tags or None,
                              config=run.config, settings=wandb.Settings(console="off", silent=True))
        self.run.define_metric("epoch/*", step_metric="epoch")
        self.step = run.step
        return run_id

    def created(self):
        return [str(self.made)] if self.made is not None else []

    def log(self, metrics, *, step, epoch):
        self.run.log({**metrics, **({"epoch": epoch} if epoch is not None else {})}, step=step)
        self.step = step

    def summary(self, results):
        for key, value in results.items():
            self.run.summary[key] = value

    def artifact(self, path, name):
        import wandb

        art = wandb.Artifact(f"{self.run.id}-{name}", type="model")
        art.add_file(path, name=Path(path).name)
        self.run.log_artifact(art)

    def finish(self, ok):
        self.run.finish(exit_code=0 if ok else 1)
