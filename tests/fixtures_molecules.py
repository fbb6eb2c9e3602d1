"""Writers of small (and, for bench/prepare.py, large) source files in the molecular datasets'
release layouts: ANI-1x and Transition-1x and SPICE HDF5, rMD17 npz, sGDML (MD22/MD17) npz.

The layouts follow ../shared/realdata/README.md (key names, dtypes, units, the (M, 1) sGDML
energy column, Transition-1x's split soft links, SPICE's ``units`` attributes). Values are
random but seeded; callers pass the arrays they want to check against.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

# ------------------------------------------------------------------------------------ HDF5 trees


class Attrs:
    """A dataset value with HDF5 attributes: ``Attrs(array, units="bohr")``."""

    def __init__(self, value, **attrs):
        self.value = value
        self.attrs = attrs


def write_h5(path: Path, tree: dict) -> Path:
    """Write a nested dict as HDF5: dict -> group, array -> dataset, ``h5py.SoftLink`` -> link,
    ``Attrs`` -> dataset with attributes, ``bytes`` -> a (1,) variable-length string dataset."""
    with h5py.File(path, "w") as f:
        _fill(f, tree)
    return Path(path)


def _fill(group, tree: dict) -> None:
    for key, val in tree.items():
        if isinstance(val, dict):
            _fill(group.create_group(key), val)
        elif isinstance(val, h5py.SoftLink):
            group[key] = val
        elif isinstance(val, Attrs):
            ds = group.create_dataset(key, data=val.value)
            for k, v in val.attrs.items():
                ds.attrs[k] = v
        elif isinstance(val, bytes):
            group.create_dataset(key, data=np.array([val], dtype=object), dtype=h5py.string_dtype())
        else:
            group.create_dataset(key, data=val)


def _frames(rng, m: int, n: int, scale: float = 1.5):
    """M random conformers of an N-atom molecule around a random reference geometry."""
    ref = rng.normal(scale=scale, size=(n, 3))
    return ref + rng.normal(scale=0.05, size=(m, n, 3))


def numbers_of(formula: dict[int, int]) -> np.ndarray:
    return np.concatenate([np.full(c, z) for z, c in formula.items()])


# ------------------------------------------------------------------------------------------ ANI-1x


def ani1x_group(rng, numbers, m: int, nan_ccsd: tuple[int, ...] = ()) -> dict:
    """One formula group with the release's keys (a subset of the 26) and dtypes."""
    n = len(numbers)
    ccsd = -100.0 * n + rng.normal(size=m)
    ccsd[list(nan_ccsd)] = np.nan
    return {
        "atomic_numbers": np.asarray(numbers, dtype=np.uint8),
        "coordinates": _frames(rng, m, n).astype(np.float32),
        "wb97x_dz.energy": -100.0 * n + rng.normal(size=m),
        "wb97x_dz.forces": rng.normal(scale=0.05, size=(m, n, 3)).astype(np.float32),
        "wb97x_tz.energy": -100.1 * n + rng.normal(size=m),
        "wb97x_tz.forces": rng.normal(scale=0.05, size=(m, n, 3)).astype(np.float32),
        "ccsd(t)_cbs.energy": ccsd,
        "wb97x_dz.dipole": np.full((m, 3), np.nan, dtype=np.float32),  # NaN in a key never read
    }


ANI1X_SPEC = {  # formula -> (atomic numbers, conformers)
    "C1H4N4O4": ({6: 1, 1: 4, 7: 4, 8: 4}, 3),
    "C2H6O1": ({6: 2, 1: 6, 8: 1}, 4),
    "C3H8": ({6: 3, 1: 8}, 2),
    "H2O1": ({1: 2, 8: 1}, 5),  # < 4 atoms: dropped
    "C4H10": ({6: 4, 1: 10}, 6),
    "N2": ({7: 2}, 1),  # < 4 atoms: dropped
    "C2H2": ({6: 2, 1: 2}, 3),
}


def ani1x_tree(seed: int = 0, spec: dict | None = None, nan_ccsd: dict | None = None) -> dict:
    rng = np.random.default_rng(seed)
    spec = ANI1X_SPEC if spec is None else spec
    nan_ccsd = {"C2H6O1": (1, 3)} if nan_ccsd is None else nan_ccsd
    return {name: ani1x_group(rng, numbers_of(f), m, nan_ccsd.get(name, ())) for name, (f, m) in spec.items()}


