"""Progress when stderr is not a terminal: plain lines — one per epoch and per evaluation attack, with the
elapsed time and an ETA — instead of a Rich bar that a log file never shows."""

from __future__ import annotations

import io
import json
import re

from conftest import DIGITS_PGDAT
from rich.console import Console

from igdm_kit._runtime.progress import LineProgress, clock

TWO_EPOCHS = DIGITS_PGDAT.replace('name = "digits"', 'name = "digits"\ntrain_limit = 128\ntest_limit = 40') \
    .replace("epochs = 1", "epochs = 2").replace('attacks = ["clean"]', 'attacks = ["clean", "fgsm"]')


def test_clock():
    assert [clock(s) for s in (0.04, 12.34, 65, 3723)] == ["0.0 s", "12.3 s", "1:05", "1:02:03"]


def test_line_progress_prints_a_line_per_finished_task_and_running_lines_with_an_eta():
    buf = io.StringIO()
    lines = LineProgress(Console(file=buf, width=200), interval=0.0)
    a = lines.add_task("eval pgd20", total=4)
    lines.update(a, completed=1)
    lines.update(a, completed=4)
    lines.update(a, completed=4)  # a repeated report does not repeat the line
    b = lines.add_task("training", total=2)
    lines.update(b, completed=0)  # "starting now": no line
    lines.update(b, advance=2)
    out = buf.getvalue().splitlines()
    assert len(out) == 3, out
    assert re.fullmatch(r"eval pgd20: 1/4 · \d+\.\d s elapsed · ETA \d+\.\d s", out[0])
    assert re.fullmatch(r"eval pgd20: done in \d+\.\d s", out[1])
    assert re.fullmatch(r"training: done in \d+\.\d s", out[2])


def test_a_run_logged_to_a_file_has_a_line_per_epoch_and_per_attack(cli, write_recipe, tmp_path):
    """capsys's stderr is not a terminal, like a log file under nohup or a scheduler."""
    res = cli("run", write_recipe(TWO_EPOCHS), "--output", tmp_path / "run")
    assert res.code == 0, res.err
    epochs = [ln for ln in res.err.splitlines() if re.match(r"t epoch \d/2: ", ln)]
    assert len(epochs) == 2 and all(re.search(r"· \S+ s elapsed · ETA \S+ s$", ln) for ln in epochs), res.err
    assert [ln.split(":")[0] for ln in res.err.splitlines() if " eval " in ln] == \
        ["t eval clean (last, epoch 2)", "t eval fgsm (last, epoch 2)"]  # each names the checkpoint judged
    assert "module_weight" not in res.err  # no module, no T(α) to report
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("module_weight" not in r for r in rows)


def test_eval_logged_to_a_file_has_a_line_per_attack(cli, tmp_path):
    from igdm_kit._storage.checkpoint import save_model
    from igdm_kit.factories import create_model

    meta = {"model": "small-cnn", "model_options": {"width": 4}, "num_classes": 10, "in_channels": 1,
            "image_size": 8, "mean": None, "std": None, "dataset": {"name": "digits", "options": {}}}
    path = tmp_path / "m.safetensors"
    save_model(path, create_model("small-cnn", num_classes=10, in_channels=1, image_size=8, width=4), meta)
    res = cli("eval", "--model", path, "--attacks", "clean,pgd20", "--limit", "16", "--batch-size", "8")
    assert res.code == 0, res.err
    done = [ln for ln in res.err.splitlines() if ": done in " in ln]
    assert [ln.split(":")[0] for ln in done] == ["clean", "pgd20"], res.err
