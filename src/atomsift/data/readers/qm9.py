"""QM9 (Ramakrishnan et al. 2014): 130,831 molecules, B3LYP/6-31G(2df,p).

Sources:
- the ``qm9pack`` wheel's CSV files (default; no download). ``import qm9pack`` breaks on
  setuptools >= 81 (it imports ``pkg_resources``), so its data directory is found through
  ``importlib.util.find_spec``;
- the original release: a directory of ``dsgdb9nsd_*.xyz`` or the ``dsgdb9nsd.xyz.tar.bz2``
  archive (Mathematica ``*^`` exponents handled).

Targets (the 12 standard properties), energies converted from Hartree to eV: mu (D), alpha
(bohr^3), homo, lumo, gap (eV), r2 (bohr^2), zpve, U0, U, H, G (eV), Cv (cal/mol/K). The store's
``energy`` field is U0 in eV. Split as JMP: a permutation seeded with 42; the first 10,000 are
validation, the next 10,000 test, the rest train. Class label: the stoichiometry (formula in Hill order).
"""

from __future__ import annotations

import importlib.util
import re
import tarfile
from pathlib import Path

import numpy as np

from atomsift.data.store import StoreWriter, formula
from atomsift.errors import InputError

NAME = "qm9"
VERSION = "1"
LEVEL_OF_THEORY = "B3LYP/6-31G(2df,p)"
HARTREE = 27.211386024367243  # eV, CODATA 2014 as ase.units.Hartree

TARGETS = ["mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv"]
TARGET_UNITS = {
    "mu": "D", "alpha": "bohr^3", "homo": "eV", "lumo": "eV", "gap": "eV", "r2": "bohr^2",
    "zpve": "eV", "U0": "eV", "U": "eV", "H": "eV", "G": "eV", "Cv": "cal/mol/K",
}
_HARTREE_TARGETS = {"homo", "lumo", "gap", "zpve", "U0", "U", "H", "G"}
_CSV_COLUMNS = {
    "mu": "Dipole_debye", "alpha": "Polarizability_bohr3", "homo": "HOMO_au", "lumo": "LUMO_au",
    "gap": "HOMO_LUMO_gap_au", "r2": "R2_bohr2", "zpve": "ZPVE_au", "U0": "InternalEnergy_0K_au",
    "U": "InternalEnergy_298K_au", "H": "Enthalphy_298K_au", "G": "GibbsFreeEnergy_298K_au",
    "Cv": "Heatcapacity_Cv_cal_mol_K",
}
_SYMBOLS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
N_VAL = 10_000
N_TEST = 10_000
SPLIT_SEED = 42


def qm9pack_dir() -> Path:
    """The directory of the qm9pack wheel's CSV files."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the qm9pack package is not installed (pip install qm9pack), and no --source was given", field="source")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def jmp_split(n: int, seed: int = SPLIT_SEED, n_val: int = N_VAL, n_test: int = N_TEST) -> dict[str, np.ndarray]:
    """JMP's QM9 split: a seeded permutation, first n_val validation, next n_test test, rest train."""
    if n <= n_val + n_test:  # small sources (tests, partial releases): 80/10/10
        n_val = n_test = max(n // 10, 1 if n >= 3 else 0)
    perm = np.random.RandomState(seed).permutation(n)
    return {"val": np.sort(perm[:n_val]), "test": np.sort(perm[n_val:n_val + n_test]), "train": np.sort(perm[n_val + n_test:])}


def _formulas(numbers: np.ndarray, natoms: np.ndarray) -> list[str]:
    """The formula of each molecule of a concatenated block (one formatting per stoichiometry)."""
    counts = np.zeros((natoms.size, 10), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(natoms.size), natoms), numbers), 1)
    uniq, inv = np.unique(counts, axis=0, return_inverse=True)
    labels = [formula(np.repeat(np.arange(10), u)) for u in uniq]
    return [labels[k] for k in inv.reshape(-1)]


def read_qm9pack(data_dir: Path, limit: int | None = None):
    """Yield (gdb_index, numbers, positions, targets-in-raw-units) from the qm9pack CSVs, in index order."""
    index, numbers, pos, natoms, tvals = qm9pack_arrays(data_dir, limit)
    offsets = np.concatenate([[0], np.cumsum(natoms)])
    for i in range(len(natoms)):
        a, b = offsets[i], offsets[i + 1]
        yield int(index[i]), numbers[a:b], pos[a:b], tvals[i]


def qm9pack_arrays(data_dir: Path, limit: int | None = None):
    """The qm9pack CSVs as arrays in gdb index order: (index (M,), numbers (A,), positions (A, 3),
    natoms (M,), targets in raw units (M, 12))."""
    import pandas as pd

    files = sorted(data_dir.glob("qm9_part*.csv"))
    if not files:
        raise InputError("no qm9_part*.csv files found", path=data_dir)
    usecols = ["Index", "N_atoms", "Elements", "XYZ_Ang", *_CSV_COLUMNS.values()]
    frames = []
    for f in files:
        try:
            frames.append(pd.read_csv(f, usecols=usecols, nrows=limit))
        except ValueError as exc:
            raise InputError(f"unexpected CSV layout ({exc})", path=f) from None
    df = pd.concat(frames, ignore_index=True).sort_values("Index", kind="stable")
    if limit is not None:
        df = df.iloc[:limit]
    natoms = df["N_atoms"].to_numpy(np.int64)
    xyz_text = ",".join(df["XYZ_Ang"].str.replace("[", "", regex=False).str.replace("]", "", regex=False))
    xyz = np.array(xyz_text.split(","), dtype=np.float64) if xyz_text else np.zeros(0)
    if xyz.size != 3 * natoms.sum():
        raise InputError(f"XYZ_Ang holds {xyz.size} numbers, expected {3 * natoms.sum()}", path=data_dir, field="XYZ_Ang")
    sym_text = ",".join(df["Elements"]).replace("[", "").replace("]", "").replace("'", "").replace(",", " ")
    try:
        numbers = np.array([_SYMBOLS[s] for s in sym_text.split()], dtype=np.int64)
    except KeyError as exc:
        raise InputError(f"unknown element {exc}", path=data_dir, field="Elements") from None
    if numbers.size != natoms.sum():
        raise InputError("Elements and N_atoms disagree", path=data_dir, field="Elements")
    tvals = np.stack([df[_CSV_COLUMNS[t]].to_numpy(np.float64) for t in TARGETS], axis=1)
    return df["Index"].to_numpy(np.int64), numbers, xyz.reshape(-1, 3), natoms, tvals


