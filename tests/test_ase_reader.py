"""`atomsift prepare ase`: users' own data through ASE (extxyz, ASE db, JSON db, traj)."""

import json
import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import add_adsorbate, fcc111, molecule
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms

import ase.db
import ase.io
from atomsift.data.readers import prepare
from atomsift.data.readers.ase_reader import random_split
from atomsift.data.store import Store
from atomsift.errors import InputError


def _slabs(n=12):
    """EMT-labelled Cu(111) slabs with an O adsorbate: pbc, cell, tags, FixAtoms, energy, forces."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        s = fcc111("Cu", (2, 2, 3), vacuum=5.0)
        add_adsorbate(s, "O", 1.5, "fcc")
        del s.info["adsorbate_info"]  # a dict extxyz cannot write
        s.set_constraint(FixAtoms(indices=[0, 1, 2, 3][: 1 + i % 4]))
        s.rattle(0.05, seed=i)
        s.positions[-1] += rng.normal(scale=0.1, size=3)
        s.calc = EMT()
        s.get_forces()
        out.append(s)
    return out


def _check_same(store, images, energy=True):
    assert len(store) == len(images)
    for i, a in enumerate(images):
        r = store[i]
        np.testing.assert_array_equal(r.numbers, a.numbers)
        np.testing.assert_allclose(r.positions, a.positions, rtol=0, atol=1e-7)  # extxyz keeps 8 decimals
        np.testing.assert_allclose(r.cell, a.cell.array, rtol=0, atol=1e-7)  # extxyz keeps 8 decimals
        np.testing.assert_array_equal(r.pbc, a.pbc)
        np.testing.assert_array_equal(r.tags, a.get_tags())
        fixed = np.zeros(len(a), bool)
        for c in a.constraints:
            fixed[c.get_indices()] = True
        np.testing.assert_array_equal(r.fixed, fixed)
        if energy:
            assert r.energy == pytest.approx(a.get_potential_energy(), rel=0, abs=1e-9)
            np.testing.assert_allclose(r.forces, a.get_forces(apply_constraint=False), rtol=0, atol=1e-7)  # extxyz keeps 8 decimals
        assert r.cls == a.get_chemical_formula("hill")


@pytest.mark.parametrize("ext", ["extxyz", "traj", "db", "json"])
def test_calculator_energy_forces_tags_fixed_cell_pbc_kept(tmp_path, ext):
    images = _slabs()
    src = tmp_path / f"slabs.{ext}"
    ase.io.write(src, images)
    out = prepare("ase", src, tmp_path / "store")
    s = Store(out)
    assert s.dataset == "ase" and s.manifest["reader"]["name"] == "ase"
    assert set(s.fields) >= {"energy", "forces", "tags", "fixed", "cell", "pbc"}
    _check_same(s, images)
    assert s.classes == ["Cu12O"]  # the Hill formula
    assert s.info()["splits"] == {"train": 9, "val": 2, "test": 1}
    assert s.manifest["units"]["energy"] == "eV" and s.manifest["units"]["forces"] == "eV/Angstrom"


def test_split_is_seeded_80_10_10_partition():
    sp = random_split(1000, 42)
    assert [sp[k].size for k in ("train", "val", "test")] == [800, 100, 100]
    allidx = np.concatenate(list(sp.values()))
    assert np.array_equal(np.sort(allidx), np.arange(1000))
    perm = np.random.RandomState(42).permutation(1000)
    assert np.array_equal(sp["train"], np.sort(perm[:800]))
    assert np.array_equal(sp["test"], np.sort(perm[900:]))
    other = random_split(1000, 7)
    assert not np.array_equal(other["test"], sp["test"])
    small = random_split(5, 42)
    assert [small[k].size for k in ("train", "val", "test")] == [3, 1, 1]


def test_named_info_and_arrays_keys_and_class_key(tmp_path):
    mols = []
    for i, name in enumerate(["CH4", "H2O", "CH3OH", "NH3", "CH4"]):
        m = molecule(name)
        m.info["dft_energy"] = -10.0 * (i + 1) - 0.125
        m.arrays["dft_forces"] = np.arange(3 * len(m), dtype=float).reshape(-1, 3) * (i + 1)
        m.info["family"] = "alkane" if "C" in name else "hydride"
        mols.append(m)
    src = tmp_path / "mols.xyz"
    ase.io.write(src, mols, format="extxyz")
    s = Store(prepare("ase", src, tmp_path / "s", energy_key="dft_energy", forces_key="dft_forces", class_key="family"))
    for i, m in enumerate(mols):
        r = s[i]
        assert r.energy == -10.0 * (i + 1) - 0.125
        np.testing.assert_array_equal(r.forces, np.arange(3 * len(m)).reshape(-1, 3) * (i + 1))
        assert r.cls == m.info["family"]
    assert s.classes == ["alkane", "hydride"]
    # default class label: the Hill formula
    s2 = Store(prepare("ase", src, tmp_path / "s2", energy_key="dft_energy"))
    assert [s2[i].cls for i in range(5)] == ["CH4", "H2O", "CH4O", "H3N", "CH4"]
    assert not s2.has("forces")


def test_ase_db_key_value_pairs_as_class_and_energy(tmp_path):
    src = tmp_path / "my.db"
    with ase.db.connect(src) as db:
        for i, name in enumerate(["H2", "N2", "O2"]):
            db.write(molecule(name), phase="gas" if i else "ref", eref=-1.5 * i)
    s = Store(prepare("ase", src, tmp_path / "s", energy_key="eref", class_key="phase"))
    assert [s[i].energy for i in range(3)] == [0.0, -1.5, -3.0]
    assert [s[i].cls for i in range(3)] == ["ref", "gas", "gas"]


def test_structure_without_energy_after_one_with_names_index_and_field(tmp_path):
    images = _slabs(3)
    bare = images[1].copy()  # copy() drops the calculator
    src = tmp_path / "mixed.extxyz"
    ase.io.write(src, [images[0], bare, images[2]])
    out = tmp_path / "deep" / "er" / "out"
    with pytest.raises(InputError) as ei:
        prepare("ase", src, out)
    assert str(ei.value) == f"{src}: field 'energy': structure 1: missing (no calculator energy)"
    assert not (tmp_path / "deep").exists()


def test_missing_named_key_is_an_error(tmp_path):
    src = tmp_path / "a.xyz"
    ase.io.write(src, [molecule("H2O")], format="extxyz")
    with pytest.raises(InputError, match=r"field 'nope': structure 0: missing"):
        prepare("ase", src, tmp_path / "s", energy_key="nope")
    with pytest.raises(InputError, match=r"field 'grp': structure 0: class key missing"):
        prepare("ase", src, tmp_path / "s", class_key="grp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.xyz"]


@pytest.mark.parametrize(
    "name,content,msg",
    [
        ("bad.xyz", "hello\nworld\n", "cannot read as extxyz"),
        ("bad.json", '{"1": 3', "cannot read as json"),
        ("bad.db", "this is not sqlite" * 100, "cannot read as db"),
        ("bad.weird", "x", "not a file ASE can read"),
        ("empty.xyz", "", "not a file ASE can read"),
    ],
)
def test_unreadable_file_one_line_error_no_output(tmp_path, name, content, msg):
    src = tmp_path / name
    src.write_text(content)
    with pytest.raises(InputError) as ei:
        prepare("ase", src, tmp_path / "out")
    text = str(ei.value)
    assert text.startswith(f"{src}: ") and msg in text and "\n" not in text
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_missing_source(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        prepare("ase", tmp_path / "nope.xyz", tmp_path / "out")
    with pytest.raises(InputError, match="needs --source"):
        prepare("ase", None, tmp_path / "out")


def test_bad_atomic_number_names_structure(tmp_path):
    a = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    b = Atoms(numbers=[1, 0], positions=[[0, 0, 0], [0, 0, 1]])  # a ghost atom "X"
    src = tmp_path / "x.xyz"
    ase.io.write(src, [a, b], format="extxyz")
    with pytest.raises(InputError, match=r"field 'numbers': structure 1: atomic number 0 outside 1..118"):
        prepare("ase", src, tmp_path / "out")


# ------------------------------------------------------------------------------------ real files


def test_rmd17_ethanol_extxyz_values_equal_the_raw_text(realdata, tmp_path):
    src = realdata / "rmd17_realvalues" / "ethanol_reduced_100.xyz"
    s = Store(prepare("ase", src, tmp_path / "eth"))
    # independent parse of the file text
    lines = src.read_text().splitlines()
    energies, forces, pos, symbols = [], [], [], []
    i = 0
    while i < len(lines):
        n = int(lines[i])
        energies.append(float(re.search(r"energy=(\S+)", lines[i + 1]).group(1)))
        rows = [ln.split() for ln in lines[i + 2:i + 2 + n]]
        symbols.append([r[0] for r in rows])
        pos.append([[float(x) for x in r[1:4]] for r in rows])
        forces.append([[float(x) for x in r[4:7]] for r in rows])
        i += 2 + n
    assert len(s) == len(energies) == 100
    assert s.info()["splits"] == {"train": 80, "val": 10, "test": 10}
    assert s.classes == ["C2H6O"]
    for k in (0, 37, 99):
        r = s[k]
        assert r.energy == energies[k]  # stored as read (kcal/mol here: no unit conversion)
        np.testing.assert_array_equal(r.positions, pos[k])
        np.testing.assert_array_equal(r.forces, forces[k])
        assert list(r.numbers) == [{"H": 1, "C": 6, "O": 8}[x] for x in symbols[k]]
        assert not r.pbc.any() and not r.fixed.any()


def test_oc20_frame_json_db(realdata, tmp_path):
    src = realdata / "oc20" / "oc20_s2ef_frame_fairchem_atoms.json"
    s = Store(prepare("ase", src, tmp_path / "oc"))
    raw = json.loads(src.read_text())["1"]
    r = s[0]
    assert len(s) == 1 and r.natoms == 34
    assert r.energy == -135.66393572 == raw["energy"]
    np.testing.assert_array_equal(r.numbers, raw["numbers"]["__ndarray__"][2])
    np.testing.assert_allclose(r.cell, np.reshape(raw["cell"]["array"]["__ndarray__"][2], (3, 3)), rtol=0, atol=0)
    np.testing.assert_array_equal(r.forces.ravel(), raw["forces"]["__ndarray__"][2])
    assert r.pbc.tolist() == [True, True, True]
    fixed_idx = raw["constraints"][0]["kwargs"]["indices"]
    assert len(fixed_idx) == 24 and sorted(np.nonzero(r.fixed)[0].tolist()) == fixed_idx
    assert r.tags.tolist() == raw["tags"]["__ndarray__"][2]
    assert np.all(r.forces[r.fixed] == 0)
    assert r.cls == "CAl8Cu8OSe16"
