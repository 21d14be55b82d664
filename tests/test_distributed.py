"""Sharded influence under torch.distributed (2 gloo processes on CPU) equals one process.

The parent trains a small MLP with a turn-over layer (121 training images: odd, so the two blocks
differ in size, with an exact duplicate pair, so scores tie) and a word-embedding CNN, computes
every estimator in one process, then spawns 2 processes that compute the same through
``repro.distributed.Sharded``; rank 0 saves what it got. Scores, self-influence and top-k must
agree (1e-5 relative: chunk boundaries differ, so float rounding may), and both ranks must hold the
same full result."""
import dataclasses
import os

import numpy as np
import pytest
import torch

from repro.data import concat_datasets, load
from repro.distributed import Sharded, block, free_port
from repro.influence import (FastIF, InfluenceFunction, LastLayerInfluence, RepresenterPoints, TracInCP,
                             TracInWE, TurnOverInfluence)
from repro.models import mlp, word_cnn
from repro.models.cnn import build_vocab
from repro.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def _estimators(setup):
    m, run, cnn, cnn_run = setup["mlp"], setup["run"], setup["cnn"], setup["cnn_run"]
    return {
        "tracincp_all": (lambda: TracInCP(m, run, params="all", progress=False), "img"),
        "tracincp_last": (lambda: TracInCP(m, run, params="last", progress=False), "img"),
        "turnover": (lambda: TurnOverInfluence(m, progress=False), "img"),
        "ifunc": (lambda: InfluenceFunction(m, params="last", solver="exact", damping=1e-2, progress=False), "img"),
        "last_layer_if": (lambda: LastLayerInfluence(m, damping=1e-2, device="cpu"), "img"),
        "representer": (lambda: RepresenterPoints(m, lam=1e-2, device="cpu"), "img"),
        "fastif": (lambda: FastIF(m, k=40, params="last", scale=20.0, damp=0.01, depth=10, batch_size=8, seed=0,
                                  repetitions=2, progress=False), "img"),
        "tracin_we": (lambda: TracInWE(cnn, cnn_run, progress=False), "txt"),
    }


SELF = ("tracincp_all", "tracincp_last", "turnover", "ifunc", "tracin_we")


def _compute(setup, sharded: bool = False, wrap=None) -> dict:
    out = {}
    for name, (make, kind) in _estimators(setup).items():
        train, test = setup[f"{kind}_train"], setup[f"{kind}_test"]
        est = wrap(make()) if wrap is not None else Sharded(make()) if sharded else make()
        est.fit(train)
        res = {"scores": est.scores(test).double()}
        if name in SELF:
            res["self"] = est.self_influence().double()
        top = est.top_k(test, 3)
        res["proponents"], res["opponents"] = top.proponents, top.opponents
        out[name] = res
    return out


def _worker(rank: int, world: int, port: int, setup: dict, path: str):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        got = _compute(setup, sharded=True)
        torch.save(got, f"{path}.{rank}")
        dist.barrier()
    finally:
        dist.destroy_process_group()



@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    train = load("fashion_mnist", n=120, seed=0, stratify=True)
    dup = dataclasses.replace(train.subset([5]), ids=np.array([900_001]))  # ties with example 5
    train = concat_datasets([train, dup])
    test = load("fashion_mnist", "test", n=5, seed=0)
    m = mlp(num_classes=10, hidden=[24], turnover={"p": 0.5, "seed": 3, "layers": 1}, seed=0)
    run = tmp_path_factory.mktemp("dist") / "run"
    Trainer(m, TrainConfig(epochs=2, lr=0.05, batch_size=16, seed=0, progress=False, device="cpu"), run).fit(train)
    txt_train, txt_test = load("snli2", n=33, seed=2), load("snli2", split="test", n=3, seed=0)
    vocab = build_vocab(txt_train, max_length=32)
    cnn = word_cnn(vocab=vocab, num_classes=2, max_length=32, emb_dim=8, filters=6, seed=0)
    cnn_run = tmp_path_factory.mktemp("dist") / "cnn"
    Trainer(cnn, TrainConfig(epochs=2, batch_size=8, lr=0.05, momentum=0.9, device="cpu", progress=False, seed=3),
            cnn_run).fit(txt_train)
    return dict(mlp=m, run=run, cnn=cnn, cnn_run=cnn_run, img_train=train, img_test=test,
                txt_train=txt_train, txt_test=txt_test)