_FLOAT = re.compile(r"\*\^")


def _parse_xyz(text: str, where: str):
    lines = text.splitlines()
    try:
        na = int(lines[0].strip())
        props = _FLOAT.sub("e", lines[1]).split()
        if props[0] != "gdb" or len(props) < 17:
            raise ValueError("line 2 is not 'gdb <id>' and 15 properties")
        gdb = int(props[1])
        vals = [float(v) for v in props[2:17]]
        numbers, pos = [], []
        for ln in lines[2:2 + na]:
            parts = _FLOAT.sub("e", ln).split()
            numbers.append(_SYMBOLS[parts[0]])
            pos.append([float(x) for x in parts[1:4]])
    except (ValueError, IndexError, KeyError) as exc:
        raise InputError(f"malformed QM9 xyz ({exc})", path=where) from None
    if len(numbers) != na:
        raise InputError(f"expected {na} atom lines, found {len(numbers)}", path=where)
    # release order: A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv
    mu, alpha, homo, lumo, gap, r2, zpve, u0, u, h, g, cv = vals[3:15]
    return gdb, np.array(numbers), np.array(pos), np.array([mu, alpha, homo, lumo, gap, r2, zpve, u0, u, h, g, cv])


def read_xyz_release(source: Path, limit: int | None = None):
    """Yield molecules from a directory of dsgdb9nsd_*.xyz or the release .tar.bz2, in index order."""
    items = []
    if source.is_dir():
        files = sorted(source.glob("dsgdb9nsd_*.xyz"))
        if not files:
            raise InputError("no dsgdb9nsd_*.xyz files in directory", path=source)
        for f in files[:limit]:
            items.append(_parse_xyz(f.read_text(), str(f)))
    else:
        try:
            with tarfile.open(source, "r:*") as tar:
                members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xyz")), key=lambda m: m.name)
                if not members:
                    raise InputError("archive holds no .xyz files", path=source)
                for m in members[:limit]:
                    text = tar.extractfile(m).read().decode()
                    items.append(_parse_xyz(text, f"{source}:{m.name}"))
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise InputError(f"cannot read archive ({exc})", path=source) from None
    items.sort(key=lambda t: t[0])
    yield from items


def convert(source, out: Path, *, dataset: str = "qm9", seed: int | None = None, limit: int | None = None) -> Path:
    """Write the QM9 store at ``out`` from qm9pack (``source`` None) or the xyz release."""
    src = qm9pack_dir() if source is None else Path(source)
    if not src.exists():
        raise InputError("does not exist", path=src)
    csv = src.is_dir() and any(src.glob("qm9_part*.csv"))
    label, sha = ("qm9pack" if csv else "xyz"), None
    factors = np.array([HARTREE if t in _HARTREE_TARGETS else 1.0 for t in TARGETS])
    with StoreWriter(
        out, dataset=dataset, source=src, reader=NAME, reader_version=VERSION, level_of_theory=LEVEL_OF_THEORY,
        target_names=TARGETS, target_units=TARGET_UNITS, has_energy=True, has_sid=True, energy_kind="total (U0)",
        source_sha256=sha, extra={"source_format": label, "split": f"JMP: RandomState({seed if seed is not None else SPLIT_SEED}) permutation, 10k val, 10k test"},
    ) as w:
        if csv:  # whole blocks at once: ~3x faster than one add per molecule
            index, numbers, pos, natoms, tvals = qm9pack_arrays(src, limit)
            tvals = tvals * factors
            offsets = np.concatenate([[0], np.cumsum(natoms)])
            labels = _formulas(numbers, natoms)
            block = 8192
            for s in range(0, natoms.size, block):
                e = min(s + block, natoms.size)
                a, b = offsets[s], offsets[e]
                w.add_many(numbers[a:b], pos[a:b], natoms=natoms[s:e], energy=tvals[s:e, TARGETS.index("U0")],
                           targets=tvals[s:e], cls=labels[s:e], sid=index[s:e],
                           where=lambda k, s=s: f"molecule gdb {index[s + k]}")
        else:
            for gdb, z, pos, t in read_xyz_release(src, limit):
                tv = t * factors
                w.add(z, pos, energy=tv[TARGETS.index("U0")], targets=tv, cls=formula(z), sid=gdb, where=f"molecule gdb {gdb}")
        for name, idx in jmp_split(w.n_structures, SPLIT_SEED if seed is None else seed).items():
            w.set_split(name, idx)
    return out