def write_ani1x(path: Path, seed: int = 0, spec: dict | None = None, nan_ccsd: dict | None = None) -> Path:
    return write_h5(path, ani1x_tree(seed, spec, nan_ccsd))


# ------------------------------------------------------------------------------------ Transition-1x

T1X_EKEY = "wB97x_6-31G(d).energy"
T1X_FKEY = "wB97x_6-31G(d).forces"

T1X_SPEC = {  # split -> formula -> {rxn number: frames}
    "train": {"C2H2O2": {3: 4, 12: 2}, "C3H4O": {7: 3}},
    "val": {"CH2O": {1: 2}},
    "test": {"C2H4O": {5: 3, 6: 1}},
}
T1X_FORMULAS = {"C2H2O2": {6: 2, 1: 2, 8: 2}, "C3H4O": {6: 3, 1: 4, 8: 1}, "CH2O": {6: 1, 1: 2, 8: 1},
                "C2H4O": {6: 2, 1: 4, 8: 1}}


def t1x_reaction(rng, numbers, m: int) -> dict:
    n = len(numbers)
    frames = _frames(rng, m, n)

    def single(i):
        return {"atomic_numbers": np.asarray(numbers, dtype=np.int64), "positions": frames[i:i + 1],
                T1X_EKEY: np.array([-1000.0 * n + i]), T1X_FKEY: np.zeros((1, n, 3)), "hash": np.int64(1234 + i)}

    return {
        "atomic_numbers": np.asarray(numbers, dtype=np.int64),
        "positions": frames,
        T1X_EKEY: -1000.0 * n + rng.normal(size=m),
        T1X_FKEY: rng.normal(scale=0.3, size=(m, n, 3)),
        "reactant": single(0), "transition_state": single(m // 2), "product": single(m - 1),
    }


def write_t1x(path: Path, seed: int = 0, spec: dict | None = None, formulas: dict | None = None) -> Path:
    """The release layout: reactions under /data, and /train, /val, /test soft links to /data/<formula>."""
    return write_h5(path, t1x_tree(seed, spec, formulas))


def t1x_tree(seed: int = 0, spec: dict | None = None, formulas: dict | None = None) -> dict:
    rng = np.random.default_rng(seed)
    spec = T1X_SPEC if spec is None else spec
    formulas = T1X_FORMULAS if formulas is None else formulas
    data = {}
    links = {}
    for split, group in spec.items():
        links[split] = {}
        for formula, rxns in group.items():
            z = numbers_of(formulas[formula])
            data[formula] = {f"rxn{r:04d}": t1x_reaction(rng, z, m) for r, m in rxns.items()}
            links[split][formula] = h5py.SoftLink(f"/data/{formula}")
    return {"data": data, **links}


# ------------------------------------------------------------------------------------------- rMD17

ETHANOL_Z = np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])  # rMD17 order: C C O then H


def rmd17_arrays(seed: int = 0, m: int = 1200, numbers=ETHANOL_Z) -> dict:
    rng = np.random.default_rng(seed)
    n = len(numbers)
    return {
        "nuclear_charges": np.asarray(numbers, dtype=np.int64),
        "coords": _frames(rng, m, n),
        "energies": -97080.0 + rng.normal(scale=5.0, size=m),
        "forces": rng.normal(scale=30.0, size=(m, n, 3)),
        "old_indices": np.arange(m) * 7,
        "old_energies": -97080.0 + rng.normal(scale=5.0, size=m),
        "old_forces": rng.normal(scale=30.0, size=(m, n, 3)),
    }


