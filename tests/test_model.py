"""GemNet-OC model: JMP's parameter counts, symmetries, gradients, batching, seeds, checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from atomsift.data.batch import collate, replace
from atomsift.data.graphs import GraphSettings
from atomsift.data.store import Record
from atomsift.errors import InputError
from atomsift.models import build_model, load_checkpoint, load_extractor, save_checkpoint
from atomsift.models.gemnet_oc import backbone_config
from atomsift.models.heads import HeadSpec
from atomsift.models.model import GemNetModel

PT = ("oc20", "oc22", "ani1x", "transition1x")
HEADS = {
    "pt": HeadSpec("energy_direct_forces"),
    "grad": HeadSpec("energy_grad_forces"),
    "y": HeadSpec("scalar", reduction="mean"),
    "ymax": HeadSpec("scalar", reduction="max"),
}
MOL = GraphSettings(6.0, 30, False)


def _meta_count(size, direct, tasks=()):
    heads = {t: HeadSpec("energy_direct_forces" if direct else "energy") for t in tasks}
    with torch.device("meta"):
        m = GemNetModel(backbone_config(size, direct), heads, size=size)
    return m.count_parameters()


def test_parameter_counts_equal_jmp():
    c = _meta_count("small", True)
    assert c["embedding"] + c["backbone"] == 38_873_088
    assert c["backbone"] == 38_842_368
    assert _meta_count("small", True, PT)["total"] == 44_131_328
    assert _meta_count("small", False)["total"] == 28_608_512
    assert _meta_count("large", True, PT)["total"] == 234_267_648
    assert _meta_count("large", False)["total"] == 160_612_352


def _rec(i, numbers, pos, cell=None, pbc=False):
    n = len(numbers)
    return Record(
        index=i,
        numbers=np.asarray(numbers, np.int64),
        positions=np.asarray(pos, np.float64),
        cell=np.zeros((3, 3)) if cell is None else np.asarray(cell, np.float64),
        pbc=np.full(3, pbc),
        tags=np.zeros(n, np.int64),
        fixed=np.zeros(n, bool),
        energy=None,
        forces=None,
    )


def _mols(seed=0, sizes=(6, 9)):
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(sizes):
        # a random but well-separated cluster (no atoms closer than ~0.9 A)
        pos = []
        while len(pos) < n:
            p = rng.uniform(0, 3.5, 3)
            if all(np.linalg.norm(p - q) > 0.9 for q in pos):
                pos.append(p)
        out.append(_rec(i, rng.choice([1, 6, 7, 8], n), np.array(pos)))
    return out


@pytest.fixture(scope="module")
def model64():
    m = build_model("tiny", HEADS, direct_forces_backbone=True, seed=3).double().eval()
    # non-trivial scale factors so every factor is exercised
    from atomsift.models.scaling import scale_factors

    for i, f in enumerate(scale_factors(m).values()):
        f.scale_factor.fill_(0.7 + 0.05 * i)
    return m


def _rotation(seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return torch.tensor(q * np.sign(np.linalg.det(q)))


def test_invariance_and_equivariance(model64):
    recs = _mols()
    b = collate(recs, dtype=torch.float64)
    R = _rotation(1)
    shift = torch.tensor([1.3, -2.0, 0.7], dtype=torch.float64)
    b2 = replace(b, pos=b.pos @ R.T + shift)
    # permute the atoms of each molecule
    perm = torch.cat([torch.randperm(6, generator=torch.Generator().manual_seed(0)), 6 + torch.randperm(9, generator=torch.Generator().manual_seed(1))])
    b3 = replace(b, pos=b.pos[perm], numbers=b.numbers[perm])
    for head in ("pt", "grad"):
        o1, o2, o3 = (model64(x, head, MOL) for x in (b, b2, b3))
        torch.testing.assert_close(o2["energy"], o1["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(o2["forces"], o1["forces"] @ R.T, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(o3["energy"], o1["energy"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(o3["forces"], o1["forces"][perm], rtol=1e-9, atol=1e-10)
        assert float(o1["forces"].detach().abs().max()) > 1e-6  # not trivially zero
    for head in ("y", "ymax"):
        torch.testing.assert_close(model64(b2, head, MOL)["y"], model64(b, head, MOL)["y"], rtol=1e-10, atol=1e-10)


def test_invariance_float32():
    m = build_model("tiny", {"pt": HeadSpec("energy_direct_forces")}, True, seed=0).eval()
    b = collate(_mols(4), dtype=torch.float32)
    R = _rotation(2).float()
    o1 = m(b, "pt", MOL)
    o2 = m(replace(b, pos=b.pos @ R.T + 3.0), "pt", MOL)
    scale = float(o1["energy"].detach().abs().max())
    assert float((o2["energy"] - o1["energy"]).detach().abs().max()) <= 1e-4 * scale + 1e-6


def test_gradient_forces_are_minus_finite_differences(model64):
    b = collate(_mols(7, (5,)), dtype=torch.float64)
    f = model64(b, "grad", MOL)["forces"]
    h = 1e-5
    fd = torch.zeros_like(f)
    for i in range(b.pos.shape[0]):
        for k in range(3):
            e = []
            for sgn in (1, -1):
                p = b.pos.clone()
                p[i, k] += sgn * h
                e.append(float(model64(replace(b, pos=p), "grad", MOL)["energy"][0]))
            fd[i, k] = -(e[0] - e[1]) / (2 * h)
    torch.testing.assert_close(f, fd, rtol=1e-6, atol=1e-8)


def test_supercell_gives_eight_times_the_energy(model64):
    rng = np.random.default_rng(11)
    cell = np.diag([3.1, 3.3, 3.6]) + rng.uniform(-0.2, 0.2, (3, 3))
    frac = rng.uniform(0, 1, (2, 3))
    unit = _rec(0, [8, 12], frac @ cell, cell, True)
    sfrac = np.concatenate([(frac + np.array(o)) / 2 for o in np.ndindex(2, 2, 2)])
    sup = _rec(1, [8, 12] * 8, sfrac @ (2 * cell), 2 * cell, True)
    st = GraphSettings(4.0, 3000, True)  # no nearest-k truncation, so both see the same neighbours
    b1 = collate([unit], dtype=torch.float64)
    b8 = collate([sup], dtype=torch.float64)
    for head in ("pt", "grad"):
        o1, o8 = model64(b1, head, st), model64(b8, head, st)
        torch.testing.assert_close(o8["energy"], 8 * o1["energy"], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(o8["forces"][:2], o1["forces"], rtol=1e-8, atol=1e-9)


def test_batch_equals_each_alone(model64):
    recs = _mols(5, (4, 7, 6))
    b = collate(recs, dtype=torch.float64)
    for head in ("pt", "grad", "y"):
        ob = model64(b, head, MOL)
        key = "y" if head == "y" else "energy"
        start = 0
        for i, r in enumerate(recs):
            oi = model64(collate([r], dtype=torch.float64), head, MOL)
            torch.testing.assert_close(ob[key][i : i + 1], oi[key], rtol=1e-10, atol=1e-10)
            if head != "y":
                torch.testing.assert_close(ob["forces"][start : start + len(r.numbers)], oi["forces"], rtol=1e-9, atol=1e-10)
            start += len(r.numbers)
    f = model64.backbone_features(b, MOL)
    assert f.shape == (17, model64.config.emb_size_atom)


def test_same_seed_same_weights():
    a = build_model("tiny", {"e": HeadSpec("energy")}, False, seed=5).state_dict()
    b = build_model("tiny", {"e": HeadSpec("energy")}, False, seed=5).state_dict()
    c = build_model("tiny", {"e": HeadSpec("energy")}, False, seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_parameter_groups_and_block_index():
    m = build_model("tiny", {"e": HeadSpec("energy")}, False, seed=0)
    g = m.parameter_groups()
    assert sum(p.numel() for v in g.values() for p in v) == sum(p.numel() for p in m.parameters())
    assert m.block_index("embedding.weight") == -1
    assert m.block_index("backbone.int_blocks.1.dense_ca.linear.weight") == 1
    assert m.block_index("backbone.out_blocks.2.dense_rbf.linear.weight") == 1
    assert m.block_index("backbone.out_blocks.0.dense_rbf.linear.weight") == 0
    assert m.block_index("backbone.bases.mlp_rbf_h.linear.weight") is None
    assert m.block_index("heads.e.energy_mlp.0.weight") is None


def test_checkpoint_round_trip(tmp_path, model64):
    p = save_checkpoint(tmp_path / "m.pt", model64, {"epochs": 3, "note": "x"})
    raw = torch.load(p, weights_only=True)
    assert raw["format"] == "atomsift-model"
    m2, meta = load_checkpoint(p)
    assert meta == {"epochs": 3, "note": "x"}
    b = collate(_mols(9), dtype=torch.float64)
    m2 = m2.double()
    for head in HEADS:
        o1, o2 = model64(b, head, MOL), m2(b, head, MOL)
        for k in o1:
            torch.testing.assert_close(o2[k], o1[k])
    ex = load_extractor(str(p))
    assert ex.dim == 64 and len(ex.sha256) == 64
    r1, r2 = load_extractor("random-tiny-1"), load_extractor("random-tiny-1")
    b32 = collate(_mols(9), dtype=torch.float32)
    torch.testing.assert_close(r1(replace(b32, dataset="qm9")), r2(replace(b32, dataset="qm9")))
    assert r1.sha256 != load_extractor("random-tiny-2").sha256


def test_fit_scale_factors_gives_unit_variance_ratio():
    from atomsift.models.scaling import fit_scale_factors, scale_factors

    m = build_model("tiny", {"pt": HeadSpec("energy_direct_forces")}, True, seed=0)
    batches = [replace(collate(_mols(s, (8, 10)), dtype=torch.float32), dataset="qm9") for s in (1, 2)]
    values = fit_scale_factors(m, batches)
    assert len(values) == 11 * 2 + 2 * 3
    assert all(v > 0 and math.isfinite(v) for v in values.values())
    # with every factor fitted, each one's scaled output variance matches its reference input
    fs = scale_factors(m)
    for f in fs.values():
        f.fitting, f.stats = True, []
    with torch.no_grad():
        for b in batches:
            m.backbone_features(b)
    for name, f in fs.items():
        n = sum(s[0] for s in f.stats)
        vi = sum(s[0] * s[1] for s in f.stats) / n
        vo = sum(s[0] * s[2] for s in f.stats) / n
        assert abs(vo * float(f.scale_factor) ** 2 / vi - 1) < 1e-3, name
        f.fitting = False


def test_small_default_scale_factors_are_jmp_values():
    from atomsift.models.scaling import DEFAULT_SCALES

    assert len(DEFAULT_SCALES["small"]) == 54 and len(DEFAULT_SCALES["large"]) == 80
    assert len(DEFAULT_SCALES["tiny"]) == 11 * 2 + 2 * 3
    assert DEFAULT_SCALES["small"]["int_blocks.0.quad_interaction.scale_cbf"] == 30.6798
    assert DEFAULT_SCALES["large"]["out_blocks.6.scale_rbf_F"] == 8.3453


# ----------------------------------------------------------------------------- JMP checkpoints


def jmp_state_dict_shapes(c, tasks=PT) -> dict[str, tuple]:
    """JMP's state-dict keys and shapes, written out from JMP.md §2 (independent of our modules)."""
    A, E, nr, er, ec, es = c.emb_size_atom, c.emb_size_edge, c.num_radial, c.emb_size_rbf, c.emb_size_cbf, c.emb_size_sbf
    ti, to, qi, qo, ai, ao, nb = c.emb_size_trip_in, c.emb_size_trip_out, c.emb_size_quad_in, c.emb_size_quad_out, c.emb_size_aint_in, c.emb_size_aint_out, c.num_blocks
    S: dict[str, tuple] = {"embedding.atom_embedding.weight": (120, A)}
    bb = "backbone.bases."
    for n in ("radial_basis", "cbf_basis_qint.radial_basis", "sbf_basis_qint.radial_basis", "radial_basis_aeaint", "cbf_basis_aeint.radial_basis", "cbf_basis_eaint.radial_basis", "radial_basis_aint", "cbf_basis_tint.radial_basis"):
        S[f"{bb}{n}.rbf.offset"] = (nr,)
        S[f"{bb}{n}.rbf.temps"] = (nr,)
    for n in ("qint", "aeint", "eaint", "tint", "h", "out"):
        S[f"{bb}mlp_rbf_{n}.linear.weight"] = (er, nr)
    for n in ("qint", "aeint", "eaint", "tint"):
        S[f"{bb}mlp_cbf_{n}.weight"] = (nr, c.num_spherical, ec)
    S[f"{bb}mlp_sbf_qint.weight"] = (nr, c.num_spherical**2, es)
    S[f"{bb}mlp_rbf_aint.weight"] = (er, nr)
    S[f"{bb}edge_emb.dense.linear.weight"] = (E, 2 * A + nr)

    def res(prefix, n, u):
        for j in range(n):
            for k in (0, 1):
                S[f"{prefix}.{j}.dense_mlp.{k}.linear.weight"] = (u, u)

    def res_from(prefix, start, n, u):
        for j in range(start, start + n):
            for k in (0, 1):
                S[f"{prefix}.{j}.dense_mlp.{k}.linear.weight"] = (u, u)

    def atom_mlp(prefix):  # JMP's get_mlp(E, A, num_atom): the Dense only when E != A
        if E != A:
            S[f"{prefix}.0.linear.weight"] = (A, E)
        res_from(prefix, 1 if E != A else 0, c.num_atom, A)

    for i in range(nb):
        p = f"backbone.int_blocks.{i}."
        S[p + "dense_ca.linear.weight"] = (E, E)
        for name, din, dout, sym in (("trip_interaction", E, E, True), ("atom_edge_interaction", A, E, True), ("edge_atom_interaction", E, A, False)):
            q = p + name + "."
            S[q + "dense_ba.linear.weight"] = (din, din)
            S[q + "mlp_rbf.linear.weight"] = (din, er)
            S[q + "mlp_cbf.bilinear.linear.weight"] = (to, ti * ec)
            S[q + "down_projection.linear.weight"] = (ti, din)
            S[q + "up_projection_ca.linear.weight"] = (dout, to)
            if sym:
                S[q + "up_projection_ac.linear.weight"] = (dout, to)
            S[q + "scale_rbf.scale_factor"] = ()
            S[q + "scale_cbf_sum.scale_factor"] = ()
        q = p + "quad_interaction."
        S[q + "dense_db.linear.weight"] = (E, E)
        S[q + "mlp_rbf.linear.weight"] = (E, er)
        S[q + "mlp_cbf.linear.weight"] = (qi, ec)
        S[q + "mlp_sbf.bilinear.linear.weight"] = (qo, qi * es)
        S[q + "down_projection.linear.weight"] = (qi, E)
        S[q + "up_projection_ca.linear.weight"] = (E, qo)
        S[q + "up_projection_ac.linear.weight"] = (E, qo)
        for n in ("scale_rbf", "scale_cbf", "scale_sbf_sum"):
            S[q + n + ".scale_factor"] = ()
        q = p + "atom_interaction."
        S[q + "bilinear.linear.weight"] = (ao, er * ai)
        S[q + "down_projection.linear.weight"] = (ai, A)
        S[q + "up_projection.linear.weight"] = (A, ao)
        S[q + "scale_rbf_sum.scale_factor"] = ()
        res(p + "layers_before_skip", c.num_before_skip, E)
        res(p + "layers_after_skip", c.num_after_skip, E)
        res(p + "atom_emb_layers", c.num_atom_emb_layers, A)
        S[p + "atom_update.dense_rbf.linear.weight"] = (E, er)
        S[p + "atom_update.scale_sum.scale_factor"] = ()
        atom_mlp(p + "atom_update.layers")
        S[p + "concat_layer.dense.linear.weight"] = (E, 2 * A + E)
        res(p + "residual_m", c.num_concat, E)
    for k in range(nb + 1):
        p = f"backbone.out_blocks.{k}."
        S[p + "dense_rbf.linear.weight"] = (E, er)
        S[p + "scale_sum.scale_factor"] = ()
        for alias in ("layers", "seq_energy_pre"):
            atom_mlp(p + alias)
        res(p + "seq_energy2", c.num_output_afteratom, A)
        S[p + "scale_rbf_F.scale_factor"] = ()
        res(p + "seq_forces", c.num_atom, E)  # JMP: get_mlp(E, E, nHidden=num_atom)
        S[p + "dense_rbf_F.linear.weight"] = (E, er)
    for n, u in (("E", A), ("F", E)):
        S[f"backbone.out_mlp_{n}.out_mlp.0.linear.weight"] = (u, u * (nb + 1))
        res(f"backbone.out_mlp_{n}.out_mlp", 0, u)
        res_from(f"backbone.out_mlp_{n}.out_mlp", 1, c.num_global_out_layers, u)
    for t in range(len(tasks)):
        for n, u in (("energy", A), ("forces", E)):
            for j in (0, 2, 4, 6):
                S[f"output.out_{n}.{t}.{j}.weight"] = (u, u)
                S[f"output.out_{n}.{t}.{j}.bias"] = (u,)
            S[f"output.out_{n}.{t}.8.weight"] = (1, u)
    for t in tasks:
        S[f"task_steps._module_dict._typed_moduledict_{t}.value"] = ()
    return S


