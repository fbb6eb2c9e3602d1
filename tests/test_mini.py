"""Mini-universe generators: stores, determinism, physical sanity, splits, errors (tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atomsift.data.mini import DEFAULT_SIZES, GENERATORS, generate
from atomsift.data.mini.common import Pool, group_split, min_distance, xtb_calculator
from atomsift.data.store import Store
from atomsift.errors import InputError

QUICK_MD = {"burnin": 20, "trajectories": 2}
# tiny sizes and options per generator (MD burn-in shortened: its length is not what is tested here)
TINY = {
    "ani1x-mini": (8, {}),
    "transition1x-mini": (12, {}),
    "oc20-mini": (10, {}),
    "oc22-mini": (3, {}),
    "rmd17-mini": (6, {"molecule": "ethanol", "md": QUICK_MD}),
    "md22-mini": (2, {"md": {"burnin": 5, "trajectories": 1}}),
    "spice-mini": (4, {"md": QUICK_MD}),
}
FAMILY = {"ani1x-mini": "ani1x", "transition1x-mini": "transition1x", "oc20-mini": "oc20", "oc22-mini": "oc22",
          "rmd17-mini": "rmd17", "md22-mini": "md22", "spice-mini": "spice"}


@pytest.fixture(scope="module")
def qm9_small(tmp_path_factory):
    from atomsift.data.readers import qm9

    return qm9.convert(None, tmp_path_factory.mktemp("qm9") / "qm9", limit=300)


@pytest.fixture(scope="module")
def pool2():
    with Pool(2) as p:
        yield p


@pytest.fixture(scope="module")
def stores(tmp_path_factory, qm9_small, pool2):
    root = tmp_path_factory.mktemp("mini")
    out = {}
    for name, (n, opts) in TINY.items():
        qm9 = qm9_small if name in ("ani1x-mini", "transition1x-mini") else None
        generate(name, root / name, n=n, seed=3, pool=pool2, qm9=qm9, **opts)
        out[name] = Store(root / name)
    return out


def _npy_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*.npy"))} | {"classes.json": (path / "classes.json").read_bytes()}


def test_registry_and_default_sizes():
    assert set(DEFAULT_SIZES) == set(GENERATORS) == set(TINY)
    assert all(isinstance(v, int) and v > 0 for v in DEFAULT_SIZES.values())
    assert DEFAULT_SIZES["rmd17-mini"] > 1050  # JMP's 950/50/rest split needs more than 1000 frames


def test_stores_describe_their_family(stores):
    for name, st in stores.items():
        n = TINY[name][0]
        info = st.info()
        assert info["dataset"] == FAMILY[name], name
        assert info["reader"]["name"] == name
        assert len(st) == n, name  # never a shorter dataset
        assert {"energy", "forces"} <= set(info["fields"])
        prov = st.manifest["provenance"]
        assert prov["seed"] == 3 and prov["method"] in ("GFN2-xTB", "GFN1-xTB", "EMT") and prov["package_version"]
        assert prov["skips"]["redrawn_total"] == prov["skips"]["calculator_failures"] + prov["skips"]["rejected_geometries"]
        # splits partition the structures
        idx = np.concatenate([st.split(s) for s in st.split_names()])
        assert np.array_equal(np.sort(idx), np.arange(n)), name
        assert all(r.cls for r in st)


def test_physically_sane(stores):
    for name, st in stores.items():
        for r in st:
            assert np.isfinite(r.energy) and np.all(np.isfinite(r.forces)), name
            assert min_distance(r.numbers, r.positions, r.cell, r.pbc) >= 0.6, name
        f = np.asarray(st.array("forces"))
        free = ~np.asarray(st.array("fixed"))
        rms = float(np.sqrt(np.mean(f[free] ** 2)))
        assert 0.05 < rms < 8.0, (name, rms)  # off equilibrium, but nothing like random 0.2 A noise (~40 eV/A)


def test_labels_and_tags(stores, qm9_small):
    ani = stores["ani1x-mini"]
    assert all(r.cls == _hill(r.numbers) for r in ani)
    assert set(np.unique(ani.array("numbers"))) <= {1, 6, 7, 8}  # CHNO as ANI-1x
    # molecules only from the QM9 task's train split
    q = Store(qm9_small)
    train_gdb = set(np.asarray(q.array("sid"))[q.split("train")].tolist())
    other_gdb = set(np.asarray(q.array("sid"))[np.concatenate([q.split("val"), q.split("test")])].tolist())
    sids = set(np.asarray(ani.array("sid")).tolist())
    assert sids <= train_gdb and not sids & other_gdb
    t1x_gdb = set(stores["transition1x-mini"].manifest["provenance"]["reaction_source_gdb"])
    assert t1x_gdb and t1x_gdb <= train_gdb
    # ani1x split by formula: no formula in two splits
    splits = {s: {ani[i].cls for i in ani.split(s)} for s in ani.split_names()}
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    oc20 = stores["oc20-mini"]
    for r in oc20:
        assert set(np.unique(r.tags)) == {0, 1, 2}
        assert np.array_equal(r.fixed, r.tags == 0) and r.pbc.all()
        metal_z = {"Cu": 29, "Ag": 47, "Au": 79, "Ni": 28, "Pd": 46, "Pt": 78, "Al": 13}[r.cls]
        assert np.all(r.numbers[r.tags < 2] == metal_z)
        # the fixed layers sit below the free ones
        assert r.positions[r.fixed, 2].max() < r.positions[r.tags == 1, 2].min()
    for r in stores["oc22-mini"]:
        assert r.cls in ("MgO", "CaO") and set(np.unique(r.tags)) == {0, 1, 2}
    assert {r.cls for r in stores["rmd17-mini"]} == {"ethanol"}
    assert {r.cls for r in stores["md22-mini"]} == {"Ac-Ala3-NHMe"}
    assert all(_hill(r.numbers) == "C12H22N4O4" for r in stores["md22-mini"])


def calculator_for(provenance: dict, numbers, *, accuracy: float | None = None):
    """A fresh calculator with the settings recorded in a mini store's provenance."""
    if provenance["method"] == "EMT":
        from ase.calculators.emt import EMT

        return EMT()
    return xtb_calculator(provenance["method"], numbers, electronic_temperature=provenance["electronic_temperature_K"],
                          accuracy=provenance["accuracy"] if accuracy is None else accuracy)


