"""Training: run files, budgeted sampling, linear references, schedule, loop, resume, finetune units.

The loop tests use ``fixtures_training.ToyModel`` (GemNet-OC's call signature, SchNet-like cost)
so that they run in seconds on 2 CPU cores; the real backbone is exercised by the models' tests.
"""

from __future__ import annotations

import csv
import json
import math

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from atomsift.cli import main
from atomsift.data.store import Store, StoreWriter
from atomsift.errors import InputError
from atomsift.train import data as D
from atomsift.train.config import finetune_config_from_dict, load_pretrain_config, pretrain_config_from_dict
from atomsift.train.finetune import run_finetune
from atomsift.train.linref import element_counts, fit_dataset_norm
from atomsift.train.module import Plateau, WarmupCosine, layerwise_groups
from atomsift.train.pretrain import BudgetError, run_pretrain
from atomsift.train.tasks import default_block_lr_scales
from fixtures_training import make_toy_store, toy_model_factory


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_stores")
    return {
        "a": make_toy_store(d / "a", 50, dataset="ani1x", seed=0),
        "b": make_toy_store(d / "b", 40, dataset="transition1x", seed=1),
        "t": make_toy_store(d / "t", 60, dataset="rmd17", seed=3, targets=True, n_val=8, n_test=12),
    }


def _pre(stores, **kw):
    d = {"size": "tiny", "upstream": {"stores": {"a": str(stores["a"])}}, "n_structures": 12, "epochs": 2,
         "batch_size": 4, "val_size": 4, "threads": 1, "lr": 1e-3, "scale_fit_batches": 0}
    d.update(kw)
    return pretrain_config_from_dict(d)


# ----------------------------------------------------------------------------- run files


