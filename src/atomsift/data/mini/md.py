"""rmd17-mini, md22-mini and spice-mini: GFN2-xTB Langevin molecular dynamics, frames with a stride.

Each dataset is a fixed number of independent trajectories (not one per worker, so the bytes do
not depend on the worker count). A trajectory starts from the GFN2-xTB-relaxed geometry, draws
Maxwell-Boltzmann velocities at the target temperature from its own seed, runs a burn-in under
the Langevin thermostat, then records every ``stride``-th step: positions, energy and forces
(GFN2-xTB), and the kinetic temperature (3N-3 degrees of freedom: ASE's Langevin keeps the
centre of mass still). A trajectory whose SCF fails is rerun from a new seed (counted, logged).

- rmd17-mini (mirrors rMD17): aspirin (default; ethanol and benzene also available), 500 K,
  0.5 fs steps as MD17. Split as JMP's rMD17: a RandomState(42) permutation, 950 train, 50 val,
  the rest test; when n <= 1050 the split keeps JMP's train:val ratio on 80% of the frames
  (train round(0.76 n), val round(0.04 n), test the rest).
- md22-mini (mirrors MD22's Ac-Ala3-NHMe): 500 K, 1 fs steps as MD22. Split as JMP's MD22:
  train+val = round(n * 6000 / 85109) frames (JMP's train size over the dataset size), of which
  5% (int) is val, rest test.
- spice-mini (mirrors SPICE's solvated amino acids): neutral glycine, alanine and serine, each
  with 4 waters placed at random around it (then up to 50 BFGS steps), 300 K (so the waters
  stay), 1 fs steps, every 3rd step. Split 80/10/10 over conformers as JMP's SPICE.
"""

from __future__ import annotations

import numpy as np

from atomsift.data.mini.common import (
    MAX_ATTEMPTS, CalculationFailed, Sample, TaskResult, collect, fail_after, fraction_split, min_distance, parse_list,
    rng_for, write_store, xtb_calculator, xtb_parameters,
)

VERSION = "1"
METHOD = "GFN2-xTB"
RMD17_MOLECULES = ("aspirin", "ethanol", "benzene")
SPICE_AMINO_ACIDS = ("glycine", "alanine", "serine")
SPICE_WATERS = 4
SPICE_RELAX_STEPS = 50

# per dataset: temperature (K), time step (fs), stride (steps), burn-in (steps), friction (1/fs), trajectories
MD = {
    "rmd17": dict(temperature=500.0, timestep=0.5, stride=4, burnin=200, friction=0.01, trajectories=4),
    "md22": dict(temperature=500.0, timestep=1.0, stride=4, burnin=100, friction=0.02, trajectories=4),
    "spice": dict(temperature=300.0, timestep=1.0, stride=3, burnin=100, friction=0.02, trajectories=12),
}
BURNIN_FRICTION = 0.1  # 1/fs
MD22_TRAIN_FRACTION = 6000 / 85109  # JMP's Ac-Ala3-NHMe train size over the MD22 frames


def kinetic_temperature(masses, velocities) -> float:
    """Kinetic temperature (K) with 3N-3 degrees of freedom (centre of mass fixed)."""
    from ase.units import kB

    ekin = 0.5 * float(np.sum(np.asarray(masses)[:, None] * np.asarray(velocities) ** 2))
    return 2.0 * ekin / ((3 * len(masses) - 3) * kB)


