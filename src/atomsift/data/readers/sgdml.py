"""MD22 and MD17 in the sGDML npz format (quantum-machine.org/gdml/repo/datasets/).

Source: ``md22_<molecule>.npz`` / ``md17_<molecule>.npz``, or a directory holding them (then
``--subset`` picks the molecule; default Ac-Ala3-NHMe for md22, aspirin for md17). Keys read:
``R`` (M, N, 3) Angstrom, ``z`` (N,), ``E`` (M, 1) (or (M,)) and ``F`` (M, N, 3) in ``e_unit``
(kcal/mol when absent, as in the original MD17 files), plus the string metadata ``name``,
``theory``, ``e_unit``, ``r_unit`` when stored as plain strings. The file is opened without
unpickling: old MD17 files keep some metadata as pickled object arrays, which are skipped (numpy
would need ``allow_pickle=True`` to read them, and R/z/E/F never need it).

- Units: kcal/mol -> eV by ``ase.units.kcal / ase.units.mol`` (0.04336410390059322; JMP: 1/23.061);
  ``e_unit`` "eV" is taken as is; ``r_unit`` other than Angstrom is an error.
- Split (JMP ``finetune/md22.py``): ``arange(M)`` shuffled by ``RandomState(seed)`` (default 42);
  the molecule's train size (Ac-Ala3-NHMe 6000, DHA 8000, stachyose 8000, AT-AT 3000,
  AT-AT-CG-CG 2000, buckyball-catcher 600, double-walled_nanotube 800) of which int(5%) is val,
  the rest test. MD17 (not in JMP) uses rMD17's 1000 (950 train, 50 val).
- Class = molecule name; sid = frame index in the npz.
"""

from __future__ import annotations

from pathlib import Path

from atomsift.data.readers import _common as C
from atomsift.data.readers.rmd17 import write_molecule
from atomsift.errors import InputError

NAME = "sgdml"
VERSION = "1"
MD22_TRAIN_SIZES = {
    "Ac-Ala3-NHMe": 6000,
    "DHA": 8000,
    "stachyose": 8000,
    "AT-AT": 3000,
    "AT-AT-CG-CG": 2000,
    "buckyball-catcher": 600,
    "double-walled_nanotube": 800,
}
MD17_TRAIN_SIZE = 1000
DEFAULT_MOLECULE = {"md22": "Ac-Ala3-NHMe", "md17": "aspirin"}
LEVELS = {"md22": "PBE+MBD", "md17": "PBE+vdW-TS"}
E_UNITS = {"kcal/mol": C.KCAL_MOL, "ev": 1.0}


def _family(dataset: str) -> str:
    return "md17" if dataset == "md17" else "md22"


def _canonical(family: str, mol: str) -> str:
    if family == "md22":
        for k in MD22_TRAIN_SIZES:
            if k.lower() == mol.lower():
                return k
        raise InputError(f"unknown MD22 molecule '{mol}' (known: {', '.join(MD22_TRAIN_SIZES)})", field="subset")
    return mol


def find_npz(src: Path, family: str, subset: str | None) -> tuple[Path, str]:
    prefix = f"{family}_"
    if src.is_file():
        stem = src.stem
        mol = stem[len(prefix):] if stem.lower().startswith(prefix) else None
        if subset is not None:
            want = _canonical(family, subset)
            if mol is not None and mol.lower() != want.lower():
                raise InputError(f"--subset {subset} does not match the file (molecule '{mol}')", path=src, field="subset")
            return src, want
        if mol is None:
            raise InputError(f"cannot tell the molecule from the file name (expected {prefix}<molecule>.npz); pass --subset", path=src)
        return src, _canonical(family, mol)
    want = _canonical(family, subset if subset is not None else DEFAULT_MOLECULE[family])
    for p in sorted(src.glob(f"{prefix}*.npz")):
        if p.stem[len(prefix):].lower() == want.lower():
            return p, want
    have = ", ".join(p.stem[len(prefix):] for p in sorted(src.glob(f"{prefix}*.npz"))) or "none"
    raise InputError(f"no {prefix}{want}.npz in the directory (molecules present: {have})", path=src)


def convert(source, out: Path, *, dataset: str = "md22", subset: str | None = None, energy_key=None, forces_key=None,
            seed: int | None = None, limit: int | None = None) -> Path:
    """Write the store of one MD22 / MD17 molecule at ``out``."""
    family = _family(dataset)
    path, mol = find_npz(C.source_path(source, what=f"{family}_<molecule>.npz or its directory"), family, subset)
    seed = C.DEFAULT_SEED if seed is None else seed
    npz = C.open_npz(path)
    with npz:
        e_unit = C.npz_string(npz, "e_unit")
        r_unit = C.npz_string(npz, "r_unit")
        theory = C.npz_string(npz, "theory")
        if e_unit is not None and e_unit.strip().lower() not in E_UNITS:
            raise InputError(f"unsupported energy unit '{e_unit}' (kcal/mol or eV)", path=path, field="e_unit")
        if r_unit is not None and r_unit.strip().lower() not in ("ang", "angstrom", "a"):
            raise InputError(f"unsupported length unit '{r_unit}' (Angstrom)", path=path, field="r_unit")
        z, pos, e, fo = C.npz_frames(npz, path, "z", "R", "E", "F")
    factor = E_UNITS[(e_unit or "kcal/mol").strip().lower()]
    train_total = MD22_TRAIN_SIZES[mol] if family == "md22" else MD17_TRAIN_SIZE
    return write_molecule(out, dataset=dataset, path=path, mol=mol, z=z, pos=pos, energy_kcal=e, forces_kcal=fo,
                          seed=seed, limit=limit, train_total=train_total, reader=family, version=VERSION,
                          level_of_theory=theory or LEVELS[family], keys=("R", "E", "F"), factor=factor)
