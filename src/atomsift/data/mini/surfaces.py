"""oc20-mini and oc22-mini: small adsorbates on rattled periodic slabs.

oc20-mini (mirrors OC20 S2EF): one adsorbate (H, O, N, C, OH, CO, CH, CH2, CH3, NH, NH2, H2O,
NO, COH) on a 3x3, 4-layer fcc(111) or fcc(100) slab of Cu, Ag, Au, Ni, Pd, Pt or Al
(``ase.build``, lattice constants of ``ase.data``), 7 A of vacuum on each side, periodic in all
three directions as OC20. The adsorbate sits at a random lateral position with its binding atom
at a bonding distance from the nearest surface atom, randomly rotated; surface and adsorbate atoms
are then rattled by an amplitude drawn per structure. As in OC20: tags 0 (sub-surface, the bottom
two layers, ``fixed``), 1 (surface, the top two layers), 2 (adsorbate); fixed atoms are not
rattled. Labels: ASE's EMT, total energy (OC20 stores energies referenced to the clean slab and
the gas-phase references; EMT's own reference is the isolated atoms). Class label: the bulk
symbol (e.g. "Cu"), as OC20's ``bulk_symbols``.

oc22-mini (mirrors OC22): rock-salt oxide (100) slabs (MgO, CaO; one conventional cell,
a x a laterally and two layers thick, 12 A of vacuum) with an O, H, OH, CO, H2O or O2 adsorbate
on top of a cation (H: of a lattice O) at its bond length, rattled as above (the clean slab's
top layer is first relaxed by GFN1-xTB, once per oxide), labelled by
periodic GFN1-xTB (GFN2-xTB does not converge on oxide slabs; 1000 K electronic temperature
keeps the SCF stable under rattling). Tags and fixed bottom layer as oc20-mini; class label: the
oxide's bulk formula.
"""

from __future__ import annotations

import numpy as np

from atomsift.data.mini.common import (
    MAX_ATTEMPTS, REJECT_DISTANCE, CalculationFailed, Sample, TaskResult, chunks, collect, emt_parameters, fail_after,
    fraction_split, label, min_distance, parse_list, rng_for, write_store, xtb_calculator,
    xtb_parameters,
)

VERSION = "2"  # 2: oc20 3x3x6 slabs (bottom 3 layers fixed); oc22 relaxed adsorbate templates, smaller rattle
METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
FACETS = ("111", "100")
# rock-salt lattice constants (A, experiment). SrO was tried and dropped: GFN1-xTB's SCF does not
# converge on its clean slab even at 1000 K electronic temperature.
OXIDES = {"MgO": 4.212, "CaO": 4.811}
SPLIT_FRACTIONS = {"train": 0.90, "val": 0.05, "test": 0.05}
CHUNK = 25  # structures per task (fixed: results do not depend on the worker count)

# Adsorbates built explicitly (ase's molecule("CO") lists O first): the binding atom is first and
# sits at the origin, the rest points up (+z). Values are typical gas-phase / adsorbed geometries.
ADSORBATES = {
    "H": (["H"], [[0, 0, 0]]),
    "O": (["O"], [[0, 0, 0]]),
    "N": (["N"], [[0, 0, 0]]),
    "C": (["C"], [[0, 0, 0]]),
    "OH": (["O", "H"], [[0, 0, 0], [0, 0, 0.97]]),
    "CO": (["C", "O"], [[0, 0, 0], [0, 0, 1.15]]),
    "NO": (["N", "O"], [[0, 0, 0], [0, 0, 1.17]]),
    "CH": (["C", "H"], [[0, 0, 0], [0, 0, 1.10]]),
    "CH2": (["C", "H", "H"], [[0, 0, 0], [0.89, 0, 0.63], [-0.89, 0, 0.63]]),
    "CH3": (["C", "H", "H", "H"], [[0, 0, 0], [1.03, 0, 0.36], [-0.51, 0.89, 0.36], [-0.51, -0.89, 0.36]]),
    "NH": (["N", "H"], [[0, 0, 0], [0, 0, 1.03]]),
    "NH2": (["N", "H", "H"], [[0, 0, 0], [0.82, 0, 0.60], [-0.82, 0, 0.60]]),
    "H2O": (["O", "H", "H"], [[0, 0, 0], [0.76, 0, 0.59], [-0.76, 0, 0.59]]),
    "COH": (["C", "O", "H"], [[0, 0, 0], [0, 0, 1.33], [0.90, 0, 1.62]]),
    "O2": (["O", "O"], [[0, 0, 0], [0, 0, 1.30]]),
}
OC20_ADSORBATES = ("H", "O", "N", "C", "OH", "CO", "NO", "CH", "CH2", "CH3", "NH", "NH2", "H2O", "COH")
OC22_ADSORBATES = ("O", "H", "OH", "CO", "H2O", "O2")
# binding-atom to nearest-surface-atom distance (A) before rattling: EMT's own optimum for a single
# atom at a random lateral position on the (111) slab (scanned once, mean of 4 positions), so the
# adsorbate starts near EMT's binding distance rather than far up its repulsive wall
_EMT_BOND = {
    "Cu": {"H": 1.98, "C": 1.74, "N": 1.71, "O": 1.98}, "Ag": {"H": 2.11, "C": 1.95, "N": 1.86, "O": 2.03},
    "Au": {"H": 2.17, "C": 1.99, "N": 2.02, "O": 2.10}, "Ni": {"H": 2.03, "C": 1.80, "N": 1.76, "O": 1.83},
    "Pd": {"H": 2.21, "C": 1.99, "N": 1.92, "O": 2.06}, "Pt": {"H": 2.18, "C": 1.92, "N": 1.98, "O": 2.09},
    "Al": {"H": 2.09, "C": 1.75, "N": 1.79, "O": 1.86},
}
# oxides: H binds on top of a lattice O (O-H), the others on top of a cation (M-O, M-C)
_OXIDE_BOND = {"H": 0.98, "C": 2.30, "O": 2.05}


