"""atomsift.calculator: the ASE calculator against predict, the model itself and finite differences."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_stress

from atomsift.calculator import JMP_STD, AtomsiftCalculator, checkpoint_graph, head_scaling
from atomsift.cli import main
from atomsift.data.batch import from_atoms
from atomsift.data.graphs import GraphSettings, graph_settings
from atomsift.models.checkpoint import load_checkpoint, save_checkpoint
from atomsift.models.heads import HeadSpec
from atomsift.models.model import build_model

RNG = np.random.default_rng(0)
COEFF = [0.0] * 120
COEFF[1], COEFF[6], COEFF[8] = -13.6, -1029.5, -2041.8  # eV per atom, as a fitted reference


def finetuned(tmp_path, kind="energy_grad_forces", target=None, graph=None, name="model.pt"):
    """A tiny model saved as finetuning saves it: one head 'task', normalisation and graph in meta."""
    model = build_model("tiny", {"task": HeadSpec(kind, reduction="sum" if kind != "scalar" else "mean")},
                        direct_forces_backbone=kind == "energy_direct_forces", seed=3)
    norm = {"coeff": COEFF, "energy_mean": 0.25, "energy_std": 0.7, "force_std": 1.9}
    meta = {"stage": "finetune", "task": "scalar" if target else "energy-forces", "target": target,
            "normalization": norm, "dataset": "ase", "graph": vars(graph or GraphSettings(6.0, 50, None)),
            "config": {"size": "tiny", "seed": 3}}
    return save_checkpoint(tmp_path / name, model, meta)


def molecules():
    out = []
    for name in ("CH3CH2OH", "H2O", "CH4"):
        a = molecule(name)
        a.rattle(0.05, seed=len(out))
        out.append(a)
    return out


def test_energy_and_forces_are_the_head_outputs_in_physical_units(tmp_path):
    """E = out * force_std + sum_i coeff[Z_i] + mean and F = -dE/dx for a gradient head
    (FinetuneModule's scaling), checked against a direct call of the model."""
    path = finetuned(tmp_path)
    calc = AtomsiftCalculator(path, device="cpu")
    assert calc.head == "task" and calc.conservative and calc.graph == GraphSettings(6.0, 50, None)
    model, _ = load_checkpoint(path)
    frames = molecules()
    batch = from_atoms(frames)
    raw = {k: v.detach() for k, v in model(batch, "task", graph=GraphSettings(6.0, 50, None)).items()}
    for j, a in enumerate(frames):
        a.calc = calc
        ref = sum(COEFF[z] for z in a.numbers)
        assert a.get_potential_energy() == pytest.approx(float(raw["energy"][j]) * 1.9 + ref + 0.25, abs=1e-4)
        lo = int(batch.natoms[:j].sum())
        np.testing.assert_allclose(a.get_forces(), raw["forces"][lo:lo + len(a)].numpy() * 1.9, atol=1e-5)


def test_calculator_agrees_with_predict_and_batching(tmp_path, capsys):
    """One structure per calculate call, calculate_batch in batches of 2, and `atomsift predict`."""
    import ase.io

    path = finetuned(tmp_path)
    frames = molecules()
    f = tmp_path / "in.extxyz"
    ase.io.write(f, frames)
    assert main(["predict", str(f), "--checkpoint", str(path), "--batch-size", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["head"] == "task" and out["calculator"]["graph"]["cutoff"] == 6.0
    calc = AtomsiftCalculator(path, device="cpu", batch_size=2)
    batched = calc.calculate_batch(frames, ("energy", "forces"))
    for a, fr, b in zip(frames, out["frames"], batched):
        a.calc = AtomsiftCalculator(path, device="cpu")
        assert a.get_potential_energy() == pytest.approx(fr["energy"], abs=2e-4)
        assert b["energy"] == pytest.approx(fr["energy"], abs=2e-4)
        np.testing.assert_allclose(a.get_forces(), fr["forces"], atol=2e-5)
        np.testing.assert_allclose(b["forces"], fr["forces"], atol=2e-5)


def test_forces_are_minus_the_energy_gradient_by_finite_differences(tmp_path):
    """float64: central differences of the calculator's energy (h = 1e-4 A) match its forces."""
    calc = AtomsiftCalculator(finetuned(tmp_path), device="cpu", dtype="float64")
    a = molecule("CH3CH2OH")
    a.rattle(0.1, seed=4)
    a.calc = calc
    forces = a.get_forces()
    h = 1e-4
    fd = np.zeros_like(forces)
    for i in range(len(a)):
        for k in range(3):
            e = []
            for s in (1, -1):
                b = a.copy()
                b.positions[i, k] += s * h
                b.calc = calc
                e.append(b.get_potential_energy())
            fd[i, k] = -(e[0] - e[1]) / (2 * h)
    np.testing.assert_allclose(forces, fd, atol=1e-7 * max(1.0, np.abs(forces).max()))
    assert np.abs(forces).max() > 1e-3  # not trivially zero


def test_stress_matches_finite_differences_of_the_strained_energy(tmp_path):
    """Periodic structure, gradient head, float64: the autograd stress equals ASE's numerical
    stress (central differences of E under strain / V), forces still -dE/dx."""
    calc = AtomsiftCalculator(finetuned(tmp_path, graph=GraphSettings(4.5, 60, None)), device="cpu", dtype="float64")
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    cu.rattle(0.05, seed=2)
    cu.set_cell(cu.cell * [[1.0, 0.02, 0.0], [0.0, 1.03, 0.01], [0.0, 0.0, 0.98]], scale_atoms=True)
    cu.calc = calc
    stress = cu.get_stress()
    numeric = calculate_numerical_stress(cu, eps=1e-5)
    np.testing.assert_allclose(stress, numeric, atol=1e-8 + 1e-5 * np.abs(numeric).max())
    assert np.abs(stress).max() > 1e-4
    np.testing.assert_allclose(cu.get_forces().sum(axis=0), 0, atol=1e-10)  # translation invariance


def test_what_a_head_cannot_give_is_a_clear_not_implemented(tmp_path):
    direct = AtomsiftCalculator(finetuned(tmp_path, "energy_direct_forces", name="d.pt"), device="cpu")
    cu = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    cu.calc = direct
    assert np.isfinite(cu.get_forces()).all() and not direct.conservative
    with pytest.raises(PropertyNotImplementedError, match="stress needs a head whose forces are the energy's gradient"):
        cu.get_stress()
    grad = AtomsiftCalculator(finetuned(tmp_path), device="cpu")
    mol = molecule("H2O")
    mol.calc = grad
    with pytest.raises(PropertyNotImplementedError, match="stress needs a structure periodic in all three directions"):
        mol.get_stress()


def test_a_scalar_head_gives_its_target_in_the_target_unit(tmp_path):
    path = finetuned(tmp_path, "scalar", target="gap", name="s.pt")
    calc = AtomsiftCalculator(path, device="cpu")
    assert calc.implemented_properties == ["gap"]
    a = molecule("CH4")
    model, _ = load_checkpoint(path)
    y = float(model(from_atoms([a]), "task", graph=calc.graph)["y"][0].detach())
    assert calc.get_property("gap", a) == pytest.approx(y * 0.7 + COEFF[6] + 4 * COEFF[1] + 0.25, abs=1e-4)
    a.calc = calc
    with pytest.raises(PropertyNotImplementedError, match="predicts the scalar 'gap', not energy"):
        a.get_potential_energy()


def test_head_and_graph_come_from_the_checkpoint(tmp_path):
    """Pretraining checkpoints: the first energy head and the graph of its dataset family, scaled
    by that head's normalisation; JMP's: the head's name is its dataset, scaled by JMP's std."""
    heads = {"ani1x": HeadSpec("energy_direct_forces"), "oc20": HeadSpec("energy_direct_forces")}
    model = build_model("tiny", heads, seed=0)
    norm = {"ani1x": {"coeff": COEFF, "energy_mean": 0.0, "energy_std": 0.5, "force_std": 2.0},
            "oc20": {"coeff": [0.0] * 120, "energy_mean": 0.1, "energy_std": 3.0, "force_std": 0.4}}
    path = save_checkpoint(tmp_path / "pre.pt", model, {"stage": "pretrain", "datasets": {"ani1x": "ani1x", "oc20": "oc20"},
                                                        "normalization": norm})
    calc = AtomsiftCalculator(path, device="cpu")
    assert calc.head == "ani1x" and calc.graph.cutoff == graph_settings("ani1x").cutoff == 8.0
    assert (calc.scaling.e_scale, calc.scaling.f_scale) == (0.5, 2.0)
    other = AtomsiftCalculator(path, head="oc20", device="cpu")
    assert other.graph == graph_settings("oc20") and other.scaling.e_mean == 0.1
    with pytest.raises(Exception, match="no head 'qm9'"):
        AtomsiftCalculator(path, head="qm9", device="cpu")
    jmp = head_scaling({"source": "jmp"}, "oc22", "energy_direct_forces")
    assert (jmp.e_scale, jmp.f_scale) == JMP_STD["oc22"] and sum(jmp.coeff) == 0
    assert checkpoint_graph({"source": "jmp"}, "oc22") == graph_settings("oc22")
    # a gradient head's forces scale as its energy, whatever the stored force std
    assert head_scaling({"normalization": norm}, "oc20", "energy_grad_forces").f_scale == 3.0


def test_device_and_dtype_choices(tmp_path):
    path = finetuned(tmp_path)
    calc = AtomsiftCalculator(path, device="auto", dtype="float64")
    assert calc.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert next(calc.model.parameters()).dtype == torch.float64
    with pytest.raises(Exception, match="expected float32 or float64"):
        AtomsiftCalculator(path, dtype="float16")
    with pytest.raises(Exception, match="not a device"):
        AtomsiftCalculator(path, device="abacus")
