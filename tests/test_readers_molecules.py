"""Molecular readers (ani1x, transition1x, rmd17, md22/md17, spice) on fixtures written here in
the release layouts and on the genuine samples of ../shared/realdata: exact values after the
documented unit factors, dropped-and-counted rows, JMP's splits, class labels, and one-line
errors with nothing published for every kind of broken file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from ase import units

import fixtures_molecules as F
from atomsift.cli import main
from atomsift.data.readers import _common as C
from atomsift.data.store import Store, StoreWriter

HARTREE = units.Hartree
BOHR = units.Bohr
KCAL = units.kcal / units.mol


def run_cli(capsys, *argv):
    rc = main(list(map(str, argv)))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def prepare(capsys, dataset, source, out, *extra):
    rc, outtxt, err = run_cli(capsys, "prepare", dataset, "--source", source, "--out", out, "--json", *extra)
    assert rc == 0, err
    return Store(out), json.loads(outtxt)


def manifest(out) -> dict:
    return json.loads((Path(out) / "manifest.json").read_text())


# ------------------------------------------------------------------------------------------ helpers


def test_unit_factors_are_ase_codata():
    assert C.HARTREE == units.Hartree == pytest.approx(27.211386024367243, abs=0)
    assert C.BOHR == units.Bohr
    assert C.KCAL_MOL == units.kcal / units.mol
    # JMP divides by 23.061: 1.96e-5 relatively less than ase's kcal/mol
    assert (C.KCAL_MOL * 23.061 - 1) == pytest.approx(1.96e-5, rel=1e-2)


def test_formula_in_hill_order():
    from atomsift.data.store import formula

    assert formula([6, 1, 1, 1, 1]) == "CH4" and formula([8, 1, 1]) == "H2O" and formula([17, 11]) == "ClNa"
    assert formula([6, 6, 1, 8, 7, 9]) == "C2HFNO" and formula([9, 1]) == "HF"  # ASE's Hill: H second even without C
    assert formula([29, 29, 8, 8, 6, 6, 1, 1, 1, 1], reduced=True) == "CH2CuO" and formula([29, 29, 8, 8], reduced=True) == "CuO"
    assert formula([6, 8, 8], reduced=True) == "CO2" and formula([78, 78, 72, 72, 72, 72], reduced=True) == "Hf2Pt"


def test_add_many_matches_add_and_its_messages(tmp_path):
    rng = np.random.default_rng(3)
    na = rng.integers(1, 6, 40)
    a = int(na.sum())
    z, pos, e, f = rng.integers(1, 10, a), rng.normal(size=(a, 3)), rng.normal(size=40), rng.normal(size=(a, 3))
    kw = dict(dataset="t", reader="t", has_energy=True, has_forces=True, has_sid=True, chunk_size=7)
    with StoreWriter(tmp_path / "many", **kw) as w:
        w.add_many(z, pos, natoms=na, energy=e, forces=f, sid=np.arange(40), cls=[f"c{i % 3}" for i in range(40)])
    off = np.concatenate([[0], np.cumsum(na)])
    with StoreWriter(tmp_path / "one", **kw) as w:
        for k in range(40):
            s = slice(off[k], off[k + 1])
            w.add(z[s], pos[s], energy=e[k], forces=f[s], sid=k, cls=f"c{k % 3}")
    for name in ("numbers", "positions", "energy", "forces", "sid", "class_index", "offsets", "cell", "pbc"):
        assert np.array_equal(np.load(tmp_path / "many" / f"{name}.npy"), np.load(tmp_path / "one" / f"{name}.npy")), name
    errors = []
    for mode in ("many", "one"):
        bad = f.copy()
        bad[off[17] + 1, 2] = np.nan
        with pytest.raises(Exception) as ei:
            with StoreWriter(tmp_path / "bad", source="x.h5", **kw) as w:
                if mode == "many":
                    w.add_many(z, pos, natoms=na, energy=e, forces=bad, where=lambda i: f"frame {i}")
                else:
                    for k in range(40):
                        s = slice(off[k], off[k + 1])
                        w.add(z[s], pos[s], energy=e[k], forces=bad[s], where=f"frame {k}")
        errors.append(str(ei.value))
    assert errors[0] == errors[1] == "x.h5: field 'forces': frame 17: non-finite value"
    assert not (tmp_path / "bad").exists()


def test_split_helpers_follow_jmp_rules():
    perm = np.arange(1200)
    np.random.RandomState(42).shuffle(perm)
    s = C.sized_split(1200, 950, 50, 42)
    assert np.array_equal(s["train"], np.sort(perm[:950])) and np.array_equal(s["val"], np.sort(perm[950:1000]))
    assert np.array_equal(s["test"], np.sort(perm[1000:]))
    fr = C.fraction_split(55, 42)
    assert [fr[k].size for k in ("train", "val", "test")] == [44, 6, 5]  # int(44.0), 55-44-5, int(5.5)
    assert np.array_equal(np.sort(np.concatenate(list(fr.values()))), np.arange(55))


# ------------------------------------------------------------------------------------------ ANI-1x


def _expected_ani_split(kept: list[tuple[str, int]], total_finite: int, seed: int) -> dict[str, set[str]]:
    """JMP's ani1x_splits.get_split, re-done from its description: shuffle, fill val, then test."""
    order = np.arange(len(kept))
    np.random.RandomState(seed).shuffle(order)
    target = int(0.1 * total_finite)
    out, pos = {}, 0
    for name in ("val", "test"):
        out[name], count = set(), 0
        while pos < len(order):
            out[name].add(kept[order[pos]][0])
            count += kept[order[pos]][1]
            pos += 1
            if count >= target:
                break
    out["train"] = {kept[i][0] for i in order[pos:]}
    return out


