"""Shared machinery of the mini-universe generators: seeds, worker pool, calculators, checks, stores.

Determinism is built in three places:

- every random draw comes from a generator seeded by ``(seed, stream, item, attempt)``
  (:func:`rng_for`), never from global state;
- work is cut into tasks whose content does not depend on the number of workers (one molecule,
  one path, one trajectory, a fixed-size chunk of samples), each task builds its own calculator
  (so an xtb restart guess never leaks from one task into another), and results are put back in
  task order;
- every task runs in a spawned worker process with one OpenMP thread, so a run with one worker
  and a run with eight produce the same bytes.

A sample whose calculation fails (e.g. SCF non-convergence) or whose geometry is rejected is
redrawn with the next ``attempt`` number; each redraw is counted and logged, and the counts go
into the manifest. After :data:`MAX_ATTEMPTS` failures of one sample the generator stops with an
error rather than write a shorter dataset.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from atomsift.errors import InputError

log = logging.getLogger("atomsift.mini")

MAX_ATTEMPTS = 8
REJECT_DISTANCE = 0.75  # Angstrom; generators redraw geometries with two atoms (periodic images included) closer
XTB_ACCURACY = 0.3  # tblite "accuracy" (lower is tighter); tight enough for 1e-3 eV/A force checks


class CalculationFailed(RuntimeError):
    """A calculator could not label a structure (SCF did not converge, non-finite output)."""


# ------------------------------------------------------------------------------------ random numbers


def _key(k) -> int:
    if isinstance(k, str):
        return zlib.crc32(k.encode())
    return int(k)


def rng_for(seed: int, *keys) -> np.random.Generator:
    """A generator seeded by ``seed`` and a path of keys (ints or strings, hashed stably)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(_key(k) for k in keys)])))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation matrix (from a random unit quaternion)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


# ----------------------------------------------------------------------------------------- workers


def _init_worker() -> None:
    # Before tblite is imported in this process: one thread per process (DESIGN.md, faster on
    # 2 cores, and it keeps xtb's reductions in a fixed order).
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class Pool:
    """Spawned worker processes with one thread each; :meth:`map` returns results in task order."""

    def __init__(self, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.workers = int(workers)
        self._ex = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)

    def map(self, func: Callable, tasks: Sequence) -> list:
        return list(self._ex.map(func, tasks, chunksize=1))

    def close(self) -> None:
        self._ex.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------- calculators


def package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def xtb_calculator(method: str, numbers, *, electronic_temperature: float = 300.0, accuracy: float = XTB_ACCURACY, max_iterations: int = 250):
    """A tblite ASE calculator for ``method`` (GFN2-xTB or GFN1-xTB), neutral, lowest spin.

    The multiplicity is set from the electron-count parity (core shells hold even counts, so the
    parity of sum(Z) is that of the valence electrons): radicals such as OH* get a doublet.
    """
    from tblite.ase import TBLite

    unpaired = int(np.sum(numbers)) % 2
    return TBLite(method=method, charge=0, multiplicity=unpaired + 1, electronic_temperature=electronic_temperature,
                  accuracy=accuracy, max_iterations=max_iterations, verbosity=0)


def xtb_parameters(method: str, **kw) -> dict:
    p = {"calculator": "tblite", "method": method, "package": "tblite", "package_version": package_version("tblite"),
         "charge": 0, "multiplicity": "lowest (singlet or doublet by electron parity)", "accuracy": XTB_ACCURACY,
         "electronic_temperature_K": 300.0, "max_iterations": 250}
    p.update(kw)
    return p


def emt_parameters() -> dict:
    return {"calculator": "ase.calculators.emt.EMT", "method": "EMT", "package": "ase", "package_version": package_version("ase")}


def label(atoms, calc) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/A) of ``atoms`` from ``calc``; :class:`CalculationFailed` on failure."""
    from ase.calculators.calculator import CalculationFailed as AseFailed

    atoms.calc = calc
    try:
        e = float(atoms.get_potential_energy())
        f = np.array(atoms.get_forces(), dtype=np.float64)
    except (AseFailed, RuntimeError) as exc:
        # tblite keeps its restart state; drop it so the next structure starts clean
        if hasattr(calc, "_xtb"):
            calc._xtb = None
            calc._res = None
        calc.reset()
        raise CalculationFailed(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
    finally:
        atoms.calc = None
    if not (np.isfinite(e) and np.all(np.isfinite(f))):
        raise CalculationFailed("non-finite energy or forces")
    return e, f


# -------------------------------------------------------------------------------------- geometry


def min_distance(numbers, positions, cell=None, pbc=None) -> float:
    """Shortest interatomic distance, periodic images included (``inf`` if none is below 4 A in a
    periodic cell)."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    pos = np.asarray(positions, dtype=np.float64)
    n = len(pos)
    pbc_a = np.zeros(3, bool) if pbc is None else np.asarray(pbc, bool)
    if not pbc_a.any():
        if n < 2:
            return np.inf
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
        d[np.diag_indices(n)] = np.inf
        return float(d.min())
    cell_a = np.asarray(cell, dtype=np.float64)
    if pbc_a.all() and n < 400:
        # minimum-image convention is exact for distances below half of every cell width
        inv = np.linalg.inv(cell_a)
        widths = 1.0 / np.linalg.norm(inv, axis=0)
        if widths.min() > 4.0:
            frac = (pos[:, None] - pos[None]) @ inv
            frac -= np.round(frac)
            d = np.linalg.norm(frac @ cell_a, axis=-1)
            d[np.diag_indices(n)] = np.inf
            dmin = float(d.min()) if n > 1 else np.inf
            if dmin < 0.5 * widths.min():
                return dmin
    atoms = Atoms(numbers=numbers, positions=pos, cell=cell_a, pbc=pbc_a)
    d = neighbor_list("d", atoms, 4.0, self_interaction=False)
    return float(d.min()) if d.size else np.inf


