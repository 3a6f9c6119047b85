"""torchrun on CPU with gloo: two ranks train on disjoint data, only rank 0 writes files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_PGDAT

from igdm_kit._runtime.distributed import Dist


def test_shards_are_disjoint_and_cover_the_epoch():
    order = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    shards = [Dist(rank=r, world=3).shard(order) for r in range(3)]
    assert all(s.shape[0] == 35 for s in shards)  # same number of steps on every rank
    seen = torch.cat(shards)
    assert set(seen.tolist()) == set(range(103))
    # only the wrap-around padding (2 samples) repeats
    assert seen.shape[0] - len(set(seen.tolist())) == 2


@pytest.mark.slow
def test_two_ranks_with_torchrun(tmp_path, write_recipe):
    recipe = write_recipe(DIGITS_PGDAT.replace("epochs = 1", "epochs = 2") + "\n", name="ddp.toml")
    out = tmp_path / "run"
    trace = tmp_path / "trace"
    env = {**os.environ, "IGDM_KIT_TRACE_DATA": str(trace), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "igdm_kit", "run", str(recipe), "--output", str(out), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    # both ranks trained, on disjoint samples (apart from the wrap-around padding of the last shard)
    per_rank = []
    for r in (0, 1):
        rows = (trace.parent / f"trace.rank{r}").read_text().split("\n")
        per_rank.append([list(map(int, row.split())) for row in rows if row.strip()])
    assert len(per_rank[0]) == len(per_rank[1]) > 0
    n_epoch_rows = len(per_rank[0]) // 2
    for epoch in range(2):
        a = {i for row in per_rank[0][epoch * n_epoch_rows:(epoch + 1) * n_epoch_rows] for i in row}
        b = {i for row in per_rank[1][epoch * n_epoch_rows:(epoch + 1) * n_epoch_rows] for i in row}
        assert len(a & b) <= 1 and len(a | b) == 1437  # 1437 = 2·719 − 1: one padded sample
    # per-epoch reshuffling: rank 0 sees different samples first in epoch 2
    assert per_rank[0][0] != per_rank[0][n_epoch_rows]

    # one set of files, written by rank 0 (no per-rank copies, one metrics line per epoch)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["manifest.json", "recipe.toml", "metrics.jsonl", "last.safetensors",
                            "train_state.safetensors", "model.safetensors", "results.json", "log.jsonl",
                            "trackers.json"])
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["clean"]["total"] == 360  # evaluation merged across the ranks' shards


@pytest.mark.slow
def test_two_ranks_validate_on_shards_and_agree_with_one_process(tmp_path, write_recipe):
    """Validation under torchrun: each rank a shard of the split, the counts summed — the same accuracy
    one process measures on the whole split; the best checkpoint and the average written once."""
    import igdm_kit
    from igdm_kit import _recipe as R
    from igdm_kit._evaluation.runner import evaluate
    from igdm_kit._storage.io import read_jsonl
    from igdm_kit._training.parts import load_data

    text = DIGITS_PGDAT.replace("epochs = 1", "epochs = 2").replace('[data]\nname = "digits"',
                                                                   '[data]\nname = "digits"\nval_size = 101') \
        .replace('[eval]\nattacks = ["clean"]', '[train.ema]\ndecay = 0.5\n[train.validate]\nattacks = ["clean"]\n'
                 '[eval]\nattacks = ["clean"]\ncheckpoints = ["last", "best", "ema"]')
    recipe = write_recipe(text, name="ddp_val.toml")
    out = _torchrun_two_ranks(recipe, tmp_path / "run")
    split: dict = {}
    load_data(R.load(recipe), split)
    x, y = split["data"]
    last = read_jsonl(out / "metrics.jsonl")[-1]
    for name, key in (("model.safetensors", "val_clean"), ("ema.safetensors", "val_ema_clean")):
        model = igdm_kit.load_model(out / name)
        assert last[key] == pytest.approx(evaluate(model, x, y, attacks=["clean"])["worst"]["accuracy"])
    results = json.loads((out / "results.json").read_text())
    assert set(results["checkpoints"]) == {"last", "best", "ema"} and (out / "best.safetensors").is_file()


def _torchrun_two_ranks(recipe, out):
    """``igdm-kit run recipe`` under a two-rank torchrun (gloo, one thread each) into ``out``; it must pass."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "igdm_kit", "run", str(recipe), "--output", str(out), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_ranks_evaluate_shifts_on_the_whole_split(tmp_path, write_recipe):
    """#27: ``[eval] shifts`` under torchrun ran on each rank's shard only (rank 0's half reported). Every rank
    now evaluates the whole split: the numbers are one process's on the same model and images."""
    import igdm_kit
    from igdm_kit import _recipe as R
    from igdm_kit._evaluation.shifts import evaluate_shifts
    from igdm_kit._training.parts import load_data
    from igdm_kit.factories import create_dataset

    text = DIGITS_PGDAT.replace('attacks = ["clean"]', 'attacks = ["clean"]\nshifts = ["threats"]\nlimit = 101')
    recipe = write_recipe(text, name="ddp_shifts.toml")
    out = _torchrun_two_ranks(recipe, tmp_path / "run")
    results = json.loads((out / "results.json").read_text())
    shifts = results["shifts"]
    assert shifts["n"] == 101 and shifts["sharded"] is False  # not a rank's 50 or 51
    r = R.load(recipe)
    _, _, (x, y) = load_data(r)
    ev = r.model.eval
    alone = evaluate_shifts(igdm_kit.load_model(out / "model.safetensors"), x[:101], y[:101], ev.shifts,
                            dataset="digits", info=create_dataset("digits", r.components["data"]).info(),
                            attacks=ev.shift_attacks, eps=ev.eps, threat=ev.threat, batch_size=ev.batch_size)
    assert shifts["test"]["robust"] == alone["test"]["robust"]
    assert {k: v["robust"] for k, v in shifts["rows"].items()} == {k: v["robust"] for k, v in alone["rows"].items()}
    # the per-class counts of the ranks' shards add up to one process's on the whole split
    from igdm_kit._evaluation.runner import evaluate_report

    one = evaluate_report(igdm_kit.load_model(out / "model.safetensors"), x[:101], y[:101], attacks=["clean"],
                          eps=ev.eps, num_classes=10).per_class["clean"]
    assert list(zip(*results["per_class"]["clean"].values(), strict=True)) == one