def test_ani1x_fixture_values_drops_classes_and_split(tmp_path, capsys):
    src = F.write_ani1x(tmp_path / "ani1x-release.h5")
    store, info = prepare(capsys, "ani1x", src, tmp_path / "out")
    kept = sorted((k, m) for k, (f, m) in F.ANI1X_SPEC.items() if sum(f.values()) >= 4)
    assert info["n_structures"] == sum(m for _, m in kept) == 18
    assert info["n_classes"] == len(kept) and sorted(store.classes) == [k for k, _ in kept]
    prov = manifest(tmp_path / "out")["provenance"]
    assert prov["dropped_small_formulas"] == 2 and prov["dropped_small_conformers"] == 6  # H2O1 (5) + N2 (1)
    assert prov["dropped_nan_conformers"] == 0
    with h5py.File(src) as f:
        names = sorted(f)
        for rec in store:
            g = f[rec.cls]
            i = int(np.sum([r.cls == rec.cls for r in store][: rec.index]))  # conformer index in the group
            assert rec.energy == g["wb97x_dz.energy"][i] * HARTREE
            assert np.array_equal(rec.forces, g["wb97x_dz.forces"][i].astype(np.float64) * HARTREE)
            assert np.array_equal(rec.positions, g["coordinates"][i].astype(np.float64))
            assert rec.numbers.tolist() == g["atomic_numbers"][()].tolist()
            assert rec.sid == names.index(rec.cls)
    # split: whole formulas, as JMP's greedy rule with RandomState(42), val first
    expected = _expected_ani_split(kept, total_finite=24, seed=42)
    for split in ("train", "val", "test"):
        got = {store.record(int(i)).cls for i in store.split(split)}
        assert got == expected[split], split
    assert sum(info["splits"].values()) == info["n_structures"]


def test_ani1x_energy_key_drops_and_counts_nan_rows(tmp_path, capsys):
    src = F.write_ani1x(tmp_path / "a.h5")
    store, info = prepare(capsys, "ani1x", src, tmp_path / "out", "--energy-key", "ccsd(t)_cbs.energy")
    assert info["n_structures"] == 16 and "forces" not in info["fields"]
    assert manifest(tmp_path / "out")["provenance"]["dropped_nan_conformers"] == 2
    with h5py.File(src) as f:
        raw = f["C2H6O1"]["ccsd(t)_cbs.energy"][()]
    got = [r.energy for r in store if r.cls == "C2H6O1"]
    assert got == [raw[0] * HARTREE, raw[2] * HARTREE]  # rows 1 and 3 are NaN
    store, info = prepare(capsys, "ani1x", src, tmp_path / "tz", "--energy-key", "wb97x_tz.energy")
    assert "forces" in info["fields"] and manifest(tmp_path / "tz")["provenance"]["forces_key"] == "wb97x_tz.forces"