def run_md(z, pos0, *, n_frames: int, seed_keys: tuple, temperature: float, timestep: float, stride: int, burnin: int,
           friction: float) -> tuple[list, list]:
    """One Langevin trajectory; returns (frames [(pos, E, F)], kinetic temperatures)."""
    from ase import Atoms, units
    from ase.calculators.calculator import CalculationFailed as AseFailed
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    rs = np.random.RandomState(rng_for(*seed_keys).integers(2**31 - 1))
    atoms = Atoms(numbers=z, positions=pos0)
    atoms.calc = xtb_calculator(METHOD, z)
    thermalize_momenta(atoms, temperature, rng=rs)
    Stationary(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs, fixcm=False, rng=rs)
    frames, temps = [], []
    try:
        if burnin:
            # starting at a minimum, equipartition halves the temperature at once; a 10 fs coupling
            # during burn-in brings it back within the burn-in, then the production friction applies
            dyn.set_friction(max(friction, BURNIN_FRICTION) / units.fs)
            dyn.run(burnin)
            dyn.set_friction(friction / units.fs)
        masses = atoms.get_masses()
        for _ in range(n_frames):
            dyn.run(stride)
            e = float(atoms.get_potential_energy())
            f = np.array(atoms.get_forces(apply_constraint=False))  # FixCom would remove the net force
            if not (np.isfinite(e) and np.all(np.isfinite(f))):
                raise CalculationFailed("non-finite energy or forces")
            frames.append((np.array(atoms.positions), e, f))
            temps.append(kinetic_temperature(masses, atoms.get_velocities()))
    except (AseFailed, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CalculationFailed(msg) from None
    return frames, temps


def _md_task(payload) -> TaskResult:
    """One trajectory: (seed, dataset, traj index, molecule name, n_frames, relaxed start or None, MD parameters)."""
    seed, dataset, traj, name, n_frames, start, params = payload
    from atomsift.data.mini.molecules import build, relax

    res = TaskResult()
    for attempt in range(MAX_ATTEMPTS):
        item = f"{name} trajectory {traj}"
        try:
            if start is not None:
                z, pos = start
            else:  # spice: every trajectory has its own water arrangement, relaxed here
                z, pos = _solvate(*build(name), rng_for(seed, dataset, traj, attempt, "waters"))
                pos = relax(z, pos, fmax=0.1, steps=SPICE_RELAX_STEPS)  # removes clashes; burn-in does the rest
            dyn = {k: v for k, v in params.items() if k != "trajectories"}
            frames, temps = run_md(z, pos, n_frames=n_frames, seed_keys=(seed, dataset, traj, attempt), **dyn)
        except CalculationFailed as exc:
            res.skips.append((item, attempt, f"calculator: {exc}"))
            continue
        bad = [k for k, (p, _, _) in enumerate(frames) if min_distance(z, p) < 0.6]
        if bad:  # never seen at these temperatures; kept as a guard
            res.skips.append((item, attempt, f"geometry: frame {bad[0]} atoms too close"))
            continue
        cls = name if dataset != "spice" else f"{name}+{SPICE_WATERS}H2O"
        res.samples = [Sample(z, p, e, f, cls=cls, sid=traj, group=str(traj)) for p, e, f in frames]
        res.info = {"mean_temperature_K": float(np.mean(temps)), "temperatures": temps}
        return res
    raise fail_after(item, res.skips, f"{dataset}-mini")


def _solvate(z, pos, rng) -> tuple[np.ndarray, np.ndarray]:
    """Add SPICE_WATERS waters at random around the solute: O 2.7-3.3 A from a random N/O/H-bearing
    heavy atom, at least 2.4 A from other heavy atoms and 1.5 A from hydrogens."""
    from atomsift.data.mini.molecules import water

    zs, ps = list(z), list(pos)
    anchors = [i for i, zi in enumerate(z) if zi in (7, 8)]
    placed = 0
    for _ in range(2000):
        if placed == SPICE_WATERS:
            break
        a = anchors[int(rng.integers(len(anchors)))] if anchors else int(rng.integers(len(z)))
        v = rng.normal(size=3)
        o = np.asarray(ps[a]) + v / np.linalg.norm(v) * rng.uniform(2.7, 3.3)
        wz, wp = water(rng)
        wp = wp + o
        allp, allz = np.array(ps), np.array(zs)
        d = np.linalg.norm(allp[:, None] - wp[None], axis=-1)
        heavy = allz > 1
        if d[heavy].min() < 2.4 or d[~heavy].min() < 1.5:
            continue
        zs += list(wz)
        ps += list(wp)
        placed += 1
    if placed < SPICE_WATERS:  # pragma: no cover - 2000 tries never fail for 4 waters
        raise CalculationFailed("could not place the waters")
    return np.array(zs), np.array(ps)


def _relax_task(name: str) -> tuple[np.ndarray, np.ndarray]:
    from atomsift.data.mini.molecules import build, relax

    z, pos = build(name)
    return z, relax(z, pos, fmax=0.05, steps=200)


def md_parameters(dataset: str, overrides: dict | None = None) -> dict:
    """The MD settings of ``dataset`` with ``overrides`` (e.g. a shorter burn-in for quick tests)."""
    p = dict(MD[dataset])
    for k, v in (overrides or {}).items():
        if k not in p:
            from atomsift.errors import InputError

            raise InputError(f"unknown MD parameter '{k}' (known: {', '.join(p)})", field="md")
        p[k] = type(p[k])(v)
    return p


def _traj_tasks(seed, dataset, names, n, pool, params) -> list:
    n_traj = min(params["trajectories"], n)
    base, extra = divmod(n, n_traj)
    starts = dict(zip(names, pool.map(_relax_task, names))) if dataset != "spice" else {}
    return [(seed, dataset, t, names[t % len(names)], base + (1 if t < extra else 0), starts.get(names[t % len(names)]), params)
            for t in range(n_traj)]


def _provenance(dataset: str, p: dict, seed: int, n: int, results, skips, **kw) -> dict:
    temps = [t for r in results for t in r.info["temperatures"]]
    return {
        "generator": f"{dataset}-mini", "seed": seed, "n": n, **xtb_parameters(METHOD),
        "dynamics": "ase.md.langevin.Langevin (fixcm), Maxwell-Boltzmann start, burn-in discarded",
        "temperature_K": p["temperature"], "timestep_fs": p["timestep"], "stride_steps": p["stride"], "burnin_steps": p["burnin"],
        "friction_per_fs": p["friction"], "trajectories": len(results),
        "mean_kinetic_temperature_K": round(float(np.mean(temps)), 2),
        "start_geometry": "hand-built Z-matrix (atomsift.data.mini.molecules) or ase.build g2, relaxed with GFN2-xTB (BFGS, fmax 0.05 eV/A)",
        **kw, "skips": skips,
    }


def rmd17_split(n: int, seed: int = 42) -> dict[str, np.ndarray]:
    """JMP's rMD17 split (950 train / 50 val / rest test, RandomState(42)); proportional when n <= 1050."""
    if n > 1050:
        n_train, n_val = 950, 50
    else:
        n_train, n_val = int(round(0.76 * n)), int(round(0.04 * n))
    perm = np.random.RandomState(seed).permutation(n)
    return {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]), "test": np.sort(perm[n_train + n_val:])}


