"""``igdm-kit sweep --launcher``: the quickstart grid as independent jobs gives the same table as the
sequential sweep, its teacher trained once as a job of its own first; the SLURM path, up to the job
descriptions submitit hands to ``sbatch`` (no cluster here: ``sbatch`` and ``srun`` are stand-ins that
record what they are given)."""

from __future__ import annotations

import os
import re
import stat

import pytest
from conftest import RECIPES


@pytest.fixture
def quickstart(tmp_path, monkeypatch):
    """The quickstart family and its teacher recipe, 1 epoch each and a light evaluation (cwd: tmp_path,
    where the recipes' run folders go)."""
    for name in ("quickstart.toml", "quickstart_teacher.toml"):
        text = (RECIPES / name).read_text().replace("epochs = 15", "epochs = 1") \
            .replace("milestones = [10, 13]", "milestones = []") \
            .replace('attacks = ["clean", "fgsm", "pgd20", "cw", "autoattack"]', 'attacks = ["clean", "fgsm"]') \
            .replace('attacks = ["clean", "pgd20"]', 'attacks = ["clean"]') \
            .replace('dir = "../runs/', 'dir = "runs/')  # this test's own folders: a teacher finished by
        (tmp_path / name).write_text(text)              # another test is reused, never launched again
    monkeypatch.chdir(tmp_path)
    return tmp_path / "quickstart.toml"


@pytest.mark.slow
def test_jobs_2_gives_the_table_of_the_sequential_sweep(quickstart, cli):
    par = cli("sweep", quickstart, "--jobs", "2", "--output", "runs/par")
    assert par.code == 0, par.err
    logs = sorted(p.name for p in (quickstart.parent / "runs" / "par" / "jobs").iterdir())
    assert logs == ["alpha=0.log", "alpha=6.log", "teacher_quickstart_teacher.log"]
    assert "teacher:quickstart_teacher: done" in par.err  # trained once, as a job, before the variants
    seq = cli("sweep", quickstart, "--output", "runs/seq")
    assert seq.code == 0, seq.err
    assert "reusing finished run" in seq.err  # the teacher the jobs trained
    assert par.out == seq.out and "alpha=6" in par.out and "change" in par.out
    # the jobs' variants are the sequential sweep's runs: a second sweep with either reuses them all
    again = cli("sweep", quickstart, "--jobs", "2", "--output", "runs/seq")
    assert again.code == 0 and again.out == seq.out and "with launcher" not in again.err  # nothing launched
    assert again.err.count("reusing the finished run") == 2


def _stand_in(path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_submits_the_teacher_then_the_variants_after_it(quickstart, cli, tmp_path, monkeypatch):
    pytest.importorskip("submitit", reason="pip install 'igdm-kit[slurm]'")
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    seen = tmp_path / "submitted"
    seen.mkdir()
    # sbatch: keep the job description, answer as SLURM does; srun: only has to exist (submitit checks)
    _stand_in(bin_ / "sbatch", f'n=$(ls {seen} | wc -l); id=$((1000 + n)); cp "$1" {seen}/$id.sh; '
                               'echo "Submitted batch job $id"\n')
    _stand_in(bin_ / "srun", "exit 1\n")
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    res = cli("sweep", quickstart, "--launcher", "slurm", "--output", "runs/slurm",
              "--launcher-opt", "partition=gpu", "--launcher-opt", "wait=false", "--launcher-opt", "time=90",
              "--launcher-opt", 'setup=["module load cuda"]')
    assert res.code == 0, res.err
    assert "submitted" in res.err and "run the same command again" in res.err
    scripts = {int(p.stem): p.read_text() for p in seen.iterdir()}
    assert sorted(scripts) == [1000, 1001, 1002]
    teacher, *variants = (scripts[i] for i in sorted(scripts))
    assert "#SBATCH --job-name=teacher:quickstart_teacher" in teacher and "--dependency" not in teacher
    for script, label in zip(variants, ("alpha=0", "alpha=6"), strict=True):
        assert f"#SBATCH --job-name={label}" in script
        assert "#SBATCH --dependency=afterok:1000" in script  # after the teacher's job
        for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                     "#SBATCH --cpus-per-task=8", "module load cuda"):
            assert line in script
        assert re.search(r"srun .*submitit\.core\._submit", script)
    # the pickled job: the same `igdm-kit run` of the variant as --jobs and the sequential sweep run
    from submitit.core.utils import DelayedSubmission

    job = DelayedSubmission.load(tmp_path / "runs" / "slurm" / "jobs" / "1002" / "1002_submitted.pkl")
    command, cwd = job.args
    assert command[1:5] == ["-m", "igdm_kit", "run", str(quickstart)] and cwd == str(tmp_path)
    assert "module.alpha=6.0" in command and "sweep={}" in command
    assert command[command.index("--output") + 1] == str(os.path.join("runs", "slurm", "alpha=6"))
    assert not (tmp_path / "runs" / "quickstart" / "teacher" / "results.json").exists()  # nothing ran here


def test_launcher_options_are_checked_before_anything_runs(quickstart, cli):
    res = cli("sweep", quickstart, "--launcher", "slurm", "--jobs", "2")
    assert res.code == 1 and "--jobs is the local launcher's" in res.err
    res = cli("sweep", quickstart, "--launcher", "lokal")
    assert res.code == 1 and "unknown launcher 'lokal'" in res.err and "local" in res.err
    res = cli("sweep", quickstart, "--launcher", "local", "--launcher-opt", "jobz=2")
    assert res.code == 1 and "jobz" in res.err
    assert not (quickstart.parent / "runs").exists()