def test_ani1x_split_size_is_ten_percent_of_frames(tmp_path, capsys):
    spec = {f"C{1 + g % 5}H{4 + g}O{g % 3}": ({6: 1 + g % 5, 1: 4 + g, 8: g % 3}, 5 + (7 * g) % 23) for g in range(40)}
    src = F.write_ani1x(tmp_path / "a.h5", spec=spec, nan_ccsd={})
    store, info = prepare(capsys, "ani1x", src, tmp_path / "o", "--seed", "7")
    total = sum(m for _, m in spec.values())
    for split in ("val", "test"):
        assert info["splits"][split] >= int(0.1 * total)
        classes = {store.record(int(i)).cls for i in store.split(split)}
        others = {store.record(int(i)).cls for s in ("train", "val", "test") if s != split for i in store.split(s)}
        assert not classes & others
    store2, info2 = prepare(capsys, "ani1x", src, tmp_path / "o2", "--seed", "7")
    assert all(np.array_equal(store.split(s), store2.split(s)) for s in ("train", "val", "test"))
    _, info3 = prepare(capsys, "ani1x", src, tmp_path / "o3", "--seed", "8")
    assert info3["splits"] != info["splits"] or not np.array_equal(Store(tmp_path / "o3").split("val"), store.split("val"))


def test_ani1x_genuine_sample(realdata, tmp_path, capsys):
    src = realdata / "ani1x" / "ani1x_n5.hdf5"
    store, info = prepare(capsys, "ani1x", src, tmp_path / "out")
    assert info["n_structures"] == 8 and info["n_classes"] == 5 and info["elements"] == [1, 6, 7, 8]
    rc, out, _ = run_cli(capsys, "info", tmp_path / "out", "--json")
    assert rc == 0 and json.loads(out)["n_structures"] == 8 and sum(json.loads(out)["splits"].values()) == 8
    first = store[0]
    assert first.cls == "C1H4N4O4"
    assert first.energy == pytest.approx(-559.96732665 * HARTREE, abs=1e-6)
    with h5py.File(src) as f:
        raw = f["C1H4N4O4"]["wb97x_dz.energy"][0]
        assert raw == pytest.approx(-559.96732665, abs=5e-9)
        assert first.energy == raw * HARTREE  # exactly the raw number times the documented factor
        assert np.array_equal(first.forces, f["C1H4N4O4"]["wb97x_dz.forces"][0].astype(np.float64) * HARTREE)
    assert first.positions[0].tolist() == pytest.approx([1.0234026, 0.82911, 0.10283028], abs=1e-7)
    _, info = prepare(capsys, "ani1x", src, tmp_path / "cc", "--energy-key", "ccsd(t)_cbs.energy")
    assert info["n_structures"] == 6 and manifest(tmp_path / "cc")["provenance"]["dropped_nan_conformers"] == 2


# ----------------------------------------------------------------------------------- Transition-1x


def test_transition1x_official_split_classes_and_values(tmp_path, capsys):
    src = F.write_t1x(tmp_path / "transition1x.h5")
    store, info = prepare(capsys, "transition1x", src, tmp_path / "out")
    frames = {s: sum(m for rx in g.values() for m in rx.values()) for s, g in F.T1X_SPEC.items()}
    assert info["splits"] == frames  # path frames only: no reactant/TS/product copies
    assert info["n_structures"] == sum(frames.values()) and info["n_classes"] == 4
    with h5py.File(src) as f:
        for split, groups in F.T1X_SPEC.items():
            recs = [store.record(int(i)) for i in store.split(split)]
            assert {r.cls for r in recs} == set(groups)
            k = 0
            for formula in sorted(groups):
                for rxn in sorted(groups[formula]):
                    g = f[f"data/{formula}/rxn{rxn:04d}"]
                    for t in range(groups[formula][rxn]):
                        r = recs[k]
                        assert (r.cls, r.sid) == (formula, rxn)
                        assert r.energy == g[F.T1X_EKEY][t] and np.array_equal(r.forces, g[F.T1X_FKEY][t])
                        assert np.array_equal(r.positions, g["positions"][t])
                        k += 1
            assert k == len(recs)


