"""``igdm-kit analyze linearity|alignment|pointwise``: the paper's analyses for checkpoints.

* ``linearity``: Taylor remainder proportion (Section 3.1); several checkpoints (a run's per-epoch
  ``epoch_XXX.safetensors``) give the curve of Figure 2b. Rows keep the order the checkpoints were given;
  only checkpoints of one run (one recipe digest, distinct epochs) are drawn as a curve over epochs.
* ``alignment``: gradient distance GD and cosine GC between student and teacher input gradients (Table 4).
* ``pointwise``: mean ‖T(x+δ) − S(x+δ)‖₂ for uniform and adversarial δ (Table 5).
* ``ood``: clean and robust accuracy under distribution and threat shifts (Table 9), in ``cli/ood.py``.

ε defaults to the radius the checkpoint's run was evaluated at (``eval_eps`` in its metadata), as in
``igdm-kit eval``; every table, envelope and figure states ε (where one applies), the dataset and n. The
computations are ``igdm_kit._evaluation.analysis``'s public functions. Rich table on stdout, ``--json`` envelope,
``--plot FILE.png`` (matplotlib, the ``plot`` extra), progress on stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from igdm_kit._cli.analysis_common import STOPPED_WHAT, _plotted, _prepare, _table, context, recorded_eps
from igdm_kit._cli.console import print_json, progress_callback
from igdm_kit._cli.options import (
    EPS_HELP,
    BatchSize,
    DataOpt,
    Dataset,
    Device,
    Json,
    Limit,
    PerSample,
    Plot,
    ShowProgress,
    seed_in_range,
)
from igdm_kit._cli.stopping import checked, stoppable
from igdm_kit._evaluation.plotting import checkpoint_label as _label
from igdm_kit._evaluation.plotting import linearity_figure, pyplot
from igdm_kit.errors import IgdmKitError


def register(app: typer.Typer) -> None:
    group = typer.Typer(rich_markup_mode=None, no_args_is_help=True,
                        help="Local linearity, gradient alignment and point-wise alignment (Sections 3.1, 4.2).")
    app.add_typer(group, name="analyze")
    from igdm_kit._cli.analyze_students import add_alignment, add_pointwise

    for add in (_linearity, add_alignment, add_pointwise):
        add(group)
    from igdm_kit._cli import ood

    ood.add(group)


def _remainders(paths, metas, x, radius: float, seed: int, batch_size: int, dev, cb, per_sample: bool):
    """One row per checkpoint, in the order given, each on the same noise (one seed)."""
    import torch

    from igdm_kit._evaluation.analysis import summarize, taylor_remainder
    from igdm_kit._storage.checkpoint import load_model

    results = []
    for path, meta in zip(paths, metas, strict=True):
        net = load_model(path, device=str(dev))
        gen = torch.Generator(device="cpu").manual_seed(seed)  # same noise for every checkpoint
        values = taylor_remainder(net, x, radius, generator=gen, batch_size=batch_size,
                                  progress=(lambda t, d, n, p=path: cb(f"{p.name}", d, n)) if cb else None)
        row: dict[str, Any] = {"checkpoint": str(path), "epoch": meta.get("epoch"),
                               "recipe_digest": meta.get("recipe_digest"), **summarize(values)}
        if per_sample:
            row["per_sample"] = values.tolist()
        row["_values"] = values
        results.append(row)
    return results


def _linearity(group: typer.Typer) -> None:
    @group.command("linearity")
    @stoppable
    def linearity(
        checkpoints: list[Path] = typer.Argument(None, help="checkpoints (also accepted after --model), kept "
                                                 "in the order given", show_default=False),
        model: list[Path] = typer.Option([], "--model", "-m", help="checkpoint; repeatable, or a list of files"),
        dataset: Dataset = None,
        data_opt: DataOpt = [],  # noqa: B006 - Typer's default
        limit: Limit = None,
        batch_size: BatchSize = 256,
        device: Device = "auto",
        eps: str | None = typer.Option(None, "--eps", help="noise ε ~ U(−eps, eps); " + EPS_HELP + "; default: "
                                       "the ε the checkpoints' run was evaluated at, else 8/255"),
        seed: int = typer.Option(0, "--seed", callback=seed_in_range,
                                 help="seed of the noise (the same noise for every checkpoint)"),
        per_sample: PerSample = False,
        plot: Plot = None,
        progress: ShowProgress = True,
        json_: Json = False,
    ) -> None:
        """Taylor remainder proportion ‖f(x+ε) − f(x) − J·ε‖ / ‖f(x+ε)‖ per checkpoint (Figure 2)."""
        if plot is not None:
            pyplot()  # a missing matplotlib fails before any computation
        paths = list(model) + list(checkpoints or [])
        if not paths:
            raise IgdmKitError("no checkpoint given", "pass --model CKPT [CKPT ...]")
        from igdm_kit._cli.specs import arch_options

        metas, name, x, _, dev = _prepare(paths, dataset, limit, device, arch_options(data_opt))
        radius = recorded_eps(metas, eps)
        with progress_callback(progress) as bar:
            results = _remainders(paths, metas, x, radius, seed, batch_size, dev, checked(bar, STOPPED_WHAT),
                                  per_sample)
        where = context(name, int(x.shape[0]), radius)
        if plot is not None:
            _plotted(linearity_figure(results, plot, where))
        for row in results:
            row.pop("_values")
        envelope = {"dataset": name, "n": int(x.shape[0]), "eps": radius, "seed": seed, "checkpoints": results}
        if json_:
            print_json("analyze linearity", envelope)
            return
        _table(f"Taylor remainder proportion — {where} (noise U(−ε, ε)), checkpoints in the order given",
               ["checkpoint", "epoch", "mean", "std", "median", "q05", "q95"],
               [[_label(r["checkpoint"], paths), "" if r["epoch"] is None else str(r["epoch"]), f"{r['mean']:.4f}",
                 f"{r['std']:.4f}", f"{r['median']:.4f}", f"{r['q05']:.4f}", f"{r['q95']:.4f}"]
                for r in results])
