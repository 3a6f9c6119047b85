"""Sweeps that resume and honour every signal (issue 27): ``--resume`` of a finished sweep reuses its variants
on every launcher (no job relaunched, no job log truncated; under SLURM no job submitted); SIGTERM between two
variants of a sequential sweep and SIGTERM to the ``--jobs`` parent stop with 128 + 15 and the command that
resumes, the jobs told SIGTERM and saying so; after a teacher run is killed, the student's error names the
command that continues the teacher.
"""

from __future__ import annotations

import os
import shlex
import signal
import stat
import subprocess
import sys
import time

import pytest
from conftest import TINY

from igdm_kit._sweep.sweep import run_sweep
from igdm_kit.errors import Interrupted

PLAIN = TINY + '[sweep]\n"train.seed" = [0, 1]\n'
TEACHER = TINY.replace('name = "t"', 'name = "teach"')
STUDENT = TINY.replace('name = "t"', 'name = "student"').replace('name = "pgd-at"', 'name = "ard"') \
    + '[teacher]\nrecipe = "teacher.toml"\ncheck_accuracy = false  # one epoch of training: not a real teacher\n[module]\nname = "igdm"\nalpha = 1.0\n[sweep]\n"module.alpha" = [0.0, 1.0]\n'


@pytest.fixture
def sigterm_guard():
    """A SIGTERM that no igdm-kit handler takes fails the test instead of killing pytest."""
    def unhandled(signum, frame):
        raise RuntimeError("SIGTERM reached the test: no handler was installed")

    old = signal.signal(signal.SIGTERM, unhandled)
    yield
    signal.signal(signal.SIGTERM, old)


@pytest.fixture
def family(tmp_path, monkeypatch):
    """A student family (two variants) of a teacher recipe, in a folder that is the working directory."""
    (tmp_path / "teacher.toml").write_text(TEACHER)
    (tmp_path / "student.toml").write_text(STUDENT)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "student.toml"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_jobs_resume_of_a_finished_sweep_reuses_every_variant_and_keeps_the_logs(family, cli):
    out = family.parent / "runs" / "fam"
    assert cli("sweep", family, "--output", out).code == 0  # the teacher and both variants, in-process
    logs = out / "jobs"
    logs.mkdir()
    for name in ("alpha=0.log", "alpha=1.log"):
        (logs / name).write_text("the log of an earlier launch\n")
    res = cli("sweep", family, "--jobs", "2", "--resume", "--output", out)
    assert res.code == 0, res.err
    assert "with launcher" not in res.err and res.err.count("reusing the finished run") == 2
    assert all((logs / n).read_text() == "the log of an earlier launch\n" for n in ("alpha=0.log", "alpha=1.log"))