def test_transition1x_link_errors(tmp_path, capsys):
    tree = F.t1x_tree()
    tree["val"]["C2H2O2"] = h5py.SoftLink("/data/C2H2O2")  # a formula in two splits
    src = F.write_h5(tmp_path / "twice.h5", tree)
    rc, _, err = run_cli(capsys, "prepare", "transition1x", "--source", src, "--out", tmp_path / "o")
    assert rc == 2 and "field '/val/C2H2O2': formula is in both /train and /val" in err
    tree = F.t1x_tree()
    tree["test"]["C9H9"] = h5py.SoftLink("/data/C9H9")  # dangling
    src = F.write_h5(tmp_path / "dangling.h5", tree)
    rc, _, err = run_cli(capsys, "prepare", "transition1x", "--source", src, "--out", tmp_path / "o")
    assert rc == 2 and "field '/test/C9H9': cannot resolve link -> /data/C9H9" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------- rMD17


def test_rmd17_split_units_and_subset(tmp_path, capsys):
    arrays = F.rmd17_arrays(m=1200)
    d = tmp_path / "rmd17" / "npz_data"
    d.mkdir(parents=True)
    F.write_npz(d / "rmd17_ethanol.npz", arrays)
    F.write_npz(d / "rmd17_naphthalene.npz", F.rmd17_arrays(m=1001, numbers=[6] * 10 + [1] * 8))
    store, info = prepare(capsys, "rmd17", tmp_path / "rmd17", tmp_path / "out", "--subset", "ethanol")
    assert info["splits"] == {"train": 950, "val": 50, "test": 200} and store.classes == ["ethanol"]
    perm = np.arange(1200)
    np.random.RandomState(42).shuffle(perm)
    assert np.array_equal(store.split("train"), np.sort(perm[:950]))
    assert np.array_equal(store.split("val"), np.sort(perm[950:1000]))
    for i in (0, 517, 1199):
        r = store[i]
        assert r.sid == i and r.energy == arrays["energies"][i] * KCAL
        assert np.array_equal(r.forces, arrays["forces"][i] * KCAL) and np.array_equal(r.positions, arrays["coords"][i])
    # JMP's alias, and the default molecule (aspirin) missing from the directory
    _, info = prepare(capsys, "rmd17", tmp_path / "rmd17", tmp_path / "n", "--subset", "napthalene")
    assert info["splits"] == {"train": 950, "val": 50, "test": 1}
    rc, _, err = run_cli(capsys, "prepare", "rmd17", "--source", tmp_path / "rmd17", "--out", tmp_path / "x")
    assert rc == 2 and "no rmd17_aspirin.npz" in err
    rc, _, err = run_cli(capsys, "prepare", "rmd17", "--source", d / "rmd17_ethanol.npz", "--out", tmp_path / "x",
                         "--subset", "toluene")
    assert rc == 2 and "does not match the file" in err


def test_rmd17_real_ethanol_values(realdata, tmp_path, capsys):
    arrays = F.ethanol_from_xyz(realdata / "rmd17_realvalues" / "ethanol_reduced_100.xyz")
    src = F.write_npz(tmp_path / "rmd17_ethanol.npz", arrays)
    store, info = prepare(capsys, "rmd17", src, tmp_path / "out")
    assert info["n_structures"] == 100 and store[0].numbers.tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    e = store.array("energy")
    assert np.array_equal(e, arrays["energies"] * KCAL)
    assert -97084.4 * KCAL < e.min() and e.max() < -97062.4 * KCAL  # the range PROVENANCE.txt gives, in eV
    assert sum(info["splits"].values()) == 100  # a 100-frame source: 80 train+val (4 val), 20 test
    assert info["splits"] == {"train": 76, "val": 4, "test": 20}


# ----------------------------------------------------------------------------------- MD22 / MD17


@pytest.mark.parametrize("mol,train_size", [
    ("Ac-Ala3-NHMe", 6000), ("DHA", 8000), ("stachyose", 8000), ("AT-AT", 3000), ("AT-AT-CG-CG", 2000),
    ("buckyball-catcher", 600), ("double-walled_nanotube", 800)])
