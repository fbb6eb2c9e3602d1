"""Transition-1x (Schreiner et al. 2022, figshare file 36035789, ``transition1x-release.h5``).

Layout (written by the release's ``combine_dbs.py``)::

    /data/<formula>/<rxnNNNN>/atomic_numbers            (N,)
    /data/<formula>/<rxnNNNN>/positions                 (T, N, 3)  Angstrom
    /data/<formula>/<rxnNNNN>/wB97x_6-31G(d).energy     (T,)       eV, total energy
    /data/<formula>/<rxnNNNN>/wB97x_6-31G(d).forces     (T, N, 3)  eV/Angstrom
    /data/<formula>/<rxnNNNN>/{reactant,transition_state,product}/   the same, T = 1
    /train/<formula>, /val/<formula>, /test/<formula>   h5py.SoftLink("/data/<formula>")

The official split is read from the ``/train``, ``/val`` and ``/test`` links (the release splits
by formula, so every reaction of a formula is in one split); the store holds train, then val,
then test, each formula sorted by name and each reaction by its number. As the official
``Dataloader`` (copied in JMP's ``trans1x_dataloader_ase_traj.py``) does, only the path frames of
each reaction group are read; the ``reactant``, ``transition_state`` and ``product`` subgroups
(one frame each, yielded by the official loader only in its ``only_final`` mode, commented out in
JMP) are not. No unit conversion (the
release is in eV and Angstrom); energies are total energies. Reactions with fewer than 4 atoms
are kept, as in JMP (logged there, not removed); their count is in the manifest.

Class = formula (the group name, i.e. JMP's ``<formula>_rxnNNNN`` id with the ``_rxn`` suffix
stripped); sid = the reaction number NNNN.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from atomsift.data.readers import _common as C
from atomsift.data.store import StoreWriter
from atomsift.errors import InputError

NAME = "transition1x"
VERSION = "1"
LEVEL_OF_THEORY = "wB97x/6-31G(d)"
ENERGY_KEY = "wB97x_6-31G(d).energy"
FORCES_KEY = "wB97x_6-31G(d).forces"
SPLITS = ("train", "val", "test")
_RXN = re.compile(r"^rxn(\d+)$")


def _rxn_number(name: str, path, field: str) -> int:
    m = _RXN.match(name)
    if not m:
        raise InputError(f"reaction group '{name}' is not named rxnNNNN", path=path, field=field)
    return int(m.group(1))


def convert(source, out: Path, *, dataset: str = NAME, subset=None, energy_key: str | None = None,
            forces_key: str | None = None, seed: int | None = None, limit: int | None = None) -> Path:
    """Write the Transition-1x store at ``out`` from ``transition1x-release.h5`` (or its directory)."""
    import h5py

    if subset is not None:
        raise InputError("transition1x has no subsets (the official train/val/test split is always used)", field="subset")
    path = C.find_file(C.source_path(source, what="transition1x-release.h5"),
                       ["transition1x-release.h5", "transition1x.h5"], ["*.h5", "*.hdf5"], what="HDF5 file")
    ekey = energy_key or ENERGY_KEY
    fkey = forces_key or FORCES_KEY
    f = C.open_hdf5(path)
    with f:
        missing = [s for s in SPLITS if s not in f]
        if missing:
            raise InputError(f"missing split group(s) {', '.join('/' + s for s in missing)} "
                             "(the release links /train, /val, /test to /data/<formula>)", path=path, field="/" + missing[0])
        seen: dict[str, str] = {}
        ranges: dict[str, tuple[int, int]] = {}
        n_small = 0
        with StoreWriter(
            out, dataset=dataset, source=path, reader=NAME, reader_version=VERSION, level_of_theory=LEVEL_OF_THEORY,
            has_energy=True, has_forces=True, has_sid=True, energy_kind="total",
            extra={"energy_key": ekey, "forces_key": fkey, "split": "official (/train, /val, /test soft links)",
                   "endpoints": "reactant/transition_state/product subgroups not read (official Dataloader)"},
        ) as w:
            for split in SPLITS:
                start = w.n_structures
                sgrp = f[split]
                for formula in sorted(sgrp.keys()):
                    if limit is not None and w.n_structures >= limit:
                        break
                    field = f"/{split}/{formula}"
                    if formula in seen:
                        raise InputError(f"formula is in both /{seen[formula]} and /{split}", path=path, field=field)
                    seen[formula] = split
                    try:
                        fgrp = sgrp[formula]
                    except (KeyError, OSError, RuntimeError) as exc:  # a dangling soft link
                        target = sgrp.get(formula, getlink=True)
                        where = f" -> {target.path}" if isinstance(target, h5py.SoftLink) else ""
                        raise InputError(f"cannot resolve link{where} ({C.one_line(exc)})", path=path, field=field) from None
                    if not isinstance(fgrp, h5py.Group):
                        raise InputError(f"expected a formula group, found a {type(fgrp).__name__}", path=path, field=field)
                    rxns = sorted(fgrp.keys(), key=lambda r: (_rxn_number(r, path, f"{field}/{r}"), r))
                    if not rxns:
                        raise InputError("empty group: no reactions", path=path, field=field)
                    for rxn in rxns:
                        if limit is not None and w.n_structures >= limit:
                            break
                        n_small += _add_reaction(w, fgrp[rxn], path, formula, rxn, ekey, fkey, limit)
                ranges[split] = (start, w.n_structures)
            for split, (a, b) in ranges.items():
                w.set_split(split, np.arange(a, b))
            w.extra["reactions_under_4_atoms"] = n_small
    return out


def _add_reaction(w, g, path, formula: str, rxn: str, ekey: str, fkey: str, limit: int | None) -> int:
    """Add the path frames of one reaction group; return 1 if it has fewer than 4 atoms."""
    import h5py

    name = g.name
    if not isinstance(g, h5py.Group):
        raise InputError(f"expected a reaction group, found a {type(g).__name__}", path=path, field=name)
    z = C.check_atomic_numbers(C.h5_dataset(g, "atomic_numbers", path, kind="i", ndim=1), path, f"{name}/atomic_numbers")
    n = z.size
    pos = C.h5_dataset(g, "positions", path, ndim=3)
    C.check_shape(pos, (None, n, 3), path, f"{name}/positions")
    m = pos.shape[0]
    if m == 0:
        raise InputError("empty group: 0 frames", path=path, field=f"{name}/positions")
    e = C.h5_dataset(g, ekey, path, shape=(m,))
    fo = C.h5_dataset(g, fkey, path, shape=(m, n, 3))
    C.require_finite(pos, path, f"{name}/positions", "frame")
    C.require_finite(e, path, f"{name}/{ekey}", "frame")
    C.require_finite(fo, path, f"{name}/{fkey}", "frame")
    if limit is not None:
        m = min(m, limit - w.n_structures)
    sid = _rxn_number(rxn, path, name)
    C.add_frames(w, z, pos[:m], energy=e[:m], forces=fo[:m], cls=formula, sid=sid,
                 where=lambda i: f"{name} frame {i}")
    return int(n < 4)