def test_config_errors_are_one_line(tmp_path, capsys):
    cases = {
        "n_structures: 10\nupstream: {stores: {a: x}}\nbogus: 1\n": "field 'bogus': unknown key",
        "n_structures: 10\nupstream: {stores: {a: x}, mixture: tmp}\n": "field 'upstream.mixture': expected one of 'single', 'balanced', 'temperature', 'proportions', got 'tmp'",
        "n_structures: ten\nupstream: {stores: {a: x}}\n": "field 'n_structures': expected an integer, got 'ten'",
        "n_structures: 10\nlr: -1\nupstream: {stores: {a: x}}\n": "field 'lr': must be > 0",
        "n_structures: 10\nupstream: {stores: {a: x, b: y}}\n": "field 'upstream.mixture': 'single' takes one store",
        "n_structures: 10\nupstream: {stores: {a: x, b: y}, mixture: proportions}\n": "field 'upstream.proportions': required when mixture is 'proportions'",
        "upstream: {stores: {a: x}}\n": "field 'n_structures': required key missing",
    }
    for i, (text, expected) in enumerate(cases.items()):
        p = tmp_path / f"run{i}.yaml"
        p.write_text(text)
        rc = main(["pretrain", "--config", str(p), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert rc == 2
        assert err.count("\n") == 1, err
        assert err.startswith(f"atomsift pretrain: error: {p}: {expected}"), err
    assert not (tmp_path / "out").exists()  # validation happens before any work
    p = tmp_path / "ft.yaml"
    p.write_text("task: qm9\nstore: /nonexistent\ntest_weights: last\n")
    assert main(["finetune", "--config", str(p), "--pretrained", "none", "--out", str(tmp_path / "o")]) == 2
    assert "field 'test_weights': expected one of 'ema', 'best', got 'last'" in capsys.readouterr().err


def test_config_roundtrip_types(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("n_structures: 2.0e6\nbetas: [0.9, 0.95]\nupstream: {stores: {a: x, b: y}, mixture: balanced}\n")
    c = load_pretrain_config(p)
    assert c.n_structures == 2_000_000 and isinstance(c.n_structures, int)
    assert c.betas == (0.9, 0.95) and c.upstream.mixture == "balanced"
    with pytest.raises(InputError, match="field 'betas': expected a list of 2 numbers"):
        pretrain_config_from_dict({"n_structures": 3, "upstream": {"stores": {"a": "x"}}, "betas": [0.9]})


# ----------------------------------------------------------------------------- mixtures


def test_mixture_counts_match_the_papers_2m_splits():
    # PAPER.md §3.3: Mixed (Temp) at N = 2M over JMP's sizes, remainder to ANI-1x
    sizes = {"ani1x": 2e6, "transition1x": 1e7, "oc20": 1e8, "oc22": 8e6}
    c = D.mixture_counts(list(sizes), 2_000_000, "temperature", temperature=2.0, sizes=sizes)
    assert c == {"ani1x": 162_509, "transition1x": 363_377, "oc20": 1_149_100, "oc22": 325_014}
    p = D.temperature_proportions(list(sizes.values()), 2.0)
    assert np.allclose(p, [0.0812536740566486, 0.18168873861227738, 0.5745502392177768, 0.1625073481132972])
    assert D.mixture_counts(list(sizes), 2_000_000, "balanced") == dict.fromkeys(sizes, 500_000)
    assert D.mixture_counts(["ani1x", "oc22"], 3_000_000, "proportions", proportions={"ani1x": 2, "oc22": 1}) == {"ani1x": 2_000_000, "oc22": 1_000_000}
    for n in (1, 7, 999, 12345):
        for mix, kw in (("balanced", {}), ("temperature", {"sizes": sizes}), ("proportions", {"proportions": {k: 1 + i for i, k in enumerate(sizes)}})):
            assert sum(D.mixture_counts(list(sizes), n, mix, **kw).values()) == n


def test_sampling_without_replacement_and_seeded():
    pool = np.arange(100, 300)
    a = D.sample_indices(pool, 50, seed=3, stream=0)
    assert len(set(a.tolist())) == 50 and set(a.tolist()) <= set(pool.tolist())
    assert np.array_equal(a, D.sample_indices(pool, 50, seed=3, stream=0))
    assert not np.array_equal(a, D.sample_indices(pool, 50, seed=4, stream=0))
    assert np.array_equal(np.sort(D.sample_indices(pool, 200, seed=0)), pool)
    with pytest.raises(ValueError):
        D.sample_indices(pool, 201, seed=0)


@pytest.mark.parametrize("n,bs,world", [(37, 4, 2), (10, 3, 3), (8, 4, 2), (5, 4, 3), (1, 2, 2)])
def test_sampler_sees_each_structure_once_per_epoch(n, bs, world):
    from torch.utils.data import BatchSampler

    seen_orders = []
    for epoch in range(2):
        samplers = [D.EpochSampler(n, bs, seed=1, rank=r, world_size=world) for r in range(world)]
        per_rank = [s.batches(epoch) for s in samplers]
        assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank (DDP)
        real = [i for batches in per_rank for b in batches for i in b if i >= 0]
        assert sorted(real) == list(range(n))
        assert all(len(b) >= 1 for batches in per_rank for b in batches)
        for s, batches in zip(samplers, per_rank):  # what the loader's BatchSampler yields, and its length
            s.set_epoch(epoch)
            assert list(BatchSampler(s, bs, drop_last=False)) == batches and len(s) == sum(map(len, batches))
        seen_orders.append([i for b in per_rank[0] for i in b])
    if n > 4:
        assert seen_orders[0] != seen_orders[1]  # reshuffled per epoch
    s = D.EpochSampler(n, bs, seed=1)
    full = list(BatchSampler(s, bs, drop_last=False))
    s.skip(1)
    assert list(BatchSampler(s, bs, drop_last=False)) == full[1:]
    assert list(BatchSampler(s, bs, drop_last=False)) == full


# ----------------------------------------------------------------------------- linear reference


def test_linear_reference_recovers_coefficients(tmp_path):
    coeff = {1: -13.61, 6: -1029.86, 7: -1485.30, 8: -2042.61, 9: -2713.48}
    rng = np.random.default_rng(0)
    with StoreWriter(tmp_path / "s", dataset="x", reader="test", has_energy=True, has_forces=True) as w:
        for _ in range(200):
            z = rng.choice(list(coeff), size=int(rng.integers(2, 12)))
            e = sum(coeff[int(x)] for x in z) + rng.normal() * 1e-3
            w.add(z, rng.normal(size=(len(z), 3)) * 2, energy=e, forces=rng.normal(size=(len(z), 3)) * 0.5)
    st = Store(tmp_path / "s")
    idx = np.arange(len(st))
    X = element_counts(st, idx)
    assert np.array_equal(X.sum(1), st.natoms)
    norm = fit_dataset_norm(st, idx)
    got = np.array(norm.coeff)
    for z, c in coeff.items():
        assert abs(got[z] - c) < 2e-3
    assert np.count_nonzero(got) == len(coeff)
    assert norm.energy_std < 2e-3  # only the noise is left
    f = np.asarray(st.array("forces"))
    assert math.isclose(norm.force_std, float(np.sqrt((f ** 2).mean())), rel_tol=1e-12)


# ----------------------------------------------------------------------------- schedules


def test_warmup_cosine_and_plateau():
    lam = WarmupCosine(warmup=10, total=110, start=0.2, floor=0.1)
    assert lam(0) == pytest.approx(0.2) and lam(5) == pytest.approx(0.6) and lam(10) == pytest.approx(1.0)
    assert lam(60) == pytest.approx(0.55) and lam(110) == pytest.approx(0.1) and lam(500) == pytest.approx(0.1)
    assert all(lam(k) >= lam(k + 1) for k in range(10, 200))
    pl_ = Plateau(factor=0.8, patience=2)
    assert not pl_.step(1.0, [lam])
    assert [pl_.step(1.0, [lam]) for _ in range(3)] == [False, False, True]
    assert lam(500) == pytest.approx(0.08)


def test_layerwise_lr_scales_on_the_real_backbone():
    from atomsift.models import build_model
    from atomsift.models.heads import HeadSpec

    assert default_block_lr_scales(4) == [0.35, 0.40, 0.55, 0.625]
    assert default_block_lr_scales(6) == [0.55, 0.40, 0.30, 0.40, 0.55, 0.625]
    assert default_block_lr_scales(2) == pytest.approx([0.35, 0.625])
    m = build_model("tiny", {"t": HeadSpec("scalar")}, direct_forces_backbone=False, seed=0)
    groups = layerwise_groups(m, 0.3, None, default_block_lr_scales)
    scale_of = {id(p): g["scale"] for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(m.parameters()))
    n_blocks = m.config.num_blocks
    expect = default_block_lr_scales(n_blocks)
    for name, p in m.named_parameters():
        if name.startswith("embedding."):
            assert scale_of[id(p)] == 0.3, name
        elif name.startswith("heads."):
            assert scale_of[id(p)] == 1.0, name
        elif ".int_blocks." in "." + name:
            assert scale_of[id(p)] == expect[int(name.split("int_blocks.")[1].split(".")[0])], name
        elif ".out_blocks." in "." + name:
            j = int(name.split("out_blocks.")[1].split(".")[0])
            assert scale_of[id(p)] == expect[max(j - 1, 0)], name


# ----------------------------------------------------------------------------- pretraining loop


def _train_losses(out):
    with open(out / "logs" / "metrics.csv") as fh:
        return [float(r["train/loss"]) for r in csv.DictReader(fh) if r.get("train/loss")]


def test_overfit_a_handful_of_structures(stores, tmp_path):
    cfg = _pre(stores, n_structures=4, batch_size=4, epochs=150, lr=3e-3, ema_decay=0.0, edge_dropout=0.0,
               warmup_steps=0, min_lr_factor=1.0, val_size=2, weight_decay=0.0, checkpoint_every_n_steps=1000,
               log_every_n_steps=1)
    run_pretrain(cfg, tmp_path / "o", model_factory=toy_model_factory)
    losses = _train_losses(tmp_path / "o")
    assert len(losses) == 150
    assert min(losses[-10:]) * 10 <= losses[0], (losses[0], losses[-10:])


def test_budget_single_and_mixed_exact(stores, tmp_path):
    m = run_pretrain(_pre(stores, n_structures=13, epochs=2, batch_size=4), tmp_path / "s", model_factory=toy_model_factory)
    assert m["structures_seen"] == {"a": 26} and m["budget_C"] == 26 and m["steps"] == 2 * math.ceil(13 / 4)
    assert m["scheduled_steps"] == 2 * (13 // 4)
    for f in ("model.pt", "model_raw.pt", "last.ckpt", "best.ckpt", "linref.json", "logs/metrics.csv"):
        assert (tmp_path / "s" / f).exists(), f
    meta = torch.load(tmp_path / "s" / "model.pt", weights_only=False)["meta"]
    assert meta["budget"]["seen"] == {"a": 26} and meta["weights"] == "ema"
    mixed = {"stores": {"a": str(stores["a"]), "b": str(stores["b"])}, "mixture": "proportions", "proportions": {"a": 2, "b": 1}}
    m = run_pretrain(_pre(stores, upstream=mixed, n_structures=20, epochs=3, batch_size=6), tmp_path / "m", model_factory=toy_model_factory)
    assert m["planned_per_dataset"] == {"a": 14, "b": 6}  # floor(20 * 2/3) = 13, remainder to the first
    assert m["structures_seen"] == {"a": 42, "b": 18}
    assert len(m["val_curve"]) == 3 and {"a/energy_mae", "b/force_mae"} <= set(m["val_curve"][-1])


def test_budget_mismatch_fails_loudly(stores, tmp_path):
    class Extra(pl.Callback):
        def on_train_end(self, trainer, module):
            module.seen.count[0] += 1  # a structure counted that the plan did not contain

    with pytest.raises(BudgetError, match=r"structures seen \{'a': 25\} != planned \{'a': 24\}"):
        run_pretrain(_pre(stores), tmp_path / "x", model_factory=toy_model_factory, callbacks=[Extra()])
    assert not (tmp_path / "x" / "model.pt").exists() and not (tmp_path / "x" / "metrics.json").exists()


def test_budget_larger_than_split_is_an_error(stores, tmp_path):
    with pytest.raises(InputError, match="budget asks for 500 structures but the 'train' split holds 45"):
        run_pretrain(_pre(stores, n_structures=500), tmp_path / "x", model_factory=toy_model_factory)


class _Killed(Exception):
    pass


class _KillAt(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            raise _Killed


@pytest.mark.parametrize("kill_at", [2, 4, 5])  # inside epoch 0, at its last batch, inside epoch 1
def test_resume_after_kill_equals_uninterrupted(stores, tmp_path, kill_at):
    mixed = {"stores": {"a": str(stores["a"]), "b": str(stores["b"])}, "mixture": "balanced"}
    cfg = _pre(stores, upstream=mixed, n_structures=14, epochs=2, batch_size=4, edge_dropout=0.3,
               checkpoint_every_n_steps=1, record_seen=True)
    ref = run_pretrain(cfg, tmp_path / "ref", model_factory=toy_model_factory)
    with pytest.raises(_Killed):
        run_pretrain(cfg, tmp_path / "k", model_factory=toy_model_factory, callbacks=[_KillAt(kill_at)])
    assert (tmp_path / "k" / "last.ckpt").exists() and not (tmp_path / "k" / "metrics.json").exists()
    res = run_pretrain(cfg, tmp_path / "k", model_factory=toy_model_factory)
    assert res["structures_seen"] == ref["structures_seen"] == {"a": 14, "b": 14}
    assert res["steps"] == ref["steps"]
    a = json.loads((tmp_path / "ref" / "seen_rank0.json").read_text())
    b = json.loads((tmp_path / "k" / "seen_rank0.json").read_text())
    assert a["seen"] == b["seen"]
    assert a["weights_sha256"] == b["weights_sha256"] and a["ema_sha256"] == b["ema_sha256"]
    assert res["val_curve"] == ref["val_curve"]
    # a finished run is reported, not retrained
    assert run_pretrain(cfg, tmp_path / "k", model_factory=toy_model_factory)["wall_time_s"] == res["wall_time_s"]


class _KillInValidation(pl.Callback):
    def __init__(self, step):
        self.step = step

    def on_validation_batch_start(self, trainer, *args):
        if trainer.global_step == self.step:
            raise _Killed


@pytest.mark.parametrize("val_every,kill_at", [(None, 4), (2, 2)])  # the validation ending epoch 0, one inside it
def test_kill_during_validation_resumes_with_that_validation(stores, tmp_path, val_every, kill_at):
    # last.ckpt is refreshed every step but never right before a validation: the resumed run redoes it
    mixed = {"stores": {"a": str(stores["a"]), "b": str(stores["b"])}, "mixture": "balanced"}
    cfg = _pre(stores, upstream=mixed, n_structures=14, epochs=2, batch_size=4, edge_dropout=0.3,
               checkpoint_every_n_steps=1, record_seen=True, val_every_n_steps=val_every)
    ref = run_pretrain(cfg, tmp_path / "ref", model_factory=toy_model_factory)
    with pytest.raises(_Killed):
        run_pretrain(cfg, tmp_path / "k", model_factory=toy_model_factory, callbacks=[_KillInValidation(kill_at)])
    res = run_pretrain(cfg, tmp_path / "k", model_factory=toy_model_factory)
    assert [r["step"] for r in ref["val_curve"]] == ([4, 8] if val_every is None else [2, 4, 6, 8])
    assert res["val_curve"] == ref["val_curve"] and res["best_val_loss"] == ref["best_val_loss"]
    a, b = (json.loads((tmp_path / d / "seen_rank0.json").read_text()) for d in ("ref", "k"))
    assert a["seen"] == b["seen"] and res["structures_seen"] == ref["structures_seen"]
    assert a["weights_sha256"] == b["weights_sha256"] and a["ema_sha256"] == b["ema_sha256"]


# ----------------------------------------------------------------------------- finetuning


def test_finetune_qm9_metrics_in_mev(tmp_path):
    from atomsift.data.readers.qm9 import convert

    store = convert(None, tmp_path / "qm9", limit=60)
    cfg = finetune_config_from_dict({"task": "qm9", "store": str(store), "target": "gap", "size": "tiny", "epochs": 2,
                                     "batch_size": 8, "threads": 1, "lr": 1e-3, "scale_fit_batches": 0})
    m = run_finetune(cfg, tmp_path / "ft", "none", model_factory=toy_model_factory)
    assert m["unit"] == "meV" and m["metric"] == "gap_mae" and m["readout"] == "sum" and m["atom_refs"] == "none"
    st = Store(store)
    test = st.split("test")
    assert m["n_test"] == test.size and m["structures_seen"] == 2 * st.split("train").size
    # independent MAE: rebuild the tested weights, predict the gap on the test split, in eV
    saved = torch.load(tmp_path / "ft" / "model.pt", weights_only=False)
    from atomsift.models.heads import HeadSpec
    from atomsift.data.batch import collate

    model = toy_model_factory("tiny", {"task": HeadSpec("scalar", reduction="sum")}, False, 0)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    norm = saved["meta"]["normalization"]
    b = collate([st.record(int(g)) for g in test], dataset="qm9")
    with torch.no_grad():
        y = model(b, head="task")["y"].double() * norm["energy_std"] + norm["energy_mean"]
    gap = torch.tensor([st.record(int(g)).targets["gap"] for g in test], dtype=torch.float64)
    mae_ev = float((y - gap).abs().mean())
    assert m["test_mae"] == pytest.approx(1000 * mae_ev, rel=1e-4)
    assert m["test_mae_store_unit"] == pytest.approx(mae_ev, rel=1e-4)
    assert len(m["val_curve"]) == 2 and m["tested_weights"] == "final_ema"
    # the trivial predictor on the same test molecules: the training split's mean gap
    train_gap = np.array([st.record(int(g)).targets["gap"] for g in st.split("train")])
    assert m["trivial_predictor"] == "training mean"
    assert m["trivial_test_mae"] == pytest.approx(1000 * float((gap.numpy() - train_gap.mean()).__abs__().mean()), rel=1e-9)


def test_finetune_forces_in_mev_per_angstrom(stores, tmp_path):
    from atomsift.data.batch import collate
    from atomsift.models.heads import HeadSpec

    st = Store(stores["t"])
    test = st.split("test")
    for task, forces, kind in (("rmd17", "gradient", "energy_grad_forces"), ("md22", "direct", "energy_direct_forces")):
        cfg = finetune_config_from_dict({"task": task, "store": str(stores["t"]), "size": "tiny", "epochs": 2,
                                         "batch_size": 8, "threads": 1, "lr": 1e-3, "test_weights": "best"})
        m = run_finetune(cfg, tmp_path / task, "none", model_factory=toy_model_factory)
        assert m["unit"] == "meV/Å" and m["metric"] == "force_mae" and m["forces"] == forces
        assert m["tested_weights"] == "best_ema" and m["test_n"] == test.size
        saved = torch.load(tmp_path / task / "model.pt", weights_only=False)
        model = toy_model_factory("tiny", {"task": HeadSpec(kind)}, forces == "direct", 0)
        model.load_state_dict(saved["state_dict"])
        model.eval()
        b = collate([st.record(int(g)) for g in test], dataset="rmd17")
        f = model(b, head="task")["forces"].detach().double() * saved["meta"]["normalization"]["force_std"]
        mae = float((f - torch.as_tensor(np.asarray(st.array("forces"))[np.concatenate(
            [np.arange(st.offsets[g], st.offsets[g + 1]) for g in test])])).abs().mean())
        assert m["test_mae"] == pytest.approx(1000 * mae, rel=1e-4)
        # zero force on the same test atoms: the mean absolute force component
        f_test = np.concatenate([st.record(int(g)).forces for g in test])
        assert m["trivial_predictor"] == "zero force"
        assert m["trivial_test_mae"] == pytest.approx(1000 * float(np.abs(f_test).mean()), rel=1e-9)


def test_transfer_backbone_from_a_pretrained_checkpoint(tmp_path):
    from atomsift.models import build_model, load_checkpoint, save_checkpoint
    from atomsift.models.heads import HeadSpec
    from atomsift.train.finetune import transfer_backbone

    pre = build_model("tiny", {"ani1x": HeadSpec("energy_direct_forces")}, direct_forces_backbone=True, seed=1)
    save_checkpoint(tmp_path / "model.pt", pre, {"stage": "pretrain"})
    loaded, _ = load_checkpoint(tmp_path / "model.pt")
    new = build_model("tiny", {"task": HeadSpec("energy_grad_forces")}, direct_forces_backbone=False, seed=2)
    heads_before = {k: v.clone() for k, v in new.state_dict().items() if k.startswith("heads.")}
    info = transfer_backbone(loaded, new)
    assert info["reinitialised"] == [] and info["loaded"] > 0
    src = pre.state_dict()
    for k, v in new.state_dict().items():
        if k.startswith("heads."):
            assert torch.equal(v, heads_before[k])  # new heads keep their fresh weights
        else:
            assert torch.equal(v, src[k]), k  # every backbone tensor comes from the checkpoint
    other = build_model("small", {"task": HeadSpec("scalar")}, direct_forces_backbone=False, seed=0)
    with pytest.raises(InputError, match="does the run file's size match the checkpoint"):
        transfer_backbone(loaded, other)


def test_finetune_layerwise_lr_groups_end_on_one_floor(stores, tmp_path):
    grabbed = {}

    class Grab(pl.Callback):
        def on_train_start(self, trainer, module):
            grabbed["start"] = [(g["scale"], g["lr"]) for g in trainer.optimizers[0].param_groups]

        def on_train_end(self, trainer, module):
            grabbed["end"] = [(g["scale"], g["lr"]) for g in trainer.optimizers[0].param_groups]

    cfg = finetune_config_from_dict({"task": "qm9", "store": str(stores["t"]), "target": "gap", "size": "tiny", "epochs": 3,
                                     "batch_size": 8, "threads": 1, "lr": 1e-3, "cosine_epochs": 1, "plateau_patience": 100})
    m = run_finetune(cfg, tmp_path / "ft", "none", model_factory=toy_model_factory, callbacks=[Grab()])
    scales = sorted({s for s, _ in grabbed["start"]})
    assert scales == pytest.approx(sorted({0.3, 0.35, 0.625, 1.0}))  # embedding, 2 blocks, rest
    for s, lr in grabbed["start"]:
        assert lr == pytest.approx(1e-3 * s)
    for s, lr in grabbed["end"]:
        assert lr == pytest.approx(1e-4)  # every group anneals to 0.1 x lr after the cosine phase
    assert [r["lr"] for r in m["val_curve"]][-1] == pytest.approx(1e-4)


def test_resume_refuses_a_different_run_file(stores, tmp_path):
    cfg = _pre(stores, checkpoint_every_n_steps=1)
    with pytest.raises(_Killed):
        run_pretrain(cfg, tmp_path / "k", model_factory=toy_model_factory, callbacks=[_KillAt(2)])
    assert json.loads((tmp_path / "k" / "run.json").read_text())["lr"] == 1e-3
    with pytest.raises(InputError, match=r"field 'lr': .* holds a run started with lr=0.001; delete"):
        run_pretrain(_pre(stores, checkpoint_every_n_steps=1, lr=2e-3), tmp_path / "k", model_factory=toy_model_factory)
    # settings that do not change the result may differ
    m = run_pretrain(_pre(stores, checkpoint_every_n_steps=1, log_every_n_steps=3), tmp_path / "k", model_factory=toy_model_factory)
    assert m["structures_seen"] == {"a": 24}


def test_a_run_of_another_format_is_not_resumed(stores, tmp_path, capsys):
    """A run directory written before checkpoint format 2 / the Lightning-parts training state
    (its inputs.json has no "formats"): its checkpoints hold another weight layout or state, so
    it is refused in one line, or started over on request, never resumed."""
    out = tmp_path / "old"
    cfg = _pre(stores, checkpoint_every_n_steps=1)
    with pytest.raises(_Killed):
        run_pretrain(cfg, out, model_factory=toy_model_factory, callbacks=[_KillAt(2)])
    rec = json.loads((out / "inputs.json").read_text())
    assert rec["formats"] == {"model": 2, "training_state": 2}
    del rec["formats"]
    (out / "inputs.json").write_text(json.dumps(rec))
    with pytest.raises(InputError) as e:
        run_pretrain(cfg, out, model_factory=toy_model_factory)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{out / 'run.json'}: field 'formats': {out} holds a run written by another atomsift "
                                               "(model format 1, training state 1; this one writes 2 and 2)")
    capsys.readouterr()
    m = run_pretrain(cfg, out, model_factory=toy_model_factory, on_changed_inputs="restart")
    assert "starting over" in capsys.readouterr().err and m["structures_seen"] == {"a": 24}


def test_changed_inputs_refuse_by_default_and_restart_on_request(stores, tmp_path, capsys):
    # Snakemake reruns a job whose run file changed over the same directory: the rules pass restart
    killed, finished = tmp_path / "k", tmp_path / "f"
    with pytest.raises(_Killed):
        run_pretrain(_pre(stores, checkpoint_every_n_steps=1), killed, model_factory=toy_model_factory, callbacks=[_KillAt(2)])
    run_pretrain(_pre(stores), finished, model_factory=toy_model_factory)
    new = _pre(stores, lr=2e-3, checkpoint_every_n_steps=1)
    fresh = run_pretrain(new, tmp_path / "fresh", model_factory=toy_model_factory)
    for out in (killed, finished):
        with pytest.raises(InputError, match=rf"field 'lr': {out} holds a run started with lr=0.001; delete {out} to start over"):
            run_pretrain(new, out, model_factory=toy_model_factory)
        (out / "notes.txt").write_text("not ours")
        capsys.readouterr()
        m = run_pretrain(new, out, model_factory=toy_model_factory, on_changed_inputs="restart")
        err = capsys.readouterr().err.splitlines()
        assert err == [f"atomsift: {out} holds a run started with lr=0.001; starting over (--on-changed-inputs restart)"]
        assert m["val_curve"] == fresh["val_curve"] and m["structures_seen"] == fresh["structures_seen"] == {"a": 24}
        assert json.loads((out / "run.json").read_text())["lr"] == 2e-3 and (out / "notes.txt").exists()
        for f in ("model.pt", "model_raw.pt"):
            a, b = (torch.load(d / f, weights_only=False)["state_dict"] for d in (out, tmp_path / "fresh"))
            assert all(torch.equal(a[k], b[k]) for k in a), f
    # restart is for changed inputs only: a last.ckpt without a record of its inputs is still refused
    (killed / "inputs.json").unlink()
    (killed / "metrics.json").unlink()
    with pytest.raises(InputError, match="has no readable record of the inputs it was started from"):
        run_pretrain(new, killed, model_factory=toy_model_factory, on_changed_inputs="restart")


def test_cli_on_changed_inputs(stores, tmp_path, capsys):
    run = tmp_path / "ft.yaml"
    base = {"task": "rmd17", "store": str(stores["t"]), "size": "tiny", "epochs": 1, "batch_size": 16, "threads": 1,
            "scale_fit_batches": 0, "lr": 1e-3}
    run.write_text(json.dumps(base))
    out = tmp_path / "out"
    assert main(["finetune", "--config", str(run), "--pretrained", "none", "--out", str(out)]) == 0
    run.write_text(json.dumps({**base, "lr": 5e-4}))
    capsys.readouterr()
    assert main(["finetune", "--config", str(run), "--pretrained", "none", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"atomsift finetune: error: {run}: field 'lr': {out} holds a run started with "
                                       f"lr=0.001; delete {out} to start over or restore the run file\n")
    assert main(["finetune", "--config", str(run), "--pretrained", "none", "--out", str(out), "--on-changed-inputs", "restart"]) == 0
    assert f"atomsift: {out} holds a run started with lr=0.001; starting over" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["lr"] == 5e-4 and (out / "metrics.json").exists()


def test_graph_block_is_recorded_and_inherited(stores, tmp_path):
    """A run file's ``graph:`` block replaces JMP's per-dataset cutoff / k for every dataset of
    the run; the model records it, finetuning from it inherits it (unless its own run file says
    otherwise), and a feature extractor built from the checkpoint uses the same graphs."""
    from atomsift.data.batch import collate
    from atomsift.data.graphs import GraphSettings
    from atomsift.models import load_checkpoint, load_extractor

    pre = run_pretrain(_pre(stores, epochs=1, graph={"cutoff": 4.0, "max_neighbors": 10}), tmp_path / "pre")
    model, _ = load_checkpoint(tmp_path / "pre" / "model.pt")
    assert model.model_config()["graph"] == {"cutoff": 4.0, "max_neighbors": 10} and pre["structures_seen"] == {"a": 12}
    g = model.graph_for("ani1x")
    assert (g.cutoff, g.max_neighbors, g.rule) == (4.0, 10, "invariant")
    st = Store(stores["a"])
    b = collate([st.record(i) for i in range(4)], dataset="ani1x")
    ex = load_extractor(str(tmp_path / "pre" / "model.pt"))
    with torch.no_grad():
        ref = model.backbone_features(b, GraphSettings(4.0, 10, None))
        other = model.backbone_features(b, GraphSettings(8.0, 30, None))  # JMP's ani1x graph differs
    assert torch.equal(ex(b), ref) and not torch.allclose(ref, other)

    ft = {"task": "rmd17", "store": str(stores["t"]), "size": "tiny", "epochs": 1, "batch_size": 8, "threads": 1,
          "lr": 1e-3, "forces": "direct"}
    run_finetune(finetune_config_from_dict(ft), tmp_path / "ft", str(tmp_path / "pre" / "model.pt"))
    assert load_checkpoint(tmp_path / "ft" / "model.pt")[0].graph_overrides == {"cutoff": 4.0, "max_neighbors": 10}
    assert json.loads((tmp_path / "ft" / "inputs.json").read_text())["pretrained"]["graph"] == {"cutoff": 4.0, "max_neighbors": 10}
    run_finetune(finetune_config_from_dict({**ft, "graph": {"cutoff": 5.0, "max_neighbors": 12}}), tmp_path / "ft2",
                 str(tmp_path / "pre" / "model.pt"))
    assert load_checkpoint(tmp_path / "ft2" / "model.pt")[0].graph_overrides == {"cutoff": 5.0, "max_neighbors": 12}
    with pytest.raises(InputError, match=r"field 'graph.cutoff': "):
        finetune_config_from_dict({**ft, "graph": {"cutoff": -1.0}})


def test_cli_seeds_in_one_process_equal_separate_runs(stores, tmp_path, capsys):
    """``--seeds 0,1`` runs each seed into OUT/s<seed>/ in one process; each equals the run of its
    own (seed-replaced) run file in its own directory."""
    run = tmp_path / "ft.yaml"
    base = {"task": "rmd17", "store": str(stores["t"]), "size": "tiny", "epochs": 1, "batch_size": 16, "threads": 1,
            "scale_fit_batches": 0, "lr": 1e-3, "forces": "direct", "seed": 7}
    run.write_text(json.dumps(base))
    assert main(["finetune", "--config", str(run), "--pretrained", "none", "--out", str(tmp_path / "cell"), "--seeds", "0,1"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("finetune:")]
    assert [("seed=0" in ln, "seed=1" in ln) for ln in lines] == [(True, False), (False, True)]
    for s in (0, 1):
        single = tmp_path / f"single{s}.yaml"
        single.write_text(json.dumps({**base, "seed": s}))
        assert main(["finetune", "--config", str(single), "--pretrained", "none", "--out", str(tmp_path / f"one{s}")]) == 0
        a = json.loads((tmp_path / "cell" / f"s{s}" / "metrics.json").read_text())
        b = json.loads((tmp_path / f"one{s}" / "metrics.json").read_text())
        assert a["seed"] == s and a["test_mae"] == b["test_mae"] and a["val_curve"] == b["val_curve"]
    capsys.readouterr()
    assert main(["finetune", "--config", str(run), "--pretrained", "none", "--out", str(tmp_path / "x"), "--seeds", "0,0"]) == 2
    assert capsys.readouterr().err == "atomsift finetune: error: field '--seeds': expected distinct comma-separated seeds >= 0 (e.g. 0,1,2), got '0,0'\n"
