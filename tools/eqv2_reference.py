"""Regenerate the EquiformerV2 exactness fixtures from fairchem's reference implementation.

    python tools/eqv2_reference.py --fairchem /path/to/fairchem            # write tests/data/eqv2/
    python tools/eqv2_reference.py --fairchem /path/to/fairchem --check    # also compare with ours

``--fairchem`` is a checkout of FAIR-Chem/fairchem 1.x (the directory holding
``src/fairchem/core/models/equiformer_v2``). Nothing of it is copied: its ``equiformer_v2`` package is
imported from the checkout, with small stand-ins for the fairchem modules it imports (registry,
graph-parallel utilities, the graph-building mixin) so that neither fairchem's package nor its
compiled extensions are needed. The environment needs ``e3nn`` (0.4.4, as fairchem asks) and
torch-geometric besides atomsift; it runs on CPU in float32.

What the fixtures hold (one compressed npz per configuration, ``eqv2_<config>.npz``):
- structures: two rattled molecules and a rattled periodic Pt(111) slab with CO (numbers, positions,
  cells, pbc), built with ASE here;
- the graph our builder gives them (12 A, nearest 20; checked free of distance ties at the 20th
  neighbour, so any tie convention agrees) and, for every edge, the uniform draws fairchem's edge
  frames take from ``torch.rand_like`` (fed to both sides);
- the reference's per-atom features: the output of the final layer norm, (N, (lmax+1)^2 C),
  with every parameter set by ``seeded_tensor(name, shape, seed)`` (a rule both sides apply by name).
``eq2_31M_keys.json.gz``: every key, shape and dtype of the reference model's state dict in the
layout of the public checkpoint (``module.module.`` + the 31M model with its heads).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import importlib.util
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from atomsift.models.equiformer_v2 import so3  # noqa: E402
from atomsift.models.equiformer_v2.model import CONFIGS, EquiformerV2Backbone, seeded_tensor  # noqa: E402

SEED = 7
ROLL_SEED = 11


# ----------------------------------------------------------------------------- the reference, imported


@dataclasses.dataclass
class _GraphData:
    edge_index: torch.Tensor
    edge_distance: torch.Tensor
    edge_distance_vec: torch.Tensor
    cell_offsets: torch.Tensor
    offset_distances: torch.Tensor
    neighbors: torch.Tensor
    batch_full: torch.Tensor
    atomic_numbers_full: torch.Tensor
    node_offset: int = 0


class _GivenGraphMixin:
    """Stand-in for fairchem's ``GraphModelMixin``: the graph is the one given with the data
    (fairchem's ``otf_graph=False`` path); edge vectors as its ``get_pbc_distances``."""

    def generate_graph(self, data, **_):
        row, col = data.edge_index
        vec = data.pos[row] - data.pos[col]
        cell = torch.repeat_interleave(data.cell, data.neighbors, dim=0)
        vec = vec + data.cell_offsets.float().view(-1, 1, 3).bmm(cell.float()).view(-1, 3)
        dist = vec.norm(dim=-1)
        return _GraphData(data.edge_index, dist, vec, data.cell_offsets, torch.zeros_like(vec), data.neighbors,
                          data.batch, data.atomic_numbers.long())


def _module(name: str, **attrs) -> types.ModuleType:
    m = types.ModuleType(name)
    m.__path__ = []  # a package, so submodules can be registered below it
    m.__dict__.update(attrs)
    sys.modules[name] = m
    return m


def import_reference(fairchem: Path):
    """fairchem's ``equiformer_v2`` package from a checkout, with stand-ins for what it imports."""
    src = fairchem / "src" / "fairchem" / "core" / "models"
    if not (src / "equiformer_v2" / "equiformer_v2_deprecated.py").exists():
        sys.exit(f"{fairchem}: no src/fairchem/core/models/equiformer_v2 (a fairchem 1.x checkout is needed)")
    torch.serialization.add_safe_globals([slice])  # e3nn 0.4.4's constants.pt holds slices
    registry = types.SimpleNamespace(register_model=lambda name: (lambda cls: cls))
    _module("fairchem")
    _module("fairchem.core")
    _module("fairchem.core.common")
    _module("fairchem.core.common.registry", registry=registry)
    _module("fairchem.core.common.gp_utils", initialized=lambda: False)
    _module("fairchem.core.common.utils", conditional_grad=lambda dec: (lambda f: f))
    _module("fairchem.core.models")
    _module("fairchem.core.models.base", GraphModelMixin=_GivenGraphMixin, GraphData=_GraphData)
    _module("fairchem.core.models.scn")
    spec = importlib.util.spec_from_file_location("fairchem.core.models.scn.smearing", src / "scn" / "smearing.py")
    smearing = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = smearing
    spec.loader.exec_module(smearing)
    pkg = src / "equiformer_v2"
    spec = importlib.util.spec_from_file_location("fairchem.core.models.equiformer_v2", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    eqv2 = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = eqv2
    spec.loader.exec_module(eqv2)
    return eqv2


def reference_model(eqv2, config: str, regress_forces: bool):
    c = CONFIGS[config]
    model = eqv2.EquiformerV2(
        use_pbc=True, regress_forces=regress_forces, otf_graph=False, max_neighbors=c.max_neighbors,
        max_radius=c.max_radius, max_num_elements=c.max_num_elements, num_layers=c.num_layers,
        sphere_channels=c.sphere_channels, attn_hidden_channels=c.attn_hidden_channels, num_heads=c.num_heads,
        attn_alpha_channels=c.attn_alpha_channels, attn_value_channels=c.attn_value_channels,
        ffn_hidden_channels=c.ffn_hidden_channels, norm_type="layer_norm_sh", lmax_list=[c.lmax], mmax_list=[c.mmax],
        grid_resolution=c.grid_resolution, num_sphere_samples=128, edge_channels=c.edge_channels,
        use_atom_edge_embedding=True, distance_function="gaussian", num_distance_basis=512, attn_activation="silu",
        use_s2_act_attn=False, ffn_activation="silu", use_gate_act=False, use_grid_mlp=True, alpha_drop=0.1,
        drop_path_rate=0.1, proj_drop=0.0, weight_init="uniform",
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(seeded_tensor(name, tuple(p.shape), SEED).float())
    return model.eval()


def reference_features(model, batch, edge_index, cell_offset, roll_u) -> np.ndarray:
    """Output of the reference's final layer norm, (N, (lmax+1)^2 C); ``torch.rand_like`` (its
    edge-frame draw) returns ``roll_u`` during the call."""
    data = types.SimpleNamespace(
        pos=batch.pos, natoms=batch.natoms, atomic_numbers=batch.numbers, batch=batch.batch, cell=batch.cell,
        pbc=batch.pbc, edge_index=edge_index, cell_offsets=cell_offset,
        neighbors=torch.bincount(batch.batch[edge_index[1]], minlength=batch.num_graphs))
    seen = {}
    hook = model.norm.register_forward_hook(lambda m, i, o: seen.setdefault("x", o.detach().clone()))
    rand_like = torch.rand_like
    torch.rand_like = lambda t, *a, **k: roll_u.clone()
    try:
        with torch.no_grad():
            model(data)
    finally:
        torch.rand_like = rand_like
        hook.remove()
    x = seen["x"]
    return x.reshape(x.shape[0], -1).numpy()


# ----------------------------------------------------------------------------- fixtures


def structures():
    """Two molecules and a periodic slab, rattled. The slab's rattle (0.1 A, seed 30: the best of
    60 seeds) leaves >= 0.01 A between every atom's 20th and 21st neighbours, so the graph is the
    same under any tie convention (or tolerance below 0.01 A) at the cap."""
    from ase.build import add_adsorbate, fcc111, molecule

    water = molecule("H2O")
    ethanol = molecule("CH3CH2OH")
    slab = fcc111("Pt", size=(2, 2, 2), vacuum=6.0, periodic=True)
    add_adsorbate(slab, "C", 1.9, "ontop")
    add_adsorbate(slab, "O", 3.05, "ontop")
    out = []
    for a, seed, amp in ((water, 3, 0.05), (ethanol, 4, 0.05), (slab, 30, 0.1)):
        a = a.copy()
        a.positions = a.positions + np.random.default_rng(seed).normal(scale=amp, size=a.positions.shape)
        out.append(a)
    return out


def check_no_ties(batch, cfg, tol: float = 0.01) -> None:
    """Every atom's 20th and 21st nearest candidate neighbours differ by more than ``tol`` A."""
    from atomsift.data.graphs import radius_graph
    from atomsift.models.equiformer_v2.io import structure_pbc

    g = radius_graph(batch.pos.double(), batch.cell.double(), structure_pbc(batch), batch.natoms, cfg.max_radius, 10**6)
    k = cfg.max_neighbors
    for t in range(batch.pos.shape[0]):
        d = torch.sort(g.distance[g.edge_index[1] == t]).values
        if d.numel() > k and float(d[k] - d[k - 1]) <= tol:
            sys.exit(f"atom {t}: the {k}th and {k + 1}th neighbours are {float(d[k - 1]):.5f} and {float(d[k]):.5f} A apart")


def fixture(eqv2, config: str) -> dict:
    from atomsift.data.batch import from_atoms
    from atomsift.models.equiformer_v2.io import eqv2_graph

    cfg = CONFIGS[config]
    batch = from_atoms(structures())
    check_no_ties(batch, cfg)
    g = eqv2_graph(batch, cfg)
    roll_u = torch.rand(g.num_edges, 3, generator=torch.Generator().manual_seed(ROLL_SEED), dtype=torch.float32)
    model = reference_model(eqv2, config, regress_forces=False)
    feats = reference_features(model, batch, g.edge_index, g.cell_offset, roll_u)
    return {
        "config": np.array(config), "seed": np.int64(SEED), "numbers": batch.numbers.numpy(),
        "positions": batch.pos.numpy(), "cells": batch.cell.numpy(), "pbc": batch.pbc.numpy(),
        "natoms": batch.natoms.numpy(), "edge_index": g.edge_index.numpy(), "cell_offset": g.cell_offset.numpy(),
        "roll_u": roll_u.numpy(), "features": feats.astype(np.float32),
    }


def key_listing(eqv2) -> list:
    model = reference_model(eqv2, "31m", regress_forces=True)
    return [["module.module." + k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in model.state_dict().items()]


# ----------------------------------------------------------------------------- comparison with ours


def compare(fix: dict) -> dict:
    """Our features for a fixture (same graph and edge-frame draws) against the reference's."""
    from atomsift.models.equiformer_v2.io import edge_vectors

    natoms = torch.as_tensor(fix["natoms"])
    batch_index = torch.repeat_interleave(torch.arange(natoms.numel()), natoms)
    pos, cell = torch.as_tensor(fix["positions"]), torch.as_tensor(fix["cells"])
    ei, off = torch.as_tensor(fix["edge_index"]), torch.as_tensor(fix["cell_offset"])
    model = EquiformerV2Backbone(CONFIGS[str(fix["config"])]).seed_parameters(int(fix["seed"])).eval()
    with torch.no_grad():
        x = model(torch.as_tensor(fix["numbers"]), ei, edge_vectors(pos, cell, batch_index, ei, off),
                  torch.as_tensor(fix["roll_u"]) - 0.5)
    ours = x.reshape(x.shape[0], -1).numpy().astype(np.float64)
    ref = fix["features"].astype(np.float64)
    per_atom = np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)
    return {"max_rel_per_atom": float(per_atom.max()), "max_abs": float(np.abs(ours - ref).max()),
            "max_abs_ref": float(np.abs(ref).max())}


def import_reference_graph(fairchem: Path):
    """fairchem's ``radius_graph_pbc`` (common/utils.py), with torch-geometric's scatter standing in
    for the compiled torch_scatter."""
    from torch_geometric.utils import scatter

    _module("torch_scatter", scatter=scatter)
    path = fairchem / "src" / "fairchem" / "core" / "common" / "utils.py"
    spec = importlib.util.spec_from_file_location("fairchem.core.common.utils_reference", path)
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    return utils


def compare_graph(utils, fix: dict) -> dict:
    """Our 12 A / nearest-20 graph against fairchem's ``radius_graph_pbc`` (exactly 20 per atom),
    structure by structure: the same (source, target, image) edges."""
    cfg = CONFIGS[str(fix["config"])]
    natoms = fix["natoms"]
    starts = np.concatenate([[0], np.cumsum(natoms)[:-1]])
    ours = {tuple(e) for e in np.concatenate([fix["edge_index"].T, fix["cell_offset"]], axis=1).tolist()}
    theirs = set()
    for b, (s, n) in enumerate(zip(starts, natoms)):
        data = types.SimpleNamespace(
            pos=torch.as_tensor(fix["positions"][s:s + n]), natoms=torch.as_tensor([n]),
            cell=torch.as_tensor(fix["cells"][b:b + 1]), pbc=torch.as_tensor(fix["pbc"][b:b + 1]))
        ei, off, _ = utils.radius_graph_pbc(data, cfg.max_radius, cfg.max_neighbors, enforce_max_neighbors_strictly=True)
        rows = np.concatenate([ei.numpy().T + s, off.numpy().round().astype(np.int64)], axis=1)
        theirs |= {tuple(e) for e in rows.tolist()}
    return {"edges_ours": len(ours), "edges_fairchem": len(theirs), "same_edges": ours == theirs}


def compare_tables(eqv2) -> dict:
    """Our S2 grids and J matrices against the reference's (largest absolute difference)."""
    from atomsift.models.equiformer_v2.io import expected_constant

    cfg = CONFIGS["31m"]
    ref = reference_model(eqv2, "31m", regress_forces=True)
    worst, count = 0.0, 0
    for k, v in ref.state_dict().items():
        e = expected_constant(k, cfg)
        if e is None:
            continue
        count += 1
        if tuple(e.shape) != tuple(v.shape):
            sys.exit(f"table {k}: shape {tuple(e.shape)} != reference {tuple(v.shape)}")
        worst = max(worst, float((e.double() - v.double()).abs().max()) if v.numel() else 0.0)
    jd = sys.modules["fairchem.core.models.equiformer_v2.wigner"]._Jd
    j_err = max(float(np.abs(so3.j_matrix(l) - jd[l].double().numpy()).max()) for l in range(cfg.lmax + 1))
    return {"tables_checked": count, "tables_max_abs_diff": worst, "J_max_abs_diff": j_err}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fairchem", required=True, type=Path, help="fairchem 1.x checkout")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "eqv2")
    ap.add_argument("--configs", nargs="+", default=["31m", "tiny"])
    ap.add_argument("--check", action="store_true", help="also compare our implementation with the reference")
    args = ap.parse_args()
    torch.set_num_threads(1)
    eqv2 = import_reference(args.fairchem)
    args.out.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.out / "eq2_31M_keys.json.gz", "wt") as fh:
        json.dump(key_listing(eqv2), fh)
    report = {}
    for config in args.configs:
        fix = fixture(eqv2, config)
        np.savez_compressed(args.out / f"eqv2_{config}.npz", **fix)
        print(f"{config}: {int(fix['natoms'].sum())} atoms, {fix['edge_index'].shape[1]} edges, "
              f"features {fix['features'].shape} -> {args.out / f'eqv2_{config}.npz'}")
        if args.check:
            report[config] = compare(fix)
            report[config]["graph"] = compare_graph(import_reference_graph(args.fairchem), fix)
    if args.check:
        report["tables"] = compare_tables(eqv2)
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
