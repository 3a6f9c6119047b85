"""Run the README's quickstart from scratch and rewrite the README's quickstart block with what it printed.

    python benchmarks/readme_quickstart.py              # ~2–5 min on a 2-core CPU; rewrites README.md
    python benchmarks/readme_quickstart.py --dry-run    # print the new block, leave README.md alone

The recipes (``recipes/quickstart.toml`` and its teacher) are copied into a temporary folder, so nothing
cached in ``runs/`` is reused: the teacher and both students are trained again with the repository's code.
``igdm-kit run recipes/quickstart.toml`` runs there as a user types it, and its table is taken verbatim
from the command's stdout (whatever columns or intervals the command prints, the README shows). The
sentence under it is written from ``igdm-kit sweep ... --json`` of the same (finished) runs: the change
each column shows, in points and in test images, and how long the run took with how many threads.

The block lies between ``<!-- quickstart:begin -->`` and ``<!-- quickstart:end -->`` in README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN, END = "<!-- quickstart:begin -->", "<!-- quickstart:end -->"
RECIPES = ("quickstart.toml", "quickstart_teacher.toml")
COMMAND = ["run", "recipes/quickstart.toml"]


def run_quickstart(work: Path) -> tuple[str, dict, float, str]:
    """(the command's stdout, the sweep's JSON results, seconds, threads line) for a fresh quickstart."""
    (work / "recipes").mkdir()
    for name in RECIPES:
        shutil.copy(ROOT / "recipes" / name, work / "recipes" / name)
    env = {**os.environ, "COLUMNS": "200"}
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "igdm_kit", *COMMAND], cwd=work, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=sys.stderr)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        sys.exit(f"igdm-kit {' '.join(COMMAND)} failed with exit code {run.returncode}")
    again = subprocess.run([sys.executable, "-m", "igdm_kit", "sweep", "recipes/quickstart.toml", "--json"],
                           cwd=work, env=env, text=True, capture_output=True, check=True)
    summary = json.loads(again.stdout)["results"]
    manifest = json.loads(Path(summary["rows"][0]["output_dir"]).joinpath("manifest.json").read_text())
    return run.stdout, summary, seconds, str(manifest.get("threads", "?"))


def _fmt_time(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def sentence(summary: dict, seconds: float, threads: str) -> str:
    """What the numbers show: each column's change from the first variant to the second in points and in
    test images, with the 95% intervals and McNemar's paired test when the command reports them (rows'
    ``ci95``, ``versus_first``), and no more than that."""
    a, b = summary["rows"][:2]
    n = a.get("n") or 0
    tests = next((v.get("rows", {}) for v in summary.get("versus_first", [])
                  if v.get("variant") == b["variant"]), {})
    parts, moved, significant = [], [], []
    worst_class = [(k, label) for k, label in summary.get("columns", []) if k.startswith("worst-class:")]
    for key, label in summary.get("columns", []):
        if key in a and key in b and not key.startswith("worst-class:"):
            images = round((b[key] - a[key]) * n / 100)
            p = tests.get(key, {}).get("p_value")
            p_text = f", p = {_p(p)}" if p is not None else ""
            parts.append(f"{label} {b[key] - a[key]:+.2f} ({images:+d}{p_text})")
            moved.append(abs(images))
            if tests.get(key, {}).get("significant"):
                significant.append(label)
    halves = [(hi - lo) / 2 for r in (a, b) for k, (lo, hi) in (r.get("ci95") or {}).items()
              if not k.startswith("worst-class:")]
    align = [f"{g.upper()} {a[g]:.3f} → {b[g]:.3f}" for g in ("gc", "gd") if g in a and g in b]
    # a worst class is a different subset of images (maybe another class) in each run: no image count, no test
    align += [f"the worst case's worst class {a[k]:.2f} → {b[k]:.2f} % (over that class's images, not tested)"
              for k, _ in worst_class if k in a and k in b]
    cpus = os.cpu_count() or 1
    text = (f"That run took {_fmt_time(seconds)} on a {cpus}-CPU machine ({threads} torch thread"
            f"{'s' if threads != '1' else ''}): the teacher, two students, and AutoAttack on all {n} test "
            f"images at ε = 0.1 (digits have 17 grey levels). From `{a['variant']}` (ARD) to `{b['variant']}` "
            f"(ARD + IGDM, same seeds) the accuracies changed by {', '.join(parts)} points (in brackets: "
            f"test images" + (", McNemar's exact p" if tests else "") + f"); {', '.join(align)}. ")
    if halves:
        text += (f"With n = {n} each accuracy's 95% interval is ±{min(halves):.1f} to ±{max(halves):.1f} "
                 f"points, ")
    else:
        text += f"One image is {100 / n:.2f} points here, "
    verdict = ("none of the accuracy changes is significant" if tests and not significant else
               f"only {', '.join(significant)} changed significantly" if significant else
               f"the largest change is {max(moved)} image{'s' if max(moved) != 1 else ''}")
    return text + (f"and {verdict}: on this small problem the accuracies do not tell ARD and ARD + IGDM "
                   f"apart" if not significant else f"and {verdict}") + (
        "; another CPU thread count, which changes the last bits of reductions, can move them by a few "
        "images. GC (cosine, higher is closer) and GD (distance, lower is closer) are the input-gradient "
        f"alignment to the teacher that IGDM trains, averaged over the {n} images. Written by "
        "`python benchmarks/readme_quickstart.py` from the command's own output.")


def _p(p: float) -> str:
    from igdm_kit._evaluation.stats import fmt_p

    return fmt_p(p)


def block(table: str, text: str) -> str:
    lines = [ln.rstrip() for ln in table.strip("\n").splitlines()]
    return "\n".join([BEGIN, "```text", f"$ igdm-kit {' '.join(COMMAND)}", *lines, "```", "", _wrap(text),
                      END])


def _wrap(text: str, width: int = 110) -> str:
    """Lines of at most ``width`` characters, never breaking inside a `code span`."""
    out, line = [], ""
    for word in re.findall(r"\S*`[^`]*`\S*|\S+", text):
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return "\n".join([*out, line])


def rewrite(readme: str, new_block: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        sys.exit(f"README.md has no {BEGIN} … {END} block")
    return pattern.sub(lambda _: new_block, readme, count=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="print the block instead of rewriting README.md")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="igdm-kit-quickstart-") as tmp:
        table, summary, seconds, threads = run_quickstart(Path(tmp))
    new_block = block(table, sentence(summary, seconds, threads))
    if args.dry_run:
        print(new_block)
        return 0
    README.write_text(rewrite(README.read_text(encoding="utf-8"), new_block), encoding="utf-8")
    print(f"README.md: quickstart block rewritten ({_fmt_time(seconds)})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
