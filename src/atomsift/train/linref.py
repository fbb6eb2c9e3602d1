"""Per-dataset linear-reference energies and label normalisation (PAPER.md §3.1, JMP.md §3.2).

The linear reference is the least-squares fit E_i ~ sum_Z c_Z n_iZ of the total energy on the
element counts of the training sample; training then works on the referenced energy
E - sum_Z c_Z n_Z divided by a per-dataset standard deviation, and on forces divided by their
own standard deviation (mean 0 for both, as JMP's tables).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from atomsift.data.store import Store
from atomsift.errors import InputError
from atomsift.fsio import write_json
from atomsift.train.tasks import QM9_ATOM_REFS_JMP

N_ELEMENTS = 120


def atom_index(offsets: np.ndarray, structures: np.ndarray) -> np.ndarray:
    """Indices of the atoms of ``structures`` in the per-atom arrays, structure by structure."""
    lo, hi = offsets[structures], offsets[structures + 1]
    n = hi - lo
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    return np.repeat(lo - start, n) + np.arange(int(n.sum()))


def element_counts(store: Store, indices: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """(len(indices), 120) counts of each atomic number per structure (vectorised, chunked)."""
    idx = np.asarray(indices, dtype=np.int64)
    off = np.asarray(store.offsets)
    z = store.array("numbers")
    X = np.zeros((idx.size, N_ELEMENTS), dtype=np.float64)
    for a in range(0, idx.size, chunk):
        g = idx[a:a + chunk]
        n = off[g + 1] - off[g]
        row = np.repeat(np.arange(g.size), n)
        zz = np.asarray(z[atom_index(off, g)], dtype=np.int64)
        X[a:a + g.size] = np.bincount(row * N_ELEMENTS + zz, minlength=g.size * N_ELEMENTS).reshape(g.size, N_ELEMENTS)
    return X


def fit_linear_reference(counts: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """Least-squares coefficients c (120,) with counts @ c ~ energies; absent elements get 0."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts.sum(axis=0) > 0
    coeff = np.zeros(counts.shape[1])
    if present.any():
        sol, *_ = np.linalg.lstsq(counts[:, present], np.asarray(energies, dtype=np.float64), rcond=None)
        coeff[present] = sol
    return coeff


@dataclass
class DatasetNorm:
    """How one dataset's labels are referenced and scaled for training."""

    coeff: list[float] = field(default_factory=lambda: [0.0] * N_ELEMENTS)  # eV per atom of element Z
    energy_mean: float = 0.0  # eV, of the referenced energy
    energy_std: float = 1.0  # eV
    force_std: float = 1.0  # eV/Angstrom


def fit_dataset_norm(store: Store, indices: np.ndarray, *, fit_linref: bool = True) -> DatasetNorm:
    """Linear reference (optional), std of referenced energies and force std on ``indices``."""
    idx = np.asarray(indices, dtype=np.int64)
    e = np.asarray(store.array("energy"))[idx]
    coeff = np.zeros(N_ELEMENTS)
    if fit_linref:
        coeff = fit_linear_reference(element_counts(store, idx), e)
        e = e - element_counts(store, idx) @ coeff
    std = float(np.std(e)) if idx.size > 1 else 1.0
    fstd = 1.0
    if store.has("forces"):
        off = np.asarray(store.offsets)
        f = store.array("forces")
        sq, n = 0.0, 0
        for a in range(0, idx.size, 65536):
            block = np.asarray(f[atom_index(off, idx[a:a + 65536])])
            sq += float((block ** 2).sum())
            n += block.size
        fstd = float(np.sqrt(sq / max(n, 1)))
    return DatasetNorm(coeff=[float(x) for x in coeff], energy_mean=0.0, energy_std=std if std > 1e-12 else 1.0, force_std=fstd if fstd > 1e-12 else 1.0)


def scalar_norm(store: Store, indices: np.ndarray, target: str, atom_refs: str, config_path=None) -> DatasetNorm:
    """Reference and scale of a scalar target on ``indices``: subtract sum_i ref[Z_i] (``jmp``: JMP's
    QM9 atom energies; ``fit``: least squares on the element counts; ``none``), then standardise
    (mean and std of the referenced values, as JMP's QM9 recipe)."""
    y = np.asarray(store.array("targets"))[indices, store.target_names.index(target)]
    coeff = np.zeros(N_ELEMENTS)
    if atom_refs == "jmp":
        if target not in QM9_ATOM_REFS_JMP:
            raise InputError(f"JMP atom references exist for {', '.join(QM9_ATOM_REFS_JMP)} only", path=config_path, field="atom_refs")
        for z, v in QM9_ATOM_REFS_JMP[target].items():
            coeff[z] = v
    elif atom_refs == "fit":
        coeff = fit_linear_reference(element_counts(store, indices), y)
    yr = y - element_counts(store, indices) @ coeff
    std = float(yr.std()) if yr.size > 1 and yr.std() > 1e-12 else 1.0
    return DatasetNorm(coeff=[float(c) for c in coeff], energy_mean=float(yr.mean()), energy_std=std, force_std=1.0)


def save_norms(path: str | Path, norms: dict[str, DatasetNorm]) -> None:
    """Write ``{name: {coeff, energy_mean, energy_std, force_std}}`` as JSON (atomically)."""
    write_json(path, {k: asdict(v) for k, v in norms.items()}, indent=None)