def test_every_jmp_s_and_l_key_maps_onto_our_model():
    from atomsift.models.checkpoint import jmp_key_to_ours

    for size in ("small", "large"):
        cfg = backbone_config(size, True)
        with torch.device("meta"):
            m = GemNetModel(cfg, {t: HeadSpec("energy_direct_forces") for t in PT}, size=size)
        ours = {k: tuple(v.shape) for k, v in m.state_dict().items()}
        jmp = jmp_state_dict_shapes(cfg)
        mapped = {}
        for k, shape in jmp.items():
            o = jmp_key_to_ours(k, list(PT))
            if o is not None:
                mapped[o] = shape
        assert mapped == ours, size


def _synthetic_jmp(path, cfg, seed=0, drop=None, reshape=None):
    g = torch.Generator().manual_seed(seed)
    shapes = jmp_state_dict_shapes(cfg)
    sd = {}
    for k, s in shapes.items():
        if k.endswith("rbf.offset"):
            sd[k] = torch.linspace(0, 1, s[0])
        elif k.endswith("rbf.temps"):
            sd[k] = torch.full(s, -0.5 * (s[0] - 1) ** 2)
        elif k.endswith("scale_factor"):
            sd[k] = torch.tensor(1.0 + torch.rand((), generator=g).item())
        else:
            sd[k] = 0.1 * torch.randn(s, generator=g)
    for k in [k for k in sd if ".seq_energy_pre." in k]:  # the alias holds the same tensors
        sd[k] = sd[k.replace(".seq_energy_pre.", ".layers.")]
    keys = [k for k in sd if not (k.endswith(("rbf.offset", "rbf.temps", "scale_factor")) or ".seq_energy_pre." in k or k.startswith("task_steps"))]
    ema = tuple(0.5 * sd[k] for k in keys)
    if drop:
        del sd[drop]
    if reshape:
        sd[reshape] = torch.zeros(3, 3)
    hp = {"backbone": {**cfg.to_dict(), "scale_file": "/x/base.pt", "ln": False, "edge_dropout": 0.1}}
    obj = {
        "epoch": 2,
        "global_step": 10,
        "pytorch-lightning_version": "2.1.0",
        "state_dict": sd,
        "optimizer_states": [{"opt": {}, "ema": ema, "current_step": 10, "decay": 0.99, "every_n_steps": 1}],
        "hyper_parameters": hp,
    }
    torch.save(obj, path)
    return sd