# ---------------------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One labelled structure as a generator returns it."""

    numbers: np.ndarray
    positions: np.ndarray
    energy: float
    forces: np.ndarray
    cls: str
    sid: int
    cell: np.ndarray | None = None
    pbc: np.ndarray | None = None
    tags: np.ndarray | None = None
    fixed: np.ndarray | None = None
    group: str = ""  # what splits group by (formula, reaction, system)


@dataclass
class TaskResult:
    samples: list = field(default_factory=list)
    skips: list = field(default_factory=list)  # (item, attempt, reason)
    info: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- splits


def fraction_split(n: int, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Random split of ``range(n)`` by fractions (the last name takes the rest), seeded."""
    perm = np.random.RandomState(seed).permutation(n)
    out, start = {}, 0
    names = list(fractions)
    for k, name in enumerate(names):
        stop = n if k == len(names) - 1 else start + int(round(fractions[name] * n))
        out[name] = np.sort(perm[start:stop])
        start = stop
    return out


def group_split(groups: Sequence[str], fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split whole groups (e.g. formulas), as JMP's ANI-1x split: shuffle the groups, greedily fill
    every split but ``train`` up to its fraction of the structures, the rest is train."""
    groups = np.asarray(groups)
    names = sorted(set(groups.tolist()))
    order = np.random.RandomState(seed).permutation(len(names))
    sizes = {g: int(c) for g, c in zip(*np.unique(groups, return_counts=True))}
    n = len(groups)
    assign: dict[str, str] = {}
    pos = 0
    for split, frac in fractions.items():
        if split == "train":
            continue
        target, got = frac * n, 0
        while got < target and pos < len(order):
            g = names[order[pos]]
            assign[g] = split
            got += sizes[g]
            pos += 1
    out = {s: [] for s in fractions}
    for i, g in enumerate(groups.tolist()):
        out[assign.get(g, "train")].append(i)
    return {s: np.asarray(v, dtype=np.int64) for s, v in out.items()}


# ------------------------------------------------------------------------------------------ writing


def collect(results: Sequence[TaskResult], name: str) -> tuple[list[Sample], dict]:
    """Flatten task results in order; log every skip; return samples and the skip record."""
    samples, skips = [], []
    for r in results:
        samples.extend(r.samples)
        skips.extend(r.skips)
    for item, attempt, reason in skips:
        log.warning("%s: redrew %s (attempt %d): %s", name, item, attempt, reason)
    calc_fail = sum(1 for s in skips if not s[2].startswith("geometry"))
    record = {
        "redrawn_total": len(skips),
        "calculator_failures": calc_fail,
        "rejected_geometries": len(skips) - calc_fail,
        "details": [f"{item} attempt {attempt}: {reason}" for item, attempt, reason in skips[:50]],
    }
    return samples, record


def write_store(out, *, name: str, family: str, version: str, level_of_theory: str, samples: Sequence[Sample],
                splits: dict[str, np.ndarray], provenance: dict, energy_kind: str = "total") -> Path:
    from atomsift.data.store import StoreWriter

    with StoreWriter(out, dataset=family, source=None, reader=name, reader_version=version, level_of_theory=level_of_theory,
                     has_energy=True, has_forces=True, has_sid=True, energy_kind=energy_kind, extra=provenance) as w:
        for i, s in enumerate(samples):
            w.add(s.numbers, s.positions, cell=s.cell, pbc=s.pbc, energy=s.energy, forces=s.forces, tags=s.tags,
                  fixed=s.fixed, cls=s.cls, sid=s.sid, where=f"{name} sample {i}")
        for split, idx in splits.items():
            w.set_split(split, idx)
    return Path(out)


# Largest analog: each structure is labelled by xtb or EMT at 1-500 ms (docs/mini-universe.md), so
# 10^6 is already days of CPU; the bound stops `--n 10^12` before any generator sizes its work.
MAX_N = 1_000_000


def check_n(n, name: str) -> int:
    try:
        n_int = int(n)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"--n must be a positive integer, got {n!r}", field="n") from None
    if n_int != n or n_int <= 0:
        raise InputError(f"{name}: --n must be a positive integer, got {n}", field="n")
    if n_int > MAX_N:
        raise InputError(f"{name}: --n must be at most {MAX_N:,} (a mini-universe analog; labelling costs 1-500 ms "
                         f"per structure), got {n_int}", field="n")
    return n_int


def parse_list(value, allowed: Sequence[str], what: str, field_name: str) -> list[str]:
    """``"Cu,Pt"`` or a list -> validated names (InputError naming the first unknown one)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [s.strip() for s in items if s.strip()]
    if not items:
        raise InputError(f"empty {what} list", field=field_name)
    for s in items:
        if s not in allowed:
            raise InputError(f"unknown {what} '{s}' (known: {', '.join(allowed)})", field=field_name)
    return items


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def fail_after(item: str, skips: list, name: str):
    reasons = "; ".join(r for _, _, r in skips[-3:])
    return InputError(f"{item}: {MAX_ATTEMPTS} attempts failed in a row (last: {reasons}); refusing to write a shorter dataset", field=name)