def chirality(positions: np.ndarray, names: dict[str, int], ca: str, n: str, c: str, cb: str) -> float:
    """Signed volume (N-CA).[(C-CA)x(CB-CA)]: positive for an L amino acid (CORN rule)."""
    p = positions
    o = p[names[ca]]
    return float(np.dot(p[names[n]] - o, np.cross(p[names[c]] - o, p[names[cb]] - o)))


def _hill(z):
    from atomsift.data.store import formula

    return formula(z)


def test_forces_are_minus_the_energy_gradient(stores):
    """Central finite differences of the stored method's energy, 4 coordinates of 1 structure each."""
    h = 1e-3
    for name, st in stores.items():
        prov = st.manifest["provenance"]
        r = st[0]
        atoms = r.to_atoms()
        calc = calculator_for(prov, r.numbers, accuracy=0.01)
        rng = np.random.default_rng(0)
        free = np.nonzero(~r.fixed)[0]
        for a in rng.choice(free, size=min(4, len(free)), replace=False):
            k = int(rng.integers(3))
            e = []
            for s in (1, -1):
                b = atoms.copy()
                b.positions[a, k] += s * h
                b.calc = calc
                e.append(b.get_potential_energy())
            fd = -(e[0] - e[1]) / (2 * h)
            assert abs(fd - r.forces[a, k]) < 1e-3, (name, a, k, fd, r.forces[a, k])


def test_same_seed_same_bytes_any_worker_count(stores, qm9_small, tmp_path):
    with Pool(1) as p1:
        for name in ("ani1x-mini", "oc20-mini", "rmd17-mini", "oc22-mini"):
            n, opts = TINY[name]
            qm9 = qm9_small if name == "ani1x-mini" else None
            generate(name, tmp_path / name, n=n, seed=3, pool=p1, qm9=qm9, **opts)
            assert _npy_bytes(tmp_path / name) == _npy_bytes(stores[name].path), name
            m1 = json.loads((tmp_path / name / "manifest.json").read_text())
            m2 = dict(stores[name].manifest)
            m1.pop("created"), m2.pop("created")
            assert m1 == m2


def test_different_seed_different_structures(stores, pool2, tmp_path):
    generate("oc20-mini", tmp_path / "s4", n=10, seed=4, pool=pool2)
    a = np.asarray(Store(tmp_path / "s4").array("positions"))
    b = np.asarray(stores["oc20-mini"].array("positions"))
    assert a.shape != b.shape or not np.allclose(a, b)


def test_md_temperature_near_target():
    from atomsift.data.mini.md import run_md
    from atomsift.data.mini.molecules import build

    z, pos = build("ethanol")
    # strong coupling (10 fs) decorrelates the kinetic energy quickly: 600 fs give ~4% standard error
    frames, temps = run_md(z, pos, n_frames=300, seed_keys=(0, "t"), temperature=500.0, timestep=1.0, stride=2,
                           burnin=100, friction=0.1)
    assert len(frames) == 300
    assert 425 < np.mean(temps) < 575, np.mean(temps)


