"""Batches of structures as torch tensors: the currency between data, models, CSI and training."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from atomsift.data.store import Record


@dataclass
class AtomsBatch:
    """B structures, N atoms in total, concatenated.

    Attributes: ``numbers`` (N,) long; ``pos`` (N, 3) Angstrom; ``cell`` (B, 3, 3); ``pbc`` (B, 3) bool;
    ``natoms`` (B,) long; ``batch`` (N,) long structure index of each atom; ``tags`` (N,) long;
    ``fixed`` (N,) bool; ``energy`` (B,) eV or None; ``forces`` (N, 3) eV/Angstrom or None;
    ``targets`` name -> (B,) tensor; ``index`` (B,) long global store indices; ``dataset`` names the
    source dataset family of every structure (one string for a homogeneous batch).
    """

    numbers: Tensor
    pos: Tensor
    cell: Tensor
    pbc: Tensor
    natoms: Tensor
    batch: Tensor
    tags: Tensor
    fixed: Tensor
    energy: Tensor | None = None
    forces: Tensor | None = None
    targets: dict[str, Tensor] = field(default_factory=dict)
    index: Tensor | None = None
    dataset: str | list[str] | None = None

    @property
    def num_graphs(self) -> int:
        return int(self.natoms.shape[0])

    def to(self, device=None, dtype: torch.dtype | None = None) -> "AtomsBatch":
        """Move tensors to ``device``; cast floating tensors to ``dtype`` if given."""

        def mv(x):
            if x is None:
                return None
            if isinstance(x, dict):
                return {k: mv(v) for k, v in x.items()}
            if not isinstance(x, Tensor):
                return x
            if dtype is not None and x.is_floating_point():
                return x.to(device=device, dtype=dtype)
            return x.to(device=device)

        return replace(self, **{f.name: mv(getattr(self, f.name)) for f in fields(self)})

    def select(self, keep: Tensor) -> "AtomsBatch":
        """The structures where ``keep`` (B,) bool is True, in order."""
        keep = keep.to(device=self.natoms.device, dtype=torch.bool)
        atoms = keep[self.batch]
        natoms = self.natoms[keep]
        per_graph = lambda x: None if x is None else x[keep]  # noqa: E731
        per_atom = lambda x: None if x is None else x[atoms]  # noqa: E731
        dataset = self.dataset
        if isinstance(dataset, (list, tuple)):
            dataset = [d for d, k in zip(dataset, keep.tolist()) if k]
        return replace(
            self, numbers=self.numbers[atoms], pos=self.pos[atoms], cell=self.cell[keep], pbc=self.pbc[keep],
            natoms=natoms, batch=torch.repeat_interleave(torch.arange(natoms.numel(), device=natoms.device), natoms),
            tags=self.tags[atoms], fixed=self.fixed[atoms], energy=per_graph(self.energy), forces=per_atom(self.forces),
            targets={k: v[keep] for k, v in self.targets.items()}, index=per_graph(self.index), dataset=dataset)


def collate(records: Sequence[Record], dtype: torch.dtype = torch.float32, dataset: str | list[str] | None = None) -> AtomsBatch:
    """Concatenate :class:`~atomsift.data.store.Record` s into one :class:`AtomsBatch`."""
    if not records:
        raise ValueError("cannot collate an empty list of structures")
    natoms = np.array([r.natoms for r in records], dtype=np.int64)
    numbers = np.concatenate([r.numbers for r in records])
    pos = np.concatenate([r.positions for r in records])
    b = AtomsBatch(
        numbers=torch.as_tensor(numbers, dtype=torch.long),
        pos=torch.as_tensor(pos, dtype=dtype),
        cell=torch.as_tensor(np.stack([r.cell for r in records]), dtype=dtype),
        pbc=torch.as_tensor(np.stack([r.pbc for r in records]), dtype=torch.bool),
        natoms=torch.as_tensor(natoms),
        batch=torch.repeat_interleave(torch.arange(len(records)), torch.as_tensor(natoms)),
        tags=torch.as_tensor(np.concatenate([r.tags for r in records]), dtype=torch.long),
        fixed=torch.as_tensor(np.concatenate([r.fixed for r in records]), dtype=torch.bool),
        index=torch.as_tensor([r.index for r in records], dtype=torch.long),
        dataset=dataset,
    )
    if all(r.energy is not None for r in records):
        b.energy = torch.as_tensor([r.energy for r in records], dtype=torch.float64).to(dtype)
    if all(r.forces is not None for r in records):
        b.forces = torch.as_tensor(np.concatenate([r.forces for r in records]), dtype=dtype)
    names = records[0].targets.keys()
    if names and all(r.targets.keys() == names for r in records):
        b.targets = {k: torch.as_tensor([r.targets[k] for r in records], dtype=torch.float64).to(dtype) for k in names}
    return b


def from_atoms(atoms_list, dtype: torch.dtype = torch.float32) -> AtomsBatch:
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