def test_synthetic_jmp_checkpoint_loads_strictly_raw_and_ema(tmp_path):
    cfg = backbone_config("tiny", True)
    p = tmp_path / "jmp-x.pt"
    sd = _synthetic_jmp(p, cfg)
    raw, meta = load_checkpoint(p, ema=False)
    assert meta["source"] == "jmp" and meta["tasks"] == list(PT)
    assert set(raw.heads) == set(PT)
    w = "backbone.int_blocks.1.quad_interaction.mlp_sbf.bilinear.linear.weight"
    torch.testing.assert_close(raw.state_dict()[w], sd[w])
    torch.testing.assert_close(raw.state_dict()["embedding.weight"], sd["embedding.atom_embedding.weight"])
    torch.testing.assert_close(raw.state_dict()["heads.ani1x.force_mlp.4.bias"], sd["output.out_forces.2.4.bias"])
    sf = "backbone.out_blocks.2.scale_rbf_F.scale_factor"
    torch.testing.assert_close(raw.state_dict()[sf], sd[sf])
    ema, meta = load_checkpoint(p)  # EMA is the default
    assert meta["ema"] is True
    torch.testing.assert_close(ema.state_dict()[w], 0.5 * sd[w])
    torch.testing.assert_close(ema.state_dict()["heads.oc22.energy_mlp.8.weight"], 0.5 * sd["output.out_energy.1.8.weight"])
    torch.testing.assert_close(ema.state_dict()[sf], sd[sf])  # buffers are not in the EMA
    # the loaded JMP model runs
    b = replace(collate(_mols(3), dtype=torch.float32), dataset="ani1x")
    out = raw(b, "ani1x")
    assert out["energy"].shape == (2,) and torch.isfinite(out["forces"]).all()


