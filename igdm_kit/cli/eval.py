"""``igdm-kit eval``: the five robust accuracies of Section 4.1 for a checkpoint (``igdm_kit.evaluation``).

Results go to stdout (a Rich table, or the ``--json`` envelope); progress bars and AutoAttack's warnings go
to stderr. torch is imported inside the command, so ``igdm-kit --help`` stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape  # paths and messages are text, not Rich markup

from ..errors import IgdmKitError
from ..eval_attacks import labels
from ..training.signals import StopFlag, checking
from .console import err_console, make_progress, out_console, print_json
from .options import EPS_HELP, BatchSize, Dataset, Device, Json, Limit, ShowProgress

METRIC_LABELS = labels()
ALL_ATTACKS = ",".join(METRIC_LABELS)

# Options shared by the eval and analyze commands.


def eps_text(eps: float) -> str:
    """8/255 for radii on the 1/255 grid, else the number itself."""
    k = eps * 255
    return f"{round(k)}/255" if eps and abs(k - round(k)) < 1e-6 else f"{eps:g}"


def parse_eps(text: str) -> float:
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise IgdmKitError(f"--eps {text!r} is not a number", "write e.g. 8/255 or 0.03") from None
    if value < 0:
        raise IgdmKitError(f"--eps {text!r} is negative", "ε is a radius, ≥ 0")
    if value > 1:  # images lie in [0, 1]: a larger radius allows any image (1e300 is a typo)
        raise IgdmKitError(f"--eps {text!r} is larger than 1", "ε is a radius in [0, 1] pixel units, e.g. 8/255")
    return value


def parse_attacks(text: str) -> list[str]:
    names = [a.strip().lower() for a in text.split(",") if a.strip()]
    for name in names:
        if name not in METRIC_LABELS:
            import difflib

            close = difflib.get_close_matches(name, list(METRIC_LABELS), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "known: " + ALL_ATTACKS
            raise IgdmKitError(f"unknown attack {name!r} in --attacks", hint)
    if not names:
        raise IgdmKitError("--attacks names no attack", "known: " + ALL_ATTACKS)
    return list(dict.fromkeys(names))


def dataset_for(checkpoint: Path, meta: dict[str, Any], name: str | None) -> tuple[str, dict[str, Any]]:
    """The dataset to evaluate on: ``--dataset`` or the checkpoint's ``dataset`` metadata (name, options)."""
    recorded = meta.get("dataset")
    rec_name, rec_opts = None, {}
    if isinstance(recorded, dict):
        rec_name, rec_opts = recorded.get("name"), dict(recorded.get("options") or {})
    elif isinstance(recorded, str):
        rec_name = recorded
    if name is None:
        if rec_name is None:
            raise IgdmKitError(f"checkpoint {str(checkpoint)!r} does not record its dataset",
                               "pass --dataset NAME (see `igdm-kit plugins list`)")
        return rec_name, rec_opts
    return name, (rec_opts if name == rec_name else {})


def load_checkpoint_and_data(checkpoint: Path, dataset: str | None, limit: int | None, device: str):
    """(model on device, x, y, dataset name, torch.device) for one checkpoint; checks the data fits it."""
    from ..checkpoint import load_model, read_metadata
    from ..components import create_dataset
    from ..evaluation import load_eval_data, resolve_device

    meta = read_metadata(checkpoint)
    name, options = dataset_for(checkpoint, meta, dataset)
    dev = resolve_device(device)
    info = create_dataset(name, **options).info()
    check_fits(checkpoint, meta, name, info)
    model = load_model(checkpoint, device=str(dev))
    x, y = load_eval_data(name, limit, options)
    return model, x, y, name, dev


def check_fits(checkpoint: Path, meta: dict[str, Any], name: str, info) -> None:
    for key in ("num_classes", "in_channels", "image_size"):
        want, have = getattr(info, key), meta.get(key)
        if have is not None and want != have:
            raise IgdmKitError(f"checkpoint {str(checkpoint)!r} has {key}={have} but dataset {name!r} has {want}",
                               "pass the --dataset the model was trained on")


