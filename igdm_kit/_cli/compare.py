"""``igdm-kit compare A B``: two models judged on the same images, attack by attack, with a paired test."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from igdm_kit._cli.console import out_console, print_json
from igdm_kit._cli.options import Json


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare(a: Path = typer.Argument(..., help="run folder (or eval --save-flags file) of model A"),
                b: Path = typer.Argument(..., help="run folder (or flags file) of model B"),
                worst: str = typer.Option("same", "--worst", help="worst cases over different attacks: same "
                                          "(refuse), common (both over the attacks both ran), each (each "
                                          "side's own, labelled)"),
                json_: Json = False) -> None:
        """Accuracy of A and B per attack with 95% intervals, B − A, and McNemar's exact test on the
        per-image robust flags; differences that are not significant are marked n.s. Only attacks both ran
        are compared; the worst case row says which attacks it covers."""
        from igdm_kit._evaluation.compare import compare as run_compare

        result = run_compare(a, b, worst=worst)
        if json_:
            print_json("compare", result)
            return
        print_table(result)


def print_table(result: dict) -> None:
    from rich.table import Table

    from igdm_kit._evaluation.stats import fmt_p

    table = Table(title=escape(f"A = {result['a']}   B = {result['b']}   (n = {result['n']}, "
                               f"{result['threat']} ε = {result['eps']:.4g})"),
                  caption="95% Wilson intervals; p: McNemar's exact test on the images where exactly one "
                          "model is right; n.s. = not significant (p ≥ 0.05)")
    for col, justify in (("attack", "left"), ("A (%)", "right"), ("B (%)", "right"), ("B − A", "right"),
                         ("only A / only B", "right"), ("p", "right"), ("", "left")):
        table.add_column(col, justify=justify)
    for row in result["rows"].values():
        a, b = row["a"], row["b"]
        table.add_row(escape(row["label"]), _acc(a), _acc(b), f"{row['difference']:+.2f}",
                      f"{row['a_only']} / {row['b_only']}", fmt_p(row["p_value"]),
                      "significant" if row["significant"] else "n.s.",
                      style="bold" if row["significant"] else None)
    out_console.print(table)
    w = result["rows"].get("worst")
    if w is not None and w["over"]["a"] == w["over"]["b"]:
        out_console.print(escape(f"worst case over: {', '.join(w['over']['a'])}"), highlight=False)
    for side in ("a", "b"):
        if result.get(f"only_{side}"):
            out_console.print(escape(f"not compared (only {side.upper()} ran them): "
                                     f"{', '.join(result[f'only_{side}'])}"), highlight=False)


def _acc(m: dict) -> str:
    lo, hi = m["ci95"]
    return f"{m['accuracy']:.2f} ({lo:.1f}–{hi:.1f})"