def _adsorbate(name: str, rng):
    from ase import Atoms

    sym, pos = ADSORBATES[name]
    pos = np.array(pos, dtype=float)
    # random orientation: tilted up to 25 degrees off the surface normal, random azimuth
    tilt, azimuth, spin = rng.uniform(0, np.radians(25)), rng.uniform(0, 2 * np.pi), rng.uniform(0, 2 * np.pi)
    c, s = np.cos(tilt), np.sin(tilt)
    rot = _rot_z(azimuth) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ _rot_z(spin)
    return Atoms(sym, positions=pos @ rot.T)


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _place(slab, ads, rng, bond: dict, surface_mask) -> None:
    """Put ``ads`` at a random lateral point, binding atom at bond distance from the top surface."""
    cell = slab.cell.array
    frac = rng.uniform(0, 1, size=2)
    xy = frac[0] * cell[0, :2] + frac[1] * cell[1, :2]
    top = slab.positions[surface_mask]
    # periodic images of the top layer around xy
    shifts = np.array([i * cell[0] + j * cell[1] for i in (-1, 0, 1) for j in (-1, 0, 1)])
    pts = (top[None, :, :] + shifts[:, None, :]).reshape(-1, 3)
    target = bond[ads.get_chemical_symbols()[0]] + rng.normal(0, 0.05)
    zmax = top[:, 2].max()
    # lowest height at which the binding atom is ``target`` from every surface atom
    best = zmax + target
    for zc in np.arange(zmax + 0.4, zmax + target + 0.01, 0.02):
        d = np.linalg.norm(pts - np.array([xy[0], xy[1], zc]), axis=1).min()
        if d >= target:
            best = zc
            break
    ads.positions += np.array([xy[0], xy[1], best])
    slab.extend(ads)


def _place_on_site(slab, ads, rng, surface_mask) -> None:
    """Oxides: the binding atom above a random top-layer site of the right kind (H above a lattice
    O, the others above a cation), at its bond length, laterally offset by ~0.15 A."""
    top = np.nonzero(surface_mask)[0]
    binder = ads.get_chemical_symbols()[0]
    want_o = binder == "H"
    sites = [i for i in top if (slab.numbers[i] == 8) == want_o]
    site = sites[int(rng.integers(len(sites)))]
    d = _OXIDE_BOND[binder] + rng.normal(0, 0.05)
    ads.positions += slab.positions[site] + np.array([*rng.normal(0, 0.15, 2), d])
    slab.extend(ads)


def _rattle(pos, free, rng, amp_range) -> np.ndarray:
    amp = rng.uniform(*amp_range)
    out = pos.copy()
    out[free] += rng.normal(size=(int(free.sum()), 3)) * amp
    return out


# -------------------------------------------------------------------------------------------- oc20

OC20_RATTLE = (0.01, 0.06)
OC20_RELAX_STEPS = 8  # each structure is a frame 0..8 FIRE steps into an EMT relaxation, as S2EF frames


