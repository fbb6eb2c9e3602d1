"""Streaming moments, moments files, and the CSI verbs end to end (with a tiny fake extractor)."""

import json
import struct

import numpy as np
import pytest
import torch

from atomsift.cli import main
from atomsift.csi.moments import Accumulator, Moments, compute_moments, load_moments, save_moments, store_batches
from atomsift.csi.frechet import frechet_distance
from atomsift.errors import InputError


class FakeExtractor:
    """Per-atom features: a fixed random embedding of Z plus the distance to the structure's centroid."""

    name = "fake-8"
    dim = 8

    def __init__(self, seed=0, sha="f" * 64):
        g = np.random.RandomState(seed)
        self.emb = torch.as_tensor(g.normal(size=(119, self.dim)))
        self.v = torch.as_tensor(g.normal(size=self.dim))
        self.sha256 = sha
        self.seen_datasets = set()

    def __call__(self, batch):
        self.seen_datasets.update(batch.dataset)
        pos = batch.pos.double()
        cnt = torch.bincount(batch.batch, minlength=batch.num_graphs).double()
        cen = torch.zeros(batch.num_graphs, 3, dtype=torch.float64).index_add_(0, batch.batch, pos) / cnt[:, None]
        r = (pos - cen[batch.batch]).norm(dim=1)
        return (self.emb[batch.numbers] + r[:, None] * self.v).float()


def _features_by_structure(store, idx, ex):
    """Independent reference: the extractor on each structure alone."""
    from atomsift.data.batch import collate

    return [ex(collate([store.record(int(g))], dataset=store.dataset)).double().numpy() for g in idx]


# ----------------------------------------------------------------------------------- accumulation


