"""rMD17, the revised MD17 (Christensen & von Lilienfeld 2020, figshare article 12672038).

Source: ``rmd17_<molecule>.npz`` (from ``rmd17.tar.bz2`` -> ``rmd17/npz_data/``), or a directory
holding them (also its ``npz_data/`` or ``rmd17/npz_data/`` subfolder). Keys read:
``nuclear_charges`` (N,), ``coords`` (M, N, 3) Angstrom, ``energies`` (M,) kcal/mol, ``forces``
(M, N, 3) kcal/mol/Angstrom. ``old_indices``/``old_energies``/``old_forces`` (the original MD17
values) are not read.

- ``--subset``: the molecule (aspirin, azobenzene, benzene, ethanol, malonaldehyde, naphthalene,
  paracetamol, salicylic, toluene, uracil; JMP's aliases "napthalene", "salicylic acid" accepted).
  Default for a directory: aspirin. For a file it is taken from the name ``rmd17_<molecule>.npz``.
- Units: energies and forces x ``ase.units.kcal / ase.units.mol`` = 0.04336410390059322 eV per
  kcal/mol. JMP divides by 23.061 (0.0433632540 eV), 1.96e-5 relative less: about 1.9 meV on a
  -97,080 kcal/mol ethanol energy.
- Split (JMP ``finetune/rmd17.py``): ``arange(M)`` shuffled by ``RandomState(seed)`` (default 42);
  first 950 train, next 50 val, the rest test (99,000 of the 100,000 frames). Not the official
  ``splits/index_*.csv``.
- Class = molecule name; sid = frame index in the npz (JMP's ``sid``).
"""

from __future__ import annotations

from pathlib import Path

from atomsift.data.readers import _common as C
from atomsift.data.store import StoreWriter
from atomsift.errors import InputError

NAME = "rmd17"
VERSION = "1"
LEVEL_OF_THEORY = "PBE/def2-SVP"
MOLECULES = ("aspirin", "azobenzene", "benzene", "ethanol", "malonaldehyde", "naphthalene", "paracetamol",
             "salicylic", "toluene", "uracil")
ALIASES = {"napthalene": "naphthalene", "salicylic acid": "salicylic", "salicylic-acid": "salicylic",
           "salicylic_acid": "salicylic"}
DEFAULT_MOLECULE = "aspirin"
TRAIN_TOTAL = 1000  # JMP TRAIN_SIZE: 950 train + 50 val
VAL_FRACTION = 0.05


def molecule_name(subset: str) -> str:
    name = ALIASES.get(subset.strip().lower(), subset.strip().lower())
    if name not in MOLECULES:
        raise InputError(f"unknown rMD17 molecule '{subset}' (known: {', '.join(MOLECULES)})", field="subset")
    return name


def find_npz(src: Path, subset: str | None) -> tuple[Path, str]:
    """The npz file and molecule name for ``src`` (a file or a directory) and ``--subset``."""
    if src.is_file():
        stem = src.stem
        mol = stem[len("rmd17_"):] if stem.startswith("rmd17_") else None
        if subset is not None:
            want = molecule_name(subset)
            if mol is not None and mol != want:
                raise InputError(f"--subset {subset} does not match the file (molecule '{mol}')", path=src, field="subset")
            return src, want
        if mol is None:
            raise InputError("cannot tell the molecule from the file name (expected rmd17_<molecule>.npz); pass --subset", path=src)
        return src, molecule_name(mol)
    mol = molecule_name(subset) if subset is not None else DEFAULT_MOLECULE
    for d in (src, src / "npz_data", src / "rmd17" / "npz_data"):
        if (d / f"rmd17_{mol}.npz").is_file():
            return d / f"rmd17_{mol}.npz", mol
    raise InputError(f"no rmd17_{mol}.npz in the directory (nor in npz_data/ or rmd17/npz_data/)", path=src)


def convert(source, out: Path, *, dataset: str = NAME, subset: str | None = None, energy_key=None, forces_key=None,
            seed: int | None = None, limit: int | None = None) -> Path:
    """Write the rMD17 store of one molecule at ``out``."""
    path, mol = find_npz(C.source_path(source, what="rmd17_<molecule>.npz or its directory"), subset)
    seed = C.DEFAULT_SEED if seed is None else seed
    npz = C.open_npz(path)
    with npz:
        z, pos, e, fo = C.npz_frames(npz, path, "nuclear_charges", "coords", "energies", "forces")
    return write_molecule(out, dataset=dataset, path=path, mol=mol, z=z, pos=pos, energy_kcal=e, forces_kcal=fo,
                          seed=seed, limit=limit, train_total=TRAIN_TOTAL, reader=NAME, version=VERSION,
                          level_of_theory=LEVEL_OF_THEORY, keys=("coords", "energies", "forces"))


def write_molecule(out: Path, *, dataset: str, path: Path, mol: str, z, pos, energy_kcal, forces_kcal, seed: int,
                   limit: int | None, train_total: int, reader: str, version: str, level_of_theory: str | None,
                   keys: tuple[str, str, str], factor: float = C.KCAL_MOL) -> Path:
    """Check, convert (x ``factor``) and store the M frames of one molecule with JMP's sized split."""
    for key, arr in zip(keys, (pos, energy_kcal, forces_kcal)):
        C.require_finite(arr, path, key, "frame")
    m = pos.shape[0] if limit is None else min(pos.shape[0], limit)
    splits, note = C.train_size_split(m, train_total, seed, VAL_FRACTION)
    with StoreWriter(
        out, dataset=dataset, source=path, reader=reader, reader_version=version, level_of_theory=level_of_theory,
        has_energy=True, has_forces=True, has_sid=True, energy_kind="total",
        extra={"molecule": mol, "unit_factor_eV_per_kcal_mol": factor, "split": note, "seed": seed},
    ) as w:
        C.add_frames(w, z, pos[:m], energy=C.f64(energy_kcal[:m]) * factor, forces=C.f64(forces_kcal[:m]) * factor, cls=mol,
                     sid=range(m), where=lambda i: f"frame {i}")
        for name, idx in splits.items():
            w.set_split(name, idx)
    return out
