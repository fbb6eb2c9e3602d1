"""ani1x-mini and transition1x-mini: small organic CHNO molecules from QM9's train split, GFN2-xTB.

ani1x-mini (mirrors ANI-1x): QM9 molecules (never from the QM9 task's val/test split; no F,
as ANI-1x is CHNO) displaced off equilibrium, several conformers per molecule. Each conformer
gets Gaussian Cartesian displacements with an amplitude drawn per conformer (hydrogens 1.6x the
heavy atoms, as their thermal amplitudes are larger), calibrated so the GFN2-xTB force RMS is of
the order of ANI-1x's (std 2.1 eV/A) and of 500-1000 K MD, not the ~40 eV/A of 0.2 A random
displacements. Class label: the formula. Split by formula (JMP's ANI-1x split: whole formulas
greedily into val and test, rest train).

transition1x-mini (mirrors Transition-1x): reaction-path-like frames. Each "reaction" starts from
a QM9 molecule with at most 7 heavy atoms (Transition-1x's reactants are GDB7 molecules), relaxed
with GFN2-xTB, and follows a hydrogen transfer: an H moves from its heavy atom to another heavy
atom 2.1-3.0 A away (intramolecular 1,2/1,3/1,4 H shifts, the commonest Transition-1x
rearrangements), on a path bowed 0.3 A off the donor-acceptor axis, in 10 evenly spaced frames.
In each frame the moving H is held and every other atom relaxes for a few FIRE steps, starting
from the previous frame's (a nudged-elastic-band image is relaxed perpendicular to its path, so
only the atoms that react carry large forces; Transition-1x's force std is 0.36 eV/A). Class
label: the formula (as Transition-1x's formula-without-rxn). Split by reaction, 90/5/5.
The bond-stretch paths of version 1 are kept (``paths="htransfer,stretch"``) but are off by
default: a bond pulled 0.2-1.6 A keeps a force RMS near 1 eV/A whatever relaxes around it,
three times Transition-1x's.
"""

from __future__ import annotations

import numpy as np

from atomsift.data.mini.common import (
    MAX_ATTEMPTS, REJECT_DISTANCE, CalculationFailed, Sample, TaskResult, collect, fail_after, group_split,
    label, min_distance, parse_list, rng_for, write_store, xtb_calculator, xtb_parameters,
)
from atomsift.data.store import formula

VERSION = "2"  # 2: GDB7-sized reactants relaxed, H transfers with perpendicular relaxation (force RMS ~0.34 eV/A)
METHOD = "GFN2-xTB"

ANI_CONFORMERS = 4          # conformers per molecule
ANI_AMPLITUDE = (0.015, 0.06)  # heavy-atom displacement std range (A); H gets 1.6x
ANI_H_FACTOR = 1.6
T1X_FRAMES = 10             # frames per reaction path
T1X_STRETCH = 1.6           # A, longest extension of a dissociating bond (paths="...,stretch")
T1X_MAX_HEAVY = 7           # heavy atoms per reactant (Transition-1x: GDB7)
T1X_RELAX = (0.1, 15)       # reactant pre-relaxation: BFGS fmax (eV/A), steps
T1X_PERP_STEPS = 8          # FIRE steps per frame with the moving atoms held (perpendicular relaxation)
T1X_PATHS = ("htransfer", "stretch")
SPLIT_FRACTIONS = {"train": 0.90, "val": 0.05, "test": 0.05}


# ------------------------------------------------------------------------------------------ ani1x