def _relax_steps(atoms, calc, fixed, steps: int) -> None:
    """Advance ``atoms`` by ``steps`` FIRE steps with the fixed atoms held (an S2EF-like frame)."""
    from ase.constraints import FixAtoms
    from ase.optimize import FIRE

    atoms.set_constraint(FixAtoms(mask=fixed))
    atoms.calc = calc
    try:
        FIRE(atoms, logfile=None, maxstep=0.2).run(fmax=0.02, steps=steps)
    except Exception as exc:  # EMT cannot fail, but keep the skip path uniform
        raise CalculationFailed(f"relaxation: {exc}") from None
    finally:
        atoms.set_constraint()
        atoms.calc = None


OC20_SIZE = (3, 3, 6)  # 54 slab atoms: with the adsorbate ~57 atoms per structure (OC20 S2EF: ~73)


def _oc20_slab(metal: str, facet: str):
    from ase.build import fcc100, fcc111

    build = fcc111 if facet == "111" else fcc100
    slab = build(metal, size=OC20_SIZE, vacuum=7.0, periodic=True)
    layer = np.asarray(slab.get_tags())  # ase: 1 = top layer ... 6 = bottom layer
    tags = np.where(layer <= OC20_SIZE[2] // 2, 1, 0).astype(np.int8)  # the top half free (tag 1), bottom half fixed
    return slab, tags


def _oc20_task(payload) -> TaskResult:
    seed, start, stop, metals, ads_names = payload
    from ase.calculators.emt import EMT

    res = TaskResult()
    calc = EMT()
    for i in range(start, stop):
        for attempt in range(MAX_ATTEMPTS):
            rng = rng_for(seed, "oc20", i, attempt)
            metal = metals[int(rng.integers(len(metals)))]
            facet = FACETS[int(rng.integers(len(FACETS)))]
            ads_name = ads_names[int(rng.integers(len(ads_names)))]
            slab, tags = _oc20_slab(metal, facet)
            n_slab = len(slab)
            _place(slab, _adsorbate(ads_name, rng), rng, _EMT_BOND[metal], tags == 1)
            tags = np.concatenate([tags, np.full(len(slab) - n_slab, 2, np.int8)])
            fixed = tags == 0
            slab.positions = _rattle(slab.positions, ~fixed, rng, OC20_RATTLE)
            item = f"structure {i} ({ads_name}/{metal}({facet}))"
            if min_distance(slab.numbers, slab.positions, slab.cell.array, slab.pbc) < REJECT_DISTANCE:
                res.skips.append((item, attempt, "geometry: atoms too close"))
                continue
            try:
                steps = int(rng.integers(OC20_RELAX_STEPS + 1))
                if steps:
                    _relax_steps(slab, calc, fixed, steps)
                pos = slab.positions.copy()
                e, f = label(slab, calc)
            except CalculationFailed as exc:
                res.skips.append((item, attempt, f"calculator: {exc}"))
                continue
            res.samples.append(Sample(slab.numbers.copy(), pos, e, f, cls=metal, sid=i, cell=slab.cell.array.copy(),
                                      pbc=np.ones(3, bool), tags=tags, fixed=fixed, group=str(i)))
            break
        else:
            raise fail_after(item, res.skips, "oc20-mini")
    return res


def generate_oc20(out, *, n: int, seed: int, pool, metals=None, adsorbates=None) -> tuple:
    metals = list(METALS) if metals is None else parse_list(metals, METALS, "metal", "metals")
    ads = list(OC20_ADSORBATES) if adsorbates is None else parse_list(adsorbates, OC20_ADSORBATES, "adsorbate", "adsorbates")
    tasks = [(seed, a, b, metals, ads) for a, b in chunks(n, CHUNK)]
    samples, skips = collect(pool.map(_oc20_task, tasks), "oc20-mini")
    splits = fraction_split(len(samples), SPLIT_FRACTIONS, seed)
    prov = {
        "generator": "oc20-mini", "mirrors": "OC20 S2EF", "seed": seed, "n": n, **emt_parameters(),
        "metals": metals, "facets": list(FACETS), "adsorbates": ads,
        "slab": f"{OC20_SIZE[0]}x{OC20_SIZE[1]} surface cell, {OC20_SIZE[2]} layers, 7 A vacuum each side",
        "tags": f"0 bottom {OC20_SIZE[2] // 2} layers (fixed), 1 top {OC20_SIZE[2] // 2} layers, 2 adsorbate",
        "rattle_std_A": list(OC20_RATTLE),
        "energy": "EMT total energy (EMT's isolated-atom reference), not OC20's adsorption-referenced energy",
        "split": "random 90/5/5", "skips": skips,
    }
    write_store(out, name="oc20-mini", family="oc20", version=VERSION, level_of_theory="EMT", samples=samples, splits=splits,
                provenance=prov, energy_kind="total (EMT)")
    return out, skips


# -------------------------------------------------------------------------------------------- oc22

# S2EF frames of relaxations are near their relaxed geometry: each structure is a relaxed template
# (slab + adsorbate, per oxide and adsorbate) with its free atoms rattled by 0.002-0.01 A, which
# puts the force RMS at OC22's 0.26 eV/A (version 1 rattled an unrelaxed adsorbate by 0.01-0.04 A:
# 1.1 eV/A, most of it on the adsorbate)
OC22_RATTLE = (0.003, 0.01)
OC22_TEMPLATE_RELAX = (0.05, 8)  # BFGS fmax (eV/A), steps: the slab + adsorbate template
OC22_ELECTRONIC_TEMPERATURE = 1000.0


def _oc22_slab(oxide: str, relaxed: np.ndarray | None = None):
    from ase.build import bulk, surface

    # one conventional cubic cell thick: two (100) layers of 2 cations + 2 anions, a x a laterally
    b = bulk(oxide, "rocksalt", a=OXIDES[oxide], cubic=True)
    slab = surface(b, (1, 0, 0), 1, vacuum=6.0, periodic=True)
    z = slab.positions[:, 2]
    tags = np.where(z > 0.5 * (z.min() + z.max()), 1, 0).astype(np.int8)
    if relaxed is not None:
        slab.positions = relaxed
    return slab, tags


def _oc22_relax_slab(oxide: str) -> np.ndarray:
    """The clean slab with its top layer relaxed by GFN1-xTB (surface rumpling), bottom layer fixed."""
    from ase.constraints import FixAtoms
    from ase.optimize import BFGS

    slab, tags = _oc22_slab(oxide)
    slab.calc = xtb_calculator("GFN1-xTB", slab.numbers, electronic_temperature=OC22_ELECTRONIC_TEMPERATURE)
    slab.set_constraint(FixAtoms(mask=tags == 0))
    BFGS(slab, logfile=None).run(fmax=0.03, steps=40)
    return np.array(slab.positions)


def _oc22_template(payload):
    """(oxide, adsorbate) -> (numbers, positions, tags) of the adsorbate relaxed on the relaxed
    slab (GFN1-xTB, bottom layer fixed), from an upright adsorbate at its bond length atop a site."""
    seed, oxide, ads_name, relaxed = payload
    from ase.constraints import FixAtoms
    from ase.optimize import FIRE

    rng = rng_for(seed, "oc22-template", oxide, ads_name)
    slab, tags = _oc22_slab(oxide, relaxed)
    n_slab = len(slab)
    _place_on_site(slab, _adsorbate(ads_name, rng), rng, tags == 1)
    tags = np.concatenate([tags, np.full(len(slab) - n_slab, 2, np.int8)])
    slab.calc = xtb_calculator("GFN1-xTB", slab.numbers, electronic_temperature=OC22_ELECTRONIC_TEMPERATURE)
    slab.set_constraint(FixAtoms(mask=tags == 0))
    # FIRE with short steps, keeping the geometry of smallest largest force seen: at 1000 K
    # electronic temperature GFN1-xTB's forces are noisy enough that BFGS can walk away from a
    # minimum it had nearly reached (measured: CO on CaO ended at 4.7 eV/A)
    best = (np.inf, np.array(slab.positions))
    opt = FIRE(slab, logfile=None, maxstep=0.05)
    try:
        for _ in opt.irun(fmax=OC22_TEMPLATE_RELAX[0], steps=OC22_TEMPLATE_RELAX[1]):
            fmax = float(np.sqrt((slab.get_forces() ** 2).sum(axis=1)).max())
            if fmax < best[0]:
                best = (fmax, np.array(slab.positions))
    except Exception as exc:  # an SCF failure: the best geometry so far is the template
        from atomsift.data.mini.common import log

        log.warning("oc22-mini: template %s/%s relaxation stopped (%s)", ads_name, oxide, str(exc).strip().splitlines()[:1])
    slab.set_constraint()
    return (oxide, ads_name), (slab.numbers.copy(), best[1], tags)


def _oc22_pick(seed, i, attempt, oxides, ads_names, rng=None) -> tuple[str, str]:
    """The oxide and adsorbate of structure ``i`` (the first draws of its generator)."""
    rng = rng_for(seed, "oc22", i, attempt) if rng is None else rng
    oxide = oxides[int(rng.integers(len(oxides)))]
    return oxide, ads_names[int(rng.integers(len(ads_names)))]


def _oc22_task(payload) -> TaskResult:
    seed, start, stop, oxides, ads_names, relaxed, templates = payload
    from ase import Atoms

    res = TaskResult()
    calcs = {}
    for i in range(start, stop):
        for attempt in range(MAX_ATTEMPTS):
            rng = rng_for(seed, "oc22", i, attempt)
            oxide, ads_name = _oc22_pick(seed, i, attempt, oxides, ads_names, rng)
            slab, _ = _oc22_slab(oxide, relaxed[oxide])
            if (oxide, ads_name) not in templates:  # a redraw picked a pair the first draws did not
                templates.update([_oc22_template((seed, oxide, ads_name, relaxed[oxide]))])
            numbers, template, tags = templates[(oxide, ads_name)]
            slab = Atoms(numbers=numbers, positions=template, cell=slab.cell, pbc=True)
            fixed = tags == 0
            pos = _rattle(slab.positions, ~fixed, rng, OC22_RATTLE)
            slab.positions = pos
            item = f"structure {i} ({ads_name}/{oxide}(100))"
            if min_distance(slab.numbers, pos, slab.cell.array, slab.pbc) < REJECT_DISTANCE:
                res.skips.append((item, attempt, "geometry: atoms too close"))
                continue
            # one calculator per composition and task: xtb restarts from the previous density
            key = (oxide, ads_name)
            if key not in calcs:
                calcs[key] = xtb_calculator("GFN1-xTB", slab.numbers, electronic_temperature=OC22_ELECTRONIC_TEMPERATURE)
            try:
                e, f = label(slab, calcs[key])
            except CalculationFailed as exc:
                res.skips.append((item, attempt, f"calculator: {exc}"))
                continue
            res.samples.append(Sample(slab.numbers.copy(), pos, e, f, cls=oxide, sid=i, cell=slab.cell.array.copy(),
                                      pbc=np.ones(3, bool), tags=tags, fixed=fixed, group=str(i)))
            break
        else:
            raise fail_after(item, res.skips, "oc22-mini")
    return res


def generate_oc22(out, *, n: int, seed: int, pool, oxides=None, adsorbates=None) -> tuple:
    oxides = list(OXIDES) if oxides is None else parse_list(oxides, tuple(OXIDES), "oxide", "oxides")
    ads = list(OC22_ADSORBATES) if adsorbates is None else parse_list(adsorbates, OC22_ADSORBATES, "adsorbate", "adsorbates")
    relaxed = dict(zip(oxides, pool.map(_oc22_relax_slab, oxides)))
    # templates of the (oxide, adsorbate) pairs the structures draw (all 12 at the default sizes);
    # deterministic in (seed, oxide, adsorbate), so one computed later by a task is the same
    pairs = sorted({_oc22_pick(seed, i, 0, oxides, ads) for i in range(n)})
    templates = dict(pool.map(_oc22_template, [(seed, o, a, relaxed[o]) for o, a in pairs]))
    tasks = [(seed, a, b, oxides, ads, relaxed, templates) for a, b in chunks(n, CHUNK)]
    samples, skips = collect(pool.map(_oc22_task, tasks), "oc22-mini")
    splits = fraction_split(len(samples), SPLIT_FRACTIONS, seed)
    prov = {
        "generator": "oc22-mini", "mirrors": "OC22 S2EF (total energy)", "seed": seed, "n": n,
        **xtb_parameters("GFN1-xTB", electronic_temperature_K=OC22_ELECTRONIC_TEMPERATURE, periodic=True),
        "oxides": {k: OXIDES[k] for k in oxides}, "facet": "rock-salt (100)", "adsorbates": ads,
        "slab": "conventional a x a (100) cell, 2 layers (8 atoms), 12 A vacuum, top layer pre-relaxed (GFN1-xTB, BFGS fmax 0.03)",
        "templates": f"adsorbate atop a site, relaxed on the slab (GFN1-xTB, BFGS fmax {OC22_TEMPLATE_RELAX[0]}, "
                     f"<= {OC22_TEMPLATE_RELAX[1]} steps), once per oxide and adsorbate",
        "tags": "0 bottom layer (fixed), 1 top layer, 2 adsorbate",
        "rattle_std_A": list(OC22_RATTLE), "split": "random 90/5/5", "skips": skips,
    }
    write_store(out, name="oc22-mini", family="oc22", version=VERSION, level_of_theory="GFN1-xTB (periodic)", samples=samples,
                splits=splits, provenance=prov, energy_kind="total")
    return out, skips