def test_a_stop_request_on_one_rank_stops_every_rank_at_the_agreed_check(tmp_path):
    """#27: the stop check of the final evaluation was per rank, so a rank that stopped alone left the other in
    the merge's collective. ``agreed_stop_check`` on two real gloo processes: a request on rank 1 only stops
    both, with the same message."""
    import torch.multiprocessing as mp

    mp.spawn(_agree_worker, args=(str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    outcomes = sorted((tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    assert outcomes == ["stopped: SIGTERM: the evaluation stopped"] * 2, outcomes


def _agree_worker(rank: int, rendezvous: str, out: str) -> None:
    import signal

    import torch.distributed as dist

    from igdm_kit._runtime.signals import StopFlag
    from igdm_kit._training.engine import agreed_stop_check
    from igdm_kit.errors import Interrupted

    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        stop = StopFlag()
        if rank == 1:
            stop.signum = signal.SIGTERM  # as if the signal reached this rank alone
        try:
            agreed_stop_check(stop, Dist(rank=rank, world=2), torch.device("cpu"), "the evaluation stopped", "x")()
            text = "went on"
        except Interrupted as exc:
            text = f"stopped: {exc.message}"
        (Path(out) / f"rank{rank}.txt").write_text(text)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_nodes_with_c10d_rendezvous_train_as_two_ranks_of_one(tmp_path, write_recipe):
    """``torchrun --nnodes 2``: two launches (two "nodes" on this machine, one process each) meet at a c10d
    rendezvous on localhost (gloo); every epoch's images are split between the nodes, one process writes
    the run folder, and the weights are those of two ranks on one node (``--standalone``)."""
    import socket

    from safetensors.torch import load_file

    recipe = write_recipe(DIGITS_PGDAT.replace('name = "digits"', 'name = "digits"\ntrain_limit = 256'),
                          name="nodes.toml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out, trace = tmp_path / "nodes", tmp_path / "trace"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IGDM_KIT_TRACE_DATA": str(trace)}
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               f"--node_rank={k}", "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                               "--rdzv_id=igdm-two-nodes", "-m", "igdm_kit", "run", str(recipe), "--output", str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for k in (0, 1)]
    errs = [p.communicate(timeout=600)[1] for p in nodes]
    assert all(p.returncode == 0 for p in nodes), [e[-2000:] for e in errs]
    shards = [{int(i) for line in Path(f"{trace}.rank{r}").read_text().splitlines() for i in line.split()}
              for r in (0, 1)]
    assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 256
    assert json.loads((out / "manifest.json").read_text())["world_size"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # one writer
    one_node = _torchrun_two_ranks(recipe, tmp_path / "one-node")
    a, b = load_file(str(out / "model.safetensors")), load_file(str(one_node / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