def test_blocks_cover_every_example_once():
    for n in (0, 1, 5, 121):
        for world in (1, 2, 3, 8):
            parts = [block(n, r, world) for r in range(world)]
            assert torch.equal(torch.cat(parts), torch.arange(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_outside_a_process_group_sharded_is_the_estimator(setup):
    est = TracInCP(setup["mlp"], setup["run"], params="last", progress=False)
    ref = est.fit(setup["img_train"]).scores(setup["img_test"])
    got = Sharded(TracInCP(setup["mlp"], setup["run"], params="last", progress=False)).fit(setup["img_train"])
    assert torch.equal(got.scores(setup["img_test"]), ref)


@pytest.fixture(scope="module")
def reference(setup):
    return _compute(setup, sharded=False)


def test_two_gloo_processes_equal_one_process(setup, reference, tmp_path):
    import torch.multiprocessing as mp

    path = str(tmp_path / "got")
    mp.spawn(_worker, args=(2, free_port(), setup, path), nprocs=2, join=True)
    got0, got1 = torch.load(f"{path}.0", weights_only=True), torch.load(f"{path}.1", weights_only=True)
    _assert_equal_results(setup, reference, got0, got1)


def test_shard_in_a_torchrun_kernel_equals_one_process(setup, reference, tmp_path):
    """The topology of ``torchrun ... repro run <notebook>`` (tests/torchrun_kernel.py): rank 1
    serves, a child of rank 0 (the notebook's kernel) joins as rank 0 and builds every estimator
    through ``shard``; its results equal one process's, and torchrun ends cleanly once the kernel
    exits."""
    import sys
    from pathlib import Path

    setup_path, out = tmp_path / "setup.pt", tmp_path / "got.pt"
    torch.save(setup, setup_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = _run_group([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                       "--master-port", str(free_port()), str(Path(__file__).with_name("torchrun_kernel.py")),
                       str(setup_path), str(out)], env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    assert got.pop("world") == 2
    _assert_equal_results(setup, reference, got, got)


def _run_group(cmd, timeout: float, **kwargs):
    """``subprocess.run`` in a new session; on timeout the whole process group (torchrun's workers,
    the notebook kernel) is killed, so a hang leaves no orphans behind."""
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(map(str, cmd))}\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_shard_outside_torchrun_is_the_estimator(setup):
    from repro.distributed import shard

    est = TracInCP(setup["mlp"], setup["run"], params="last", progress=False)
    assert shard(est) is est


def _assert_equal_results(setup, ref, got0, got1):
    for name, want in ref.items():
        for key, value in want.items():
            a, b = got0[name][key], got1[name][key]
            assert torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num()), \
                f"{name} {key}: ranks disagree"
            if key in ("proponents", "opponents"):
                # the same ranking: the sharded picks score what one process's picks score (ids may
                # differ only between values equal up to rounding)
                ref_s = want["scores"]
                ids = torch.as_tensor(setup[f"{_estimators(setup)[name][1]}_train"].ids)
                col = {int(t): c for c, t in enumerate(ids)}
                picked = torch.stack([ref_s[r, [col[int(t)] for t in a[r]]] for r in range(len(a))])
                wanted = torch.stack([ref_s[r, [col[int(t)] for t in value[r]]] for r in range(len(value))])
                scale = ref_s.nan_to_num().abs().max()
                assert (picked - wanted).abs().max() <= 1e-5 * scale, f"{name} {key}"
            else:
                scale = value.nan_to_num().abs().max().clamp_min(1e-30)
                assert torch.equal(a.isnan(), value.isnan()), f"{name} {key}: candidates differ"
                a, value = a.nan_to_num(), value.nan_to_num()
                assert (a - value).abs().max() <= 1e-5 * scale, f"{name} {key}: {(a - value).abs().max() / scale:.2e}"
    # the planted duplicate ties with its original in every score column
    s = ref["tracincp_last"]["scores"]
    ids = setup["img_train"].ids
    i, j = int(np.flatnonzero(ids == ids[5])[0]), int(np.flatnonzero(ids == 900_001)[0])
    assert torch.equal(s[:, i], s[:, j])


@pytest.mark.notebook
def test_notebook_under_torchrun_equals_one_process(tmp_path):
    """Issue 18 item 5, end to end with a real kernel: ``torchrun --nproc-per-node 2 --no-python repro
    run tracin_proponents`` runs the notebook once (rank 0's kernel joins the group, rank 1 serves
    its TracInCP sections) and writes the same mislabel-detection table as one process; the run
    records the torchrun command and ends cleanly (the serving rank is released at kernel exit)."""
    import json
    import sys
    from pathlib import Path

    repro_cmd = str(Path(sys.executable).with_name("repro"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REPRO_PROGRESS": "off"}
    single, multi = tmp_path / "single", tmp_path / "multi"
    run = ["run", "tracin_proponents", "--profile", "smoke", "--set", "seeds=[0]"]  # one seed: half the time
    cmds = {single: [repro_cmd, *run, "--results", str(single)],
            multi: [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                    str(free_port()), "--no-python", repro_cmd, *run, "--results", str(multi)]}
    for root, cmd in cmds.items():
        proc = _run_group(cmd, env=env, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = {root: root / "tracin_proponents" / "smoke" for root in cmds}
    a, b = ((out[r] / "mislabel_detection.csv").read_text() for r in (single, multi))
    assert a == b, "the torchrun'd notebook's detection table differs from one process's"
    executed = (out[multi] / "tracin_proponents.ipynb").read_text()
    assert "influence sections run on 2 processes" in executed
    assert "influence sections run on" not in (out[single] / "tracin_proponents.ipynb").read_text()
    command = json.loads((out[multi] / "metrics.json").read_text())["command"]
    assert "torchrun --nproc-per-node 2 --no-python repro run tracin_proponents --profile smoke" in command