def md22_split(n: int, seed: int = 42) -> dict[str, np.ndarray]:
    """JMP's MD22 split: train+val = JMP's train-size fraction of the frames, 5% of it val, rest test."""
    n_tv = max(2, int(round(n * MD22_TRAIN_FRACTION)))
    n_val = max(1, int(0.05 * n_tv))
    perm = np.random.RandomState(seed).permutation(n)
    return {"train": np.sort(perm[n_val:n_tv]), "val": np.sort(perm[:n_val]), "test": np.sort(perm[n_tv:])}


def generate_rmd17(out, *, n: int, seed: int, pool, molecule: str = "aspirin", md=None) -> tuple:
    name = parse_list(molecule or "aspirin", RMD17_MOLECULES, "rMD17 molecule", "molecule")
    if len(name) != 1:
        from atomsift.errors import InputError

        raise InputError("rmd17-mini takes one molecule per store (as JMP's per-molecule rMD17 tasks)", field="molecule")
    params = md_parameters("rmd17", md)
    results = pool.map(_md_task, _traj_tasks(seed, "rmd17", name, n, pool, params))
    samples, skips = collect(results, "rmd17-mini")
    prov = _provenance("rmd17", params, seed, n, results, skips, mirrors="rMD17", molecule=name[0],
                       split="JMP rMD17: RandomState(42) permutation, 950 train / 50 val / rest test (n <= 1050: 76% / 4% / 20%)")
    write_store(out, name="rmd17-mini", family="rmd17", version=VERSION, level_of_theory=METHOD, samples=samples,
                splits=rmd17_split(len(samples)), provenance=prov)
    return out, skips


def generate_md22(out, *, n: int, seed: int, pool, md=None) -> tuple:
    params = md_parameters("md22", md)
    results = pool.map(_md_task, _traj_tasks(seed, "md22", ["ac-ala3-nhme"], n, pool, params))
    samples, skips = collect(results, "md22-mini")
    for s in samples:
        s.cls = "Ac-Ala3-NHMe"
    prov = _provenance("md22", params, seed, n, results, skips, mirrors="MD22 (Ac-Ala3-NHMe)", molecule="Ac-Ala3-NHMe",
                       split="JMP MD22: RandomState(42) permutation, train+val = round(n * 6000/85109), 5% of it val, rest test")
    write_store(out, name="md22-mini", family="md22", version=VERSION, level_of_theory=METHOD, samples=samples,
                splits=md22_split(len(samples)), provenance=prov)
    return out, skips


def generate_spice(out, *, n: int, seed: int, pool, amino_acids=None, md=None) -> tuple:
    names = list(SPICE_AMINO_ACIDS) if amino_acids is None else parse_list(amino_acids, SPICE_AMINO_ACIDS, "amino acid", "amino_acids")
    params = md_parameters("spice", md)
    results = pool.map(_md_task, _traj_tasks(seed, "spice", names, n, pool, params))
    samples, skips = collect(results, "spice-mini")
    prov = _provenance("spice", params, seed, n, results, skips, mirrors="SPICE solvated amino acids",
                       amino_acids=names, waters=SPICE_WATERS, split="random 80/10/10 over conformers (JMP SPICE)")
    write_store(out, name="spice-mini", family="spice", version=VERSION, level_of_theory=METHOD, samples=samples,
                splits=fraction_split(len(samples), {"train": 0.8, "val": 0.1, "test": 0.1}, seed), provenance=prov)
    return out, skips