def test_md22_jmp_train_sizes(tmp_path, capsys, mol, train_size):
    m = train_size + 11
    arrays = F.sgdml_arrays(m=m, numbers=(6, 1, 1, 8), name=mol)
    assert arrays["E"].shape == (m, 1)
    src = F.write_npz(tmp_path / f"md22_{mol}.npz", arrays)
    store, info = prepare(capsys, "md22", src, tmp_path / "out")
    n_val = int(train_size * 0.05)
    assert info["splits"] == {"train": train_size - n_val, "val": n_val, "test": 11}
    perm = np.arange(m)
    np.random.RandomState(42).shuffle(perm)
    assert np.array_equal(store.split("val"), np.sort(perm[train_size - n_val:train_size]))
    assert store.classes == [mol]
    assert np.array_equal(store.array("energy"), arrays["E"][:, 0] * KCAL)
    assert np.array_equal(np.asarray(store.array("forces")).reshape(m, 4, 3), arrays["F"] * KCAL)


def test_md22_directory_subset_and_units(tmp_path, capsys):
    F.write_npz(tmp_path / "md22_AT-AT.npz", F.sgdml_arrays(m=50, name="AT-AT"))
    F.write_npz(tmp_path / "md22_DHA.npz", F.sgdml_arrays(m=40, name="DHA", e_unit="eV", column=False))
    _, info = prepare(capsys, "md22", tmp_path, tmp_path / "o1", "--subset", "at-at")
    assert info["n_structures"] == 50 and info["level_of_theory"] == "PBE+MBD, 500K"
    store, info = prepare(capsys, "md22", tmp_path, tmp_path / "o2", "--subset", "DHA")
    raw = np.load(tmp_path / "md22_DHA.npz")["E"]
    assert np.array_equal(store.array("energy"), raw)  # e_unit eV: no conversion
    rc, _, err = run_cli(capsys, "prepare", "md22", "--source", tmp_path, "--out", tmp_path / "o3")
    assert rc == 2 and "no md22_Ac-Ala3-NHMe.npz" in err and "AT-AT, DHA" in err


def test_md17_pickled_metadata_is_not_unpickled(tmp_path, capsys):
    arrays = F.sgdml_arrays(m=1100, numbers=(6, 6, 8, 1, 1, 1, 1, 1, 1), name="ethanol", e_unit=None)
    for k in ("name", "theory", "r_unit"):
        arrays[k] = np.array([arrays[k].item()], dtype=object)  # old MD17 files: pickled object arrays
    src = tmp_path / "md17_ethanol.npz"
    np.savez(src, **arrays)
    store, info = prepare(capsys, "md17", src, tmp_path / "out")
    assert info["splits"] == {"train": 950, "val": 50, "test": 100} and store.classes == ["ethanol"]
    assert info["level_of_theory"] == "PBE+vdW-TS"  # the pickled 'theory' was skipped
    assert np.array_equal(store.array("energy"), arrays["E"][:, 0] * KCAL)


# ------------------------------------------------------------------------------------------- SPICE


def test_spice_genuine_sample(realdata, tmp_path, capsys):
    src = realdata / "spice" / "SPICE-1.1.4_n2.hdf5"
    store, info = prepare(capsys, "spice", src, tmp_path / "out")
    assert info["n_structures"] == 55 and info["n_classes"] == 2 and info["targets"] == ["formation_energy"]
    assert info["splits"] == {"train": 44, "val": 6, "test": 5}
    rc, out, _ = run_cli(capsys, "info", tmp_path / "out", "--json")
    assert rc == 0 and json.loads(out)["elements"] == [1, 6, 7, 11]
    with h5py.File(src) as f:
        k = 0
        for name in f:
            g = f[name]
            for c in range(g["conformations"].shape[0]):
                r = store[k]
                assert r.cls == name
                grad = g["dft_total_gradient"][c].astype(np.float64)
                assert np.array_equal(r.forces, -(grad * (HARTREE / BOHR)))
                assert np.all(np.sign(r.forces) == -np.sign(grad))  # forces point down the gradient
                assert np.array_equal(r.positions, g["conformations"][c].astype(np.float64) * BOHR)
                assert r.energy == g["dft_total_energy"][c] * HARTREE
                assert r.targets["formation_energy"] == g["formation_energy"][c] * HARTREE
                k += 1
    acetylide = [r for r in store if r.cls == "C#C.[Na+]"]
    assert len(acetylide) == 5 and acetylide[0].energy == pytest.approx(-239.52140641 * HARTREE, abs=1e-6)
    _, info = prepare(capsys, "spice", src, tmp_path / "des", "--subset", "DES370K")
    assert info["n_structures"] == 5


