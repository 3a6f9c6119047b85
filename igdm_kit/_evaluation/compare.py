"""Paired comparison of two evaluations on the same images: per attack (and the worst case), the two
accuracies with their 95% Wilson intervals, the difference, and McNemar's exact test on the per-image
robust flags (``igdm_kit._evaluation.stats``). Inputs are run folders (their ``eval_flags.safetensors``) or files
written by ``igdm-kit eval --save-flags``.

Only attacks both sides ran are compared (the others are listed); a worst case is the worst over the attacks
its side ran, so two worst cases over different attacks are not the same measurement: compared only when
asked, over the attacks both ran (``common``) or labelled with each side's own (``each``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from igdm_kit._evaluation.stats import mcnemar, wilson
from igdm_kit.errors import IgdmKitError

FLAGS_FILE = "eval_flags.safetensors"


def flags_file(path: str | Path) -> Path:
    """A run folder's flags file, or the file itself."""
    path = Path(path)
    if path.is_dir():
        inside = path / FLAGS_FILE
        if not inside.is_file():
            raise IgdmKitError(f"{str(path)!r} holds no {FLAGS_FILE}",
                               "evaluate the run first (igdm-kit run), or pass an eval --save-flags file")
        return inside
    return path


#: How ``compare`` treats two worst cases over different attacks: ``same`` refuses, ``common`` recomputes both
#: over the attacks both ran (from the per-image flags), ``each`` compares each side's own, labelled.
WORST_CHOICES = ("same", "common", "each")


def compare(a: str | Path, b: str | Path, worst: str = "same") -> dict[str, Any]:
    """Every attack both evaluations ran (in A's order, the worst case last) → accuracies, intervals, B − A and
    McNemar's p-value; the attacks only one side ran are listed (``only_a``, ``only_b``), never compared, and
    the worst case row says which attacks each side's covers (``over``). Refuses evaluations of different
    images or threat models, and worst cases over different attacks unless ``worst`` says how to compare
    them (``WORST_CHOICES``)."""
    from igdm_kit._evaluation.runner import load_flags

    if worst not in WORST_CHOICES:
        raise IgdmKitError(f"worst-case comparison {worst!r} is not same, common or each",
                           "--worst same (the default: refuse different attacks), common or each")
    fa, ma = load_flags(flags_file(a))
    fb, mb = load_flags(flags_file(b))
    _same_images(a, b, ma, mb)
    over_a, over_b = _attacks(fa, ma), _attacks(fb, mb)
    keys = [k for k in over_a if k in over_b]
    if not keys:
        raise IgdmKitError(f"{str(a)!r} and {str(b)!r} share no attack", "evaluate both with the same attacks")
    labels = {**mb.get("labels", {}), **ma.get("labels", {})}
    rows = {k: _row(labels.get(k, k), fa[k], fb[k]) for k in keys}
    if "worst" in fa and "worst" in fb:
        rows["worst"] = _worst_row(a, b, fa, fb, over_a, over_b, keys, worst)
    return {"a": str(a), "b": str(b), "n": ma.get("n"), "threat": ma.get("threat"), "eps": ma.get("eps"),
            "rows": rows, "only_a": [k for k in over_a if k not in over_b],
            "only_b": [k for k in over_b if k not in over_a]}


def _same_images(a, b, ma: dict[str, Any], mb: dict[str, Any]) -> None:
    if ma.get("images_sha256") != mb.get("images_sha256") or ma.get("n") != mb.get("n"):
        raise IgdmKitError(f"{str(a)!r} and {str(b)!r} were evaluated on different images "
                           f"(n = {ma.get('n')} and {mb.get('n')})",
                           "evaluate both on the same dataset, split and --limit")
    if (ma.get("threat"), ma.get("eps")) != (mb.get("threat"), mb.get("eps")):
        raise IgdmKitError(f"{str(a)!r} and {str(b)!r} were evaluated under different threat models "
                           f"({ma.get('threat')} ε={ma.get('eps')} and {mb.get('threat')} ε={mb.get('eps')})",
                           "evaluate both at the same threat model and ε")


def _attacks(flags: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """The attacks an evaluation ran, in its own order (the file sorts its keys): its worst case covers them."""
    order = list(meta.get("labels", {})) or sorted(flags)
    return [k for k in order if k in flags and k != "worst"]


def _row(label: str, fa, fb) -> dict[str, Any]:
    p = mcnemar(fa.tolist(), fb.tolist())
    return {"label": label, "a": _acc(p.a_correct, p.n), "b": _acc(p.b_correct, p.n), **p.to_json()}


def _worst_row(a, b, fa, fb, over_a: list[str], over_b: list[str], common: list[str], worst: str) -> dict[str, Any]:
    """The worst case per image, compared only over the same attacks unless ``worst = "each"`` asks."""
    if set(over_a) == set(over_b):
        return {**_row("worst case", fa["worst"], fb["worst"]), "over": {"a": over_a, "b": over_b}}
    if worst == "same":
        raise IgdmKitError(f"the worst cases of {str(a)!r} and {str(b)!r} cover different attacks (A: "
                           f"{', '.join(over_a)}; B: {', '.join(over_b)})",
                           "compare them over the attacks both ran with --worst common, or each side's own with "
                           "--worst each; or evaluate both with the same attacks")
    if worst == "common":
        import torch

        wa = torch.stack([fa[k] for k in common]).all(dim=0)
        wb = torch.stack([fb[k] for k in common]).all(dim=0)
        return {**_row(f"worst case over {', '.join(common)}", wa, wb), "over": {"a": common, "b": common}}
    return {**_row(f"worst case (A: {', '.join(over_a)}; B: {', '.join(over_b)})", fa["worst"], fb["worst"]),
            "over": {"a": over_a, "b": over_b}}


def _acc(correct: int, n: int) -> dict[str, Any]:
    return {"accuracy": 100.0 * correct / n, "correct": correct, "ci95": list(wilson(correct, n))}
