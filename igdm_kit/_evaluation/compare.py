"""Paired comparison of two evaluations on the same images: per attack (and the worst case), the two
accuracies with their 95% Wilson intervals, the difference, and McNemar's exact test on the per-image
robust flags (``igdm_kit._evaluation.stats``). Inputs are run folders (their ``eval_flags.safetensors``) or files
written by ``igdm-kit eval --save-flags``.
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


def compare(a: str | Path, b: str | Path) -> dict[str, Any]:
    """Every attack key both evaluations ran (in A's order, the worst case last) → accuracies, intervals,
    B − A and McNemar's p-value. Refuses evaluations of different images."""
    from igdm_kit._evaluation.runner import load_flags

    fa, ma = load_flags(flags_file(a))
    fb, mb = load_flags(flags_file(b))
    if ma.get("images_sha256") != mb.get("images_sha256") or ma.get("n") != mb.get("n"):
        raise IgdmKitError(f"{str(a)!r} and {str(b)!r} were evaluated on different images "
                           f"(n = {ma.get('n')} and {mb.get('n')})",
                           "evaluate both on the same dataset, split and --limit")
    if (ma.get("threat"), ma.get("eps")) != (mb.get("threat"), mb.get("eps")):
        raise IgdmKitError(f"{str(a)!r} and {str(b)!r} were evaluated under different threat models "
                           f"({ma.get('threat')} ε={ma.get('eps')} and {mb.get('threat')} ε={mb.get('eps')})",
                           "evaluate both at the same threat model and ε")
    order = list(ma.get("labels", {})) or sorted(fa)  # the evaluation's own order (the file sorts its keys)
    keys = [k for k in order if k in fa and k in fb and k != "worst"] + \
        (["worst"] if "worst" in fa and "worst" in fb else [])
    if not keys:
        raise IgdmKitError(f"{str(a)!r} and {str(b)!r} share no attack", "evaluate both with the same attacks")
    labels = {**mb.get("labels", {}), **ma.get("labels", {}), "worst": "worst case"}
    rows = {}
    for k in keys:
        p = mcnemar(fa[k].tolist(), fb[k].tolist())
        rows[k] = {"label": labels.get(k, k), "a": _acc(p.a_correct, p.n), "b": _acc(p.b_correct, p.n),
                   **p.to_json()}
    return {"a": str(a), "b": str(b), "n": ma.get("n"), "threat": ma.get("threat"), "eps": ma.get("eps"),
            "rows": rows}


def _acc(correct: int, n: int) -> dict[str, Any]:
    return {"accuracy": 100.0 * correct / n, "correct": correct, "ci95": list(wilson(correct, n))}
