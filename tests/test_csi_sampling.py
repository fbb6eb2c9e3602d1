"""The paper's class-balanced sampler, random sampling and class coverage."""

import json

import numpy as np
import pytest

from atomsift.cli import main
from atomsift.csi.sampling import balanced_sample, class_labels, coverage, random_sample, sample_store
from atomsift.errors import InputError


def _reference_balanced(labels, n, seed):
    """Independent numpy transcription of PAPER.md §2.4 (pandas' group.sample(n, replace, random_state=s)
    is RandomState(s).choice(len(group), n, replace) applied to the group's rows in order)."""
    labels = np.asarray(labels)
    keys = sorted(set(labels.tolist()))
    k = len(keys)
    t = n // k

    def per_class(avail, m):
        out = []
        for key in keys:
            rows = [i for i in avail if labels[i] == key]
            if rows:
                pick = np.random.RandomState(seed).choice(len(rows), m, replace=len(rows) < m)
                out += [rows[j] for j in pick]
        return out

    def extra(avail, needed):
        e = per_class(avail, 1)
        if len(e) >= needed:
            e = np.random.RandomState(seed).choice(e, size=needed, replace=False).tolist()
        return e

    allrows = list(range(labels.size))
    if t == 0:
        idx = extra(allrows, n)
    else:
        idx = per_class(allrows, t)
        while n - len(idx) > 0:
            chosen = set(idx)
            idx += extra([i for i in allrows if i not in chosen], n - len(idx))
    np.random.RandomState(seed).shuffle(idx)
    return np.array(idx)


def _skewed(seed=0):
    # 12 classes of very different sizes, one class smaller than t (forces replacement)
    sizes = [1, 2, 3, 5, 8, 13, 40, 80, 150, 300, 600, 1200]
    labels = np.concatenate([np.full(s, c) for c, s in enumerate(sizes)])
    np.random.default_rng(seed).shuffle(labels)
    return labels, sizes


def test_balanced_matches_reference_algorithm_on_skewed_classes():
    labels, sizes = _skewed()
    for n, seed in ((100, 0), (100, 7), (59, 3), (7, 1), (4000, 0)):
        got = balanced_sample(labels, n, seed)
        assert got.size == n
        np.testing.assert_array_equal(got, _reference_balanced(labels, n, seed))


def test_balanced_per_class_counts():
    labels, sizes = _skewed()
    k, n = len(sizes), 100
    t = n // k  # 8
    got = balanced_sample(labels, n, 0)
    counts = np.bincount(labels[got], minlength=k)
    # every class gets t (with replacement when smaller); n - t*K classes with spare rows get one more
    assert counts.sum() == n
    assert set(counts.tolist()) <= {t, t + 1}
    assert int((counts == t + 1).sum()) == n - t * k
    # classes with fewer than t rows are sampled with replacement (only from their own rows)
    for c, s in enumerate(sizes):
        rows = got[labels[got] == c]
        assert len(set(rows.tolist())) <= s
        if s >= counts[c]:
            assert len(set(rows.tolist())) == counts[c]  # without replacement otherwise
    # a class exhausted by the first pass gets no top-up row
    assert counts[0] == t


def test_balanced_deterministic_per_seed_and_string_labels():
    labels, _ = _skewed()
    a, b = balanced_sample(labels, 100, 5), balanced_sample(labels, 100, 5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, balanced_sample(labels, 100, 6))
    # string labels group in sorted-name order, as the official 'Molecule' column
    names = np.array([f"C{c}H4" for c in labels], dtype=object)
    np.testing.assert_array_equal(balanced_sample(names, 100, 0), _reference_balanced(names, 100, 0))


def test_fewer_samples_than_classes_takes_one_per_class():
    labels, sizes = _skewed()
    got = balanced_sample(labels, 5, 2)
    assert len(set(labels[got].tolist())) == 5


def test_balanced_impossible_request_is_an_input_error():
    # t = 2: class 0 gives both rows, class 1 its one row twice; the 5th row cannot be topped up
    with pytest.raises(InputError, match="already selected"):
        balanced_sample(np.array([0, 0, 1]), 5, 0)


def test_random_sample_is_randomstate_choice():
    np.testing.assert_array_equal(random_sample(1000, 10, 3), np.random.RandomState(3).choice(range(1000), 10, replace=False))
    assert sorted(random_sample(5, 10, 0).tolist()) == [0, 1, 2, 3, 4]


def test_coverage_counts_distinct_classes():
    ci = np.array([0, 0, 1, 2, 2, 2, 3])
    assert coverage(ci, [0, 1, 3]) == 2
    assert coverage(ci, np.arange(7)) == 4


def test_class_labels_map_unknown():
    lab = class_labels(np.array([1, -1, 0]), ["b", "a"])
    assert lab.tolist() == ["a", "Unknown", "b"]


@pytest.fixture
def class_store(tmp_path):
    from atomsift.data.store import StoreWriter

    rng = np.random.default_rng(0)
    labels, _ = _skewed()
    out = tmp_path / "cls"
    with StoreWriter(out, dataset="ani1x", reader="test") as w:
        for i, c in enumerate(labels):
            n = 2 + (i % 5)
            w.add(rng.integers(1, 9, n), rng.normal(size=(n, 3)) * 2, cls=f"X{c:02d}")
        w.set_split("train", np.arange(0, labels.size, 2))
        w.set_split("val", np.arange(1, labels.size, 2))
    return out


def test_sample_store_uses_train_split_and_min_atoms(class_store):
    from atomsift.data.store import Store

    s = Store(class_store)
    train = s.split("train")
    idx = sample_store(s, "random", 50, 0, min_atoms=4)
    assert set(idx.tolist()) <= set(train.tolist())
    assert np.all(np.diff(s.offsets)[idx] >= 4)
    bal = sample_store(s, "balanced", 60, 0)
    assert bal.size == 60 and set(bal.tolist()) <= set(train.tolist())


def test_coverage_cli(class_store, capsys):
    assert main(["coverage", "--store", str(class_store), "--n", "24", "--seed", "0", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    from atomsift.data.store import Store

    s = Store(class_store)
    k = np.unique(s.class_index[s.split("train")]).size
    assert res["total_classes"] == k
    assert res["balanced"] == k  # t = 24 // k >= 2 per class covers every class of the train split
    assert 1 <= res["random"] <= 12


def test_coverage_json_renders_figure(class_store, tmp_path, capsys):
    js = tmp_path / "cov.json"
    assert main(["coverage", "--store", str(class_store), "--n", "10", "--out", str(js)]) == 0
    png = tmp_path / "fig9.png"
    assert main(["csi-figure", "--kind", "coverage", "--table", str(js), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"dataset": "x", "total_classes": 3, "random": "many"}))
    capsys.readouterr()
    assert main(["csi-figure", "--kind", "coverage", "--table", str(bad), "--out", str(png)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.json" in err and "field 'random'" in err
