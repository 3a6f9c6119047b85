"""The run folder (issue 18): recognised only by igdm-kit's own marker, ``--overwrite`` deletes only what
igdm-kit wrote, one process at a time (a lock naming its holder), stale temporaries cleaned, and ``--resume``
of a finished run reports it and exits 0."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from igdm_kit import _recipe as R
from igdm_kit._storage.io import read_jsonl
from igdm_kit._training.engine import run

LOCK = ".igdm-kit.lock"  # igdm_kit._storage.run_folder.LOCK (spelled out: the tests also run against older code)

from conftest import TINY


def _tree(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def test_a_folder_with_a_foreign_manifest_is_never_taken_for_a_run(tmp_path, write_recipe, cli):
    project = tmp_path / "project"
    project.mkdir()
    (project / "manifest.json").write_text('{"name": "my web app", "version": 3}')
    (project / "index.html").write_text("<p>years of work</p>")
    before = _tree(project)
    p = write_recipe(TINY)
    for flags in ([], ["--overwrite"], ["--resume"]):
        res = cli("run", p, "--output", project, *flags)
        assert res.code == 1 and "holds no igdm-kit run" in res.err and "Traceback" not in res.err, flags
        assert _tree(project) == before, flags


def test_overwrite_deletes_only_what_igdm_kit_wrote_even_through_a_symlink(tmp_path, write_recipe, cli):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    p = write_recipe(TINY.replace("milestones = []", "milestones = []\nsave_every_epoch = true"))
    assert cli("run", p, "--output", link).code == 0
    assert (real / "checkpoints" / "epoch_001.safetensors").is_file()
    (real / "notes.txt").write_text("my notes")
    (real / "checkpoints" / "mine.txt").write_text("keep")
    (real / ".hidden").write_text("keep too")
    first = (real / "model.safetensors").read_bytes()
    res = cli("run", p, "--output", link, "--overwrite", "--set", "train.seed=1")
    assert res.code == 0, res.err
    assert (real / "model.safetensors").read_bytes() != first  # the new run's
    assert json.loads((real / "manifest.json").read_text())["seed"] == 1
    assert link.is_symlink() and (real / "notes.txt").read_text() == "my notes"
    assert (real / "checkpoints" / "mine.txt").read_text() == "keep" and (real / ".hidden").is_file()
    assert (real / "model.safetensors").is_file() and not (real / LOCK).exists()


def test_a_locked_folder_gets_one_line_naming_the_holder(tmp_path, write_recipe, cli):
    p = write_recipe(TINY)
    out = tmp_path / "run"
    from igdm_kit._storage.run_folder import RunFolder

    with RunFolder(out).lock():
        res = cli("run", p, "--output", out)
        assert res.code == 1 and "Traceback" not in res.err
        assert "in use by another igdm-kit process" in res.err and f"pid {os.getpid()}" in res.err
        assert socket.gethostname() in res.err
        assert sorted(q.name for q in out.iterdir()) == [LOCK]  # nothing written beside the holder's lock
    assert not out.exists()  # the lock made the folder and, left empty, removes it
    assert cli("run", p, "--output", out).code == 0


def test_a_student_waits_for_the_process_that_holds_its_teacher(tmp_path, write_recipe, cli):
    """Two students of one teacher started together (``sweep --jobs 2``): one holds the teacher's folder (to
    train it, or only to reuse it) while the other looks. The second waits for the first, saying whom for,
    instead of failing (CI saw ``alpha=0: failed`` in a --jobs 2 sweep from exactly this race)."""
    import threading

    teacher_out = tmp_path / "teacher-run"
    write_recipe(TINY + f'\n[output]\ndir = "{teacher_out}"\n', name="teacher.toml")
    student = write_recipe(TINY.replace('name = "pgd-at"', 'name = "ard"')  # a 1-epoch teacher: near chance
                           + '\n[teacher]\nrecipe = "teacher.toml"\ncheck_accuracy = false\n', name="student.toml")
    from igdm_kit._storage.run_folder import RunFolder

    lock = RunFolder(teacher_out).lock()
    lock.acquire()
    threading.Timer(2.0, lock.release).start()
    res = cli("run", student, "--output", tmp_path / "student")
    assert res.code == 0, res.err
    assert "waiting for pid" in res.err and "teacher run folder" in res.err and str(os.getpid()) in res.err
    assert res.err.count("waiting for pid") == 1  # said once, not once a poll
    assert (teacher_out / "model.safetensors").is_file() and (tmp_path / "student" / "results.json").is_file()


def test_a_holder_between_its_lock_and_its_note_is_still_named(tmp_path):
    """The race two simultaneous runs meet: the first has flock-ed the lock file but not yet written its pid;
    the second waits briefly for the note instead of naming no one."""
    import fcntl
    import threading
    import time

    from igdm_kit._storage.run_folder import RunFolder
    from igdm_kit.errors import IgdmKitError

    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)

    def note() -> None:
        time.sleep(0.2)
        os.pwrite(fd, json.dumps({"pid": 4242, "host": "elsewhere", "since": "now"}).encode(), 0)

    writer = threading.Thread(target=note)
    writer.start()
    try:
        with pytest.raises(IgdmKitError) as exc:
            RunFolder(out).lock().acquire()
    finally:
        writer.join()
        os.close(fd)
    assert "in use by another igdm-kit process (pid 4242 on elsewhere, since now)" in exc.value.message


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path, write_recipe):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(), "since": "then"}))
    lines: list[str] = []
    run(R.load(write_recipe(TINY)), output_dir=out, log=lines.append)
    assert any("taking over the lock of pid 4206649" in line for line in lines)
    assert (out / "results.json").is_file() and not (out / LOCK).exists()


def test_resume_of_a_finished_run_reports_it_and_exits_0(tmp_path, write_recipe, cli):
    p = write_recipe(TINY)
    out = tmp_path / "run"
    assert cli("run", p, "--output", out).code == 0
    before = (out / "model.safetensors").read_bytes()
    res = cli("run", p, "--output", out, "--resume", "--json")
    assert res.code == 0, res.err
    assert "holds the finished run: nothing to resume" in res.err
    assert json.loads(res.out)["results"]["results"]["metrics"]["clean"]["total"] == 360
    assert (out / "model.safetensors").read_bytes() == before
    res = cli("run", p, "--output", out, "--resume", "--set", "train.lr=0.05")  # another recipe: refused
    assert res.code == 1 and "finished run" in res.err


def test_temporaries_of_killed_writes_are_cleaned_on_resume(tmp_path, write_recipe, cli):
    p = write_recipe(TINY.replace("epochs = 1", "epochs = 2").replace("milestones = []",
                                                                       "milestones = []\nsave_every_epoch = true"))
    out = tmp_path / "run"
    assert cli("run", p, "--output", out).code == 0
    (out / "results.json").unlink()  # as if killed during the final evaluation
    stale = [out / ".last.safetensors.k2j4h1.tmp", out / ".train_state.safetensors.x8f.tmp",
             out / ".metrics.jsonl.a1.tmp", out / "checkpoints" / ".epoch_002.safetensors.zz9.tmp"]
    for f in stale:
        f.write_bytes(b"half a file")
    foreign = [out / ".notes.txt.tmp", out / "checkpoints" / "mine.tmp"]
    for f in foreign:
        f.write_text("not igdm-kit's")
    res = cli("run", p, "--output", out, "--resume")
    assert res.code == 0, res.err
    assert "removed 4 temporary file(s)" in res.err
    assert not any(f.exists() for f in stale) and all(f.exists() for f in foreign)


@pytest.mark.slow
def test_two_runs_into_one_folder_exactly_one_proceeds(tmp_path, write_recipe):
    """Recipes differing only in train.lr, started together on one folder: exactly one trains; the folder's
    manifest, metrics, model and results all come from that one."""
    p = write_recipe(TINY.replace("epochs = 1", "epochs = 40"))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    lrs = (0.05, 0.02)
    procs = [subprocess.Popen([sys.executable, "-m", "igdm_kit", "run", str(p), "--set", f"train.lr={lr}",
                               "--output", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for lr in lrs]
    errs = [proc.communicate(timeout=600)[1] for proc in procs]
    codes = [proc.returncode for proc in procs]
    assert sorted(codes) == [0, 1], errs
    winner, loser = codes.index(0), codes.index(1)
    assert "Traceback" not in errs[loser]
    assert ("in use by another igdm-kit process (pid" in errs[loser]
            or "already holds a finished run" in errs[loser]), errs[loser]  # the latter: no overlap at all
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["train"]["lr"] == lrs[winner]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, 41)) and {r["lr"] for r in rows} == {lrs[winner]}
    from igdm_kit._storage.checkpoint import read_metadata

    assert read_metadata(out / "model.safetensors")["recipe_digest"] == manifest["recipe_digest"]
    assert json.loads((out / "results.json").read_text())["digest"] == manifest["recipe_digest"]
