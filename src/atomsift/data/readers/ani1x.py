"""ANI-1x (Smith et al. 2020, figshare file 18112775, ``ani1x-release.h5``).

Layout: one top-level group per molecular formula (e.g. ``C1H4N4O4``) holding
``atomic_numbers`` (N,), ``coordinates`` (C, N, 3) in Angstrom and one dataset per level of
theory, e.g. ``wb97x_dz.energy`` (C,) in Hartree and ``wb97x_dz.forces`` (C, N, 3) in Hartree/A.
Energies and forces are multiplied by ``ase.units.Hartree`` (27.211386024367243 eV), as JMP's
``ani1x_dataloader_ase_traj.py`` does.

- ``--energy-key`` (default ``wb97x_dz.energy``, JMP's) picks the level of theory;
  ``--forces-key`` defaults to ``<method>.forces`` of the same method when the file has it (so
  ``ccsd(t)_cbs.energy`` gives a store without forces); ``--forces-key none`` drops forces.
- Conformers whose chosen energy or forces hold NaN (the release's "not computed" marker, e.g.
  2 of 3 ``ccsd(t)_cbs.energy`` of C1H6N2O5) are dropped and counted in the manifest
  (``provenance.dropped_nan_conformers``). An infinity, or a NaN in the coordinates, is an error.
- Formulas with fewer than 4 atoms are dropped (JMP's ``remove_small_systems``), counted in
  ``provenance.dropped_small_formulas`` / ``dropped_small_conformers``.
- Class = formula (the group name); sid = index of the formula among the file's groups (sorted).
- Split (JMP's ``ani1x_splits.py``, made reproducible): the kept formulas, in sorted order, are
  shuffled with ``RandomState(seed)`` (default 42); whole formulas go to ``val`` until it holds
  >= split_size conformers (the crossing formula included), then to ``test`` likewise, the rest
  to ``train``. split_size = int(0.1 x conformers with finite labels in the whole file, small
  formulas included) = 495,600 on the release with the default keys, JMP's ``--split_size``.
  JMP shuffles unseeded and writes its first split to the test file; here the first is val.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atomsift.data.readers import _common as C
from atomsift.data.store import StoreWriter
from atomsift.errors import InputError

NAME = "ani1x"
VERSION = "1"
DEFAULT_ENERGY_KEY = "wb97x_dz.energy"
MIN_ATOMS = 4
SPLIT_FRACTION = 0.1
LEVELS = {
    "wb97x_dz": "wB97x/6-31G(d)",
    "wb97x_tz": "wB97x/def2-TZVPP",
    "ccsd(t)_cbs": "CCSD(T)*/CBS",
    "hf_dz": "HF/cc-pVDZ",
    "hf_tz": "HF/cc-pVTZ",
    "hf_qz": "HF/cc-pVQZ",
}


def _forces_key(f, first, energy_key: str, forces_key: str | None) -> str | None:
    if forces_key is not None:
        return None if forces_key.lower() == "none" else forces_key
    import h5py

    method = energy_key.rsplit(".", 1)[0]
    candidate = f"{method}.forces"
    group = f[first]
    return candidate if isinstance(group, h5py.Group) and candidate in group else None


def convert(source, out: Path, *, dataset: str = NAME, subset=None, energy_key: str | None = None,
            forces_key: str | None = None, seed: int | None = None, limit: int | None = None) -> Path:
    """Write the ANI-1x store at ``out`` from ``ani1x-release.h5`` (or a directory holding it)."""
    import h5py

    if subset is not None:
        raise InputError("ani1x has no subsets", field="subset")
    path = C.find_file(C.source_path(source, what="ani1x-release.h5"), ["ani1x-release.h5"], ["*.h5", "*.hdf5"], what="HDF5 file")
    seed = C.DEFAULT_SEED if seed is None else seed
    ekey = energy_key or DEFAULT_ENERGY_KEY
    f = C.open_hdf5(path)
    with f:
        names = sorted(f.keys())
        if not names:
            raise InputError("no formula groups at the top level", path=path)
        fkey = _forces_key(f, names[0], ekey, forces_key)
        method = ekey.rsplit(".", 1)[0]
        counts = {"nan": 0, "small_formulas": 0, "small_conformers": 0, "finite": 0}
        kept: list[tuple[int, int]] = []  # (first store index, n conformers) per kept formula
        extra = {
            "energy_key": ekey, "forces_key": fkey, "unit_factor_eV_per_Hartree": C.HARTREE, "min_atoms": MIN_ATOMS,
            "split": "JMP ani1x_splits by formula, seeded, val first (docs/datasets.md)", "seed": seed,
        }
        with StoreWriter(
            out, dataset=dataset, source=path, reader=NAME, reader_version=VERSION,
            level_of_theory=LEVELS.get(method, method), has_energy=True, has_forces=fkey is not None, has_sid=True,
            energy_kind="total", extra=extra,
        ) as w:
            for gi, name in enumerate(names):
                if limit is not None and w.n_structures >= limit:
                    break
                g = f[name]
                if not isinstance(g, h5py.Group):
                    raise InputError(f"expected a formula group, found a {type(g).__name__}", path=path, field=name)
                z = C.check_atomic_numbers(C.h5_dataset(g, "atomic_numbers", path, kind="i", ndim=1), path, f"{name}/atomic_numbers")
                n = z.size
                pos = C.h5_dataset(g, "coordinates", path, ndim=3)
                C.check_shape(pos, (None, n, 3), path, f"{name}/coordinates")
                m = pos.shape[0]
                if m == 0:
                    raise InputError("empty group: 0 conformers", path=path, field=f"{name}/coordinates")
                C.require_finite(pos, path, f"{name}/coordinates", "conformer")
                e = C.h5_dataset(g, ekey, path, shape=(m,))
                fo = None if fkey is None else C.h5_dataset(g, fkey, path, shape=(m, n, 3))
                keep = _labelled(e, path, f"{name}/{ekey}")
                if fo is not None:
                    keep &= _labelled(fo, path, f"{name}/{fkey}")
                n_keep = int(keep.sum())
                counts["nan"] += m - n_keep
                counts["finite"] += n_keep
                if n < MIN_ATOMS:
                    counts["small_formulas"] += 1
                    counts["small_conformers"] += n_keep
                    continue
                rows = np.flatnonzero(keep)
                if limit is not None:
                    rows = rows[: limit - w.n_structures]
                start = w.n_structures
                C.add_frames(
                    w, z, pos[rows], energy=C.f64(e[rows]) * C.HARTREE,
                    forces=None if fo is None else C.f64(fo[rows]) * C.HARTREE,
                    cls=name, sid=gi, where=lambda i, rows=rows, name=name: f"group {name} conformer {int(rows[i])}",
                )
                kept.append((start, w.n_structures - start))
            split_size = int(SPLIT_FRACTION * counts["finite"])
            groups = C.greedy_group_split([k[1] for k in kept], split_size, seed)
            for split, gidx in groups.items():
                idx = [np.arange(kept[g][0], kept[g][0] + kept[g][1]) for g in gidx]
                w.set_split(split, np.concatenate(idx) if idx else np.zeros(0, dtype=np.int64))
            extra.update(
                dropped_nan_conformers=counts["nan"], dropped_small_formulas=counts["small_formulas"],
                dropped_small_conformers=counts["small_conformers"], split_size=split_size,
                split_formulas={k: int(v.size) for k, v in groups.items()},
            )
            w.extra = extra
    return out


def _labelled(a: np.ndarray, path, field: str) -> np.ndarray:
    """Rows of ``a`` free of NaN (the release's missing-value marker); an infinity is an error."""
    flat = a.reshape(a.shape[0], -1)
    inf = np.isinf(flat).any(axis=1)
    if inf.any():
        i = int(np.flatnonzero(inf)[0])
        raise InputError(f"conformer {i}: infinite value", path=path, field=field)
    return ~np.isnan(flat).any(axis=1)
