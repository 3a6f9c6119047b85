"""Typer options shared by the commands that read checkpoints (``eval``, ``analyze ...``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DATASET_HELP = "registered dataset to evaluate on (default: the one recorded in the checkpoint)"
LIMIT_HELP = "use only the first N test images"
DEVICE_HELP = "cpu, cuda, cuda:N or auto (CUDA when available)"
EPS_HELP = "L∞ radius ε, a number or a fraction such as 8/255"
PLOT_HELP = "write a figure to this file (.png, .pdf, .svg); needs matplotlib (the 'plot' extra)"
#: The largest seed (``igdm_kit._recipe.schema.MAX_SEED``: torch takes seeds below 2**64).
MAX_SEED = 2**63 - 1


def seed_in_range(value: int) -> int:
    """A ``--seed`` from 0 to ``MAX_SEED``: refused with the whole range, before anything loads."""
    if not 0 <= value <= MAX_SEED:
        raise typer.BadParameter(f"{value} is not a seed from 0 to {MAX_SEED:,}")
    return value

def joined(values: list[str] | None) -> str | None:
    """A repeatable comma-list option as one comma list (``-a clean -a fgsm`` = ``-a clean,fgsm``): every
    occurrence counts, never only the last."""
    return ",".join(values) if values else None


Dataset = Annotated[str | None, typer.Option("--dataset", "-d", metavar="NAME", help=DATASET_HELP)]
DataOpt = Annotated[list[str], typer.Option("--data-opt", metavar="KEY=VALUE", help="an option of the dataset, "
                                            "e.g. root=data/pets for image-folder (repeatable; over the options "
                                            "the checkpoint recorded)")]
Limit = Annotated[int | None, typer.Option("--limit", "-n", min=1, metavar="N", help=LIMIT_HELP)]
BatchSize = Annotated[int, typer.Option("--batch-size", "-b", min=1, metavar="N", help="images per batch")]
Device = Annotated[str, typer.Option("--device", metavar="DEVICE", help=DEVICE_HELP)]
PerSample = Annotated[bool, typer.Option("--per-sample", help="include per-sample values in --json")]
Plot = Annotated[Path | None, typer.Option("--plot", metavar="FILE", help=PLOT_HELP)]
ShowProgress = Annotated[bool, typer.Option("--progress/--no-progress", help="progress bars on stderr")]
Json = Annotated[bool, typer.Option("--json", help="print the results as a JSON envelope on stdout")]
TeacherLoader = Annotated[str, typer.Option("--teacher-loader", help="teacher loader for a teacher that is not an "
                                            "igdm-kit checkpoint: state-dict, robustbench, ...")]
TeacherName = Annotated[str | None, typer.Option("--teacher-name", help="RobustBench model name of the teacher")]
TeacherArch = Annotated[str | None, typer.Option("--teacher-arch", help="registered architecture of plain "
                                                 "teacher weights, e.g. wrn-34-10")]
TeacherArchOpt = Annotated[list[str], typer.Option("--teacher-arch-opt", help="an option of --teacher-arch, "
                                                   "key=value (repeatable)")]
