"""TensorBoard event files under the run folder (``tensorboard/``), through ``torch.utils.tensorboard``.

Per-step records are scalars ``train/...`` and per-epoch records ``epoch/...``, both at the global step
(optimizer steps done); the final results are scalars ``test/<checkpoint>/<attack>`` at the last step. The
manifest is a text, once per run. A resumed run opens the same folder with ``purge_step`` just after the
step its run surely holds (``TrackerRun.step``): TensorBoard drops what was logged from there on, and the
records handed again take its place — each step once.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from igdm_kit.interfaces import Options, Tracker


class TensorBoardOptions(Options):
    log_dir: str = Field("tensorboard", description="the event files' folder, relative to the run folder")


class TensorBoard(Tracker):
    description = "TensorBoard event files (pip install 'igdm-kit[tensorboard]')"
    Options = TensorBoardOptions
    requires = ("tensorboard",)
    install = "pip install 'igdm-kit[tensorboard]'"

    def start(self, run):
        import json

        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(run.folder) / self.options.log_dir
        self.made = not self.dir.exists()
        resumed = run.run_id is not None
        self.writer = SummaryWriter(str(self.dir), purge_step=run.step + 1 if resumed else None)
        self.step = run.step
        if not resumed:
            self.writer.add_text("manifest", "```\n" + json.dumps(run.config, indent=2, sort_keys=True) + "\n```", 0)
        return str(self.dir)

    def created(self):
        return [str(self.dir)] if self.made else []

    def log(self, metrics, *, step, epoch):
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.step = step
        if epoch is not None:  # an epoch's records end each hand-over: on disk before training goes on
            self.writer.flush()

    def summary(self, results):
        for key, value in results.items():
            self.writer.add_scalar(key, value, self.step)
        self.writer.flush()

    def finish(self, ok):
        self.writer.close()
