"""`atomsift prepare qm9`: the store equals the raw data (qm9pack CSV and the original xyz release).

The full qm9pack conversion runs once per session (module fixture, ~8 s); the reference values
are read straight from the CSV text with the csv module and from the xyz files by hand, not
through the reader.
"""

import ast
import csv
import json
import tarfile

import numpy as np
import pytest
from ase.data import chemical_symbols
from ase.formula import Formula
from ase.units import Hartree

from atomsift.cli import main
from atomsift.data.readers import prepare
from atomsift.data.readers.qm9 import qm9pack_dir
from atomsift.data.store import Store
from atomsift.errors import InputError

TARGETS = ["mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv"]
UNITS = {"mu": "D", "alpha": "bohr^3", "homo": "eV", "lumo": "eV", "gap": "eV", "r2": "bohr^2",
         "zpve": "eV", "U0": "eV", "U": "eV", "H": "eV", "G": "eV", "Cv": "cal/mol/K"}
# CSV column of each target and its factor to the store's unit (Hartree -> eV with ase.units)
COLUMNS = {"mu": ("Dipole_debye", 1), "alpha": ("Polarizability_bohr3", 1), "homo": ("HOMO_au", Hartree),
           "lumo": ("LUMO_au", Hartree), "gap": ("HOMO_LUMO_gap_au", Hartree), "r2": ("R2_bohr2", 1),
           "zpve": ("ZPVE_au", Hartree), "U0": ("InternalEnergy_0K_au", Hartree),
           "U": ("InternalEnergy_298K_au", Hartree), "H": ("Enthalphy_298K_au", Hartree),
           "G": ("GibbsFreeEnergy_298K_au", Hartree), "Cv": ("Heatcapacity_Cv_cal_mol_K", 1)}
SYM = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}

# molecule 1 of the release (dsgdb9nsd_000001.xyz), copied by hand from the file
CH4_XYZ = """5
gdb 1\t157.7118\t157.70997\t157.70699\t0.\t13.21\t-0.3877\t0.1171\t0.5048\t35.3641\t0.044749\t-40.47893\t-40.476062\t-40.475117\t-40.498597\t6.469\t
C\t-0.0126981359\t 1.0858041578\t 0.0080009958\t-0.535689
H\t 0.002150416\t-0.0060313176\t 0.0019761204\t 0.133921
H\t 1.0117308433\t 1.4637511618\t 0.0002765748\t 0.133922
H\t-0.540815069\t 1.4475266138\t-0.8766437152\t 0.133923
H\t-0.5238136345\t 1.4379326443\t 0.9063972942\t 0.133923
1341.307\t1341.3284\t1341.365\t1562.6731\t1562.7453\t3038.3205\t3151.6034\t3151.6788\t3151.7078
C\tC\t
InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4
"""
CH4_POS = [[-0.0126981359, 1.0858041578, 0.0080009958], [0.002150416, -0.0060313176, 0.0019761204],
           [1.0117308433, 1.4637511618, 0.0002765748], [-0.540815069, 1.4475266138, -0.8766437152],
           [-0.5238136345, 1.4379326443, 0.9063972942]]
CH4_RAW = [0.0, 13.21, -0.3877, 0.1171, 0.5048, 35.3641, 0.044749, -40.47893, -40.476062, -40.475117, -40.498597, 6.469]