def _ani_task(payload) -> TaskResult:
    seed, mol, gdb, z, pos0, k = payload
    res = TaskResult()
    calc = xtb_calculator(METHOD, z)
    from ase import Atoms

    sigma_scale = np.where(z == 1, ANI_H_FACTOR, 1.0)[:, None]
    cls = formula(z)
    for c in range(k):
        for attempt in range(MAX_ATTEMPTS):
            rng = rng_for(seed, "ani1x", gdb, c, attempt)
            amp = rng.uniform(*ANI_AMPLITUDE)
            pos = pos0 + rng.normal(size=pos0.shape) * amp * sigma_scale
            item = f"molecule gdb {gdb} conformer {c}"
            if min_distance(z, pos) < REJECT_DISTANCE:
                res.skips.append((item, attempt, "geometry: atoms too close"))
                continue
            try:
                e, f = label(Atoms(numbers=z, positions=pos), calc)
            except CalculationFailed as exc:
                res.skips.append((item, attempt, f"calculator: {exc}"))
                continue
            res.samples.append(Sample(z, pos, e, f, cls=cls, sid=gdb, group=cls))
            break
        else:
            raise fail_after(item, res.skips, "ani1x-mini")
    return res


def generate_ani1x(out, *, n: int, seed: int, pool, qm9=None) -> tuple:
    from atomsift.data.mini.molecules import qm9_train_molecules

    mols = [m for m in qm9_train_molecules(qm9) if len(m[1]) >= 4]  # ANI-1x drops formulas under 4 atoms
    order = rng_for(seed, "ani1x-select").permutation(len(mols))
    n_mol = -(-n // ANI_CONFORMERS)
    tasks = []
    left = n
    for j in range(n_mol):
        gdb, z, pos = mols[order[j]]
        k = min(ANI_CONFORMERS, left)
        left -= k
        tasks.append((seed, j, gdb, z, pos, k))
    samples, skips = collect(pool.map(_ani_task, tasks), "ani1x-mini")
    splits = group_split([s.group for s in samples], SPLIT_FRACTIONS, seed)
    prov = {
        "generator": "ani1x-mini", "mirrors": "ANI-1x", "seed": seed, "n": n, **xtb_parameters(METHOD),
        "geometries": "QM9 (qm9pack or --qm9 store), train split of the QM9 task only, no F, >= 4 atoms",
        "qm9_source": str(qm9) if qm9 else "qm9pack (JMP split)",
        "conformers_per_molecule": ANI_CONFORMERS, "displacement_std_A": list(ANI_AMPLITUDE), "hydrogen_factor": ANI_H_FACTOR,
        "split": "by formula, 90/5/5 (greedy whole formulas into val and test)", "skips": skips,
    }
    write_store(out, name="ani1x-mini", family="ani1x", version=VERSION, level_of_theory=METHOD, samples=samples, splits=splits, provenance=prov)
    return out, skips


# ------------------------------------------------------------------------------------ transition1x


def _bonds(z, pos) -> np.ndarray:
    """Boolean bond matrix from covalent radii (ASE's natural cutoffs, x1.15)."""
    from ase.data import covalent_radii

    r = covalent_radii[z]
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    b = d < 1.15 * (r[:, None] + r[None])
    np.fill_diagonal(b, False)
    return b


def _fragment(bonds: np.ndarray, keep: int, cut: int) -> np.ndarray:
    """Atoms reachable from ``cut`` without crossing the bond keep-cut (boolean mask)."""
    n = len(bonds)
    seen = np.zeros(n, bool)
    seen[cut] = True
    stack = [cut]
    while stack:
        i = stack.pop()
        for j in np.nonzero(bonds[i])[0]:
            if (i == cut and j == keep) or seen[j]:
                continue
            seen[j] = True
            stack.append(j)
    return seen


def _candidates(z, pos):
    """Possible paths of a molecule: ("htransfer", h, donor, acceptor) and ("stretch", keep, cut)."""
    b = _bonds(z, pos)
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    out = []
    for h in np.nonzero(z == 1)[0]:
        donors = np.nonzero(b[h])[0]
        if len(donors) != 1:
            continue
        dn = donors[0]
        for a in np.nonzero(z > 1)[0]:
            if a != dn and not b[h, a] and 2.1 <= d[dn, a] <= 3.0 and d[h, a] < d[dn, a] + 0.5:
                out.append(("htransfer", int(h), int(dn), int(a)))
    for i, j in zip(*np.nonzero(np.triu(b))):
        for keep, cut in ((i, j), (j, i)):
            frag = _fragment(b, keep, cut)
            if frag[keep] or frag.sum() > 4:  # a ring bond, or a large group
                continue
            out.append(("stretch", int(keep), int(cut)))
    return out


def _path_frames(z, pos0, path, k) -> tuple[list[np.ndarray], str]:
    """The k frame geometries of one path (without jitter)."""
    frames = []
    if path[0] == "htransfer":
        _, h, dn, a = path
        end_dir = pos0[h] - pos0[a]
        end = pos0[a] + 1.0 * end_dir / np.linalg.norm(end_dir) * (1.02 if z[a] == 8 else 1.06 if z[a] == 7 else 1.10)
        # the H passes through the region between donor and acceptor, bowed out by 0.3 A so that
        # it does not cut through the donor-acceptor axis
        mid_axis = 0.5 * (pos0[dn] + pos0[a])
        bow = 0.5 * (pos0[h] + end) - mid_axis
        nb = np.linalg.norm(bow)
        bow = bow / nb if nb > 1e-6 else np.zeros(3)
        for t in np.linspace(0.0, 1.0, k):
            p = pos0.copy()
            p[h] = (1 - t) * pos0[h] + t * end + 0.3 * np.sin(np.pi * t) * bow
            frames.append(p)
        kind = f"H transfer {h}:{dn}->{a}"
    else:
        _, keep, cut = path
        frag = _fragment(_bonds(z, pos0), keep, cut)
        u = pos0[cut] - pos0[keep]
        u /= np.linalg.norm(u)
        for s in np.linspace(0.0, T1X_STRETCH, k):
            p = pos0.copy()
            p[frag] += s * u
            frames.append(p)
        kind = f"bond stretch {keep}-{cut}"
    return frames, kind


def _moving_atoms(z, pos0, path) -> np.ndarray:
    """The atoms a path moves (held during the perpendicular relaxation)."""
    if path[0] == "htransfer":
        return np.array([path[1]])
    frag = _fragment(_bonds(z, pos0), path[1], path[2])
    return np.nonzero(frag)[0]


def _relax_perpendicular(atoms, calc, moving, steps: int) -> None:
    """``steps`` FIRE steps of every atom but ``moving`` (held): the image relaxes off its path."""
    from ase.constraints import FixAtoms
    from ase.optimize import FIRE

    atoms.set_constraint(FixAtoms(indices=moving))
    atoms.calc = calc
    try:
        FIRE(atoms, logfile=None, maxstep=0.1).run(fmax=0.05, steps=steps)
    except CalculationFailed:
        raise
    except Exception as exc:  # xtb's SCF failure surfaces as a calculator error inside the optimizer
        raise CalculationFailed(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None
    finally:
        atoms.set_constraint()
        atoms.calc = None


def _t1x_task(payload) -> TaskResult:
    seed, rxn, gdb, z, pos0, k, paths = payload
    from ase import Atoms

    from atomsift.data.mini.molecules import relax

    res = TaskResult()
    calc = xtb_calculator(METHOD, z)
    cls = formula(z)
    # the paths are found on the QM9 geometry (as the generator selected the molecule) and built on
    # the relaxed one (same atoms, same bonds)
    cands = [c for c in _candidates(z, pos0) if c[0] in paths]
    try:
        pos0 = relax(z, pos0, method=METHOD, fmax=T1X_RELAX[0], steps=T1X_RELAX[1])
    except Exception as exc:  # noqa: BLE001 - an SCF failure while relaxing: start from the QM9 geometry
        res.skips.append((f"reaction {rxn} (gdb {gdb})", 0, f"relaxation: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"))
    for attempt in range(MAX_ATTEMPTS):
        rng = rng_for(seed, "t1x", rxn, attempt)
        # half the reactions are H transfers when both kinds are enabled and the molecule allows one
        ht = [c for c in cands if c[0] == "htransfer"]
        st = [c for c in cands if c[0] == "stretch"]
        pick = ht if (ht and (rng.random() < 0.5 or not st)) else st
        path = pick[int(rng.integers(len(pick)))]
        frames, kind = _path_frames(z, pos0, path, k)
        moving = _moving_atoms(z, pos0, path)
        item = f"reaction {rxn} (gdb {gdb}, {kind})"
        samples, failed, prev = [], None, None
        for fi, p in enumerate(frames):
            atoms = Atoms(numbers=z, positions=p)
            if prev is not None:  # spectators continue from the previous relaxed image
                rest = np.setdiff1d(np.arange(len(z)), moving)
                atoms.positions[rest] = prev[rest]
            try:
                if fi > 0 and T1X_PERP_STEPS:
                    _relax_perpendicular(atoms, calc, moving, T1X_PERP_STEPS)
                p = np.array(atoms.positions)
                if min_distance(z, p) < REJECT_DISTANCE:
                    failed = f"geometry: frame {fi} atoms too close"
                    break
                e, f = label(Atoms(numbers=z, positions=p), calc)
            except CalculationFailed as exc:
                failed = f"calculator: frame {fi}: {exc}"
                break
            prev = p
            samples.append(Sample(z, p, e, f, cls=cls, sid=rxn, group=str(rxn)))
        if failed is None:
            res.samples = samples
            res.info = {"kind": path[0]}
            return res
        res.skips.append((item, attempt, failed))
    raise fail_after(item, res.skips, "transition1x-mini")


def generate_transition1x(out, *, n: int, seed: int, pool, qm9=None, paths="htransfer") -> tuple:
    from atomsift.data.mini.molecules import qm9_train_molecules

    paths = tuple(parse_list(paths, T1X_PATHS, "path", "paths"))
    mols = [m for m in qm9_train_molecules(qm9) if len(m[1]) >= 4 and int((m[1] > 1).sum()) <= T1X_MAX_HEAVY]
    order = iter(rng_for(seed, "t1x-select").permutation(len(mols)))
    n_rxn = -(-n // T1X_FRAMES)
    tasks, left = [], n
    for j in range(n_rxn):
        gdb, z, pos = mols[next(order)]
        while not [c for c in _candidates(z, pos) if c[0] in paths]:
            gdb, z, pos = mols[next(order)]
        k = min(T1X_FRAMES, left)
        left -= k
        tasks.append((seed, j, gdb, z, pos, k, paths))
    results = pool.map(_t1x_task, tasks)
    samples, skips = collect(results, "transition1x-mini")
    kinds = [r.info.get("kind") for r in results]
    splits = group_split([s.group for s in samples], SPLIT_FRACTIONS, seed)
    prov = {
        "generator": "transition1x-mini", "mirrors": "Transition-1x", "seed": seed, "n": n, **xtb_parameters(METHOD),
        "geometries": f"QM9 (qm9pack or --qm9 store), train split of the QM9 task only, no F, >= 4 atoms, "
                      f"<= {T1X_MAX_HEAVY} heavy atoms, relaxed (BFGS fmax {T1X_RELAX[0]} eV/A, <= {T1X_RELAX[1]} steps)",
        "qm9_source": str(qm9) if qm9 else "qm9pack (JMP split)",
        "paths": {"htransfer": kinds.count("htransfer"), "stretch": kinds.count("stretch")},
        "reaction_source_gdb": [int(t[2]) for t in tasks],  # QM9 index of each reaction's molecule (sid = reaction)
        "frames_per_reaction": T1X_FRAMES, "max_stretch_A": T1X_STRETCH,
        "perpendicular_relaxation": f"{T1X_PERP_STEPS} FIRE steps per frame (maxstep 0.1 A), moving atoms held",
        "split": "by reaction, 90/5/5", "skips": skips,
    }
    write_store(out, name="transition1x-mini", family="transition1x", version=VERSION, level_of_theory=METHOD, samples=samples, splits=splits, provenance=prov)
    return out, skips
