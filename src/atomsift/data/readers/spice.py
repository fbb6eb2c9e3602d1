"""SPICE (Eastman et al. 2023; ``SPICE-1.1.4.hdf5`` on Zenodo, or JMP's per-subset files
``dipeptides.h5`` and ``solvated_amino_acids.h5`` from fm-datasets.s3.amazonaws.com).

Layout: one group per molecule (name = SMILES or PubChem id) holding ``atomic_numbers`` (N,),
``conformations`` (C, N, 3) bohr, ``dft_total_energy`` (C,) hartree, ``dft_total_gradient``
(C, N, 3) hartree/bohr, ``formation_energy`` (C,) hartree, ``subset`` and ``smiles`` (1,)
strings, optional ``mbis_*``, ``scf_*``, bond indices (not read). Where a molecule's datasets
carry a ``units`` attribute it must be the unit above (the SPICE *input* files hold nanometres);
every group is checked, not only the first (a file assembled from several sources may mix units).

- Units: positions x ``ase.units.Bohr`` (0.5291772105638411 A); energies x ``ase.units.Hartree``
  (27.211386024367243 eV); forces = **minus** the gradient x Hartree/Bohr (JMP fixed this sign
  late, PR #2).
- ``energy`` = ``dft_total_energy`` (eV, total); target ``formation_energy`` (eV), JMP's ``y``.
- ``--subset``: keep molecules whose ``subset`` string contains the given text, case-insensitive
  (e.g. "dipeptides", "solvated amino acids", "PubChem"). Groups without ``subset`` (JMP's files)
  take the file name as their subset: ``solvated_amino_acids.h5`` -> "solvated amino acids".
- Split (JMP ``finetune/spice.py``): every kept conformer, in file order (groups in h5py order,
  conformers in order), indexed 0..n-1; ``arange(n)`` shuffled by ``RandomState(seed)`` (default
  42); int(0.8 n) train, then n - int(0.8 n) - int(0.1 n) val, then int(0.1 n) test.
- Class = molecule name (group name); sid = index of the group in the file.
"""

from __future__ import annotations

from pathlib import Path


from atomsift.data.readers import _common as C
from atomsift.data.store import StoreWriter
from atomsift.errors import InputError

NAME = "spice"
VERSION = "1"
LEVEL_OF_THEORY = "wB97M-D3(BJ)/def2-TZVPPD"
TARGETS = ["formation_energy"]
UNITS = {"conformations": "bohr", "dft_total_energy": "hartree", "dft_total_gradient": "hartree/bohr",
         "formation_energy": "hartree"}
JMP_FILES = ("dipeptides.h5", "solvated_amino_acids.h5")


def _file_subset(path: Path) -> str:
    return path.stem.replace("_", " ")


def _find(src: Path, subset: str | None) -> Path:
    if src.is_file():
        return src
    if subset is not None:
        for name in JMP_FILES:
            if (src / name).is_file() and subset.strip().lower() in _file_subset(Path(name)):
                return src / name
    return C.find_file(src, [], ["SPICE*.hdf5", "SPICE*.h5", "*.hdf5", "*.h5"], what="SPICE HDF5 file")


def _check_units(g, path, name: str) -> None:
    """Every dataset's ``units`` attribute, where present, must be the release's unit (~0.4 ms a
    group: a file whose later molecules hold nanometres or kcal/mol is refused, not converted wrong)."""
    for key, want in UNITS.items():
        unit = C.h5_attr_string(g, key, "units", path)
        if unit is not None and unit.strip().lower() != want:
            raise InputError(f"units are '{unit}', expected '{want}'", path=path, field=f"{name}/{key}")


def convert(source, out: Path, *, dataset: str = NAME, subset: str | None = None, energy_key=None, forces_key=None,
            seed: int | None = None, limit: int | None = None) -> Path:
    """Write the SPICE store at ``out``, optionally only the molecules of one SPICE subset."""
    import h5py

    path = _find(C.source_path(source, what="SPICE HDF5 file"), subset)
    seed = C.DEFAULT_SEED if seed is None else seed
    want = None if subset is None else subset.strip().lower()
    f = C.open_hdf5(path)
    with f:
        names = list(f.keys())
        if not names:
            raise InputError("no molecule groups at the top level", path=path)
        seen_subsets: set[str] = set()
        n_groups = 0
        with StoreWriter(
            out, dataset=dataset, source=path, reader=NAME, reader_version=VERSION, level_of_theory=LEVEL_OF_THEORY,
            target_names=TARGETS, target_units={"formation_energy": "eV"}, has_energy=True, has_forces=True,
            has_sid=True, energy_kind="total (dft_total_energy)",
            extra={"subset": subset, "forces": "-dft_total_gradient", "unit_factor_eV_per_Hartree": C.HARTREE,
                   "unit_factor_Angstrom_per_bohr": C.BOHR, "seed": seed,
                   "split": f"JMP: RandomState({seed}) shuffle over conformers, int(0.8n) train, int(0.1n) test, rest val"},
        ) as w:
            for gi, name in enumerate(names):
                if limit is not None and w.n_structures >= limit:
                    break
                g = f[name]
                if not isinstance(g, h5py.Group):
                    raise InputError(f"expected a molecule group, found a {type(g).__name__}", path=path, field=name)
                if want is not None:
                    sub = C.h5_string(g, "subset", path) or _file_subset(path)
                    seen_subsets.add(sub)
                    if want not in sub.lower():
                        continue
                _check_units(g, path, name)
                n_groups += 1
                _add_molecule(w, g, path, name, gi, limit)
            if w.n_structures == 0 and want is not None:
                raise InputError(f"no molecule's subset contains '{subset}' (subsets: {'; '.join(sorted(seen_subsets))})",
                                 path=path, field="subset")
            for split, idx in C.fraction_split(w.n_structures, seed).items():
                w.set_split(split, idx)
            w.extra["molecules"] = n_groups
            if want is not None:
                w.extra["subsets_in_file"] = sorted(seen_subsets)
    return out


def _add_molecule(w, g, path, name: str, gi: int, limit: int | None) -> None:
    z = C.check_atomic_numbers(C.h5_dataset(g, "atomic_numbers", path, kind="i", ndim=1), path, f"{name}/atomic_numbers")
    n = z.size
    pos = C.h5_dataset(g, "conformations", path, ndim=3)
    C.check_shape(pos, (None, n, 3), path, f"{name}/conformations")
    m = pos.shape[0]
    if m == 0:
        raise InputError("empty group: 0 conformations", path=path, field=f"{name}/conformations")
    e = C.h5_dataset(g, "dft_total_energy", path, shape=(m,))
    grad = C.h5_dataset(g, "dft_total_gradient", path, shape=(m, n, 3))
    ef = C.h5_dataset(g, "formation_energy", path, shape=(m,))
    for key, arr in (("conformations", pos), ("dft_total_energy", e), ("dft_total_gradient", grad), ("formation_energy", ef)):
        C.require_finite(arr, path, f"{name}/{key}", "conformer")
    if limit is not None:
        m = min(m, limit - w.n_structures)
    C.add_frames(
        w, z, C.f64(pos[:m]) * C.BOHR, energy=C.f64(e[:m]) * C.HARTREE, forces=-(C.f64(grad[:m]) * C.HARTREE_PER_BOHR),
        targets=(C.f64(ef[:m]) * C.HARTREE)[:, None], cls=name, sid=gi, where=lambda i: f"group {name} conformer {i}",
    )
