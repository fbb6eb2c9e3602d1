"""EquiformerV2: exactness against fairchem's implementation, the SO(3) tables, strict checkpoint
loading, and the ``eqv2:`` extractor in the CSI verbs.

The fixtures under tests/data/eqv2 come from ``tools/eqv2_reference.py`` (fairchem 1.x's
``equiformer_v2`` run on CPU, float32, weights from ``seeded_tensor`` by parameter name).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from atomsift.errors import InputError
from atomsift.models.equiformer_v2 import so3
from atomsift.models.equiformer_v2.io import (
    EquiformerV2Extractor,
    eqv2_graph,
    expected_constant,
    load_backbone_state,
    load_eqv2_checkpoint,
    seeded_state_dict,
)
from atomsift.models.equiformer_v2.model import CONFIGS, EquiformerV2Backbone, seeded_tensor

DATA = Path(__file__).parent / "data" / "eqv2"


def _fixture(config: str) -> dict:
    with np.load(DATA / f"eqv2_{config}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _batch(fix: dict):
    """The fixture's structures as a PyG ``Batch`` of our ``Data`` layout (atomsift.data.batch)."""
    from torch_geometric.data import Batch, Data

    natoms = np.asarray(fix["natoms"])
    starts = np.concatenate([[0], np.cumsum(natoms)])
    data = []
    for i, n in enumerate(natoms):
        a, b = starts[i], starts[i + 1]
        data.append(Data(numbers=torch.as_tensor(fix["numbers"][a:b]), pos=torch.as_tensor(fix["positions"][a:b]),
                         cell=torch.as_tensor(fix["cells"][i]).reshape(1, 3, 3), pbc=torch.as_tensor(fix["pbc"][i]).reshape(1, 3),
                         natoms=torch.tensor([int(n)]), tags=torch.zeros(int(n), dtype=torch.long),
                         fixed=torch.zeros(int(n), dtype=torch.bool), dataset=""))
    return Batch.from_data_list(data)


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(config: str, seed: int) -> EquiformerV2Backbone:
        if (config, seed) not in cache:
            cache[(config, seed)] = EquiformerV2Backbone(CONFIGS[config]).seed_parameters(seed).eval()
        return cache[(config, seed)]

    return get


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("config", ["31m", "tiny"])
def test_features_equal_fairchem_reference(config, models):
    """Same structures, same seeded weights, same edge-frame draws: our per-atom features equal
    the reference's to <= 1e-5 relative (float32), molecules and a periodic slab."""
    fix = _fixture(config)
    batch = _batch(fix)
    model = models(config, int(fix["seed"]))
    g = eqv2_graph(batch, model.config)
    # our graph builder gives the fixture's graph (12 A, nearest 20, periodic images)
    ours = [tuple(e) for e in torch.cat([g.edge_index.T, g.cell_offset], 1).tolist()]
    ref_rows = [tuple(e) for e in np.concatenate([fix["edge_index"].T, fix["cell_offset"]], axis=1).tolist()]
    assert set(ours) == set(ref_rows) and len(ours) == len(ref_rows)
    # the reference's uniform draws, matched to our edge order
    draw = dict(zip(ref_rows, fix["roll_u"]))
    roll = torch.as_tensor(np.stack([draw[e] for e in ours])) - 0.5
    ex = EquiformerV2Extractor(model, config, "0" * 64)
    feats = ex(batch, roll=roll).double().numpy()
    ref = fix["features"].astype(np.float64)
    assert feats.shape == ref.shape == (int(fix["natoms"].sum()), (model.config.lmax + 1) ** 2 * model.config.sphere_channels)
    rel = np.linalg.norm(feats - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert rel.max() <= 1e-5, rel.max()
    # the slab is periodic and capped: 20 neighbours per atom, some through periodic images
    slab = slice(int(fix["natoms"][:2].sum()), None)
    assert bool(batch.pbc[2].all()) and (np.bincount(fix["edge_index"][1])[slab] == 20).all()
    assert np.abs(fix["cell_offset"]).sum() > 0


def test_features_depend_on_weights_not_on_edge_frame_draws(models):
    """The comparison above is not vacuous: other weights move the features by far more than its
    tolerance. The random edge-frame draws of fairchem (the rotation about each edge) do not: only
    the S2 grid breaks the symmetry about the edge, by aliasing orders >= resolution - mmax, and
    the features move by float32 rounding (1e-8 relative in float64, measured)."""
    fix = _fixture("tiny")
    batch = _batch(fix)
    base = EquiformerV2Extractor(models("tiny", int(fix["seed"])), "a", "0" * 64)(batch).numpy()
    other = EquiformerV2Extractor(models("tiny", int(fix["seed"]) + 1), "b", "0" * 64)(batch).numpy()
    g = eqv2_graph(batch, CONFIGS["tiny"])
    roll = torch.rand(g.num_edges, 3, generator=torch.Generator().manual_seed(0)) - 0.5
    rolled = EquiformerV2Extractor(models("tiny", int(fix["seed"])), "a", "0" * 64)(batch, roll=roll).numpy()
    rel = lambda a: float(np.linalg.norm(a - base) / np.linalg.norm(base))  # noqa: E731
    assert rel(other) > 0.1
    assert rel(rolled) < 1e-5


# ----------------------------------------------------------------------------- SO(3) tables


def test_wigner_d_rotates_spherical_harmonics():
    """Y(R x) = D(R) Y(x), D orthogonal, D(R1 R2) = D(R1) D(R2), float64."""
    rng = np.random.default_rng(0)
    lmax = 4
    J = [torch.tensor(so3.j_matrix(l)) for l in range(lmax + 1)]
    q = torch.linalg.qr(torch.tensor(rng.normal(size=(3, 3, 3)))).Q
    R = q * torch.sign(torch.linalg.det(q)).view(-1, 1, 1)  # proper rotations
    D = so3.wigner_d(R, lmax, J)
    x = rng.normal(size=(50, 3))
    for i in range(3):
        y_rot = so3.sh_xyz(lmax, x @ R[i].numpy().T)
        assert np.abs(y_rot - so3.sh_xyz(lmax, x) @ D[i].numpy().T).max() < 1e-12
    assert torch.allclose(D[0] @ D[0].T, torch.eye(25, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(so3.wigner_d(R[0:1] @ R[1:2], lmax, J)[0], D[0] @ D[1], atol=1e-12)


def test_edge_frames_send_edges_to_y():
    vec = torch.tensor(np.random.default_rng(1).normal(size=(40, 3)))
    for roll in (torch.rand(40, 3, dtype=torch.float64) - 0.5, so3.least_aligned_axis(vec)):
        R = so3.edge_frames(vec, roll)
        y = (R @ (vec / vec.norm(dim=1, keepdim=True)).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(y, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand(40, 3), atol=1e-12)
        assert torch.allclose(torch.linalg.det(R), torch.ones(40, dtype=torch.float64))


def test_grid_round_trip():
    """Sampling band-limited coefficients on the grid and integrating them back by quadrature
    returns them (lmax = mmax = 4 on the 18 x 18 grid; and for the reduced mmax = 2 layout)."""
    c = np.random.default_rng(2).normal(size=25)
    for mmax in (4, 2):
        to_g, from_g = so3.grid_matrices(4, mmax, 18)
        cm = c[list(so3.reduced_index(4, mmax))]
        back = np.einsum("bai,ba->i", from_g, np.einsum("bai,i->ba", to_g, cm))
        scale = so3.degree_rescale(4, mmax) ** 2
        assert np.abs(back - cm * scale).max() < 1e-12


# ----------------------------------------------------------------------------- checkpoint layout


@pytest.fixture(scope="module")
def keys31():
    with gzip.open(DATA / "eq2_31M_keys.json.gz", "rt") as fh:
        return [(k, tuple(s)) for k, s, _ in json.load(fh)]


@pytest.fixture(scope="module")
def synthetic_checkpoint(tmp_path_factory, keys31):
    """A file with the public checkpoint's exact key names and shapes (module.module. prefixes,
    the heads, every stored table), fairchem's top-level layout and a plain config dict."""
    path = tmp_path_factory.mktemp("eqv2") / "eq2_31M_synthetic.pt"
    cfg = CONFIGS["31m"]
    torch.save({"epoch": 3, "step": 100, "state_dict": seeded_state_dict(keys31, cfg, 5),
                "config": {"model": {"name": "equiformer_v2", "lmax_list": [4], "mmax_list": [2], "num_layers": 8,
                                     "norm_type": "layer_norm_sh", "grid_resolution": 18, "max_radius": 12.0}},
                "ema": {"decay": 0.999, "num_updates": 7}}, path)
    return path


def test_synthetic_checkpoint_loads_strictly(synthetic_checkpoint, keys31, models):
    model, meta = load_eqv2_checkpoint(synthetic_checkpoint)
    assert meta["epoch"] == 3 and meta["config"]["num_layers"] == 8
    ref = models("31m", 5)
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), name
    # every key of the public layout is a parameter, a head, or a table we recompute
    n_params = sum(1 for k, _ in keys31 if k[len("module.module."):] in dict(model.named_parameters()))
    n_heads = sum(1 for k, _ in keys31 if k.startswith(("module.module.energy_block", "module.module.force_block")))
    assert n_params == len(list(model.parameters())) and n_heads > 0


def test_loading_errors_list_the_keys(keys31):
    cfg = CONFIGS["31m"]
    sd = seeded_state_dict(keys31, cfg, 5)
    model = EquiformerV2Backbone(cfg)
    bad = dict(sd)
    del bad["module.module.blocks.3.ga.alpha_dot"]
    bad["module.module.blocks.9.ga.alpha_dot"] = torch.zeros(8, 64)
    bad["module.module.norm.affine_weight"] = torch.zeros(3, 128)
    bad["module.module.blocks.0.ga.SO3_grid.4.2.to_grid_mat"] = sd["module.module.blocks.0.ga.SO3_grid.4.2.to_grid_mat"] * 1.01
    with pytest.raises(InputError) as err:
        load_backbone_state(model, bad, "ck.pt")
    msg = str(err.value)
    assert msg.startswith("ck.pt: field 'state_dict': checkpoint does not match EquiformerV2;") and "\n" not in msg
    assert "missing: blocks.3.ga.alpha_dot" in msg
    assert "unexpected: module.module.blocks.9.ga.alpha_dot" in msg
    assert "shape mismatch: norm.affine_weight (3, 128) != (4, 128)" in msg
    assert "constant tables differ from EquiformerV2's: module.module.blocks.0.ga.SO3_grid.4.2.to_grid_mat" in msg
    # JMP's rename (module.module. -> backbone.) and a bare state dict load too
    renamed = {"backbone." + k[len("module.module."):]: v for k, v in sd.items()}
    load_backbone_state(model, renamed)
    assert torch.equal(model.blocks[3].ga.alpha_dot, sd["module.module.blocks.3.ga.alpha_dot"])


class Payload:
    """A class a pickle can name: unpickling it would run its module's code."""

    def __reduce__(self):
        return (Payload, ())


def test_unsafe_or_unsupported_checkpoints_are_refused(tmp_path):
    path = tmp_path / "pickled_class.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(InputError, match=r"pickled_class.pt: .*test_equiformer_v2.*Payload") as err:
        load_eqv2_checkpoint(path)
    assert "\n" not in str(err.value)
    path = tmp_path / "gate.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "config": {"model": {"use_gate_act": True, "lmax_list": [4, 4]}}}, path)
    with pytest.raises(InputError, match=r"field 'config': EquiformerV2 options not implemented here: use_gate_act=True"):
        load_eqv2_checkpoint(path)
    with pytest.raises(InputError, match="does not exist"):
        load_eqv2_checkpoint(tmp_path / "nope.pt")


def test_expected_tables_cover_every_stored_table(keys31):
    """Every non-parameter, non-head key of the public layout is a table we can recompute."""
    model = EquiformerV2Backbone(CONFIGS["31m"])
    params = set(dict(model.named_parameters()))
    for key, shape in keys31:
        name = key[len("module.module."):]
        if name in params or name.startswith(("energy_block.", "force_block.")):
            continue
        value = expected_constant(name, model.config)
        assert value is not None and tuple(value.shape) == shape, key


# ----------------------------------------------------------------------------- extractor


def test_seeded_tensor_rule():
    a = seeded_tensor("blocks.0.ga.proj.weight", (5, 4, 16), 1)
    assert torch.equal(a, seeded_tensor("blocks.0.ga.proj.weight", (5, 4, 16), 1))
    assert not torch.equal(a, seeded_tensor("blocks.1.ga.proj.weight", (5, 4, 16), 1))
    assert a.abs().max() <= 0.25 and seeded_tensor("norm.norm_l0.weight", (8,), 1).sub(1).abs().max() <= 0.1


def test_heavy_elements_are_skipped_in_moments(tmp_path, capsys):
    """Structures with Z >= 90 are left out of the moments (the paper's extraction), counted in
    the sidecar; the extractor refuses them if called directly."""
    from atomsift.cli import main
    from atomsift.csi.moments import load_moments
    from atomsift.data.batch import from_atoms
    from atomsift.data.store import StoreWriter
    from atomsift.models import load_extractor
    from ase import Atoms

    rng = np.random.default_rng(0)
    out = tmp_path / "store"
    with StoreWriter(out, dataset="qm9", reader="test") as w:
        for i in range(6):
            z = np.array([92, 8, 8]) if i in (1, 4) else np.array([6, 8, 1, 1])
            w.add(z, rng.normal(size=(len(z), 3)) * 1.2, cls="x")
    res = tmp_path / "m.npz"
    assert main(["moments", "--store", str(out), "--extractor", "eqv2:random-tiny-0", "--sampling", "random",
                 "--n", "6", "--agg", "flat", "--out", str(res), "--json"]) == 0
    m, meta = load_moments(res)
    assert m.n == 4 * 4 and m.dim == 16 * 16 and meta["n_skipped_structures"] == 2
    ex = load_extractor("eqv2:random-tiny-0")
    with pytest.raises(InputError, match="atomic number 92 >= 90"):
        ex(from_atoms([Atoms("UO2", positions=rng.normal(size=(3, 3)))]))
    capsys.readouterr()


def test_extractor_is_deterministic_and_batch_independent():
    """A structure's features do not depend on the rest of its batch (the default edge frames are
    a deterministic rule, not a random draw), and the spec names a stable sha256."""
    from ase.build import molecule

    from atomsift.data.batch import from_atoms
    from atomsift.models import load_extractor

    ex = load_extractor("eqv2:random-tiny-3")
    assert ex.sha256 == load_extractor("eqv2:random-tiny-3").sha256 and ex.dim == 256
    a, b = molecule("CH3CH2OH"), molecule("C6H6")
    both = ex(from_atoms([a, b]))
    alone = ex(from_atoms([b]))
    assert torch.allclose(both[len(a):], alone, atol=1e-5, rtol=1e-5)
    dropped = ex(from_atoms([a, b]), edge_dropout=0.5, generator=torch.Generator().manual_seed(0))
    assert dropped.shape == both.shape and not torch.allclose(dropped, both)
    with pytest.raises(InputError, match="unknown EquiformerV2 config 'huge'"):
        load_extractor("eqv2:random-huge-0")


def test_device_choice_for_extractors():
    """--device auto keeps every extractor where it can run; asking a CPU-only extractor (GemNet-OC)
    or a machine without CUDA for CUDA is a one-line error."""
    from atomsift.csi.cli import on_device
    from atomsift.models import load_extractor

    eq = on_device(load_extractor("eqv2:random-tiny-0"), "auto")
    assert next(eq.model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    gem = load_extractor("random-tiny-0")
    assert on_device(gem, "auto") is gem and on_device(gem, "cpu") is gem
    with pytest.raises(InputError, match="runs on the CPU only"):
        on_device(gem, "cuda")
    with pytest.raises(InputError, match="not a device: 'gpu0'"):
        on_device(eq, "gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available here"):
            on_device(eq, "cuda")