def test_spice_subsets_and_jmp_files(tmp_path, capsys):
    src = F.write_spice(tmp_path / "SPICE-1.1.4.hdf5")
    store, info = prepare(capsys, "spice", src, tmp_path / "dip", "--subset", "dipeptides")
    assert info["n_structures"] == 11 and sorted(store.classes) == ["ACE-ALA-NME", "ACE-GLY-NME"]
    # JMP's per-subset files have no 'subset' dataset: the file name stands in
    d = tmp_path / "jmp"
    d.mkdir()
    F.write_spice(d / "solvated_amino_acids.h5", spec={"ALA": ({6: 3, 1: 9, 7: 1, 8: 3}, 30, None)}, with_subset=False)
    F.write_spice(d / "dipeptides.h5", spec={"ACE-ALA-NME": ({6: 6, 1: 12, 7: 2, 8: 2}, 20, None)}, with_subset=False)
    _, info = prepare(capsys, "spice", d, tmp_path / "saa", "--subset", "solvated amino acids")
    assert info["n_structures"] == 30 and info["splits"] == {"train": 24, "val": 3, "test": 3}
    _, info = prepare(capsys, "spice", d / "dipeptides.h5", tmp_path / "dp", "--subset", "Dipeptides")
    assert info["n_structures"] == 20
    rc, _, err = run_cli(capsys, "prepare", "spice", "--source", src, "--out", tmp_path / "x", "--subset", "ion pairs")
    assert rc == 2 and "no molecule's subset contains 'ion pairs'" in err


def test_spice_refuses_input_files_in_nanometres(tmp_path, capsys):
    tree = F.spice_tree()
    tree["103147721"]["conformations"].attrs["units"] = "nanometer"  # every group is checked (a later one: test_hostile_inputs)
    src = F.write_h5(tmp_path / "s.h5", tree)
    rc, _, err = run_cli(capsys, "prepare", "spice", "--source", src, "--out", tmp_path / "x")
    assert rc == 2 and "field '103147721/conformations': units are 'nanometer', expected 'bohr'" in err


# -------------------------------------------------------------------------------- broken sources


def _mutate_h5(tree_fn, group_path, key, value):
    def make(path):
        tree = tree_fn()
        g = tree
        for part in group_path:
            g = g[part]
        if value is None:
            del g[key]
        else:
            g[key] = value
        return F.write_h5(path, tree)
    return make


def _npz(arrays_fn, key, value):
    def make(path):
        arrays = arrays_fn()
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value(arrays) if callable(value) else value
        return F.write_npz(path, arrays)
    return make


_ANI = ("C2H6O1",)
_T1X = ("data", "C3H4O", "rxn0007")
_SP = ("ACE-GLY-NME",)


def _inf_at(a, i):
    a = a.copy()
    a.reshape(a.shape[0], -1)[i, 0] = np.inf
    return a


def _nan_at(a, i):
    a = a.copy()
    a.reshape(a.shape[0], -1)[i, 0] = np.nan
    return a


def _empty_group(tree_fn, group_path):
    def make(path):
        tree = tree_fn()
        g = tree
        for part in group_path[:-1]:
            g = g[part]
        grp = g[group_path[-1]]
        for key, val in list(grp.items()):
            if isinstance(val, np.ndarray) and val.ndim >= 1 and key != "atomic_numbers":
                grp[key] = val[:0]
            elif isinstance(val, F.Attrs):
                grp[key] = F.Attrs(val.value[:0], **val.attrs)
        return F.write_h5(path, tree)
    return make


ani = F.ani1x_tree
t1x = F.t1x_tree
spc = F.spice_tree
rmd = lambda: F.rmd17_arrays(m=30)  # noqa: E731
sgd = lambda: F.sgdml_arrays(m=30, name="DHA")  # noqa: E731

