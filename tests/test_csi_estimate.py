"""CSI with error bars: block moments, the jackknife estimator against known Fréchet distances, ties."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from atomsift.cli import main
from atomsift.csi.estimate import CSIEstimate, estimate, lowest
from atomsift.csi.frechet import frechet_distance
from atomsift.csi.moments import Accumulator, Moments, assign_blocks, load_moments, save_moments
from atomsift.errors import InputError


def _population(d: int, rng, shift: float = 0.0, scale: float = 1.0):
    """Per-atom features x = mu + A z_structure + B e_atom: atoms of one structure are correlated,
    as the atoms of one molecule are; the per-atom distribution has mean mu and covariance
    A A^T + B B^T (the Fréchet distance between two such populations is known exactly)."""
    a = rng.normal(size=(d, max(d // 2, 1))) * 0.6
    b = np.diag(np.linspace(1.0, 0.3, d)) * scale
    mu = rng.normal(size=d) * shift
    return mu, a, b


def _cov(pop):
    mu, a, b = pop
    return a @ a.T + b @ b.T


def _sample(pop, n_struct: int, k: int, rng) -> Moments:
    """Block moments of n_struct structures of 3-8 atoms, dealt into k blocks as atomsift does."""
    mu, a, b = pop
    d = mu.size
    ids = assign_blocks(np.arange(n_struct), k, int(rng.integers(1 << 30)))
    acc = Accumulator(block_rows=64, blocks=k)
    for s in range(n_struct):
        m = int(rng.integers(3, 9))
        x = mu + a @ rng.normal(size=a.shape[1]) + rng.normal(size=(m, d)) @ b.T
        acc.add(x, np.full(m, ids[s]))
    return acc.result()


# ------------------------------------------------------------------------------------------ blocks


def test_block_moments_are_exact_sufficient_statistics():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)) * [1, 2, 3, 4, 5] + 7.0
    ids = rng.integers(0, 6, size=300)
    acc = Accumulator(block_rows=37, blocks=6)  # buffers that straddle blocks
    for s in range(0, 300, 23):
        acc.add(x[s:s + 23], ids[s:s + 23])
    m = acc.result()
    np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.cov, np.cov(x, rowvar=False), rtol=1e-10)
    for k in range(6):
        rest = x[ids != k]
        loo = m.blocks.leave_one_out(k)
        assert loo.n == rest.shape[0]
        np.testing.assert_allclose(loo.cov, np.cov(rest, rowvar=False), rtol=1e-10)
    # a bootstrap-style multiset: block 0 twice, block 3 left out
    c = np.array([2, 1, 1, 0, 1, 1.0])
    rows = np.concatenate([x[ids == k] for k in range(6) for _ in range(int(c[k]))])
    mm = m.blocks.merged(c)
    np.testing.assert_allclose(mm.cov, np.cov(rows, rowvar=False), rtol=1e-10)
    # shards of one sample merge block by block into the moments of the whole sample
    a, b = Accumulator(blocks=6), Accumulator(blocks=6)
    a.add(x[:140], ids[:140])
    b.add(x[140:], ids[140:])
    whole = a.result().merge(b.result())
    np.testing.assert_allclose(whole.blocks.m2, m.blocks.m2, rtol=1e-10, atol=1e-9)
    np.testing.assert_array_equal(whole.blocks.n, np.bincount(ids, minlength=6))


def test_assign_blocks_deals_structures_not_rows():
    idx = np.array([5, 9, 5, 2, 7, 9, 11, 3, 5])  # repeats, as class-balanced samples have
    b = assign_blocks(idx, 3, seed=0)
    np.testing.assert_array_equal(b, assign_blocks(idx, 3, seed=0))  # seeded
    for s in np.unique(idx):
        assert len(set(b[idx == s])) == 1  # a structure drawn twice stays in one block
    uniq_blocks = [b[np.flatnonzero(idx == s)[0]] for s in np.unique(idx)]
    assert sorted(np.bincount(uniq_blocks, minlength=3)) == [2, 2, 2]  # 6 distinct structures, 2 per block
    assert not np.array_equal(assign_blocks(np.arange(40), 4, 0), assign_blocks(np.arange(40), 4, 1))


def test_moments_file_round_trips_blocks_and_refuses_inconsistent_ones(tmp_path):
    rng = np.random.default_rng(1)
    m = _sample(_population(4, rng), 30, 5, rng)
    path = save_moments(tmp_path / "m.npz", m, {"dataset": "x"})
    back, side = load_moments(path)
    assert side["blocks"] == 5 and back.blocks.k == 5
    np.testing.assert_allclose(back.blocks.m2, m.blocks.m2)
    # a block that does not add up to the file's total is refused, naming the field
    with np.load(path) as z:
        data = {k: z[k] for k in z.files}
    data["block_m2"] = data["block_m2"].copy()
    data["block_m2"][2] *= 3.0
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(InputError, match=r"bad\.npz: field 'block_m2': the blocks do not merge"):
        load_moments(tmp_path / "bad.npz")
    del data["block_mean"]
    np.savez(tmp_path / "bad2.npz", **data)
    with pytest.raises(InputError, match=r"field 'block_mean': missing key"):
        load_moments(tmp_path / "bad2.npz")


# --------------------------------------------------------------------------------------- estimator


@pytest.mark.parametrize("n_up, n_down, k, eps", [(120, 120, 20, 0.05), (160, 40, 10, 0.3)])
def test_estimator_recovers_a_known_frechet_distance(n_up, n_down, k, eps):
    """Close populations, where the plug-in value is mostly bias: over 60 seeded repetitions the
    plug-in mean is far above the true distance, the corrected mean is within 3 standard errors
    of it, and the 95% intervals cover it in >= 90% of repetitions (measured 97-99% in
    bench/csi_error.py; 90% leaves room for 60 draws)."""
    rng = np.random.default_rng(2)
    d = 6
    pu = _population(d, rng, shift=0.3)
    mu, a, b = pu
    pd = (mu + eps * rng.normal(size=d), a + eps * rng.normal(size=a.shape), b * (1 + eps))
    truth = frechet_distance(pu[0], _cov(pu), pd[0], _cov(pd))
    plain, corr, covered = [], [], 0
    for rep in range(60):
        r = np.random.default_rng(100 + rep)
        e = estimate(_sample(pu, n_up, k, r), _sample(pd, n_down, k, r))
        assert e.blocks == (k, k) and e.has_interval and e.low <= e.corrected <= e.high
        plain.append(e.value)
        corr.append(e.corrected)
        covered += e.low <= truth <= e.high
    plain, corr = np.array(plain), np.array(corr)
    se = corr.std(ddof=1) / math.sqrt(corr.size)
    assert plain.mean() - truth > 5 * se  # the bias the correction removes
    assert abs(corr.mean() - truth) < 3 * se
    assert covered >= 54


def test_estimate_without_blocks_is_the_plug_in_value():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(50, 3)), rng.normal(size=(40, 3)) + 1
    e = estimate(Moments.of(x), Moments.of(y))
    assert e.value == pytest.approx(frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)))
    assert not e.has_interval and math.isnan(e.corrected) and e.best == e.value
    assert e.as_dict()["estimator"] == "plug-in (no blocks)" and e.as_dict()["interval"] == [None, None]


# -------------------------------------------------------------------------------------------- ties


def test_lowest_is_a_tie_when_intervals_overlap():
    a = CSIEstimate(10.0, corrected=8.0, low=6.0, high=10.0)
    b = CSIEstimate(11.0, corrected=9.0, low=7.5, high=11.0)
    c = CSIEstimate(40.0, corrected=38.0, low=35.0, high=41.0)
    assert lowest({"b": b, "a": a, "c": c}) == ("a", ["a", "b"])
    assert lowest({"a": a, "c": c}) == ("a", ["a"])
    # without intervals nothing separates two values: a tie
    assert lowest({"a": CSIEstimate(1.0), "c": CSIEstimate(2.0)}) == ("a", ["a", "c"])


def _moments_file(tmp_path, name, pop, n, seed, k=20):
    m = _sample(pop, n, k, np.random.default_rng(seed))
    return save_moments(tmp_path / f"{name}.npz", m, {"dataset": name, "extractor": "x", "aggregation": "flat"})


def test_csi_cli_prints_value_corrected_and_interval(tmp_path, capsys):
    rng = np.random.default_rng(4)
    pop = _population(5, rng)
    a = _moments_file(tmp_path, "a", pop, 80, 1)
    b = _moments_file(tmp_path, "b", (pop[0] + 2.0, pop[1], pop[2]), 60, 2)
    assert main(["csi", str(a), str(b), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"csi", "csi_corrected", "interval", "level", "se", "blocks", "estimator"}
    assert out["estimator"] == "block-jackknife" and out["level"] == 0.95 and out["blocks"] == [20, 20]
    lo, hi = out["interval"]
    assert lo <= out["csi_corrected"] <= hi and out["csi_corrected"] < out["csi"]  # the bias is upward
    assert main(["csi", str(a), str(b)]) == 0
    assert "95% interval [" in capsys.readouterr().out


def test_select_recommends_a_tie_as_a_tie(tmp_path):
    """Two upstreams drawn from one population are tied for the lowest CSI; a third, far one is not."""
    from atomsift.csi.select import load_candidates, rank, recommendation

    rng = np.random.default_rng(5)
    pop = _population(5, rng)
    far = (pop[0] + 3.0, pop[1], pop[2] * 2)
    named = [("ani1x", _moments_file(tmp_path, "ani1x", pop, 100, 11)),
             ("transition1x", _moments_file(tmp_path, "transition1x", pop, 100, 12)),
             ("oc20", _moments_file(tmp_path, "oc20", far, 100, 13))]
    down = _sample((pop[0] + 0.3, pop[1], pop[2]), 60, 20, np.random.default_rng(14))
    ranking = rank(down, load_candidates(named))
    assert [r["upstream"] for r in ranking][2] == "oc20"
    assert [r["tied_with_lowest"] for r in ranking] == [True, True, False]
    text = recommendation("mine", ranking)
    assert text.startswith("tie between ") and "ani1x" in text and "transition1x" in text and "oc20" not in text
    # the far one alone: a clear choice
    alone = rank(down, load_candidates([named[0], named[2]]))
    assert recommendation("mine", alone).startswith("pretrain on ani1x: lowest CSI")
