import hashlib
import json

import numpy as np
import pytest

from atomsift.data.store import Store, StoreWriter
from atomsift.errors import InputError


def _write(path, n=5, **kw):
    rng = np.random.default_rng(0)
    with StoreWriter(path, dataset="toy", source="toy.xyz", reader="test", has_energy=True, has_forces=True,
                     target_names=["a", "b"], chunk_size=2, **kw) as w:
        for i in range(n):
            na = 2 + i
            w.add(np.full(na, 1 + i), rng.normal(size=(na, 3)), energy=-float(i), forces=np.full((na, 3), i * 0.5),
                  targets=[i, 2 * i], cls=f"c{i % 2}")
        w.set_split("train", list(range(0, 3)))
        w.set_split("test", list(range(3, n)))
    return path


def test_roundtrip_random_access(tmp_path):
    s = Store(_write(tmp_path / "s"))
    assert len(s) == 5
    r = s[3]
    assert r.natoms == 5 and list(r.numbers) == [4] * 5
    assert r.energy == -3.0 and r.forces.shape == (5, 3) and np.all(r.forces == 1.5)
    assert r.targets == {"a": 3.0, "b": 6.0} and r.cls == "c1"
    assert list(s.split("test")) == [3, 4]
    sub = s.split_view("test")
    assert len(sub) == 2 and sub[0].index == 3 and sub[-1].index == 4
    assert list(sub.natoms) == [5, 6]
    info = s.info()
    assert info["n_structures"] == 5 and info["n_atoms"] == 2 + 3 + 4 + 5 + 6
    assert info["elements"] == [1, 2, 3, 4, 5] and info["n_classes"] == 2
    assert info["splits"] == {"train": 3, "test": 2}
    assert np.load(tmp_path / "s" / "offsets.npy").tolist() == [0, 2, 5, 9, 14, 20]