def test_streaming_shards_equal_numpy_on_concatenation():
    rng = np.random.default_rng(0)
    # offset mean and mixed scales: a naive sum-of-squares would lose digits here
    x = rng.normal(size=(5000, 24)) * rng.uniform(0.1, 10, size=24) + 1e3
    cuts = [0, 1, 2, 17, 900, 901, 3000, 5000]
    shards = [Moments.of(x[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    merged = Moments.empty(24)
    for s in shards:
        merged = merged.merge(s)
    ref_mean, ref_cov = x.mean(axis=0), np.cov(x, rowvar=False)
    assert merged.n == 5000
    np.testing.assert_allclose(merged.mean, ref_mean, rtol=1e-10, atol=0)
    np.testing.assert_allclose(merged.cov, ref_cov, rtol=1e-10, atol=1e-10 * np.abs(ref_cov).max())
    # merge order does not matter (to round-off)
    rev = Moments.empty(24)
    for s in reversed(shards):
        rev = rev.merge(s)
    np.testing.assert_allclose(rev.cov, merged.cov, rtol=1e-10, atol=1e-10 * np.abs(ref_cov).max())


def test_accumulator_and_files_merge_across_jobs(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3001, 6))
    paths = []
    for k, part in enumerate(np.array_split(x, 3)):  # three "jobs", each writing a file
        acc = Accumulator(block_rows=64)
        for blk in np.array_split(part, 37):
            acc.add(blk)
        paths.append(save_moments(tmp_path / f"s{k}.npz", acc.result(), {"dataset": "x"}))
    m = Moments.empty(6)
    for p in paths:
        m = m.merge(load_moments(p)[0])
    np.testing.assert_allclose(m.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(m.mean, x.mean(axis=0), rtol=1e-10, atol=1e-14)
    assert json.loads((tmp_path / "s0.npz.json").read_text())["dim"] == 6


# ----------------------------------------------------------------------------------- moments files


def _write(path, **arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def test_bad_moments_files_name_file_and_key(tmp_path):
    good = dict(n=np.int64(10), mean=np.zeros(3), cov=np.eye(3))
    p = _write(tmp_path / "nokey.npz", n=np.int64(10), mean=np.zeros(3))
    with pytest.raises(InputError) as e:
        load_moments(p)
    assert str(e.value).startswith(str(p)) and "'cov'" in str(e.value) and "\n" not in str(e.value)
    p = _write(tmp_path / "dims.npz", **{**good, "cov": np.eye(4)})
    with pytest.raises(InputError, match=r"dims\.npz: field 'cov': expected shape \(3, 3\)"):
        load_moments(p)
    p = _write(tmp_path / "nan.npz", **{**good, "mean": np.array([0.0, np.nan, 0.0])})
    with pytest.raises(InputError, match="field 'mean': non-finite"):
        load_moments(p)
    p = tmp_path / "junk.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz: not a readable"):
        load_moments(p)


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    a = _write(tmp_path / "a.npz", n=np.int64(10), mean=np.zeros(3), cov=np.eye(3))
    b = _write(tmp_path / "b.npz", n=np.int64(10), mean=np.zeros(4), cov=np.eye(4))
    assert main(["csi", str(a), str(b), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "b.npz" in err and "field 'mean'" in err
    assert main(["csi", str(a), str(tmp_path / "missing.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.npz" in err


def test_csi_cli_matches_library(tmp_path, capsys):
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(200, 5)), rng.normal(size=(300, 5)) * 2 + 1
    save_moments(tmp_path / "x.npz", Moments.of(x), {"extractor_sha256": "a" * 64})
    save_moments(tmp_path / "y.npz", Moments.of(y), {"extractor_sha256": "a" * 64})
    assert main(["csi", str(tmp_path / "x.npz"), str(tmp_path / "y.npz"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["csi"]
    ref = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert got == pytest.approx(ref, rel=1e-12)
    save_moments(tmp_path / "z.npz", Moments.of(y), {"extractor_sha256": "b" * 64, "extractor": "other"})
    assert main(["csi", str(tmp_path / "x.npz"), str(tmp_path / "z.npz")]) == 2
    assert "extractor_sha256" in capsys.readouterr().err


# ----------------------------------------------------------------------------------- extraction


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from atomsift.data.store import StoreWriter

    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("csi") / "mols"
    with StoreWriter(out, dataset="qm9", reader="test") as w:
        for i in range(60):
            n = 2 + i % 9
            z = rng.choice([1, 6, 7, 8], size=n)
            w.add(z, rng.normal(size=(n, 3)) * 1.5, cls="".join(sorted(map(str, z)))[:3])
        w.set_split("train", np.arange(0, 48))
        w.set_split("val", np.arange(48, 60))
    return out


@pytest.mark.parametrize("agg", ["flat", "mean", "sum", "max"])
def test_compute_moments_equals_direct_numpy(small_store, agg):
    from atomsift.data.store import Store

    s = Store(small_store)
    ex = FakeExtractor()
    idx = np.array([3, 1, 4, 15, 9, 26, 5, 35, 8, 9, 7])  # a repeat, as balanced samples have
    m = compute_moments(s, ex, idx, agg=agg, batch_size=4)
    per = _features_by_structure(s, idx, ex)
    pool = {"flat": None, "mean": np.mean, "sum": np.sum, "max": np.max}[agg]
    x = np.concatenate(per) if pool is None else np.stack([pool(f, axis=0) for f in per])
    assert m.n == x.shape[0]
    np.testing.assert_allclose(m.mean, x.mean(axis=0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.cov, np.cov(x, rowvar=False), rtol=1e-5, atol=1e-5)
    assert ex.seen_datasets == {"qm9"}


@pytest.fixture
def fake_extractor(monkeypatch):
    import atomsift.models.checkpoint as checkpoint

    made = {}

    def load(spec):
        if spec.startswith("bad"):
            raise InputError("unknown extractor", field="extractor")
        made[spec] = FakeExtractor(seed=0, sha=("e" if spec == "other" else "f") * 64)
        return made[spec]

    monkeypatch.setattr(checkpoint, "load_extractor", load)
    return made


def test_moments_select_table_figure_end_to_end(small_store, tmp_path, fake_extractor, capsys):
    from ase.io import write

    from atomsift.csi.select import read_table

    ups = {}
    for name, sampling, n in (("a", "random", 20), ("b", "balanced", 30)):
        out = tmp_path / f"{name}.npz"
        rc = main(["moments", "--store", str(small_store), "--extractor", "fake", "--sampling", sampling,
                   "--n", str(n), "--seed", "0", "--agg", "flat", "--out", str(out), "--json"])
        assert rc == 0
        meta = json.loads(capsys.readouterr().out)
        assert meta["sampling"] == sampling and meta["extractor_sha256"] == "f" * 64 and meta["split"] == "train"
        assert meta["n_structures"] == n and meta["dataset"] == "qm9"
        ups[name] = out
    m, side = load_moments(ups["a"])
    assert side["n"] == m.n and side["aggregation"] == "flat"

    # a user's downstream file: some molecules of the store written as extxyz
    from atomsift.data.store import Store

    st = Store(small_store)
    frames = [st.record(i).to_atoms() for i in range(48, 60)]
    data = tmp_path / "mine.xyz"
    write(data, frames)
    rc = main(["select", str(data), "--upstream", f"A={ups['a']}", "--upstream", f"B={ups['b']}", "--json",
               "--save-moments", str(tmp_path / "mine.npz")])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["downstream"] == "mine" and [r["upstream"] for r in res["ranking"]] in (["A", "B"], ["B", "A"])
    # ranked by the corrected value; A and B are samples of one store: their intervals overlap, a tie
    assert res["ranking"][0]["csi_corrected"] <= res["ranking"][1]["csi_corrected"]
    for r in res["ranking"]:
        lo, hi = r["interval"]
        assert 0 <= lo <= r["csi_corrected"] <= hi
        assert r["blocks"][0] >= 2 and r["blocks"][1] == min(res["n_structures"], 20)  # one structure per block
    assert res["tie"] and res["lowest"] == [r["upstream"] for r in res["ranking"]]
    assert res["recommendation"].startswith("tie between ") and "do" in res["recommendation"]
    # the ranking equals CSI computed from the saved downstream moments
    d = load_moments(tmp_path / "mine.npz")[0]
    for r in res["ranking"]:
        u = load_moments(ups[r["upstream"].lower()])[0]
        assert r["csi"] == pytest.approx(frechet_distance(u.mean, u.cov, d.mean, d.cov), rel=1e-12)
    # min-atoms default 4: only structures with >= 4 atoms were used
    assert res["n_structures"] == sum(len(a) >= 4 for a in frames)
    # --best: the recommended name alone on stdout (for UP=$(...)), the ranking on stderr
    assert main(["select", str(data), "--upstream", f"A={ups['a']}", "--upstream", f"B={ups['b']}", "--best"]) == 0
    out, err = capsys.readouterr()
    assert out == res["ranking"][0]["upstream"] + "\n" and res["recommendation"] in err
    assert main(["select", str(data), "--upstream", f"A={ups['a']}", "--best", "--json"]) == 2
    assert "give --json or --best, not both" in capsys.readouterr().err

    # a wrong extractor is refused with one line naming the moments file
    assert main(["select", str(data), "--upstream", f"A={ups['a']}", "--extractor", "other"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a.npz" in err and "sha256" in err

    # --upstream-dir names candidates by their sidecar's dataset: two 'qm9' files collide
    assert main(["select", str(small_store), "--upstream-dir", str(tmp_path)]) == 2
    assert "named 'qm9'" in capsys.readouterr().err

    # the CSI table, then figures from it
    table = tmp_path / "csi.csv"
    rc = main(["csi-table", "--upstream", f"ani1x={ups['a']}", "--upstream", f"oc20={ups['b']}",
               "--downstream", f"qm9={tmp_path / 'mine.npz'}", "--out", str(table)])
    assert rc == 0
    rows = read_table(table)
    assert [(r["upstream"], r["downstream"], r["extractor"], r["agg"]) for r in rows] == [
        ("ani1x", "qm9", "fake-8", "flat"), ("oc20", "qm9", "fake-8", "flat")]
    assert rows[0]["csi"] == pytest.approx({r["upstream"]: r["csi"] for r in res["ranking"]}["A"], rel=1e-12)
    png = tmp_path / "fig.png"
    capsys.readouterr()
    assert main(["csi-figure", "--table", str(table), "--kind", "bars", "--out", str(png), "--title", "t"]) == 0
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", head[16:24])
    assert w > 300 and h > 200
    assert main(["csi-figure", "--table", str(table), "--out", str(png), "--sampling", "nope"]) == 2
    assert "sampling" in capsys.readouterr().err


def test_store_batches_tag_dataset(small_store):
    from atomsift.data.store import Store

    bs = list(store_batches(Store(small_store), np.arange(10), batch_size=4))
    assert [b.num_graphs for b in bs] == [4, 4, 2] and all(b.dataset == ["qm9"] * b.num_graphs for b in bs)


def test_end_to_end_with_random_tiny_extractor(tmp_path, capsys):
    """The real extractor (untrained tiny GemNet-OC) on a few QM9 molecules, through the CLI."""
    from atomsift.data.readers import qm9

    store = qm9.convert(None, tmp_path / "q", limit=40)
    outs = []
    for name, sampling, seed in (("up", "balanced", 0), ("down", "random", 1)):
        out = tmp_path / f"{name}.npz"
        assert main(["moments", "--store", str(store), "--extractor", "random-tiny-0", "--sampling", sampling,
                     "--n", "12", "--seed", str(seed), "--min-atoms", "4", "--batch-size", "6", "--out", str(out)]) == 0
        outs.append(out)
    m, meta = load_moments(outs[0])
    assert meta["extractor"] == "random-tiny-0" and len(meta["extractor_sha256"]) == 64
    assert m.dim == meta["dim"] and m.n > 12  # flat: one sample per atom
    capsys.readouterr()
    assert main(["csi", str(outs[0]), str(outs[1]), "--json"]) == 0
    value = json.loads(capsys.readouterr().out)["csi"]
    d = load_moments(outs[1])[0]
    assert value == pytest.approx(frechet_distance(m.mean, m.cov, d.mean, d.cov), rel=1e-12) and value > 0
    # select on the store recomputes the downstream with the sidecar's extractor
    assert main(["select", str(store), "--upstream", f"up={outs[0]}", "--n", "12", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["extractor"] == "random-tiny-0" and res["ranking"][0]["upstream"] == "up"


def test_sharded_moments_merge_to_the_whole(small_store, tmp_path, fake_extractor, capsys):
    common = ["--store", str(small_store), "--extractor", "fake", "--sampling", "balanced", "--n", "30", "--seed", "3"]
    assert main(["moments", *common, "--out", str(tmp_path / "all.npz")]) == 0
    parts = []
    for i in range(3):
        parts.append(str(tmp_path / f"p{i}.npz"))
        assert main(["moments", *common, "--shard", f"{i}/3", "--out", parts[-1]]) == 0
    assert main(["moments-merge", *parts, "--out", str(tmp_path / "merged.npz")]) == 0
    whole, merged = load_moments(tmp_path / "all.npz")[0], load_moments(tmp_path / "merged.npz")[0]
    assert merged.n == whole.n
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(merged.cov, whole.cov, rtol=1e-10, atol=1e-12)
    capsys.readouterr()
    assert main(["moments-merge", *parts[:2], "--out", str(tmp_path / "bad.npz")]) == 2
    assert "incomplete set of shards" in capsys.readouterr().err
    assert not (tmp_path / "bad.npz").exists()


def _fake_moments(path, dataset, extractor, sampling="balanced", agg="flat", shift=0.0):
    rng = np.random.default_rng(abs(hash(dataset)) % 2**32)
    x = rng.normal(size=(50, 3)) + shift
    m = Moments.of(x)
    save_moments(path, m, {"extractor": extractor, "extractor_sha256": None, "dataset": dataset,
                           "sampling": sampling, "aggregation": agg})


def test_default_candidates_pick_balanced_flat_upstreams_of_one_extractor(tmp_path):
    from atomsift.csi.select import default_candidates

    root = tmp_path / "results" / "moments"
    for ex in ("random-tiny-0", "ckpt.pt"):
        for ds in ("ani1x", "oc20"):
            (root / ex / ds).mkdir(parents=True)
            _fake_moments(root / ex / ds / "balanced-flat.npz", ds, ex)
            _fake_moments(root / ex / ds / "random-flat.npz", ds, ex, sampling="random")
        (root / ex / "rmd17").mkdir()
        _fake_moments(root / ex / "rmd17" / "random-flat.npz", "rmd17", ex, sampling="random")
    got = default_candidates(root, extractor="random-tiny-0")
    assert sorted((name, p.relative_to(root).as_posix()) for name, p in got) == [
        ("ani1x", "random-tiny-0/ani1x/balanced-flat.npz"), ("oc20", "random-tiny-0/oc20/balanced-flat.npz")]
    with pytest.raises(InputError, match=r"several extractors \(ckpt.pt, random-tiny-0\); pick one with --extractor"):
        default_candidates(root)
    with pytest.raises(InputError, match="default directory does not exist"):
        default_candidates(tmp_path / "nowhere")


def test_upstream_edge_dropout_as_the_paper(tmp_path):
    """--edge-dropout drops a2a edges even though the extractor is in eval mode (the paper's
    upstream extraction); seeded, so the same seed gives the same moments."""
    from atomsift.data.readers import qm9

    store = qm9.convert(None, tmp_path / "q", limit=30)
    outs = {}
    for tag, p, seed in (("none", "0", 0), ("a", "0.3", 0), ("b", "0.3", 0)):
        out = tmp_path / f"{tag}.npz"
        assert main(["moments", "--store", str(store), "--extractor", "random-tiny-0", "--sampling", "random",
                     "--n", "8", "--seed", str(seed), "--edge-dropout", p, "--batch-size", "4", "--out", str(out)]) == 0
        outs[tag] = load_moments(out)[0]
    assert np.array_equal(outs["a"].mean, outs["b"].mean)
    assert not np.allclose(outs["a"].mean, outs["none"].mean)
    assert outs["a"].n == outs["none"].n  # same structures and atoms, fewer edges


def test_csi_bars_show_the_corrected_value_and_its_interval(tmp_path):
    """With the estimator's columns the bar is the bias-corrected CSI and its whiskers the 95%
    interval (a lower bound below 0 is not drawn below the bar's base); without them, the mean
    of a pair's rows with min-max whiskers."""
    from atomsift.csi.figures import bar_values, csi_bars

    rows = [{"upstream": "ani1x", "downstream": "rmd17", "csi": "2.03", "csi_corrected": "2.0", "csi_low": "1.8", "csi_high": "2.3"},
            {"upstream": "oc22", "downstream": "rmd17", "csi": "0.05", "csi_corrected": "0.01", "csi_low": "-0.02", "csi_high": "0.04"}]
    bars, intervals = bar_values(rows, ["rmd17"], ["ani1x", "oc22"])
    assert intervals
    assert bars[("ani1x", "rmd17")] == pytest.approx((2.0, 0.2, 0.3))
    assert bars[("oc22", "rmd17")] == pytest.approx((0.01, 0.01, 0.03))
    plain = [{"upstream": "ani1x", "downstream": "rmd17", "csi": v} for v in ("1.0", "2.0", "4.5")]
    bars, intervals = bar_values(plain, ["rmd17"], ["ani1x"])
    assert not intervals and bars[("ani1x", "rmd17")] == pytest.approx((2.5, 1.5, 2.0))
    # a row without an interval (nan) falls back to the plug-in values for the whole figure
    rows[1]["csi_low"] = "nan"
    assert bar_values(rows, ["rmd17"], ["ani1x", "oc22"])[1] is False
    assert csi_bars(rows, tmp_path / "f.png").stat().st_size > 0