def test_corrupted_jmp_checkpoint_names_the_keys(tmp_path):
    cfg = backbone_config("tiny", True)
    p = tmp_path / "bad.pt"
    key = "backbone.int_blocks.0.trip_interaction.dense_ba.linear.weight"
    _synthetic_jmp(p, cfg, reshape=key)
    with pytest.raises(InputError, match="EMA tensor for backbone.int_blocks.0.trip_interaction.dense_ba"):
        load_checkpoint(p)
    with pytest.raises(InputError, match=r"shape mismatch: backbone\.int_blocks\.0\.trip_interaction\.dense_ba\.linear\.weight \(3, 3\)"):
        load_checkpoint(p, ema=False)
    p2 = tmp_path / "missing.pt"
    _synthetic_jmp(p2, cfg, drop="backbone.out_mlp_E.out_mlp.0.linear.weight")
    with pytest.raises(InputError, match=r"missing: backbone\.out_mlp_E\.out_mlp\.0\.linear\.weight"):
        load_checkpoint(p2, ema=False)
    p3 = tmp_path / "junk.pt"
    torch.save({"state_dict": {"backbone.x": torch.zeros(1), "foo.bar": torch.zeros(1)}, "hyper_parameters": {"backbone": cfg.to_dict()}}, p3)
    with pytest.raises(InputError, match="foo.bar"):
        load_checkpoint(p3, ema=False)


