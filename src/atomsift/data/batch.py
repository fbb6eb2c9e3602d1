"""Structures as torch-geometric ``Data`` and batches of them as PyG ``Batch``: the currency
between data, models, CSI and training.

One structure is a ``Data`` with ``numbers`` (N,) long, ``pos`` (N, 3) Angstrom, ``cell`` (1, 3, 3),
``pbc`` (1, 3) bool, ``natoms`` (1,) long, ``tags`` (N,) long, ``fixed`` (N,) bool, ``idx`` (1,) long
(its global store index), ``dataset`` (the source dataset family, a string) and, when the store has
them, ``energy`` (1,) eV, ``forces`` (N, 3) eV/Angstrom and ``targets`` (name -> (1,)). PyG's
``Batch.from_data_list`` concatenates them and adds ``batch`` (N,) and ``ptr``, so any PyG dataset
or loader yielding such ``Data`` feeds our models directly. (The store index is ``idx``, not
``index``: PyG shifts every attribute whose name contains "index" by the atom count.)
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
from torch_geometric.data import Batch, Data

from atomsift.data.store import Record


def to_data(rec: Record, dtype: torch.dtype = torch.float32, dataset: str | None = None, *,
            energy: bool = True, forces: bool = True, targets: Sequence[str] | None = None) -> Data:
    """One :class:`~atomsift.data.store.Record` as a PyG ``Data``; ``energy``/``forces`` False leave
    those labels out, ``targets`` picks the target names kept (default: all the record has).
    An unknown dataset family is "" (the default graph settings)."""
    d = Data(
        numbers=torch.as_tensor(rec.numbers, dtype=torch.long),
        pos=torch.as_tensor(rec.positions, dtype=dtype),
        cell=torch.as_tensor(rec.cell, dtype=dtype).reshape(1, 3, 3),
        pbc=torch.as_tensor(rec.pbc, dtype=torch.bool).reshape(1, 3),
        natoms=torch.tensor([rec.natoms]),
        tags=torch.as_tensor(rec.tags, dtype=torch.long),
        fixed=torch.as_tensor(rec.fixed, dtype=torch.bool),
        idx=torch.tensor([rec.index]),
        dataset=dataset or "",
    )
    if energy and rec.energy is not None:
        d.energy = torch.tensor([rec.energy], dtype=torch.float64).to(dtype)
    if forces and rec.forces is not None:
        d.forces = torch.as_tensor(rec.forces, dtype=dtype)
    names = rec.targets.keys() if targets is None else targets
    if names:
        d.targets = {k: torch.tensor([rec.targets[k]], dtype=torch.float64).to(dtype) for k in names}
    return d


def collate(records: Sequence[Record], dtype: torch.dtype = torch.float32, dataset: str | None = None) -> Batch:
    """Records as one PyG ``Batch``; energy, forces and each target are kept when every record has them."""
    if not records:
        raise ValueError("cannot collate an empty list of structures")
    energy = all(r.energy is not None for r in records)
    forces = all(r.forces is not None for r in records)
    names = records[0].targets.keys()
    common = list(names) if all(r.targets.keys() == names for r in records) else []
    return Batch.from_data_list([to_data(r, dtype, dataset, energy=energy, forces=forces, targets=common) for r in records])


def select(batch: Batch, keep: torch.Tensor) -> Batch:
    """The structures of ``batch`` where ``keep`` (B,) bool is True, in order, as a new ``Batch``."""
    idx = torch.nonzero(keep.to(dtype=torch.bool).cpu(), as_tuple=True)[0]
    return Batch.from_data_list(batch.index_select(idx))


def cast(batch: Batch, dtype: torch.dtype) -> Batch:
    """A shallow copy of ``batch`` with its floating tensors in ``dtype`` (the caller's is untouched)."""
    return copy.copy(batch).apply(lambda x: x.to(dtype) if x.is_floating_point() else x)


def replace(batch: Batch, **fields) -> Batch:
    """A shallow copy of ``batch`` with ``fields`` set (positions of a rotated copy, another dataset)."""
    out = copy.copy(batch)
    for k, v in fields.items():
        setattr(out, k, v)
    return out


def from_atoms(atoms_list, dtype: torch.dtype = torch.float32) -> Batch:
    """Collate ASE ``Atoms`` (energy/forces from an attached calculator when present)."""
    recs = []
    for i, a in enumerate(atoms_list):
        e = f = None
        if a.calc is not None:
            try:
                e = float(a.get_potential_energy())
                f = np.asarray(a.get_forces())
            except Exception:
                e = f = None
        recs.append(
            Record(
                index=i,
                numbers=a.numbers.astype(np.int64),
                positions=np.asarray(a.positions, dtype=np.float64),
                cell=np.asarray(a.cell.array, dtype=np.float64),
                pbc=np.asarray(a.pbc, dtype=bool),
                tags=np.asarray(a.get_tags(), dtype=np.int64),
                fixed=_fixed_mask(a),
                energy=e,
                forces=f,
            )
        )
    return collate(recs, dtype=dtype)


def _fixed_mask(atoms) -> np.ndarray:
    """Atoms held by an ASE ``FixAtoms`` constraint."""
    from ase.constraints import FixAtoms

    mask = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[c.index] = True
    return mask
