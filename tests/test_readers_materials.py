"""Materials readers (oc20/oc22, qmof, matbench): fixtures written in the real layouts, exact values."""

import gzip
import json
import lzma
import pickle

import numpy as np
import pytest

from atomsift.cli import main
from atomsift.data.readers import prepare
from atomsift.data.readers._pymatgen import parse_structure
from atomsift.data.readers.matbench import kfold_test_indices, stratified_kfold_test_indices
from atomsift.data.store import Store
from atomsift.errors import InputError

torch = pytest.importorskip("torch")
lmdb = pytest.importorskip("lmdb")
from torch_geometric.data import Data  # noqa: E402


# ------------------------------------------------------------------------------------ OC fixtures


@pytest.fixture
def frame(realdata):
    """The genuine OC20 adslab frame (CO* on Al8Cu8Se16), tags remapped to the OC20 convention."""
    from ase.db import connect

    atoms = connect(realdata / "oc20" / "oc20_s2ef_frame_fairchem_atoms.json", type="json").get(1).toatoms()
    fixed = np.zeros(len(atoms), dtype=bool)
    fixed[atoms.constraints[0].get_indices()] = True
    tags = np.where(atoms.get_tags() == 1, 2, np.where(fixed, 0, 1))  # file tags the adsorbate 1; OC20 uses 2
    return {
        "numbers": atoms.numbers.copy(), "pos": atoms.positions.copy(), "cell": np.asarray(atoms.cell[:]),
        "energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "tags": tags, "fixed": fixed,
    }


def _variant(frame, k):
    """Frame k: the real frame with positions shifted and the energy changed, so rows differ."""
    return {**frame, "pos": frame["pos"] + 0.01 * k, "energy": frame["energy"] + 0.5 * k, "forces": frame["forces"] * (1 + k)}


def old_data(fr, sid, fid):
    """A PyG < 2 pickle: attributes directly in __dict__, names y / force."""
    d = Data.__new__(Data)
    d.__dict__.update({
        "x": None, "edge_index": None, "pos": torch.tensor(fr["pos"], dtype=torch.float64),
        "cell": torch.tensor(fr["cell"])[None], "atomic_numbers": torch.tensor(fr["numbers"], dtype=torch.float32),
        "natoms": len(fr["numbers"]), "tags": torch.tensor(fr["tags"]), "fixed": torch.tensor(fr["fixed"], dtype=torch.float32),
        "y": float(fr["energy"]), "force": torch.tensor(fr["forces"]), "sid": torch.tensor([sid]), "fid": torch.tensor([fid]),
        "__num_nodes__": None,
    })
    return d


def new_data(fr, sid, fid):
    """A PyG 2 pickle with the newer fairchem names energy / forces."""
    return Data(pos=torch.tensor(fr["pos"]), cell=torch.tensor(fr["cell"])[None],
                atomic_numbers=torch.tensor(fr["numbers"], dtype=torch.float32), natoms=len(fr["numbers"]),
                tags=torch.tensor(fr["tags"]), fixed=torch.tensor(fr["fixed"], dtype=torch.float32),
                energy=torch.tensor([fr["energy"]], dtype=torch.float64), forces=torch.tensor(fr["forces"]), sid=sid, fid=fid)


def write_lmdb(path, objs, length=True, raw=None):
    env = lmdb.open(str(path), subdir=False, map_size=1 << 28, meminit=False)
    with env.begin(write=True) as txn:
        for i, o in enumerate(objs):
            txn.put(str(i).encode(), pickle.dumps(o) if raw is None else raw)
        if length:
            txn.put(b"length", pickle.dumps(len(objs)))
    env.close()
    return path


@pytest.fixture
def oc_lmdb_dir(tmp_path, frame):
    """data.2.lmdb (old pickles, y/force, length key) and data.10.lmdb (new names, no length key)."""
    d = tmp_path / "lmdb"
    d.mkdir()
    write_lmdb(d / "data.2.lmdb", [old_data(_variant(frame, k), 100 + k, k) for k in range(3)])
    write_lmdb(d / "data.10.lmdb", [new_data(_variant(frame, k), 100 + k, k) for k in range(3, 5)], length=False)
    return d


def _run(*argv, capsys=None):
    rc = main(list(map(str, argv)))
    err = capsys.readouterr().err if capsys is not None else ""
    return rc, err


