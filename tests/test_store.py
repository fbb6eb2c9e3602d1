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