def test_skips_are_counted_and_replaced(monkeypatch):
    from atomsift.data.mini import surfaces
    from atomsift.data.mini.common import CalculationFailed

    real = surfaces.label
    calls = {"n": 0}

    def flaky(atoms, calc):
        calls["n"] += 1
        if calls["n"] == 2:
            raise CalculationFailed("SCF not converged")
        return real(atoms, calc)

    clean = surfaces._oc20_task((0, 0, 3, ["Cu"], ["CO"]))
    monkeypatch.setattr(surfaces, "label", flaky)
    res = surfaces._oc20_task((0, 0, 3, ["Cu"], ["CO"]))
    assert len(res.samples) == 3 and len(res.skips) == 1
    assert res.skips[0][0].startswith("structure 1") and "SCF" in res.skips[0][2]
    # the replacement is a fresh deterministic draw, the others are unchanged
    assert np.allclose(res.samples[0].positions, clean.samples[0].positions)
    assert not np.allclose(res.samples[1].positions, clean.samples[1].positions)

    def broken(atoms, calc):
        raise CalculationFailed("SCF not converged")

    monkeypatch.setattr(surfaces, "label", broken)
    with pytest.raises(InputError, match="attempts failed in a row"):
        surfaces._oc20_task((0, 0, 1, ["Cu"], ["CO"]))


def test_bad_parameters(tmp_path):
    with pytest.raises(InputError, match="positive integer"):
        generate("oc20-mini", tmp_path / "x", n=0)
    with pytest.raises(InputError, match="unknown metal 'Zz'"):
        generate("oc20-mini", tmp_path / "x", n=2, metals="Cu,Zz")
    with pytest.raises(InputError, match="unknown generator"):
        generate("qm7-mini", tmp_path / "x", n=2)
    assert not (tmp_path / "x").exists()
    r = subprocess.run([sys.executable, "-m", "atomsift", "generate", "oc20-mini", "--out", str(tmp_path / "y"), "--n", "-3"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "positive integer" in r.stderr
    assert not (tmp_path / "y").exists()


def test_splits_mirror_jmp():
    from atomsift.data.mini.md import md22_split, rmd17_split

    s = rmd17_split(1200)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (950, 50, 200)
    perm = np.random.RandomState(42).permutation(1200)
    assert np.array_equal(s["train"], np.sort(perm[:950]))
    s = rmd17_split(100)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (76, 4, 20)
    s = md22_split(600)
    assert len(s["train"]) + len(s["val"]) == round(600 * 6000 / 85109) and len(s["val"]) == max(1, int(0.05 * 42))
    g = group_split(["a"] * 5 + ["b"] * 5 + ["c"] * 90, {"train": 0.9, "val": 0.05, "test": 0.05}, 0)
    assert sum(len(v) for v in g.values()) == 100
    for split, idx in g.items():
        labels = {(["a"] * 5 + ["b"] * 5 + ["c"] * 90)[i] for i in idx}
        others = set().union(*({(["a"] * 5 + ["b"] * 5 + ["c"] * 90)[i] for i in g[o]} for o in g if o != split))
        assert not labels & others


def test_hand_built_molecules():
    from atomsift.data.mini import molecules as M
    from atomsift.data.mini.organic import _bonds
    from atomsift.data.store import formula as hill

    for name, formula in (("aspirin", "C9H8O4"), ("glycine", "C2H5NO2"), ("alanine", "C3H7NO2"), ("serine", "C3H7NO3"),
                          ("ac-ala3-nhme", "C12H22N4O4")):
        z, pos = M.build(name)
        assert hill(z) == formula
        assert min_distance(z, pos) > 0.9
        # bonded graph: every atom within 1.2x covalent radii of some other atom, one connected molecule

        assert _connected(_bonds(z, pos)), name
    _, p, names = M.zmatrix(M.HAND_BUILT["alanine"]())
    assert chirality(p, names, "CA", "N", "C", "CB") > 0  # L-alanine
    _, p, names = M.zmatrix(M.HAND_BUILT["ac-ala3-nhme"]())
    assert all(chirality(p, names, f"CA{i}", f"N{i}", f"C{i}", f"CB{i}") > 0 for i in (1, 2, 3))
    # relaxing aspirin keeps its bonds
    z, pos = M.build("aspirin")
    r = M.relax(z, pos)
    assert np.array_equal(_bonds(z, r), _bonds(z, pos))


def _connected(b) -> bool:
    seen, stack = {0}, [0]
    while stack:
        i = stack.pop()
        for j in np.nonzero(b[i])[0]:
            if j not in seen:
                seen.add(int(j))
                stack.append(int(j))
    return len(seen) == len(b)