# ------------------------------------------------------------------------------------------- OC20


def test_oc20_lmdb_old_and_new_names_exact_values(oc_lmdb_dir, frame, tmp_path):
    s = Store(prepare("oc20", oc_lmdb_dir, tmp_path / "s"))
    assert len(s) == 5 and s.dataset == "oc20"
    assert s.manifest["energy_kind"].startswith("referenced")
    for k in range(5):  # data.2 before data.10 (numeric shard order), keys in order
        r, v = s[k], _variant(frame, k)
        assert r.energy == v["energy"]  # the stored (referenced) y, unchanged
        np.testing.assert_array_equal(r.positions, v["pos"])
        np.testing.assert_array_equal(r.forces, v["forces"])
        np.testing.assert_array_equal(r.cell, frame["cell"])
        assert list(r.numbers) == list(frame["numbers"]) and r.pbc.all()
        np.testing.assert_array_equal(r.tags, frame["tags"])
        np.testing.assert_array_equal(r.fixed, frame["fixed"])
        assert r.sid == 100 + k
        assert r.cls == "AlCuSe2"  # reduced formula of the non-adsorbate atoms (Al8Cu8Se16)
    assert s[0].energy == pytest.approx(-135.66393572, abs=1e-12)
    tr, va = s.split("train"), s.split("val")
    assert len(va) == 1 and sorted(np.concatenate([tr, va]).tolist()) == list(range(5))


def test_oc20_total_energy_adds_references_and_bulk_symbol_classes(oc_lmdb_dir, frame, tmp_path):
    refs = tmp_path / "oc20_ref.pkl"
    refs.write_bytes(pickle.dumps({f"random{100 + k}": -10.0 - k for k in range(5)}))
    meta = tmp_path / "oc20_data_mapping.pkl"
    meta.write_bytes(pickle.dumps({"random100": {"bulk_symbols": "Al2Cu2Se4", "ads_symbols": "*CO"},
                                   "random101": {"bulk_symbols": "CuSe"}, "random103": {"bulk_symbols": "Al2Cu2Se4"}}))
    s = Store(prepare("oc20", oc_lmdb_dir, tmp_path / "s", total_energy=True, ref_energies=str(refs), metadata=str(meta)))
    assert s.manifest["energy_kind"].startswith("total")
    for k in range(5):
        assert s[k].energy == pytest.approx(_variant(frame, k)["energy"] + (-10.0 - k), abs=1e-12)
    assert [s[k].cls for k in range(5)] == ["Al2Cu2Se4", "CuSe", "Unknown", "Al2Cu2Se4", "Unknown"]
    assert s.manifest["provenance"]["n_class_unknown"] == 2


def test_oc20_total_energy_needs_references(oc_lmdb_dir, tmp_path, capsys):
    rc, err = _run("prepare", "oc20", "--source", oc_lmdb_dir, "--out", tmp_path / "s", "--total-energy", capsys=capsys)
    assert rc == 2 and "--ref-energies" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_oc22_is_total_and_splits_by_subfolder(tmp_path, frame):
    for name, ks in (("train", range(3)), ("val_id", range(3, 5))):
        (tmp_path / name).mkdir()
        write_lmdb(tmp_path / name / "data.0000.lmdb", [new_data(_variant(frame, k), k, 0) for k in ks])
    s = Store(prepare("oc22", tmp_path, tmp_path / "out"))
    assert s.manifest["energy_kind"].startswith("total")
    assert s.split("train").tolist() == [0, 1, 2] and s.split("val_id").tolist() == [3, 4]
    assert [s[k].sid for k in range(5)] == [0, 1, 2, 3, 4]