def _stand_in(path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_resume_submits_only_what_is_unfinished(family, cli, tmp_path, monkeypatch):
    """Under SLURM (``sbatch`` a stand-in that records what it is given): ``--resume`` of a finished sweep
    submits nothing; with one variant's folder gone, that variant alone — not its finished teacher."""
    pytest.importorskip("submitit", reason="pip install 'igdm-kit[slurm]'")
    out = tmp_path / "runs" / "fam"
    assert cli("sweep", family, "--output", out).code == 0
    bin_, seen = tmp_path / "bin", tmp_path / "submitted"
    bin_.mkdir()
    seen.mkdir()
    _stand_in(bin_ / "sbatch", f'n=$(ls {seen} | wc -l); id=$((1000 + n)); cp "$1" {seen}/$id.sh; '
                               'echo "Submitted batch job $id"\n')
    _stand_in(bin_ / "srun", "exit 1\n")
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    slurm = ("--launcher", "slurm", "--launcher-opt", "wait=false", "--resume", "--output", out)
    res = cli("sweep", family, *slurm)
    assert res.code == 0, res.err
    assert list(seen.iterdir()) == [] and res.err.count("reusing the finished run") == 2
    import shutil

    shutil.rmtree(out / "alpha=1")
    res = cli("sweep", family, *slurm)
    assert res.code == 0, res.err
    scripts = [p.read_text() for p in seen.iterdir()]
    assert len(scripts) == 1 and "#SBATCH --job-name=alpha=1" in scripts[0]


def test_sigterm_between_variants_of_a_sequential_sweep_stops_with_the_resume_command(tmp_path, sigterm_guard):
    p = tmp_path / "r.toml"
    p.write_text(PLAIN)
    out = tmp_path / "fam"
    sent: list[str] = []

    def log(line: str) -> None:  # the sweep announces the second variant: the first is finished
        if line.startswith("variant seed=1") and not sent:
            sent.append(line)
            os.kill(os.getpid(), signal.SIGTERM)

    again = f"igdm-kit sweep {p} --resume --output {out}"
    with pytest.raises(Interrupted) as exc:
        run_sweep(p, output_dir=out, log=log, resume_command=again)
    assert sent and exc.value.exit_code == 143
    assert exc.value.message.startswith("SIGTERM: ") and "seed=1" in exc.value.message
    assert exc.value.hint == f"resume with: {again}"
    assert (out / "seed=0" / "results.json").exists() and not (out / "seed=1").exists()
    summary = run_sweep(p, output_dir=out, resume=True)
    assert [r["reused"] for r in summary["rows"]] == [True, False]


@pytest.mark.slow
def test_sigterm_to_the_jobs_parent_tells_the_jobs_sigterm_and_prints_the_resume_command(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text(PLAIN.replace("epochs = 1", "epochs = 30"))
    out = tmp_path / "fam"
    parent = subprocess.Popen([sys.executable, "-m", "igdm_kit", "sweep", str(p), "--jobs", "2", "--output", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    t0 = time.time()
    while not all((out / v / "train_state.safetensors").exists() for v in ("seed=0", "seed=1")):
        assert parent.poll() is None, parent.communicate()[1][-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.05)
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=300)
    assert parent.returncode == 143 and "Traceback" not in err, err[-3000:]
    assert "sent SIGTERM" in err  # what it told the jobs, said
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-2].startswith("error: SIGTERM: ")
    hint = f"hint: resume with: igdm-kit sweep {p} --resume --output {out} --launcher local --jobs 2"
    assert lines[-1] == hint
    for v in ("seed=0", "seed=1"):  # each job got SIGTERM itself, saved and said how it stopped
        log = (out / "jobs" / f"{v}.log").read_text()
        assert "error: SIGTERM: training stopped and saved" in log and "SIGINT" not in log, log[-2000:]
        assert not (out / v / "results.json").exists()
    command = shlex.split(hint.split(": ", 2)[2])
    res = subprocess.run([sys.executable, "-m", "igdm_kit", *command[1:]], capture_output=True, text=True,
                         env=_env(), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert all((out / v / "results.json").exists() for v in ("seed=0", "seed=1"))
    assert all((out / "jobs" / f"{v}.log").read_text().count("error: SIGTERM") == 1 for v in ("seed=0", "seed=1"))


@pytest.mark.slow
def test_a_killed_teachers_student_error_names_the_command_that_continues_the_teacher(family, cli):
    """SIGKILL while the student's run trains its teacher; running the student again (plain, or with
    ``--overwrite``, which never reaches the teacher) names the command that continues the teacher, and that
    command finishes both."""
    student = family.parent / "solo.toml"
    student.write_text(STUDENT.split("[sweep]")[0].replace("epochs = 1", "epochs = 2"))
    (family.parent / "teacher.toml").write_text(TEACHER.replace("epochs = 1", "epochs = 40"))
    teacher_state = family.parent / "runs" / "teach" / "train_state.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "igdm_kit", "run", str(student)], cwd=family.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    t0 = time.time()
    while not teacher_state.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() - t0 < 300
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resume = f"igdm-kit run {student} --resume"
    for extra in ((), ("--overwrite",)):
        res = cli("run", student, *extra)
        assert res.code == 1, res.err
        assert "teacher run folder" in res.err and "unfinished" in res.err
        assert resume in res.err, res.err
        assert "pass --resume" not in res.err and "--overwrite to start again" not in res.err
    assert cli("run", student, "--resume").code == 0
    assert (family.parent / "runs" / "teach" / "results.json").exists()
    assert (family.parent / "runs" / "student" / "results.json").exists()
