"""Tests of the Turn-over Dropout layer (repro.models.turnover)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from repro.models.turnover import TurnOverDropout, turnover_hash, turnover_layers

REPO = Path(__file__).resolve().parents[1]

D = 512
ID_RANGES = {
    "near0": 0,
    "near1e6": 10**6,
    "near2^31": 2**31 - 100,
    "near2^40": 2**40 - 100,
}


def _sigma(keep, n):
    return math.sqrt(keep * (1 - keep) / n)


def test_deterministic_across_calls_and_instances():
    ids = torch.tensor([0, 1, 2, 17, 10**6, 2**31 + 5, 2**40 - 1])
    a = TurnOverDropout(D, seed=3).mask(ids)
    b = TurnOverDropout(D, seed=3).mask(ids)
    c = TurnOverDropout(D, seed=3).mask(ids.flip(0)).flip(0)  # order-independent
    assert a.dtype == torch.bool and a.shape == (len(ids), D)
    assert torch.equal(a, b) and torch.equal(a, c)
    # a row depends only on its own id (batch composition is irrelevant)
    single = torch.stack([TurnOverDropout(D, seed=3).mask(ids[k:k + 1])[0] for k in range(len(ids))])
    assert torch.equal(a, single)


def test_deterministic_across_processes():
    ids = [0, 1, 5, 123, 10**6 + 7, 2**31 + 1, 2**40 - 3]
    code = (
        "import json, sys, torch\n"
        "from repro.models.turnover import TurnOverDropout\n"
        "ids = json.loads(sys.argv[1])\n"
        "m = TurnOverDropout(257, p=0.3, seed=11).mask(torch.tensor(ids))\n"
        "print(json.dumps(m.int().tolist()))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(ids)],
        capture_output=True, text=True, env=env, cwd=str(REPO), check=True, timeout=120,
    )
    other = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]), dtype=torch.bool)
    here = TurnOverDropout(257, p=0.3, seed=11).mask(torch.tensor(ids))
    assert torch.equal(here, other)


def test_hash_regression_values():
    # pins the hash: any change of the mask function would silently change influence results
    h = turnover_hash(torch.tensor([0, 1, 2**40]), 3, seed=0)
    m = TurnOverDropout(64, seed=0).mask(torch.tensor([0, 1, 2**40]))
    assert h.dtype == torch.int64 and h.shape == (3, 3)
    # an independent pure-Python (unsigned ints) implementation of the same hash
    assert torch.equal(h, _reference_hash([0, 1, 2**40], 3, 0))
    assert torch.equal(m, _reference_mask([0, 1, 2**40], 64, 0, 0.5))
    # literal pins (also guard the reference implementation itself)
    assert turnover_hash(torch.tensor([0, 1, 2**40]), 2, seed=0).tolist() == [
        [-228402956700285125, 3828001797146124819],
        [-7578029125033738790, 8092390362524029813],
        [6430566157199406358, -3591890214733532887],
    ]
    bits = TurnOverDropout(32, seed=0).mask(torch.tensor([0, 1, 2**40])).tolist()
    assert [int("".join("1" if b else "0" for b in r), 2) for r in bits] == [
        1084316552, 1943709931, 2440504044]


def _ref_mix(z):
    M = (1 << 64) - 1
    z &= M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def _reference_words(ids, d, seed):
    """Independent pure-Python (unsigned, arbitrary precision) implementation."""
    M = (1 << 64) - 1
    seed_key = _ref_mix(seed)
    id_seed = _ref_mix(seed ^ 0x5BD1E9955BD1E995)
    unit = [_ref_mix(((j * 0x9E3779B97F4A7C15 + seed_key) & M) ^ 0xD1B54A32D192ED03)
            for j in range(1, d + 1)]
    rows = []
    for i in ids:
        k = _ref_mix(((i * 0x9E3779B97F4A7C15 + id_seed) & M) ^ 0x8CB92BA72F3D8DD7)
        rows.append([_ref_mix(k ^ u) for u in unit])
    return rows


def _reference_hash(ids, d, seed):
    rows = _reference_words(ids, d, seed)
    return torch.tensor([[w - (1 << 64) if w >= 1 << 63 else w for w in r] for r in rows],
                        dtype=torch.int64)


def _reference_mask(ids, d, seed, p):
    thr = int(round((1 - p) * (1 << 53)))
    return torch.tensor([[(w >> 11) < thr for w in r] for r in _reference_words(ids, d, seed)])


def test_int64_ops_match_unsigned_reference_on_many_ids():
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.arange(20), torch.randint(0, 2**62, (20,), generator=g),
                     torch.tensor([2**63 - 1, -1, -(2**63)])])
    layer = TurnOverDropout(40, p=0.37, seed=2**33 + 9)
    assert torch.equal(layer.mask(ids), _reference_mask(ids.tolist(), 40, 2**33 + 9, 0.37))


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_kept_fraction_per_mask_and_overall(p):
    keep = 1 - p
    layer = TurnOverDropout(D, p=p, seed=1)
    m = layer.mask(torch.arange(2000)).float()
    per = m.mean(1)
    assert ((per - keep).abs() < 5 * _sigma(keep, D)).all()
    assert abs(m.mean().item() - keep) < 5 * _sigma(keep, m.numel())
    # each unit is kept for ~keep of the instances too (no dead/always-on units)
    per_unit = m.mean(0)
    assert ((per_unit - keep).abs() < 5 * _sigma(keep, m.shape[0])).all()


@pytest.mark.parametrize("name", list(ID_RANGES))
def test_balanced_over_id_range(name):
    keep = 0.5
    start = ID_RANGES[name]
    layer = TurnOverDropout(D, seed=7)
    ids = torch.arange(start, start + 1000)
    m = layer.mask(ids)
    frac = m.float().mean(1)
    assert abs(frac.mean().item() - keep) < 5 * _sigma(keep, m.numel())
    assert ((frac - keep).abs() < 5 * _sigma(keep, D)).all()
    assert not m.all(1).any() and not (~m).all(1).any()
    # consecutive ids do not share (or nearly share) masks
    assert len({tuple(r) for r in m.tolist()}) == len(ids)
    agree = (m[1:] == m[:-1]).float().mean(1)
    assert (agree < 0.5 + 5 * _sigma(0.5, D)).all()


def test_random_ids_over_huge_range_balanced():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 2**40, (3000,), generator=g)
    m = TurnOverDropout(128, p=0.3, seed=0).mask(ids).float()
    assert abs(m.mean().item() - 0.7) < 5 * _sigma(0.7, m.numel())


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_pairwise_overlap_is_keep_squared(p):
    keep = 1 - p
    g = torch.Generator().manual_seed(2)
    a = torch.randint(0, 2**40, (1500,), generator=g)
    b = torch.randint(0, 2**40, (1500,), generator=g)
    layer = TurnOverDropout(D, p=p, seed=5)
    both = (layer.mask(a) & layer.mask(b)).float()
    assert abs(both.mean().item() - keep**2) < 5 * _sigma(keep**2, both.numel())
    # per-pair overlap is never close to a copy of the mask
    assert (both.mean(1) < keep**2 + 6 * _sigma(keep**2, D)).all()


def test_different_seeds_give_different_masks():
    ids = torch.arange(500)
    m1 = TurnOverDropout(D, seed=0).mask(ids)
    m2 = TurnOverDropout(D, seed=1).mask(ids)
    agree = (m1 == m2).float().mean().item()
    assert abs(agree - 0.5) < 5 * _sigma(0.5, m1.numel())
    # the masks of a layer with d units are the prefix of one with more units (unit-wise hash)
    assert torch.equal(TurnOverDropout(100, seed=0).mask(ids), m1[:, :100])


def test_flip_is_exact_complement():
    layer = TurnOverDropout(64, seed=4)
    ids = torch.tensor([3, 99, 2**40 + 1])
    x = torch.ones(3, 64)
    own = layer(x, ids) != 0
    flipped = layer(x, ids, flip=True) != 0
    assert torch.equal(own, layer.mask(ids))
    assert torch.equal(flipped, ~layer.mask(ids))
    assert not (own & flipped).any() and (own | flipped).all()


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_identity_without_ids(mode):
    layer = TurnOverDropout(32, seed=0)
    getattr(layer, mode)()
    x = torch.randn(4, 32)
    assert layer(x) is x or torch.equal(layer(x), x)
    x3 = torch.randn(2, 5, 32)
    assert torch.equal(layer(x3), x3)
    assert torch.equal(layer(x3, None), x3)
    with pytest.raises(ValueError):
        layer(x, flip=True)


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_scaling(p):
    keep = 1 - p
    layer = TurnOverDropout(48, p=p, seed=9)
    ids = torch.tensor([0, 7, 2**35])
    x = torch.randn(3, 48, dtype=torch.float64)
    m = layer.mask(ids).to(x.dtype)
    torch.testing.assert_close(layer(x, ids), x * m / keep, rtol=1e-12, atol=0)
    torch.testing.assert_close(layer(x, ids, flip=False), x * m / keep, rtol=1e-12, atol=0)
    torch.testing.assert_close(layer(x, ids, flip=True), x * (1 - m) / (1 - keep), rtol=1e-12, atol=0)
    # python list of ids is accepted
    torch.testing.assert_close(layer(x, ids.tolist()), x * m / keep, rtol=1e-12, atol=0)


def test_per_row_flip_tensor_mixes():
    p = 0.3
    keep = 1 - p
    layer = TurnOverDropout(40, p=p, seed=2)
    ids = torch.tensor([1, 2, 3, 4])
    x = torch.randn(4, 40, dtype=torch.float64)
    flip = torch.tensor([True, False, False, True])
    out = layer(x, ids, flip=flip)
    own = layer(x, ids)
    fl = layer(x, ids, flip=True)
    assert torch.equal(out[flip], fl[flip])
    assert torch.equal(out[~flip], own[~flip])
    # a scalar tensor flip broadcasts
    assert torch.equal(layer(x, ids, flip=torch.tensor(True)), fl)
    with pytest.raises(ValueError):
        layer(x, ids, flip=torch.tensor([True, False]))


def test_gradient_only_through_kept_units():
    layer = TurnOverDropout(30, seed=6)
    ids = torch.tensor([10, 2**40 + 3])
    m = layer.mask(ids)
    for flip, sel in [(None, m), (True, ~m)]:
        x = torch.randn(2, 30, requires_grad=True)
        layer(x, ids, flip=flip).sum().backward()
        assert (x.grad[~sel] == 0).all()
        assert (x.grad[sel] != 0).all()

    # inside a model: the weights of a unit dropped for instance i get no gradient from i
    torch.manual_seed(0)
    lin = nn.Linear(8, 30)
    x = torch.randn(1, 8)
    layer(lin(x), ids[:1]).pow(2).sum().backward()
    dropped = ~m[0]
    assert (lin.weight.grad[dropped] == 0).all() and (lin.bias.grad[dropped] == 0).all()
    assert (lin.bias.grad[~dropped] != 0).all()


def test_three_dim_input():
    layer = TurnOverDropout(16, p=0.3, seed=1)
    ids = torch.tensor([5, 6])
    x = torch.randn(2, 7, 16)
    m = layer.mask(ids).float()
    torch.testing.assert_close(layer(x, ids), x * m[:, None, :] / 0.7)
    torch.testing.assert_close(layer(x, ids, flip=True), x * (1 - m[:, None, :]) / 0.3)
    flip = torch.tensor([False, True])
    out = layer(x, ids, flip=flip)
    torch.testing.assert_close(out[0], x[0] * m[0] / 0.7)
    torch.testing.assert_close(out[1], x[1] * (1 - m[1]) / 0.3)
    with pytest.raises(ValueError):
        layer(torch.randn(2, 7, 15), ids)
    with pytest.raises(ValueError):
        layer(x, torch.tensor([1, 2, 3]))


def test_dtypes_and_mask_device():
    layer = TurnOverDropout(8, seed=0)
    ids = torch.tensor([1, 2])
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        x = torch.ones(2, 8, dtype=dt)
        y = layer(x, ids)
        assert y.dtype == dt
        assert torch.equal(y != 0, layer.mask(ids))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(3)
    ids = torch.cat([torch.arange(100), torch.randint(0, 2**62, (400,), generator=g)])
    layer = TurnOverDropout(300, p=0.3, seed=12345)
    assert torch.equal(layer.mask(ids.cuda()).cpu(), layer.mask(ids))
    x = torch.randn(len(ids), 300)
    assert torch.equal(layer(x.cuda(), ids.cuda(), flip=True).cpu(), layer(x, ids, flip=True))


def test_constructor_repr_and_helpers():
    layer = TurnOverDropout(64, p=0.25, seed=42)
    assert layer.keep == 0.75
    r = repr(layer)
    assert "d=64" in r and "p=0.25" in r and "seed=42" in r
    assert list(layer.parameters()) == [] and layer.state_dict() == {}
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            TurnOverDropout(8, p=bad)
    model = nn.Sequential(nn.Linear(4, 8), TurnOverDropout(8, seed=1), nn.ReLU(),
                          nn.Sequential(nn.Linear(8, 8), TurnOverDropout(8, seed=2)))
    layers = turnover_layers(model)
    assert [l.seed for l in layers] == [1, 2]
    assert turnover_layers(nn.Linear(2, 2)) == []