def _extxyz_frame(fr, move_mask, energy):
    lat = " ".join(f"{x:.8f}" for x in np.asarray(fr["cell"]).reshape(-1))
    lines = [str(len(fr["numbers"])),
             f'Lattice="{lat}" Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3 '
             f'energy={energy:.8f} free_energy={energy:.8f} pbc="T T T"']
    from ase.data import chemical_symbols

    for z, p, m, t, f in zip(fr["numbers"], fr["pos"], move_mask, fr["tags"], fr["forces"]):
        lines.append(f"{chemical_symbols[z]} {p[0]:.8f} {p[1]:.8f} {p[2]:.8f} {'T' if m else 'F'} {t} "
                     f"{f[0]:.8f} {f[1]:.8f} {f[2]:.8f}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def s2ef_dir(tmp_path, frame):
    """The S2EF raw release layout: 0.extxyz.xz + 0.txt.xz and 1.extxyz + 1.txt (total energies)."""
    d = tmp_path / "s2ef"
    d.mkdir()
    frames = [_variant(frame, k) for k in range(4)]
    txt = [f"random{2000 + k // 2},frame{k},{-1.25 * (k + 1):.4f}" for k in range(4)]
    text0 = "".join(_extxyz_frame(f, ~frame["fixed"], f["energy"]) for f in frames[:2])
    (d / "0.extxyz.xz").write_bytes(lzma.compress(text0.encode()))
    (d / "0.txt.xz").write_bytes(lzma.compress(("\n".join(txt[:2]) + "\n").encode()))
    (d / "1.extxyz").write_text("".join(_extxyz_frame(f, ~frame["fixed"], f["energy"]) for f in frames[2:]))
    (d / "1.txt").write_text("\n".join(txt[2:]) + "\n")
    return d


def test_oc20_extxyz_release_referenced_and_total(s2ef_dir, frame, tmp_path):
    ref = Store(prepare("oc20", s2ef_dir, tmp_path / "ref"))
    tot = Store(prepare("oc20", s2ef_dir, tmp_path / "tot", total_energy=True))
    assert ref.manifest["energy_kind"].startswith("referenced") and tot.manifest["energy_kind"].startswith("total")
    for k in range(4):
        v = _variant(frame, k)
        assert tot[k].energy == pytest.approx(v["energy"], abs=1e-8)
        assert ref[k].energy == pytest.approx(v["energy"] - (-1.25 * (k + 1)), abs=1e-8)
        np.testing.assert_allclose(ref[k].positions, v["pos"], atol=1e-8)
        np.testing.assert_allclose(ref[k].forces, v["forces"], atol=1e-8)
        np.testing.assert_array_equal(ref[k].fixed, frame["fixed"])  # fixed = not move_mask
        np.testing.assert_array_equal(ref[k].tags, frame["tags"])
        assert ref[k].sid == 2000 + k // 2 and ref[k].cls == "AlCuSe2"


def test_oc20_extxyz_without_txt_needs_total_energy(s2ef_dir, tmp_path, capsys):
    (s2ef_dir / "1.txt").unlink()
    rc, err = _run("prepare", "oc20", "--source", s2ef_dir, "--out", tmp_path / "s", capsys=capsys)
    assert rc == 2 and "1.extxyz" in err and "--total-energy" in err
    assert not (tmp_path / "s").exists()


def _assert_one_line_error(capsys, argv, *needles, out):
    rc, err = _run(*argv, capsys=capsys)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.mark.parametrize("case,needles", [
    ("missing_key", ["data.0000.lmdb", "key 1", "force"]),
    ("wrong_shape", ["data.0000.lmdb", "key 1", "pos", "expected shape (34, 3)"]),
    ("wrong_dtype", ["data.0000.lmdb", "key 1", "atomic_numbers", "dtype"]),
    ("nan_label", ["data.0000.lmdb", "key 1", "y", "non-finite"]),
    ("missing_entry", ["data.0000.lmdb", "key 2", "missing entry"]),
    ("bad_pickle", ["data.0000.lmdb", "key 0", "cannot unpickle"]),
])
def test_oc_lmdb_errors_name_file_key_and_index(tmp_path, frame, capsys, case, needles):
    d = tmp_path / "src"
    d.mkdir()
    objs = [old_data(_variant(frame, k), k, 0) for k in range(3)]
    bad = objs[1]
    if case == "missing_key":
        del bad.__dict__["force"]
    elif case == "wrong_shape":
        bad.__dict__["pos"] = bad.__dict__["pos"][:, :2]
    elif case == "wrong_dtype":
        bad.__dict__["atomic_numbers"] = np.array(["Al"] * 34)
    elif case == "nan_label":
        bad.__dict__["y"] = float("nan")
    if case == "missing_entry":
        env = lmdb.open(str(d / "data.0000.lmdb"), subdir=False, map_size=1 << 28)
        with env.begin(write=True) as txn:
            txn.put(b"0", pickle.dumps(objs[0]))
            txn.put(b"1", pickle.dumps(objs[1]))
            txn.put(b"length", pickle.dumps(3))
        env.close()
    elif case == "bad_pickle":
        write_lmdb(d / "data.0000.lmdb", objs, raw=pickle.dumps(objs[0])[:50])
    else:
        write_lmdb(d / "data.0000.lmdb", objs)
    _assert_one_line_error(capsys, ["prepare", "oc20", "--source", d, "--out", tmp_path / "out"], *needles, out=tmp_path / "out")


def test_oc_truncated_and_empty_lmdb(tmp_path, frame, capsys):
    d = tmp_path / "src"
    d.mkdir()
    p = write_lmdb(d / "data.0000.lmdb", [old_data(frame, 1, 0)])
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    _assert_one_line_error(capsys, ["prepare", "oc20", "--source", d, "--out", tmp_path / "o1"], "data.0000.lmdb",
                           out=tmp_path / "o1")
    p.unlink()
    write_lmdb(p, [])
    _assert_one_line_error(capsys, ["prepare", "oc20", "--source", d, "--out", tmp_path / "o2"], "empty dataset",
                           out=tmp_path / "o2")


def test_oc_refuses_foreign_pickled_classes(tmp_path, frame, capsys):
    d = tmp_path / "src"
    d.mkdir()
    evil = b"cos\nsystem\n(S'true'\ntR."  # os.system('true') if unpickled naively
    write_lmdb(d / "data.0000.lmdb", [0], raw=evil)
    _assert_one_line_error(capsys, ["prepare", "oc20", "--source", d, "--out", tmp_path / "o"], "key 0", "refusing",
                           out=tmp_path / "o")


# -------------------------------------------------------------------------------------- pymatgen


def _structure(cell, species, coords, frac=False, labels=None):
    return {
        "@module": "pymatgen.core.structure", "@class": "Structure", "charge": 0,
        "lattice": {"matrix": cell, "pbc": [True, True, True]},
        "sites": [{"species": [{"element": el, "occu": 1}], ("abc" if frac else "xyz"): list(c),
                   "label": el if labels is None else labels[i], "properties": {}} for i, (el, c) in enumerate(zip(species, coords))],
    }


def test_parse_structure_xyz_abc_and_label():
    cell = [[4.0, 0.0, 0.0], [1.0, 5.0, 0.0], [0.0, 0.0, 6.0]]
    z, pos, c, pbc = parse_structure(_structure(cell, ["Cu", "O"], [[0.5, 0.5, 0.0], [0.25, 0.0, 0.5]], frac=True))
    assert z.tolist() == [29, 8] and pbc.all()
    np.testing.assert_allclose(pos, [[0.5 * 4 + 0.5 * 1, 0.5 * 5, 0.0], [1.0, 0.0, 3.0]])
    z, _, _, _ = parse_structure(_structure(cell, ["Cu", "O"], [[0, 0, 0], [1, 1, 1]], labels=["Zn", "O1"]))
    assert z.tolist() == [30, 8]  # a label that is an element wins (JMP); "O1" falls back to species
    bad = _structure(cell, ["Cu"], [[0, 0, 0]])
    bad["sites"][0]["species"] = [{"element": "Cu", "occu": 0.5}, {"element": "Zn", "occu": 0.5}]
    bad["sites"][0]["label"] = "Cu:0.5"
    with pytest.raises(InputError, match="site 0 is disordered"):
        parse_structure(bad, path="x.json")


# ------------------------------------------------------------------------------------------ QMOF

_CELLS = [[[10.0, 0, 0], [0, 11.0, 0], [0, 0, 12.0]], [[9.0, 0.5, 0], [0, 9.5, 0], [0.2, 0, 10.0]]]


def _qmof(tmp_path, n=20, nested=True):
    rng = np.random.default_rng(1)
    systems, structures = [], []
    for i in range(n):
        qid = f"qmof-{0x1a2b3c0 + i:07x}"
        els = ["Zn", "O", "C", "H"][: 2 + i % 3]
        coords = rng.uniform(0, 8, size=(len(els), 3)).round(6).tolist()
        systems.append({"qmof_id": qid, "name": f"MOF{i}", "info": {"formula": "".join(els)},
                        "outputs": {"pbe": {"bandgap": round(0.1 * i + 0.01, 6), "energy_total": -10.0 * i}}})
        structures.append({"qmof_id": qid, "name": f"MOF{i}",
                           "structure": _structure(_CELLS[i % 2], els, coords)})
    d = tmp_path / "qmof_release"
    (d / "qmof_database").mkdir(parents=True)
    base = d / "qmof_database" if nested else d
    (base / "qmof.json").write_text(json.dumps(systems))
    (base / "qmof_structure_data.json").write_text(json.dumps(structures[::-1]))  # paired by qmof_id, not order
    return d, systems, structures


def test_qmof_values_sid_classes_and_jmp_split(tmp_path):
    d, systems, structures = _qmof(tmp_path)
    s = Store(prepare("qmof", d, tmp_path / "s"))
    assert len(s) == 20 and s.target_names == ["bandgap"] and s.manifest["units"]["targets"] == {"bandgap": "eV"}
    rev = structures[::-1]  # the fixture's structure file is in reverse order: the store follows it
    gap = {x["qmof_id"]: x["outputs"]["pbe"]["bandgap"] for x in systems}
    for i in (0, 7, 19):
        r, st = s[i], rev[i]["structure"]
        assert r.targets["bandgap"] == gap[rev[i]["qmof_id"]]
        np.testing.assert_array_equal(r.positions, [site["xyz"] for site in st["sites"]])
        np.testing.assert_array_equal(r.cell, st["lattice"]["matrix"])
        assert f"qmof-{r.sid:07x}" == rev[i]["qmof_id"]
    assert s[19 - 1].cls == "COZn" and s[19 - 2].cls == "CHOZn" and s[19 - 0].cls == "OZn"
    perm = np.arange(20)
    np.random.RandomState(42).shuffle(perm)
    assert s.split("train").tolist() == sorted(perm[:16]) and s.split("val").tolist() == sorted(perm[16:18])
    assert s.split("test").tolist() == sorted(perm[18:])


def test_qmof_zip_and_streaming_match_folder(tmp_path):
    import zipfile

    d, _, _ = _qmof(tmp_path)
    with zipfile.ZipFile(tmp_path / "qmof_database.zip", "w") as zf:
        for f in ("qmof.json", "qmof_structure_data.json"):
            zf.write(d / "qmof_database" / f, f"qmof_database/{f}")
    with zipfile.ZipFile(tmp_path / "13147324.zip", "w") as zf:  # figshare's article zip wraps the release zip
        zf.write(tmp_path / "qmof_database.zip", "qmof_database.zip")
    a = Store(prepare("qmof", d, tmp_path / "a"))
    for name in ("qmof_database.zip", "13147324.zip"):
        b = Store(prepare("qmof", tmp_path / name, tmp_path / name.replace(".zip", "_store")))
        np.testing.assert_array_equal(a.array("positions"), b.array("positions"))
        np.testing.assert_array_equal(a.array("targets"), b.array("targets"))
    from atomsift.data.readers import qmof
    from atomsift.data.readers._pymatgen import JsonStream

    with open(d / "qmof_database" / "qmof_structure_data.json") as fh:  # tiny chunks: values cut anywhere
        items = list(JsonStream(fh, "x", chunk=7).items())
    assert items == json.loads((d / "qmof_database" / "qmof_structure_data.json").read_text())
    assert qmof.jmp_split(20)["val"].size == 2


@pytest.mark.parametrize("case,needles", [
    ("missing_gap", ["qmof.json", "outputs.pbe.bandgap", "entry 3", "qmof-1a2b3c3"]),
    ("nan_gap", ["qmof.json", "outputs.pbe.bandgap", "entry 3", "not a finite"]),
    ("truncated", ["qmof_structure_data.json", "not valid JSON", "truncated"]),
    ("bad_matrix", ["qmof_structure_data.json", "lattice.matrix", "(2, 3)", "entry 3 (qmof-1a2b3c3)"]),
    ("singular", ["cell", "singular", "entry 3"]),
    ("unpaired", ["qmof_structure_data.json", "qmof_id", "entry 3 (qmof-0000bad)", "no entry"]),
])
def test_qmof_errors(tmp_path, capsys, case, needles):
    d, systems, structures = _qmof(tmp_path, nested=False)
    if case in ("missing_gap", "nan_gap"):
        if case == "missing_gap":
            del systems[3]["outputs"]["pbe"]["bandgap"]
        else:
            systems[3]["outputs"]["pbe"]["bandgap"] = float("nan")
        (d / "qmof.json").write_text(json.dumps(systems))
    elif case == "truncated":
        text = (d / "qmof_structure_data.json").read_text()
        (d / "qmof_structure_data.json").write_text(text[: len(text) // 2])
    elif case == "unpaired":
        structures[3]["qmof_id"] = "qmof-0000bad"
        (d / "qmof_structure_data.json").write_text(json.dumps(structures))
    else:
        structures[3]["structure"]["lattice"]["matrix"] = [[1, 0, 0], [0, 1, 0]] if case == "bad_matrix" else [[1, 0, 0], [2, 0, 0], [0, 0, 1]]
        (d / "qmof_structure_data.json").write_text(json.dumps(structures))
    _assert_one_line_error(capsys, ["prepare", "qmof", "--source", d, "--out", tmp_path / "o"], *needles, out=tmp_path / "o")


# -------------------------------------------------------------------------------------- MatBench

# scikit-learn 1.9.1, KFold(5, shuffle=True, random_state=18012019).split(np.zeros(n)) test folds
SKLEARN_KFOLD = {
    13: [[1, 4, 11], [2, 3, 10], [7, 8, 12], [0, 5], [6, 9]],
    23: [[10, 15, 16, 20, 21], [1, 3, 4, 5, 17], [2, 7, 13, 19, 22], [8, 11, 14, 18], [0, 6, 9, 12]],
}
STRAT_Y = [True, False, False, True, True, False, True, True, False, False, False, True, True, False, True, False, True,
           True, False, True]
# scikit-learn 1.9.1, StratifiedKFold(5, shuffle=True, random_state=18012019).split(X, STRAT_Y)
SKLEARN_STRAT = [[3, 4, 8, 16], [6, 10, 11, 15], [9, 12, 13, 19], [1, 2, 7, 14], [0, 5, 17, 18]]


def test_kfold_matches_scikit_learn():
    for n, folds in SKLEARN_KFOLD.items():
        assert [sorted(t.tolist()) for t in kfold_test_indices(n)] == folds
    assert [sorted(t.tolist()) for t in stratified_kfold_test_indices(STRAT_Y)] == SKLEARN_STRAT


def _matbench(tmp_path, task="phonons", target="last phdos peak", n=23, values=None):
    rng = np.random.default_rng(2)
    rows, index = [], []
    for i in range(n):
        els = ["Si", "O", "O"] if i % 2 else ["Na", "Cl"]
        st = _structure(_CELLS[i % 2], els, rng.uniform(0, 1, size=(len(els), 3)).round(6).tolist(), frac=True)
        rows.append([st, values[i] if values is not None else round(100.0 + 7.5 * i, 4)])
        index.append(f"mb-{task}-{i + 1:03d}")
    p = tmp_path / f"matbench_{task}.json.gz"
    with gzip.open(p, "wt") as fh:
        json.dump({"index": index, "columns": ["structure", target], "data": rows}, fh)
    return p, rows


def test_matbench_values_units_and_folds(tmp_path):
    p, rows = _matbench(tmp_path)
    s = Store(prepare("matbench", p, tmp_path / "s", fold=2))
    assert len(s) == 23 and s.target_names == ["last phdos peak"]
    assert s.manifest["units"]["targets"] == {"last phdos peak": "cm^-1"}
    for i in (0, 5, 22):
        st = rows[i][0]
        assert s[i].targets["last phdos peak"] == rows[i][1]
        frac = np.array([site["abc"] for site in st["sites"]])
        np.testing.assert_allclose(s[i].positions, frac @ np.array(st["lattice"]["matrix"]), atol=1e-12)
    assert s[0].cls == "ClNa" and s[1].cls == "O2Si"
    tests = [s.split(f"fold{k}_test").tolist() for k in range(5)]
    assert tests == SKLEARN_KFOLD[23]
    assert sorted(sum(tests, [])) == list(range(23))  # the test folds partition the data
    for k in range(5):
        tr, va = s.split(f"fold{k}_train"), s.split(f"fold{k}_val")
        trainval = sorted(set(range(23)) - set(tests[k]))
        assert sorted(np.concatenate([tr, va]).tolist()) == trainval and len(tr) == int(0.9 * len(trainval))
        perm = np.arange(len(trainval))
        np.random.RandomState(42).shuffle(perm)
        assert tr.tolist() == [trainval[j] for j in perm[: len(tr)]]
    for part in ("train", "val", "test"):
        assert s.split(part).tolist() == s.split(f"fold2_{part}").tolist()


def test_matbench_is_metal_is_stratified(tmp_path):
    p, _ = _matbench(tmp_path, task="mp_is_metal", target="is_metal", n=20, values=STRAT_Y)
    s = Store(prepare("matbench", p, tmp_path / "s"))
    assert [s[i].targets["is_metal"] for i in range(20)] == [float(v) for v in STRAT_Y]
    assert [s.split(f"fold{k}_test").tolist() for k in range(5)] == SKLEARN_STRAT
    assert "train" not in s.split_names()


@pytest.mark.parametrize("case,needles", [
    ("nan", ["matbench_phonons.json.gz", "last phdos peak", "data[4]", "mb-phonons-005"]),
    ("string", ["matbench_phonons.json.gz", "last phdos peak", "data[4]"]),
    ("truncated", ["matbench_phonons.json.gz", "truncated"]),
    ("columns", ["matbench_phonons.json.gz", "columns"]),
    ("sites", ["matbench_phonons.json.gz", "data[4]", "sites"]),
    ("empty", ["matbench_phonons.json.gz", "empty dataset"]),
])
def test_matbench_errors(tmp_path, capsys, case, needles):
    p, rows = _matbench(tmp_path)
    doc = {"index": [f"mb-phonons-{i + 1:03d}" for i in range(len(rows))], "columns": ["structure", "last phdos peak"], "data": rows}
    if case == "nan":
        rows[4][1] = float("nan")
    elif case == "string":
        rows[4][1] = "12.5"
    elif case == "columns":
        doc["columns"] = ["structure", "gap pbe"]
    elif case == "sites":
        rows[4][0]["sites"] = []
    elif case == "empty":
        doc["data"] = []
    raw = gzip.compress(json.dumps(doc).encode())
    p.write_bytes(raw[: len(raw) // 2] if case == "truncated" else raw)
    _assert_one_line_error(capsys, ["prepare", "matbench", "--source", p, "--out", tmp_path / "o"], *needles, out=tmp_path / "o")


def test_pickled_tensors_decode_without_torch_exactly():
    """The numpy decoder of pickled tensors agrees with torch for every dtype and for strided views."""
    from atomsift.safeload import loads

    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 7, generator=g, dtype=torch.float64)
    tensors = [base, base.float(), base.half(), (base * 100).long(), (base * 100).int(), (base * 10).short(),
               (base * 10).to(torch.int8), (base.abs() * 10).to(torch.uint8), base > 0, base.t(), base[1:4, ::2],
               torch.zeros(0, 3), torch.tensor(3.5), torch.complex(base, -base)]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for t in tensors:
            got = loads(pickle.dumps(t, protocol=protocol))
            assert isinstance(got, np.ndarray) and got.dtype == t.numpy().dtype and got.shape == tuple(t.shape)
            np.testing.assert_array_equal(got, t.numpy())
    # bfloat16 has no numpy dtype: decoded exactly as float32
    got = loads(pickle.dumps(base.bfloat16()))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, base.bfloat16().float().numpy())


def test_cli_passes_fold_0_and_seed_0(tmp_path, capsys):
    p, _ = _matbench(tmp_path)
    assert main(["prepare", "matbench", "--source", str(p), "--out", str(tmp_path / "s"), "--fold", "0", "--seed", "0"]) == 0
    s = Store(tmp_path / "s")
    assert s.split("train").tolist() == s.split("fold0_train").tolist()
    trainval = sorted(set(range(23)) - set(SKLEARN_KFOLD[23][0]))
    perm = np.arange(len(trainval))
    np.random.RandomState(0).shuffle(perm)  # --seed 0, not the default 42
    assert s.split("fold0_train").tolist() == [trainval[j] for j in perm[: int(0.9 * len(trainval))]]