@pytest.fixture(scope="module")
def qm9(tmp_path_factory):
    """The full QM9 store from qm9pack, written once through the CLI."""
    out = tmp_path_factory.mktemp("qm9") / "store"
    assert main(["prepare", "qm9", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def csv_rows():
    """Every qm9pack CSV row (dicts of strings), read with the csv module, keyed by gdb index."""
    rows = {}
    for f in sorted(qm9pack_dir().glob("qm9_part*.csv")):
        with open(f, newline="") as fh:
            for row in csv.DictReader(fh):
                rows[int(row["Index"])] = row
    return rows


def _cli_json(capsys, *argv):
    capsys.readouterr()
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_info_json_counts_splits_units(qm9, capsys, csv_rows):
    info = _cli_json(capsys, "info", str(qm9), "--json")
    assert {"n_structures", "n_atoms", "elements", "splits", "n_classes", "fields", "units"} <= info.keys()
    assert info["n_structures"] == 130_831 == len(csv_rows)
    assert info["n_atoms"] == 2_359_210 == sum(int(r["N_atoms"]) for r in csv_rows.values())
    assert info["elements"] == [1, 6, 7, 8, 9]
    assert info["splits"] == {"val": 10_000, "test": 10_000, "train": 110_831}
    assert info["units"]["energy"] == "eV" and info["units"]["positions"] == "Angstrom"
    assert info["units"]["targets"] == UNITS and info["targets"] == TARGETS
    assert info["n_classes"] == len({r["Stoichiometry"] for r in csv_rows.values()})
    assert info["level_of_theory"] == "B3LYP/6-31G(2df,p)"
    assert set(info["fields"]) >= {"numbers", "positions", "energy", "targets", "class_index"}


def test_show_molecule_1_is_ch4_from_the_raw_file(qm9, capsys):
    r = _cli_json(capsys, "show", str(qm9), "0", "--json")
    assert {"numbers", "positions", "cell", "pbc", "energy", "forces", "targets", "class"} <= r.keys()
    assert r["numbers"] == [6, 1, 1, 1, 1] and r["class"] == "CH4"
    assert r["positions"] == CH4_POS
    assert r["energy"] == pytest.approx(-40.47893 * Hartree, rel=1e-15) == pytest.approx(-1101.4877900833399, abs=1e-9)
    assert r["forces"] is None and r["pbc"] == [False] * 3 and r["cell"] == [[0.0] * 3] * 3
    for name, raw in zip(TARGETS, CH4_RAW):
        assert r["targets"][name] == pytest.approx(raw * COLUMNS[name][1], rel=1e-15, abs=0), name


def test_every_target_and_class_equals_the_csv(qm9, csv_rows):
    s = Store(qm9)
    sid = s.array("sid")
    assert np.all(np.diff(sid) > 0) and sorted(csv_rows) == sid.tolist()
    targets = s.array("targets")
    for j, name in enumerate(TARGETS):
        col, factor = COLUMNS[name]
        ref = np.array([float(csv_rows[int(k)][col]) for k in sid]) * factor
        np.testing.assert_allclose(targets[:, j], ref, rtol=1e-15, atol=0, err_msg=name)
    np.testing.assert_array_equal(s.array("energy"), targets[:, TARGETS.index("U0")])
    # class = stoichiometry: the CSV's counts [H, C, N, O, F] written as a Hill formula, one to one
    pairs = {(csv_rows[k]["Stoichiometry"], ci) for k, ci in zip(sid.tolist(), s.class_index.tolist())}
    assert len(pairs) == len(s.classes) == len({p[0] for p in pairs})
    for stoich, ci in pairs:
        h, c, n, o, f = ast.literal_eval(stoich)
        assert Formula.from_list(["H"] * h + ["C"] * c + ["N"] * n + ["O"] * o + ["F"] * f).format("hill") == s.classes[ci]


def test_sampled_positions_and_numbers_equal_the_csv(qm9, csv_rows):
    s = Store(qm9)
    sid = s.array("sid")
    rng = np.random.default_rng(0)
    picks = np.concatenate([[0, 1, len(s) - 1], rng.choice(len(s), 300, replace=False)])
    for i in picks:
        row = csv_rows[int(sid[i])]
        r = s[int(i)]
        assert r.numbers.tolist() == [SYM[e] for e in ast.literal_eval(row["Elements"])]
        np.testing.assert_array_equal(r.positions, np.array(ast.literal_eval(row["XYZ_Ang"]), dtype=float))
        assert r.cls == Formula.from_list([chemical_symbols[z] for z in r.numbers]).format("hill")
        assert r.sid == int(row["Index"])


def test_splits_are_jmps_seed_42_permutation(qm9):
    s = Store(qm9)
    perm = np.random.RandomState(42).permutation(130_831)
    assert np.array_equal(s.split("val"), np.sort(perm[:10_000]))
    assert np.array_equal(s.split("test"), np.sort(perm[10_000:20_000]))
    assert np.array_equal(s.split("train"), np.sort(perm[20_000:]))


# ---------------------------------------------------------------------------------- xyz release


def _first10(store):
    s = Store(store)
    return [s[i] for i in range(10)]


def _assert_same(recs_a, recs_b):
    for a, b in zip(recs_a, recs_b, strict=True):
        assert a.sid == b.sid and a.cls == b.cls
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.energy == b.energy and a.targets == b.targets


@pytest.mark.parametrize("which", ["xyz", "qm9_first10_dsgdb9nsd.tar.bz2"])
def test_xyz_release_gives_the_qm9pack_values(qm9, realdata, tmp_path, which):
    src = realdata / "qm9" / which
    out = prepare("qm9", src, tmp_path / "x")
    s = Store(out)
    assert len(s) == 10 and [r.sid for r in s] == list(range(1, 11))
    assert s.manifest["provenance"]["source_format"] == "xyz"
    _assert_same(_first10(out), _first10(qm9))


def test_xyz_mathematica_exponents(tmp_path):
    text = CH4_XYZ.replace("\t0.\t13.21", "\t1.5*^-6\t13.21").replace("0.0080009958", "8.0009958*^-3")
    d = tmp_path / "rel"
    d.mkdir()
    (d / "dsgdb9nsd_000001.xyz").write_text(text)
    (d / "dsgdb9nsd_000002.xyz").write_text(CH4_XYZ.replace("gdb 1\t", "gdb 2\t"))
    s = Store(prepare("qm9", d, tmp_path / "s"))
    r = s[0]
    assert r.targets["mu"] == 1.5e-6 and r.positions[0, 2] == 8.0009958e-3
    assert r.positions.tolist()[1:] == CH4_POS[1:] and r.energy == pytest.approx(-40.47893 * Hartree, rel=1e-15)
    assert s[1].targets["mu"] == 0.0 and s[1].sid == 2
    # and the same from a .tar.bz2 of the directory
    arc = tmp_path / "rel.tar.bz2"
    with tarfile.open(arc, "w:bz2") as tar:
        tar.add(d, arcname="dsgdb9nsd")
    _assert_same([r2 for r2 in Store(prepare("qm9", arc, tmp_path / "t"))], list(s))


@pytest.mark.parametrize(
    "mutate,msg",
    [
        (lambda t: t.replace("gdb 1\t157.7118\t157.70997\t", "gdb 1\t"), "malformed QM9 xyz"),
        (lambda t: t.replace("C\t-0.0126981359", "Xx\t-0.0126981359"), "malformed QM9 xyz"),
        (lambda t: t.replace("\t-40.47893\t", "\tabc\t"), "malformed QM9 xyz"),
        (lambda t: "7" + t[1:], "malformed QM9 xyz"),
    ],
)
def test_malformed_xyz_names_the_file_and_writes_nothing(tmp_path, mutate, msg):
    d = tmp_path / "rel"
    d.mkdir()
    (d / "dsgdb9nsd_000001.xyz").write_text(CH4_XYZ)
    bad = d / "dsgdb9nsd_000002.xyz"
    bad.write_text(mutate(CH4_XYZ).replace("gdb 1\t", "gdb 2\t"))
    with pytest.raises(InputError) as ei:
        prepare("qm9", d, tmp_path / "out" / "qm9")
    assert str(ei.value).startswith(f"{bad}: {msg}") and "\n" not in str(ei.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel"]


def test_nan_target_names_molecule_and_field(tmp_path):
    d = tmp_path / "rel"
    d.mkdir()
    (d / "dsgdb9nsd_000001.xyz").write_text(CH4_XYZ.replace("\t6.469\t", "\tNaN\t"))
    with pytest.raises(InputError) as ei:
        prepare("qm9", d, tmp_path / "out")
    assert str(ei.value) == f"{d}: field 'targets.Cv': molecule gdb 1: non-finite value"
    assert not (tmp_path / "out").exists()


def test_limit_reads_the_first_molecules(tmp_path, csv_rows):
    s = Store(prepare("qm9", None, tmp_path / "q", limit=25))
    assert len(s) == 25 and [r.sid for r in s] == list(range(1, 26))
    assert s[24].targets["U0"] == pytest.approx(float(csv_rows[25]["InternalEnergy_0K_au"]) * Hartree, rel=1e-15)
    assert sum(s.info()["splits"].values()) == 25