def test_jmp_checkpoint_with_pickled_config_classes_of_a_missing_package(tmp_path):
    """JMP pickles its config classes (package ``jmp``): they load as stand-ins without it."""
    import sys
    import types

    cfg = backbone_config("tiny", True)
    p = tmp_path / "jmp-pickled.pt"
    sd = _synthetic_jmp(p, cfg)
    obj = torch.load(p, weights_only=True)
    mod = types.ModuleType("fakejmp_cfg")

    class BackboneConfig:  # a plain class standing for jmp's pydantic config
        pass

    class TaskConfig:
        pass

    BackboneConfig.__module__ = TaskConfig.__module__ = "fakejmp_cfg"
    BackboneConfig.__qualname__, TaskConfig.__qualname__ = "BackboneConfig", "TaskConfig"
    mod.BackboneConfig, mod.TaskConfig = BackboneConfig, TaskConfig
    sys.modules["fakejmp_cfg"] = mod
    try:
        bb = BackboneConfig()
        bb.__dict__.update(cfg.to_dict())
        tasks = []
        for n in ("a", "b", "c", "d"):
            t = TaskConfig()
            t.name = n
            tasks.append(t)
        obj["hyper_parameters"] = {"backbone": bb, "tasks": tasks}
        torch.save(obj, p)
    finally:
        del sys.modules["fakejmp_cfg"]
    with pytest.raises(Exception):
        torch.load(p, weights_only=False)  # the package is gone
    model, meta = load_checkpoint(p, ema=False)
    assert meta["tasks"] == ["a", "b", "c", "d"]
    torch.testing.assert_close(model.state_dict()["heads.c.force_mlp.0.weight"], sd["output.out_forces.2.0.weight"])