BROKEN = {
    # name: (dataset, file name, maker, substrings of the one-line error)
    "ani1x-missing-key": ("ani1x", "a.h5", _mutate_h5(ani, _ANI, "wb97x_dz.forces", None),
                          ["field 'C2H6O1/wb97x_dz.forces': missing dataset"]),
    "ani1x-dtype": ("ani1x", "a.h5", _mutate_h5(ani, _ANI, "coordinates", np.full((4, 9, 3), b"x", dtype="S1")),
                    ["field 'C2H6O1/coordinates': expected a numeric array, got dtype |S1"]),
    "ani1x-shape": ("ani1x", "a.h5", _mutate_h5(ani, _ANI, "wb97x_dz.forces", np.zeros((4, 9, 2), np.float32)),
                    ["field 'C2H6O1/wb97x_dz.forces': expected shape (4, 9, 3), got (4, 9, 2)"]),
    "ani1x-inf-label": ("ani1x", "a.h5", lambda p: _mutate_h5(ani, _ANI, "wb97x_dz.energy",
                                                             _inf_at(F.ani1x_tree()["C2H6O1"]["wb97x_dz.energy"], 2))(p),
                        ["field 'C2H6O1/wb97x_dz.energy': conformer 2: infinite value"]),
    "ani1x-nan-coordinates": ("ani1x", "a.h5", lambda p: _mutate_h5(ani, _ANI, "coordinates",
                                                                   _nan_at(F.ani1x_tree()["C2H6O1"]["coordinates"], 3))(p),
                              ["field 'C2H6O1/coordinates': conformer 3: non-finite value (nan)"]),
    "ani1x-empty-group": ("ani1x", "a.h5", _empty_group(ani, _ANI), ["field 'C2H6O1/coordinates': empty group: 0 conformers"]),
    "ani1x-bad-z": ("ani1x", "a.h5", _mutate_h5(ani, _ANI, "atomic_numbers", np.array([6, 6, 8, 1, 1, 1, 1, 1, 0], np.uint8)),
                    ["field 'C2H6O1/atomic_numbers': atom 8: atomic number 0 outside 1..118"]),
    "t1x-missing-key": ("transition1x", "t.h5", _mutate_h5(t1x, _T1X, F.T1X_FKEY, None),
                        ["C3H4O/rxn0007/wB97x_6-31G(d).forces': missing dataset"]),
    "t1x-dtype": ("transition1x", "t.h5", _mutate_h5(t1x, _T1X, "atomic_numbers", np.array([6.0, 6, 6, 1, 1, 1, 1, 8])),
                  ["C3H4O/rxn0007/atomic_numbers': expected an integer array, got dtype float64"]),
    "t1x-shape": ("transition1x", "t.h5", _mutate_h5(t1x, _T1X, F.T1X_EKEY, np.zeros((3, 1))),
                  ["C3H4O/rxn0007/wB97x_6-31G(d).energy': expected shape (3,), got (3, 1)"]),
    "t1x-nan-label": ("transition1x", "t.h5", lambda p: _mutate_h5(t1x, _T1X, F.T1X_EKEY,
                                                                  _nan_at(F.t1x_tree()["data"]["C3H4O"]["rxn0007"][F.T1X_EKEY], 1))(p),
                      ["C3H4O/rxn0007/wB97x_6-31G(d).energy': frame 1: non-finite value (nan)"]),
    "t1x-empty-group": ("transition1x", "t.h5", _empty_group(t1x, _T1X), ["C3H4O/rxn0007/positions': empty group: 0 frames"]),
    "t1x-no-reactions": ("transition1x", "t.h5", lambda p: F.write_h5(p, {**F.t1x_tree(), "data": {**F.t1x_tree()["data"], "C3H4O": {}}}),
                         ["field '/train/C3H4O': empty group: no reactions"]),
    "t1x-missing-split": ("transition1x", "t.h5", lambda p: F.write_h5(p, {k: v for k, v in F.t1x_tree().items() if k != "val"}),
                          ["field '/val': missing split group(s) /val"]),
    "spice-missing-key": ("spice", "s.hdf5", _mutate_h5(spc, _SP, "dft_total_gradient", None),
                          ["field 'ACE-GLY-NME/dft_total_gradient': missing dataset"]),
    "spice-dtype": ("spice", "s.hdf5", _mutate_h5(spc, _SP, "formation_energy", np.array([b"a"] * 5)),
                    ["field 'ACE-GLY-NME/formation_energy': expected a numeric array, got dtype |S1"]),
    "spice-shape": ("spice", "s.hdf5", _mutate_h5(spc, _SP, "dft_total_energy", np.zeros(4)),
                    ["field 'ACE-GLY-NME/dft_total_energy': expected shape (5,), got (4,)"]),
    "spice-nan-label": ("spice", "s.hdf5", lambda p: _mutate_h5(spc, _SP, "dft_total_energy",
                                                               _nan_at(F.spice_tree()["ACE-GLY-NME"]["dft_total_energy"].value, 4))(p),
                        ["field 'ACE-GLY-NME/dft_total_energy': conformer 4: non-finite value (nan)"]),
    "spice-empty-group": ("spice", "s.hdf5", _empty_group(spc, _SP), ["field 'ACE-GLY-NME/conformations': empty group: 0 conformations"]),
    "rmd17-missing-key": ("rmd17", "rmd17_ethanol.npz", _npz(rmd, "energies", None), ["field 'energies': missing key"]),
    "rmd17-dtype": ("rmd17", "rmd17_ethanol.npz", _npz(rmd, "coords", np.full((30, 9, 3), "x")),
                    ["field 'coords': expected a numeric array, got dtype <U1"]),
    "rmd17-shape": ("rmd17", "rmd17_ethanol.npz", _npz(rmd, "forces", lambda a: a["forces"][:, :8]),
                    ["field 'forces': expected shape (30, 9, 3), got (30, 8, 3)"]),
    "rmd17-nan-label": ("rmd17", "rmd17_ethanol.npz", _npz(rmd, "forces", lambda a: _nan_at(a["forces"], 12)),
                        ["field 'forces': frame 12: non-finite value (nan)"]),
    "rmd17-empty": ("rmd17", "rmd17_ethanol.npz", _npz(rmd, "coords", np.zeros((0, 9, 3))), ["field 'coords': no frames"]),
    "md22-missing-key": ("md22", "md22_DHA.npz", _npz(sgd, "F", None), ["field 'F': missing key"]),
    "md22-dtype": ("md22", "md22_DHA.npz", _npz(sgd, "R", lambda a: a["R"].astype(str)),
                   ["field 'R': expected a numeric array, got dtype <U"]),
    "md22-bad-z": ("md22", "md22_DHA.npz", _npz(sgd, "z", np.array([6.5] * 12)), ["field 'z': atomic numbers must be integers"]),
    "md22-shape": ("md22", "md22_DHA.npz", _npz(sgd, "E", lambda a: np.zeros((30, 2))),
                   ["field 'E': expected shape (30,) or (30, 1), got (30, 2)"]),
    "md22-nan-label": ("md22", "md22_DHA.npz", _npz(sgd, "E", lambda a: _nan_at(a["E"], 29)),
                       ["field 'E': frame 29: non-finite value (nan)"]),
    "md22-empty": ("md22", "md22_DHA.npz", _npz(sgd, "R", np.zeros((0, 12, 3))), ["field 'R': no frames"]),
}