@pytest.mark.parametrize(
    "field,kwargs,msg",
    [
        ("positions", {"positions": [[0, 0, np.nan]]}, "non-finite"),
        ("numbers", {"numbers": [119]}, "outside 1..118"),
        ("numbers", {"numbers": [0]}, "outside 1..118"),
        ("forces", {"forces": [[0, 0]]}, "expected shape (1, 3)"),
        ("energy", {"energy": np.inf}, "non-finite"),
    ],
)
def test_validation_names_file_index_field_and_publishes_nothing(tmp_path, field, kwargs, msg):
    args = {"numbers": [1], "positions": [[0, 0, 0]], "energy": 0.0, "forces": [[0, 0, 0]]}
    args.update(kwargs)
    out = tmp_path / "bad"
    with pytest.raises(InputError) as ei:
        with StoreWriter(out, dataset="toy", source="src.h5", reader="test", has_energy=True, has_forces=True) as w:
            w.add([1], [[0, 0, 0]], energy=0.0, forces=[[0, 0, 0]])
            w.add(args.pop("numbers"), args.pop("positions"), **args)
    text = str(ei.value)
    assert text.startswith("src.h5: field '%s': structure 1: " % field) and msg in text
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_empty_dataset_is_an_error(tmp_path):
    with pytest.raises(InputError, match="empty dataset"):
        with StoreWriter(tmp_path / "e", dataset="toy", source="src.h5", reader="test"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_nothing_that_looks_complete(tmp_path):
    w = StoreWriter(tmp_path / "k", dataset="toy", reader="test")
    w.add([1], [[0, 0, 0]])
    # simulate a kill: the object is dropped without close()
    assert not (tmp_path / "k").exists()
    hidden = [p for p in tmp_path.iterdir()]
    assert len(hidden) == 1 and hidden[0].name.startswith(".k.tmp-") and not (hidden[0] / "manifest.json").exists()


def test_overwrite_replaces_atomically(tmp_path):
    _write(tmp_path / "s", n=5)
    _write(tmp_path / "s", n=3)
    assert len(Store(tmp_path / "s")) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_manifest_records_provenance(tmp_path):
    src = tmp_path / "src.txt"
    src.write_text("hello")
    with StoreWriter(tmp_path / "s", dataset="toy", source=src, reader="test", reader_version="7", level_of_theory="EMT") as w:
        w.add([1], [[0, 0, 0]])
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert m["source"]["sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert m["reader"] == {"name": "test", "version": "7"} and m["level_of_theory"] == "EMT"
    assert m["units"]["positions"] == "Angstrom" and m["format_version"] == 1


def test_not_a_store(tmp_path):
    with pytest.raises(InputError, match="no manifest.json"):
        Store(tmp_path)


def test_records_equal_the_raw_files_and_are_copies(tmp_path):
    s = Store(_write(tmp_path / "s", n=5))
    off = np.load(tmp_path / "s" / "offsets.npy")
    pos = np.load(tmp_path / "s" / "positions.npy")
    for i in range(5):
        r = s[i]
        np.testing.assert_array_equal(r.positions, pos[off[i]:off[i + 1]])
        assert r.numbers.dtype == np.int64 and r.tags.dtype == np.int64
    r = s[2]
    r.positions[:] = 99.0
    r.forces[:] = 99.0
    assert not np.any(s[2].positions == 99.0) and not np.any(s[2].forces == 99.0)
    assert s[-1].index == 4 and s.subset([4, 0])[1].index == 0
    assert s.subset([4, 1, 0]).subset([2, 1])[0].index == 0
    with pytest.raises(IndexError):
        s.subset([5])
    with pytest.raises(IndexError):
        s[5]


def test_tags_outside_int8_are_rejected(tmp_path):
    with pytest.raises(InputError, match=r"field 'tags': structure 0: tag 300 outside -128..127"):
        with StoreWriter(tmp_path / "t", dataset="toy", source="x.traj", reader="test") as w:
            w.add([1, 1], [[0, 0, 0], [0, 0, 1]], tags=[0, 300])
    with pytest.raises(InputError, match=r"field 'tags': structure 1: tag -200 outside"):
        with StoreWriter(tmp_path / "t", dataset="toy", source="x.traj", reader="test") as w:
            w.add_many([1, 1, 1], np.zeros((3, 3)), natoms=[1, 2], tags=[0, 1, -200])
    assert list(tmp_path.iterdir()) == []


def test_failed_write_removes_the_parents_it_made(tmp_path):
    (tmp_path / "kept").mkdir()
    with pytest.raises(InputError):
        with StoreWriter(tmp_path / "kept" / "a" / "b" / "s", dataset="toy", source="x", reader="test") as w:
            w.add([0], [[0, 0, 0]])
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


@pytest.mark.parametrize(
    "damage,msg",
    [
        (lambda d: (d / "manifest.json").write_text("[1, 2]"), "not a JSON object"),
        (lambda d: (d / "manifest.json").write_text(json.dumps({**json.loads((d / "manifest.json").read_text()), "format_version": 2})), "unsupported format_version 2"),
        (lambda d: (d / "manifest.json").write_text(json.dumps({k: v for k, v in json.loads((d / "manifest.json").read_text()).items() if k != "fields"})), "field 'fields': missing from the manifest"),
        (lambda d: (d / "positions.npy").write_bytes((d / "positions.npy").read_bytes()[:300]), "positions.npy: unreadable store array"),
        (lambda d: np.save(d / "energy.npy", np.zeros(3)), "energy.npy: has (3,) rows, the manifest says 5"),
    ],
)
def test_damaged_store_is_a_one_line_error(tmp_path, damage, msg):
    d = _write(tmp_path / "s", n=5)
    damage(d)
    with pytest.raises(InputError) as ei:
        s = Store(d)
        s[0]
    assert msg in str(ei.value) and "\n" not in str(ei.value)


def test_missing_store_path(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        Store(tmp_path / "nope")


def test_refuses_to_replace_what_is_not_a_store(tmp_path):
    precious = tmp_path / "docs"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(InputError, match="exists and is not an atomsift store; refusing to replace it"):
        _write(precious)
    afile = tmp_path / "f.txt"
    afile.write_text("x")
    with pytest.raises(InputError, match="refusing"):
        _write(afile)
    assert (precious / "thesis.tex").read_text() == "years of work" and afile.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "f.txt"]
    (tmp_path / "empty").mkdir()
    assert len(Store(_write(tmp_path / "empty"))) == 5  # an empty directory may be filled


def test_output_that_cannot_be_created(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(InputError, match="cannot create the output directory"):
        StoreWriter(f / "sub" / "s", dataset="toy", reader="test")
