"""``atomsift finetune --data FILE``: your own file to a finetuned model, and MD with it.

The energy + forces file is a short GFN2-xTB MD of ethanol written by ``atomsift generate
rmd17-mini --out FILE.extxyz`` (what the README's worked example starts from); the scalar file a
set of small molecules with an additive per-element property plus noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from atomsift.cli import main

pytestmark = pytest.mark.slow  # ~1 min: one xtb MD, three one-epoch finetuning runs, 300 MD steps


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("own")
    mp = pytest.MonkeyPatch()
    mp.setenv("ATOMSIFT_CACHE", str(d / "cache"))
    assert main(["generate", "rmd17-mini", "--molecule", "ethanol", "--n", "40", "--workers", "1",
                 "--out", str(d / "ethanol.extxyz")]) == 0
    yield d
    mp.undo()


@pytest.fixture(scope="module")
def energy_forces_run(work):
    out = work / "ft"
    assert main(["finetune", "--data", str(work / "ethanol.extxyz"), "--out", str(out), "--size", "tiny",
                 "--epochs", "1", "--batch-size", "8"]) == 0
    return out


def test_energy_and_forces_make_an_energy_forces_run(work, energy_forces_run):
    out = energy_forces_run
    rec = json.loads((out / "data.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    run = yaml.safe_load((out / "run.yaml").read_text())
    assert (rec["task"], rec["target"], run["task"], run["size"], run["epochs"]) == ("energy-forces", None, "energy-forces", "tiny", 1)
    # the reader's seeded 80/10/10 split of 40 frames, written as frame numbers of the file
    split = json.loads((out / "split.json").read_text())
    assert rec["split"] == {"train": 32, "val": 4, "test": 4} and split["seed"] == 42
    assert sorted(split["train"] + split["val"] + split["test"]) == list(range(40))
    # the calculator on model.pt reproduces the training's own test force MAE (same weights, same test split)
    assert rec["final"]["force_mae_eV_A"] * 1000 == pytest.approx(metrics["test_mae"], rel=1e-5)
    assert metrics["unit"] == "meV/Å" and rec["final"]["n"] == metrics["n_test"] == 4
    # step 0: the new head starts near the references fitted on the training split; without them
    # the energy is off by ethanol's total energy (~ -310 eV in GFN2-xTB)
    s0 = rec["step0"]
    assert s0["energy_mae_eV"] < 2.0
    assert 250 < s0["without_references"]["energy_mae_eV"] < 400
    assert s0["force_mae_eV_A"] > 0 and s0["energy_mae_eV_per_atom"] == pytest.approx(s0["energy_mae_eV"] / 9, rel=1e-9)


def test_the_store_is_cached_by_content(work, energy_forces_run, capsys):
    """A second run with another seed reuses the prepared store; the run file points at it."""
    stores = sorted((work / "cache" / "stores").iterdir())
    assert len(stores) == 1
    first = (stores[0] / "manifest.json").stat().st_mtime_ns
    assert main(["finetune", "--data", str(work / "ethanol.extxyz"), "--out", str(work / "ft-seed1"), "--size", "tiny",
                 "--epochs", "1", "--batch-size", "16", "--seed", "1", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["store"] == str(stores[0]) and rec["metrics"]["seed"] == 1
    assert sorted((work / "cache" / "stores").iterdir()) == stores
    assert (stores[0] / "manifest.json").stat().st_mtime_ns == first
    # the same command again is a finished run: reported, not retrained
    assert main(["finetune", "--data", str(work / "ethanol.extxyz"), "--out", str(work / "ft-seed1"), "--size", "tiny",
                 "--epochs", "1", "--batch-size", "16", "--seed", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"] == rec["metrics"]


def nve_energy_error(model: Path, start, dt_fs: float, steps: int) -> tuple[float, float]:
    """Velocity Verlet from ``start`` at 300 K (seeded) in float64: (largest |E(t) - E(0)| and the
    linear drift of E, in meV/atom and meV/atom/ps)."""
    from ase import units
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    from atomsift.calculator import AtomsiftCalculator

    atoms = start.copy()
    atoms.calc = AtomsiftCalculator(model, device="cpu", dtype="float64")
    assert atoms.calc.conservative
    thermalize_momenta(atoms, 300.0, rng=np.random.RandomState(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = VelocityVerlet(atoms, dt_fs * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    dyn.run(steps)
    e = np.array(energies) / len(atoms) * 1000
    return float(np.abs(e - e[0]).max()), float(np.polyfit(np.arange(e.size) * dt_fs * 1e-3, e, 1)[0])


def test_nve_md_with_the_finetuned_model_conserves_energy(work, energy_forces_run):
    """300 velocity-Verlet steps of 0.5 fs from a frame of the file at 300 K: the total energy stays
    within 0.5 meV/atom of its start and drifts less than 1 meV/atom/ps (measured: 0.01-0.15
    meV/atom, depending on the model version), and the same 150 fs with half the step has about a
    quarter of the error (Verlet's dt^2: forces are the exact gradient of the energy; a force field
    that is not conservative, or an energy with jumps, keeps its error as dt shrinks). In float64, so
    that the dt^2 ratio is not lost in float32 noise at the smaller step (float32 gives the same
    0.5 fs figures to 1e-6 meV/atom, measured)."""
    from ase.io import read

    start = read(work / "ethanol.extxyz", index=0)
    err, drift = nve_energy_error(energy_forces_run / "model.pt", start, 0.5, 300)
    half, _ = nve_energy_error(energy_forces_run / "model.pt", start, 0.25, 600)
    assert err < 0.5 and abs(drift) < 1.0, (err, drift)
    assert half < err / 2.5, (half, err)


def _rank_swap(a0, a1, rank: int) -> float:
    """A path parameter t in (0, 1) of the straight path a0 -> a1 where some atom's ``rank``-th and
    (rank+1)-th nearest neighbours swap order: the gap between the two sorted distances dips to 0
    there (found on a grid, then located by ternary search)."""
    def gap(t, i):
        pos = (1 - t) * a0.positions + t * a1.positions
        row = np.sort(np.delete(np.linalg.norm(pos - pos[i], axis=-1), i))
        return row[rank] - row[rank - 1]

    ts = np.linspace(0, 1, 201)
    for i in range(len(a0)):
        g = np.array([gap(t, i) for t in ts])
        for j in np.flatnonzero((g[1:-1] < g[:-2]) & (g[1:-1] < g[2:]) & (g[1:-1] < 2e-3)):
            lo, hi = ts[j], ts[j + 2]
            for _ in range(60):
                m1, m2 = lo + (hi - lo) / 3, hi - (hi - lo) / 3
                lo, hi = (lo, m2) if gap(m1, i) < gap(m2, i) else (m1, hi)
            if gap((lo + hi) / 2, i) < 1e-9:
                return (lo + hi) / 2
    raise AssertionError("no neighbour swap on this path")


def test_a_nearest_k_cap_makes_energy_jump_and_finetune_data_lifts_it(work, energy_forces_run, capsys):
    """GemNet-OC's quadruplet graph keeps each atom's k * 8 // 30 nearest neighbours: with the
    embedded grid's k = 20 that is 5 of ethanol's 8, and where the 5th and 6th swap order on a path
    the energy jumps (so NVE cannot conserve it, whatever the step). ``finetune --data`` raises k to
    30 for a backbone pretrained with k = 20 (the cutoff kept), and the energy is then continuous at
    the same point."""
    from ase.io import read

    from atomsift.calculator import AtomsiftCalculator
    from atomsift.data.graphs import GraphSettings
    from atomsift.data.store import Store
    from atomsift.models.checkpoint import save_checkpoint
    from atomsift.models.heads import HeadSpec
    from atomsift.models.model import build_model
    from atomsift.train.own_data import most_neighbours, pretrained_model, smooth_graph, smooth_k

    store = json.loads((energy_forces_run / "data.json").read_text())["store"]
    # the run from scratch (JMP's default 12 Å, k = 30) needed no change, and says so
    rec = json.loads((energy_forces_run / "data.json").read_text())["graph"]
    assert rec == {"cutoff": 12.0, "max_neighbors": 30, "most_neighbours": 8, "smooth": True}
    assert most_neighbours(Store(store), 5.0) == 8 and most_neighbours(Store(store), 1.2) == 3
    # the smallest k whose quadruplet cap (k * 8 // 30, the tightest) keeps 8 or 20 neighbours
    assert (smooth_k(20, 8), smooth_k(20, 20), smooth_k(40, 8)) == (30, 75, 40)

    model = build_model("tiny", {"energy": HeadSpec("energy_grad_forces")}, seed=3).double()
    model.graph_overrides = {"cutoff": 5.0, "max_neighbors": 20}
    pre = save_checkpoint(work / "capped.pt", model)
    assert smooth_graph(Path(store), pretrained_model(str(pre)), None) == (
        {"cutoff": 5.0, "max_neighbors": 30},
        {"cutoff": 5.0, "max_neighbors": 30, "most_neighbours": 8, "smooth": True, "raised_from": 20})
    # through the command: the run file gets the block, the model records it, the log line says it
    args = ["finetune", "--data", str(work / "ethanol.extxyz"), "--pretrained", str(pre), "--epochs", "1",
            "--batch-size", "16"]
    assert main([*args, "--out", str(work / "ft-capped")]) == 0
    assert yaml.safe_load((work / "ft-capped" / "run.yaml").read_text())["graph"] == {"cutoff": 5.0, "max_neighbors": 30}
    assert json.loads((work / "ft-capped" / "data.json").read_text())["graph"]["raised_from"] == 20
    assert "graph 5 Å, k 30 (raised from 20): no nearest-k cap active" in capsys.readouterr().err
    # a graph the user sets is kept, and reported
    (work / "graph20.yaml").write_text("graph: {cutoff: 5.0, max_neighbors: 20}\n")
    assert main([*args, "--config", str(work / "graph20.yaml"), "--out", str(work / "ft-user-graph")]) == 0
    assert json.loads((work / "ft-user-graph" / "data.json").read_text())["graph"] == {
        "cutoff": 5.0, "max_neighbors": 20, "most_neighbours": 8, "smooth": False}
    assert "graph 5 Å, k 20: nearest-k caps active (8 neighbours)" in capsys.readouterr().err

    a0, a1 = read(work / "ethanol.extxyz", index=0), read(work / "ethanol.extxyz", index=30)
    t = _rank_swap(a0, a1, 5)

    def energy(k, tt):
        a = a0.copy()
        a.positions = (1 - tt) * a0.positions + tt * a1.positions
        a.calc = AtomsiftCalculator(model, meta={}, graph=GraphSettings(5.0, k), device="cpu", dtype="float64")
        return a.get_potential_energy()

    # 41 points across the swap: the tie-inclusive cap (data/graphs.py, TIE_TOL) keeps both
    # neighbours while their distances are within 1e-4 Å, so the graph changes twice in this window
    steps = {}
    for k in (20, 30):
        e = np.array([energy(k, x) for x in t + np.linspace(-2e-3, 2e-3, 41)])
        d = np.abs(np.diff(e))
        steps[k] = d.max() / np.median(d)
    assert steps[30] < 3, steps  # continuous: every step the slope's
    assert steps[20] > 20, steps  # a jump (measured: ~110x the slope's step, seeded weights)


def write_scalar_file(path: Path, energy_only: bool = False) -> dict[int, float]:
    """Small molecules with y = sum_i c[Z_i] + 0.05 eV noise (in info, or as the only energy)."""
    import ase.io
    from ase.build import molecule
    from ase.calculators.singlepoint import SinglePointCalculator

    c = {1: -13.6, 6: -1029.5, 7: -1485.0, 8: -2041.8}
    rng = np.random.default_rng(5)
    frames = []
    for k in range(30):
        a = molecule(("CH4", "H2O", "NH3", "C2H6", "CH3OH", "CH3CH2OH")[k % 6])
        a.rattle(0.05, seed=k)
        y = float(sum(c[z] for z in a.numbers) + 0.05 * rng.normal())
        if energy_only:
            a.calc = SinglePointCalculator(a, energy=y)
        else:
            a.info["y"] = y
        frames.append(a)
    ase.io.write(path, frames, format="extxyz")
    return c


@pytest.mark.parametrize("energy_only", [False, True], ids=["info-scalar", "energy-only"])
def test_a_named_scalar_or_an_energy_alone_makes_a_scalar_run(work, energy_only, capsys):
    src = work / f"scalar-{energy_only}.extxyz"
    write_scalar_file(src, energy_only)
    args = ["finetune", "--data", str(src), "--out", str(work / f"fs-{energy_only}"), "--size", "tiny", "--epochs", "1",
            "--batch-size", "8", "--json"]
    assert main(args if energy_only else [*args, "--target", "y"]) == 0
    rec = json.loads(capsys.readouterr().out)
    target = "energy" if energy_only else "y"
    run = yaml.safe_load((work / f"fs-{energy_only}" / "run.yaml").read_text())
    assert (rec["task"], rec["target"], run["readout"], run["atom_refs"]) == ("scalar", target, "sum", "fit")
    assert rec["metrics"]["atom_refs"] == "fit" and rec["metrics"]["readout"] == "sum"
    # the fitted element references carry the additive property: the step-0 error is the noise
    # plus the fresh head's output, without them it is the whole property (hundreds of eV)
    s0 = rec["step0"]
    assert s0["mae"] < 3.0 and s0["mae_without_references"] > 100
    # the calculator compares with the stored float64 targets; training's batches hold them in the
    # model's float32 (half a float32 step at ~2000 eV is 1.2e-4 eV)
    assert rec["final"]["mae"] == pytest.approx(rec["metrics"]["test_mae"], abs=1.5e-4)


def test_bad_requests_are_one_line_errors(work, capsys):
    src = work / "ethanol.extxyz"
    cases = [
        (["--data", str(src), "--target", "nope"], [str(src), "field 'nope'", "target missing"]),
        (["--data", str(src), "--readout", "mean"], ["field '--readout'", "energy is a sum over atoms"]),
        (["--data", str(src), "--epochs", "0"], ["finetune --data", "field 'epochs'", "must be >= 1"]),
        (["--data", str(work / "missing.xyz")], ["missing.xyz", "field '--data'", "does not exist"]),
        (["--config", "x.yaml", "--target", "y"], ["--target goes with --data FILE"]),
        (["--data", str(src), "--split-seed", "-1"], ["field '--split-seed'"]),
    ]
    for args, words in cases:
        assert main(["finetune", *args, "--out", str(work / "bad")]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        for w in words:
            assert w in err[0], (w, err[0])
    assert not (work / "bad").exists()
