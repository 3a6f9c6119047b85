"""``igdm-kit eval``: the five robust accuracies of Section 4.1 for a checkpoint (``igdm_kit._evaluation.runner``).

Results go to stdout (a Rich table, or the ``--json`` envelope); progress bars and AutoAttack's warnings go
to stderr. torch is imported inside the command, so ``igdm-kit --help`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape  # paths and messages are text, not Rich markup

from igdm_kit._cli import ood
from igdm_kit._cli.console import err_console, out_console, print_json, progress_callback
from igdm_kit._cli.options import (
    EPS_HELP,
    BatchSize,
    DataOpt,
    Dataset,
    Device,
    Json,
    Limit,
    ShowProgress,
    joined,
    seed_in_range,
)
from igdm_kit._cli.specs import arch_options, eps_text, parse_attacks, parse_eps, parse_threat
from igdm_kit._cli.stopping import FLAG, checked, stoppable
from igdm_kit._recipe.specs import DEFAULT_ATTACKS
from igdm_kit.errors import IgdmKitError

ALL_ATTACKS = ",".join(DEFAULT_ATTACKS)



def stop_hint(options: list[tuple[str, Any]], aa_state: Path | None) -> str:
    """What to run after a stop request ends an evaluation."""
    from igdm_kit._recipe import eval_command

    cmd = eval_command(options)
    if aa_state is not None:
        return f"run it again, AutoAttack resumes from {aa_state}: {cmd}"
    return f"run it again: {cmd} (with --aa-state FILE, AutoAttack resumes where it stopped)"


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @stoppable
    def eval_(
        model: Path = typer.Option(..., "--model", "-m", help="the model file: an igdm-kit checkpoint, or a "
                                   "file of a teacher loader (see --loader)"),
        loader: str = typer.Option("auto", "--loader", help="auto (igdm-kit for .safetensors with metadata, "
                                   "else state-dict), igdm-kit, state-dict, robustbench, or a plugin's"),
        name: str | None = typer.Option(None, "--name", help="RobustBench model name (--loader robustbench)"),
        arch: str | None = typer.Option(None, "--arch", help="registered architecture of plain weights "
                                        "(--loader state-dict), e.g. wrn-34-10"),
        arch_opt: list[str] = typer.Option([], "--arch-opt", help="an option of --arch, key=value (repeatable)"),
        dataset: Dataset = None,
        data_opt: DataOpt = [],  # noqa: B006 - Typer's default
        attacks: list[str] | None = typer.Option(None, "--attacks", "-a",
                                                 help=f"comma-separated attack names, repeatable "
                                                      f"(default {ALL_ATTACKS})"),
        attack: list[str] = typer.Option([], "--attack", help="an attack with options, e.g. "
                                         "pgd:steps=50,restarts=5 or autoattack:version=plus (repeatable)"),
        threat: str = typer.Option("Linf", "--threat", help="threat model: Linf, L2 or L1"),
        limit: Limit = None,
        batch_size: BatchSize = 256,
        device: Device = "auto",
        eps: str | None = typer.Option(None, "--eps", help=EPS_HELP + "; default: the ε the run was "
                                       "evaluated at under this threat (recorded in the checkpoint), else 8/255 "
                                       "(L2: 0.5, L1: 12)"),
        seed: int = typer.Option(0, "--seed", callback=seed_in_range,
                                 help="seed of the random starts (each attack starts from it)"),
        aa_state: Path | None = typer.Option(
            None, "--aa-state", help="AutoAttack state file: progress is saved there and a rerun resumes it"),
        save_flags: Path | None = typer.Option(None, "--save-flags", help="write the per-image robust flags "
                                               "here (for igdm-kit compare)"),
        shifts: str | None = typer.Option(None, "--shifts", help="evaluate under distribution and threat "
                                          "shifts: " + ood.SHIFTS_HELP),
        shift: list[str] = typer.Option([], "--shift", help=ood.SHIFT_HELP),
        progress: ShowProgress = True,
        json_: Json = False,
    ) -> None:
        """Accuracy of any model under any attacks and threat model, with 95% intervals and the worst case
        per image over all attacks (default: the paper's five at L∞, ε of the model's run or 8/255). With
        --shifts: clean and robust accuracy on each shifted set and under each threat shift (Table 9;
        the attacks, run on every set, then default to clean,pgd20,cw)."""
        from igdm_kit._evaluation import sources

        attacks = joined(attacks)  # every -a counts
        threat = parse_threat(threat)
        radius = parse_eps(eps, threat) if eps is not None else None
        src = sources.Source(model, loader=loader, name=name, arch=arch, arch_options=arch_options(arch_opt))
        again = stop_hint([("--model", model), ("--loader", None if loader == "auto" else loader),
                           ("--name", name), ("--arch", arch), *(("--arch-opt", o) for o in arch_opt),
                           ("--dataset", dataset), *(("--data-opt", o) for o in data_opt),
                           ("--attacks", attacks), *(("--attack", a) for a in attack),
                           ("--threat", threat), ("--limit", limit), ("--batch-size", batch_size),
                           ("--device", device), ("--eps", eps), ("--seed", seed), ("--aa-state", aa_state),
                           ("--save-flags", save_flags), ("--no-progress", not progress), ("--json", json_)],
                          aa_state)
        data_options = arch_options(data_opt)
        shift_items = ood.parse_shifts(shifts, shift)
        if shift_items:
            if aa_state is not None or save_flags is not None:
                raise IgdmKitError("--aa-state and --save-flags do not apply to --shifts",
                                   "drop them, or evaluate without --shifts")
            chosen = parse_attacks(attacks, attack) if attacks is not None or attack else None
            result = run_shift_eval(src, shift_items, chosen, threat=threat, radius=radius, dataset=dataset,
                                    data_options=data_options, limit=limit, batch_size=batch_size,
                                    device=device, seed=seed, progress=progress)
            if json_:
                print_json("eval", result)
            else:
                ood.print_shift_table(result)
            return
        items = parse_attacks(attacks, attack)
        result = run_eval(src, items, threat=threat, radius=radius, dataset=dataset, data_options=data_options,
                          limit=limit, batch_size=batch_size, device=device, seed=seed, aa_state=aa_state,
                          save_flags=save_flags, progress=progress, stop_hint=again)
        if json_:
            print_json("eval", result)
            return
        print_table(result)


def run_shift_eval(src, shift_items: list[Any], attacks: list[Any] | None, *, threat: str, radius: float | None,
                   dataset: str | None, data_options: dict[str, Any], limit: int | None,
                   **rest: Any) -> dict[str, Any]:
    """``eval --shifts``: the shift table, under the model's benchmark protocol where it has one (its ε, images
    and preprocessing; the shift attacks stay the command's)."""
    from igdm_kit._evaluation import sources

    followed = follow_protocol(sources.protocol(src, dataset), threat=threat, radius=radius,
                               data_options=data_options, limit=limit, attack_keys=None)
    if followed is not None:
        radius, data_options = followed.radius, followed.data_options
    result = ood.run_shifts(src, shift_items, attacks, threat=threat, radius=radius, dataset=dataset,
                            data_options=data_options, limit=limit, **rest)
    if followed is not None:
        result["protocol"] = followed.to_json()
    return result