def _truncated(maker):
    def make(path):
        maker(path)
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.truncate(size // 2)
        return path
    return make


for _ds, _fname, _maker in [("ani1x", "a.h5", lambda p: F.write_h5(p, F.ani1x_tree())),
                            ("transition1x", "t.h5", lambda p: F.write_h5(p, F.t1x_tree())),
                            ("spice", "s.hdf5", lambda p: F.write_h5(p, F.spice_tree())),
                            ("rmd17", "rmd17_ethanol.npz", _npz(rmd, "old_indices", np.arange(30))),
                            ("md22", "md22_DHA.npz", _npz(sgd, "perms", np.zeros((1, 12), np.int64)))]:
    BROKEN[f"{_ds}-truncated"] = (_ds, _fname, _truncated(_maker), ["cannot open as"])


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_source_is_one_line_exit_2_and_publishes_nothing(tmp_path, capsys, case):
    dataset, fname, make, expected = BROKEN[case]
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    src = make(src_dir / fname)
    out_dir = tmp_path / "stores"
    out_dir.mkdir()
    rc, out, err = run_cli(capsys, "prepare", dataset, "--source", src, "--out", out_dir / "x")
    assert rc == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"atomsift prepare: error: {src}"), lines[0]
    for s in expected:
        assert s in lines[0], lines[0]
    assert os.listdir(out_dir) == []  # nothing published, no temporary directory left behind


def test_bench_prepare_runs(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    mine = ["ani1x", "transition1x", "rmd17", "md22", "spice"]
    res = subprocess.run([sys.executable, str(root / "bench" / "prepare.py"), *mine, "--n", "300", "--json", "--tmp", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    got = {r["dataset"]: r["structures"] for r in data["results"]}
    for name in mine:
        assert got[name] >= 250, got