def ethanol_from_xyz(xyz: Path) -> dict:
    """The real rMD17 ethanol frames of metatrain's ``ethanol_reduced_100.xyz`` (kcal/mol, A),
    reordered back to rMD17's C, C, O, H... atom order, as rMD17 npz arrays."""
    from ase.io import read

    frames = read(xyz, index=":")
    z = frames[0].numbers
    order = np.argsort([{6: 0, 8: 1, 1: 2}[int(a)] for a in z], kind="stable")
    m = len(frames)
    return {
        "nuclear_charges": z[order].astype(np.int64),
        "coords": np.stack([a.positions[order] for a in frames]),
        "energies": np.array([a.get_potential_energy() for a in frames]),
        "forces": np.stack([a.get_forces()[order] for a in frames]),
        "old_indices": np.arange(m),
        "old_energies": np.zeros(m),
        "old_forces": np.zeros((m, len(z), 3)),
    }


def write_npz(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return Path(path)


# --------------------------------------------------------------------------------- sGDML / MD22


def sgdml_arrays(seed: int = 0, m: int = 700, numbers=(6, 6, 6, 8, 7, 1, 1, 1, 1, 1, 1, 1), name: str = "Ac-Ala3-NHMe",
                 e_unit: str | None = "kcal/mol", column: bool = True) -> dict:
    """sGDML keys: R, z, E (M, 1), F, statistics, and string metadata as the MD22 release."""
    rng = np.random.default_rng(seed)
    n = len(numbers)
    E = -620662.0 + rng.normal(scale=8.0, size=(m, 1) if column else m)
    F = rng.normal(scale=26.0, size=(m, n, 3))
    out = {
        "R": _frames(rng, m, n), "z": np.asarray(numbers, dtype=np.int64), "E": E, "F": F,
        "E_min": np.array(E.min()), "E_max": np.array(E.max()), "E_mean": np.array(E.mean()), "E_var": np.array(E.var()),
        "F_min": np.array(F.min()), "F_max": np.array(F.max()), "F_mean": np.array(F.mean()), "F_var": np.array(F.var()),
        "name": np.array(name), "theory": np.array("PBE+MBD, 500K"), "type": np.array(b"d"),
        "md5": np.array(b"566c78362b66a81c9cb56f9275dbfa0f"), "code_version": np.array("0.4.18.dev1"),
        "r_unit": np.array("Ang"), "perms": np.tile(np.arange(n), (2, 1)),
    }
    if e_unit is not None:
        out["e_unit"] = np.array(e_unit)
    return out


# ------------------------------------------------------------------------------------------ SPICE


def spice_group(rng, numbers, m: int, subset: bytes | None, smiles: bytes = b"[H:1][O:2][H:3]") -> dict:
    n = len(numbers)
    g = {
        "atomic_numbers": np.asarray(numbers, dtype=np.int16),
        "conformations": Attrs((_frames(rng, m, n) / 0.529).astype(np.float32), units="bohr"),
        "dft_total_energy": Attrs(-200.0 * n + rng.normal(scale=0.01, size=m), units="hartree"),
        "dft_total_gradient": Attrs(rng.normal(scale=0.02, size=(m, n, 3)).astype(np.float32), units="hartree/bohr"),
        "formation_energy": Attrs(-0.5 * n + rng.normal(scale=0.01, size=m), units="hartree"),
        "smiles": smiles,
    }
    if subset is not None:
        g["subset"] = subset
    return g


SPICE_SPEC = {  # name -> (atomic numbers, conformers, subset)
    "ACE-ALA-NME": ({6: 6, 1: 12, 7: 2, 8: 2}, 6, b"SPICE Dipeptides Single Points Dataset v1.2"),
    "ACE-GLY-NME": ({6: 5, 1: 10, 7: 2, 8: 2}, 5, b"SPICE Dipeptides Single Points Dataset v1.2"),
    "ALA water": ({6: 3, 1: 9, 7: 1, 8: 3}, 4, b"SPICE Solvated Amino Acids Single Points Dataset v1.1"),
    "103147721": ({6: 4, 1: 9, 7: 1}, 7, b"SPICE PubChem Set 6 Single Points Dataset v1.2"),
}


def spice_tree(seed: int = 0, spec: dict | None = None, with_subset: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    spec = SPICE_SPEC if spec is None else spec
    return {name: spice_group(rng, numbers_of(f), m, sub if with_subset else None) for name, (f, m, sub) in spec.items()}


def write_spice(path: Path, seed: int = 0, spec: dict | None = None, with_subset: bool = True) -> Path:
    return write_h5(path, spice_tree(seed, spec, with_subset))