@contextmanager
def progress_callback(enabled: bool = True) -> Iterator[Callable[[str, int, int], None] | None]:
    """A ``progress(task, done, total)`` callback drawing Rich bars on stderr (None when disabled)."""
    if not enabled:
        yield None
        return
    with make_progress() as bars:
        tasks: dict[str, Any] = {}

        def update(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total)
            bars.update(tasks[task], completed=done, total=total)

        yield update


def stop_hint(options: list[tuple[str, Any]], aa_state: Path | None) -> str:
    """What to run after a stop request ends an evaluation."""
    from ..recipe import eval_command

    cmd = eval_command(options)
    if aa_state is not None:
        return f"run it again, AutoAttack resumes from {aa_state}: {cmd}"
    return f"run it again: {cmd} (with --aa-state FILE, AutoAttack resumes where it stopped)"


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_(
        model: Path = typer.Option(..., "--model", "-m", help="checkpoint (.safetensors written by igdm-kit)"),
        dataset: Dataset = None,
        attacks: str = typer.Option(ALL_ATTACKS, "--attacks", "-a", help="comma-separated metrics to compute"),
        limit: Limit = None,
        batch_size: BatchSize = 256,
        device: Device = "auto",
        eps: str | None = typer.Option(None, "--eps", help=EPS_HELP + "; default: the ε of the run's "
                                       "evaluation recorded in the checkpoint, else 8/255"),
        seed: int = typer.Option(0, "--seed", help="seed of the random starts (each attack starts from it)"),
        aa_state: Path | None = typer.Option(
            None, "--aa-state", help="AutoAttack state file: progress is saved there and a rerun resumes it"),
        progress: ShowProgress = True,
        json_: Json = False,
    ) -> None:
        """Clean, FGSM, PGD-20, CW-∞ and AutoAttack accuracy of a checkpoint (L∞; ε of its run, or 8/255)."""
        names = parse_attacks(attacks)
        radius = parse_eps(eps) if eps is not None else None
        net, x, y, ds_name, dev = load_checkpoint_and_data(model, dataset, limit, device)
        if radius is None:  # a model trained at another radius would otherwise be judged at 8/255 silently
            radius = float(getattr(net, "igdm_kit_meta", {}).get("eval_eps", 8 / 255))
        from ..evaluation import evaluate

        err_console.print(escape(f"evaluating {model} on {ds_name} test ({x.shape[0]} images, {dev}, "
                                 f"ε = {eps_text(radius)})"), style="dim", highlight=False)
        again = stop_hint([("--model", model), ("--dataset", dataset), ("--attacks", ",".join(names)),
                           ("--limit", limit), ("--batch-size", batch_size), ("--device", device),
                           ("--eps", eps), ("--seed", seed), ("--aa-state", aa_state),
                           ("--no-progress", not progress), ("--json", json_)], aa_state)
        with StopFlag() as stop, progress_callback(progress) as cb:  # SIGINT/SIGTERM: message, 128 + signal
            result = evaluate(net, x, y, attacks=names, batch_size=batch_size, eps=radius, device=dev,
                              seed=seed, progress=checking(cb, lambda: stop.check("evaluation stopped", again)),
                              autoattack_state=aa_state)
        for w in result["warnings"]:
            err_console.print(f"[yellow]warning:[/] AutoAttack: {escape(w)}", highlight=False)
        result = {"checkpoint": str(model), "dataset": ds_name, **result}
        if json_:
            print_json("eval", result)
            return
        print_table(result)


def print_table(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=escape(f"{result['checkpoint']} — {result['dataset']} test, n={result['n']}, "
                               f"ε={eps_text(result['eps'])}"))
    table.add_column("metric")
    table.add_column("accuracy (%)", justify="right")
    table.add_column("correct", justify="right")
    table.add_column("seconds", justify="right")
    for key, m in result["metrics"].items():
        table.add_row(METRIC_LABELS.get(key, key), f"{m['accuracy']:.2f}", f"{m['correct']}/{m['total']}",
                      f"{result['seconds'][key]:.1f}")
    out_console.print(table)