def run_eval(src, items: list[Any], *, threat: str, radius: float | None, dataset: str | None,
             limit: int | None, batch_size: int, device: str, seed: int, aa_state: Path | None,
             save_flags: Path | None, progress: bool, stop_hint: str = "run the same command again",
             data_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load the model through its source, resolve the attacks, evaluate; the JSON-able result. A stop
    request (SIGINT/SIGTERM) ends the evaluation after the current batch: ``Interrupted`` with
    ``stop_hint``, exit 128 + signal."""
    from igdm_kit._evaluation import sources
    from igdm_kit._evaluation.runner import evaluate_report, load_eval_data
    from igdm_kit._evaluation.runner import save_flags as write_flags
    from igdm_kit._recipe.specs import DEFAULT_EPS, resolve
    from igdm_kit._runtime.threads import configure
    from igdm_kit.attacks import resolve_device

    specs = resolve(items, threat, "--attacks")  # bad attacks fail before any model is loaded
    followed = follow_protocol(sources.protocol(src, dataset), threat=threat, radius=radius,
                               data_options=data_options or {}, limit=limit, attack_keys=[s.key for s in specs])
    if followed is not None:
        radius, data_options = followed.radius, followed.data_options
    configure()  # --threads / IGDM_KIT_THREADS, else the default
    dev = resolve_device(device)
    net, meta, ds_name, options = sources.load(src, dataset, dev, data_options)
    if radius is None:  # a model trained at another radius would otherwise be judged at 8/255 silently
        from igdm_kit._storage.checkpoint import judged_eps

        radius = judged_eps(meta, threat)
        radius = DEFAULT_EPS[threat] if radius is None else radius
    x, y = load_eval_data(ds_name, limit, options)
    if limit is not None:
        limit_warning(ds_name, options, y)
    which = ", ".join(f"{k} {meta[k]}" for k in ("checkpoint", "epoch") if meta.get(k) is not None)
    err_console.print(escape(f"evaluating {src.path}" + (f" ({which})" if which else "") + f" on {ds_name} test "
                             f"({x.shape[0]} images, {dev}, {threat} ε = {eps_text(radius)})"),
                      style="dim", highlight=False)
    with FLAG, progress_callback(progress) as cb:  # SIGINT/SIGTERM: message, 128 + signal
        result = evaluate_report(net, x, y, attacks=specs, batch_size=batch_size, eps=radius, threat=threat,
                                 device=dev, seed=seed, autoattack_state=aa_state, where="--attacks",
                                 progress=checked(cb, "evaluation stopped", stop_hint))
    for w in result.warnings:
        err_console.print(f"[yellow]warning:[/] AutoAttack: {escape(w)}", highlight=False)
    if save_flags is not None:
        write_flags(save_flags, result, x, y, {"checkpoint": str(src.path), "dataset": ds_name})
        err_console.print(escape(f"flags: {save_flags}"), style="dim", highlight=False)
    extra = {} if followed is None else {"protocol": followed.to_json()}
    return {"checkpoint": str(src.path), "dataset": ds_name, **result.to_json(), **extra}


def follow_protocol(protocol, **given):
    """The protocol of the model's benchmark (None: none) applied to the command's settings, and said: what it
    supplied (dim), what departs from it and what it cannot reproduce (warnings: not the leaderboard's number)."""
    if protocol is None:
        return None
    from igdm_kit._evaluation.protocol import follow

    followed = follow(protocol, **given)
    if followed.supplied:
        err_console.print(escape(f"{protocol.name}: {', '.join(followed.supplied)} (unset here, so the "
                                 f"protocol's; its leaderboard reports {protocol.attack})"),
                          style="dim", highlight=False)
    if followed.departures:
        err_console.print(f"[yellow]warning:[/] {escape(f'not {protocol.name}: ' + '; '.join(followed.departures))}"
                          " — the number is not comparable with its leaderboard", highlight=False)
    if protocol.caveat:
        err_console.print(f"[yellow]warning:[/] {escape(protocol.caveat)}", highlight=False)
    return followed


def limit_warning(ds_name: str, options: dict[str, Any], y) -> None:
    """A ``--limit`` whose first test images leave classes out (image folders are stored class by class)."""
    import torch

    from igdm_kit.factories import create_dataset

    classes = create_dataset(ds_name, **options).info().num_classes
    present = int(torch.unique(y).numel())
    if present < classes:
        err_console.print(escape(f"--limit {y.shape[0]} keeps the first test images only, which hold {present} of "
                                 f"the {classes} classes; the numbers are about those classes"),
                          style="yellow", highlight=False)


def print_table(result: dict[str, Any]) -> None:
    from rich.table import Table

    from igdm_kit._evaluation.report import EvalReport

    rep = EvalReport.from_json(result)

    table = Table(title=escape(f"{result['checkpoint']} — {result['dataset']} test, n={result['n']}, "
                               f"{result['threat']} ε={eps_text(result['eps'])}"),
                  caption="95% Wilson intervals; worst case: an image counts only if it resists every attack")
    for col, justify in (("attack", "left"), ("accuracy (%)", "right"), ("95% CI", "right"),
                         ("correct", "right"), ("seconds", "right")):
        table.add_column(col, justify=justify)
    for key, a in rep.rows().items():
        if key == "worst" and len(rep.attacks) < 2:
            continue
        lo, hi = a.ci95
        table.add_row(escape(a.label), f"{a.accuracy:.2f}", f"{lo:.1f}–{hi:.1f}", f"{a.correct}/{a.total}",
                      f"{rep.seconds[key]:.1f}" if key in rep.seconds else "", style="bold" if key == "worst" else "")
    key = "worst" if len(rep.attacks) > 1 else next(iter(rep.attacks), "")
    found = rep.worst_class(key)
    if found is not None:  # robust fairness: the class served worst (every class: --json's per_class)
        (cls, a), (lo, hi) = found, found[1].ci95
        under = "worst case" if key == "worst" else rep.attacks[key].label
        table.add_row(escape(f"worst class: {cls} ({under})"), f"{a.accuracy:.2f}", f"{lo:.1f}–{hi:.1f}",
                      f"{a.correct}/{a.total}", "")
    out_console.print(table)
