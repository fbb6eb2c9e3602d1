"""Reference outputs of JMP's own GemNet-OC for atomsift's exactness tests (issue 13).

Runs the backbone and pretraining heads of a user-given checkout of facebookresearch/JMP
(https://github.com/facebookresearch/JMP, tested at 937b148) on CPU, with seeded weights, on small
molecules, a periodic slab and an OC20-like adsorbate system, and writes the compact references
that ``tests/test_jmp_reference.py`` compares atomsift against:

    python tools/jmp_reference.py --jmp /path/to/JMP --out tests/data/jmp_reference.npz

JMP needs compiled torch_scatter / torch_sparse and, for molecules, torch_cluster (through
torch_geometric's ``radius_graph``). Where they are not installed this script provides pure-torch
stand-ins for exactly the calls JMP's GemNet-OC makes (sums over segments, a COO ``SparseTensor``
with row selection, an all-pairs radius graph); JMP's own code does everything else: the graphs
(``radius_graph_pbc``, nearest-k ``subselect_graph``, ``tag_mask``, ``symmetrize_edges``), the
interaction indices, the bases, the blocks and the heads. Nothing of JMP is copied into atomsift.

Weights come from a rule both sides apply by JMP state-dict key (:func:`seeded_tensor`), so no
weights are stored: the test rebuilds a checkpoint in JMP's exact ``jmp-s.pt`` layout from the key
list and shapes kept in the fixture and loads it through atomsift's JMP loader. The EMA case draws
its EMA tensors with another seed and goes through JMP's ``retreive_ft_state_dict_from_loaded_ckpt``
and ``load_state_dict``, as JMP's finetuning does.

Extra python packages JMP imports that atomsift does not need (varname, cloudpickle, einops,
...): install them into a scratch folder and put it on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
import zlib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- seeded weights

TASKS = ("oc20", "oc22", "ani1x", "transition1x")


def seeded_tensor(key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The deterministic float64 value of JMP state-dict entry ``key`` (same rule in the test).

    Weights ~ N(0, 1/fan_in) with fan_in the product of all but the output axis (torch Linear
    (out, in); BasisEmbedding (num_radial, num_spherical, emb) -> num_radial * num_spherical);
    the atom embedding ~ N(0, 1); biases ~ N(0, 0.1^2); scale factors uniform in [0.5, 1.5)."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{key}".encode()))
    if key.endswith("scale_factor"):
        return 0.5 + torch.rand((), generator=g, dtype=torch.float64)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if key.endswith(".bias"):
        return 0.1 * x
    if key == "embedding.atom_embedding.weight":
        return x
    if len(shape) == 3:  # BasisEmbedding (num_radial, num_spherical, emb)
        fan_in = shape[0] * shape[1]
    elif key.endswith("mlp_rbf_aint.weight"):  # BasisEmbedding without angles: (emb, num_radial)
        fan_in = shape[1]
    else:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return x / np.sqrt(fan_in)


def is_alias_or_buffer(key: str) -> bool:
    """Entries JMP's EMA list skips (JMP.md §2): radial-basis buffers, the seq_energy_pre alias,
    metric state, scale factors."""
    return key.endswith(("rbf.offset", "rbf.temps", "scale_factor")) or ".seq_energy_pre." in key or key.startswith("task_steps")


# ----------------------------------------------------------------------------- stand-ins


def _scatter(src, index, dim=0, out=None, dim_size=None, reduce="sum"):
    if dim not in (0, -src.dim()):
        raise NotImplementedError("stand-in scatter supports dim 0 only")
    if dim_size is None:
        dim_size = int(index.max()) + 1 if index.numel() else 0
    shape = (dim_size,) + tuple(src.shape[1:])
    if reduce in ("sum", "add"):
        return src.new_zeros(shape).index_add(0, index, src)
    if reduce == "mean":
        s = src.new_zeros(shape).index_add(0, index, src)
        c = torch.bincount(index, minlength=dim_size).clamp_min(1).to(src.dtype)
        return s / c.view(-1, *([1] * (src.dim() - 1)))
    raise NotImplementedError(f"stand-in scatter: reduce={reduce}")


def _segment_coo(src, index, out=None, dim_size=None, reduce="sum"):
    return _scatter(src, index, 0, dim_size=dim_size, reduce=reduce)


def _segment_csr(src, indptr, out=None, reduce="sum"):
    counts = indptr[1:] - indptr[:-1]
    index = torch.repeat_interleave(torch.arange(counts.numel(), device=src.device), counts)
    return _scatter(src[: index.numel()], index, 0, dim_size=counts.numel(), reduce=reduce)


class _Storage:
    def __init__(self, row, col, value):
        self._row, self._col, self._value = row, col, value

    def row(self):
        return self._row

    def col(self):
        return self._col

    def value(self):
        return self._value


class _SparseTensor:
    """COO matrix sorted by (row, col), stably (duplicate entries keep their order, as periodic
    images of one edge need), with row selection ``A[idx]`` as torch_sparse's."""

    def __init__(self, row, col, value=None, sparse_sizes=None, is_sorted=False):
        n_rows, n_cols = (int(s) for s in sparse_sizes)
        perm = torch.argsort(row * n_cols + col, stable=True)
        self._sizes = (n_rows, n_cols)
        self.storage = _Storage(row[perm], col[perm], None if value is None else value[perm])

    def sparse_sizes(self):
        return self._sizes

    def coo(self):
        return self.storage.row(), self.storage.col(), self.storage.value()

    def set_value_(self, value, layout=None):
        self.storage._value = value
        return self

    def __getitem__(self, idx):
        row = self.storage.row()
        counts = torch.bincount(row, minlength=self._sizes[0])
        start = torch.cumsum(counts, 0) - counts
        c = counts[idx]
        new_row = torch.repeat_interleave(torch.arange(idx.numel(), device=idx.device), c)
        inner = torch.arange(int(c.sum()), device=idx.device) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
        ent = start[idx][new_row] + inner
        out = _SparseTensor.__new__(_SparseTensor)
        out._sizes = (int(idx.numel()), self._sizes[1])
        v = self.storage.value()
        out.storage = _Storage(new_row, self.storage.col()[ent], None if v is None else v[ent])
        return out


def _radius_graph(pos, r, batch=None, max_num_neighbors=32, **_):
    """All pairs s -> t (s != t) of one structure within r, sorted by target then source (what
    torch_cluster returns when no atom has more than ``max_num_neighbors`` neighbours, which is
    asserted: beyond that torch_cluster keeps an arbitrary subset)."""
    if batch is None:
        batch = torch.zeros(pos.shape[0], dtype=torch.long)
    d = torch.cdist(pos.double(), pos.double())
    ok = (d <= r) & (batch[:, None] == batch[None, :])
    ok.fill_diagonal_(False)
    t, s = torch.nonzero(ok, as_tuple=True)  # row-major: sorted by t, then s
    if t.numel() and int(torch.bincount(t).max()) > max_num_neighbors:
        raise RuntimeError("more neighbours than max_num_neighbors: torch_cluster would truncate arbitrarily")
    return torch.stack([s, t])


def install_standins() -> list[str]:
    """Register the stand-ins for the compiled packages that are not installed."""
    used = []
    if not hasattr(np, "math"):  # JMP's basis_utils calls np.math.factorial, gone in numpy 2
        import math

        np.math = math
        used.append("numpy.math")
    if importlib.util.find_spec("torch_scatter") is None:
        m = types.ModuleType("torch_scatter")
        m.scatter, m.segment_coo, m.segment_csr = _scatter, _segment_coo, _segment_csr
        sys.modules["torch_scatter"] = m
        used.append("torch_scatter")
    if importlib.util.find_spec("torch_sparse") is None:
        m = types.ModuleType("torch_sparse")
        m.SparseTensor = _SparseTensor
        sys.modules["torch_sparse"] = m
        used.append("torch_sparse")
    return used


# ----------------------------------------------------------------------------- structures


def _rattled(atoms, std: float, seed: int):
    a = atoms.copy()
    a.rattle(stdev=std, seed=seed)
    return a


def _qm9_molecule(natoms: int):
    from ase import Atoms

    from atomsift.data.readers.qm9 import qm9pack_arrays, qm9pack_dir

    _, numbers, pos, counts, _ = qm9pack_arrays(qm9pack_dir())
    offsets = np.concatenate([[0], np.cumsum(counts)])
    i = int(np.nonzero(counts == natoms)[0][0])
    return Atoms(numbers=numbers[offsets[i] : offsets[i + 1]], positions=pos[offsets[i] : offsets[i + 1]])


def structures() -> list[dict]:
    """name, ASE atoms, graph settings (cutoff, k, pbc) as JMP's tasks use them (JMP.md §1.3).
    Periodic cases are rattled until no distance tie straddles a nearest-k cap (JMP breaks ties
    arbitrarily there; :func:`no_ties_at_caps` checks it)."""
    from ase.build import add_adsorbate, fcc111, molecule

    out = [
        {"name": "CH4", "atoms": _rattled(molecule("CH4"), 0.02, 1), "cutoff": 8.0, "k": 30, "pbc": False},
        {"name": "ethanol", "atoms": _rattled(molecule("CH3CH2OH"), 0.02, 2), "cutoff": 8.0, "k": 30, "pbc": False},
        {"name": "benzene", "atoms": _rattled(molecule("C6H6"), 0.02, 3), "cutoff": 8.0, "k": 30, "pbc": False},
        {"name": "butane_rmd17", "atoms": _rattled(molecule("trans-butane"), 0.02, 4), "cutoff": 7.0, "k": 100, "pbc": False},
        {"name": "qm9_25", "atoms": _rattled(_qm9_molecule(25), 0.01, 5), "cutoff": 8.0, "k": 30, "pbc": False},
    ]
    slab = fcc111("Cu", size=(3, 3, 3), vacuum=7.0, orthogonal=False)
    slab.set_tags(np.where(slab.get_tags() == 1, 1, 0))  # ASE: 1 = top layer; OC20: 1 surface, 0 below
    out.append({"name": "cu_slab", "atoms": slab, "cutoff": 12.0, "k": 30, "pbc": True, "rattle": 0.05})
    ads = fcc111("Pt", size=(3, 2, 3), vacuum=7.0, orthogonal=True)
    ads.set_tags(np.where(ads.get_tags() == 1, 1, 0))
    add_adsorbate(ads, "O", 1.2, "fcc")
    add_adsorbate(ads, "H", 2.1, "ontop")
    ads.set_tags([*ads.get_tags()[:-2], 2, 2])
    out.append({"name": "pt_oh_adsorbate", "atoms": ads, "cutoff": 12.0, "k": 30, "pbc": True, "rattle": 0.05})
    for s in out:
        a = s["atoms"]
        if not s["pbc"]:
            a.set_tags(np.full(len(a), 2))  # JMP: every atom of a molecule is tag 2
        if "rattle" in s:
            for seed in range(100):
                trial = _rattled(a, s["rattle"], 100 + seed)
                if no_ties_at_caps(trial, s["cutoff"], s["k"]):
                    s["atoms"] = trial
                    break
            else:
                raise RuntimeError(f"{s['name']}: no tie-free rattle found")
        elif not no_ties_at_caps(a, s["cutoff"], s["k"]):
            raise RuntimeError(f"{s['name']}: a distance tie straddles a nearest-k cap")
    return out


def no_ties_at_caps(atoms, cutoff: float, k: int, gap: float = 1e-4) -> bool:
    """True when, for every atom and every cap JMP applies (k, k*20/30, k*8/30, k*1000/30), the
    k-th and (k+1)-th neighbour distances (periodic images included) differ by more than ``gap``."""
    from ase.neighborlist import neighbor_list

    i, d = neighbor_list("id", atoms, cutoff)
    for kk in (k, int(k * 20 / 30), int(k * 8 / 30), int(k * 1000 / 30)):
        for a in range(len(atoms)):
            da = np.sort(d[i == a])
            if len(da) > kk and da[kk] - da[kk - 1] <= gap:
                return False
    return True


# ----------------------------------------------------------------------------- JMP model


def jmp_backbone_config(cfg: dict):
    from jmp.models.gemnet.config import BackboneConfig

    base = BackboneConfig.base()
    values = {**dict(base), **cfg, "dropout": None, "edge_dropout": None, "scale_file": None}
    return BackboneConfig(**values)


class JMPModel(torch.nn.Module):
    """embedding + backbone + output, with JMP's state-dict key layout (``PretrainModel``)."""

    def __init__(self, cfg: dict):
        super().__init__()
        from jmp.lightning.model.base import LightningModuleBase
        from jmp.models.gemnet.backbone import GemNetOCBackbone
        from jmp.models.gemnet.layers.base_layers import ScaledSiLU

        bb = jmp_backbone_config(cfg)
        self.embedding = torch.nn.Module()
        self.embedding.atom_embedding = torch.nn.Embedding(bb.num_elements, bb.emb_size_atom)
        self.backbone = GemNetOCBackbone(bb, **dict(bb))
        self.output = torch.nn.Module()
        mlp = LightningModuleBase.mlp
        self.output.out_energy = torch.nn.ModuleList([mlp(None, [bb.emb_size_atom] * 5 + [1], activation=ScaledSiLU) for _ in TASKS])
        self.output.out_forces = torch.nn.ModuleList([mlp(None, [bb.emb_size_edge] * 5 + [1], activation=ScaledSiLU) for _ in TASKS])

    def forward(self, data):
        from jmp.tasks.pretrain.module import Output

        h = self.embedding.atom_embedding(data.atomic_numbers - 1)
        out = self.backbone(data, h=h)
        head = types.SimpleNamespace(
            out_energy=self.output.out_energy,
            out_forces=self.output.out_forces,
            config=types.SimpleNamespace(tasks=[types.SimpleNamespace(node_energy_reduction="sum") for _ in TASKS]),
        )
        E, F = Output.forward(head, data, out)  # JMP's own head code (pack of per-task outputs)
        return out, E, F


def seeded_state_dict(model: torch.nn.Module, seed: int, dtype: torch.dtype) -> dict:
    sd = model.state_dict()
    out = {}
    for k, v in sd.items():
        if k.endswith(("rbf.offset", "rbf.temps")):
            out[k] = v.clone()
        elif ".seq_energy_pre." in k:
            out[k] = None  # filled from its alias below
        else:
            out[k] = seeded_tensor(k, tuple(v.shape), seed).to(dtype)
    for k in out:
        if out[k] is None:
            out[k] = out[k.replace(".seq_energy_pre.", ".layers.")]
    return out


def jmp_data(s: dict, dtype: torch.dtype):
    """A one-structure torch_geometric Batch with JMP's graphs (``generate_graphs`` of JMP's
    finetuning / pretraining tasks: a2a first, then main / aeaint / qint by ``subselect_graph``,
    qint filtered by tag)."""
    from functools import partial

    from torch_geometric.data import Batch, Data

    import jmp.utils.goc_graph as gg

    a = s["atoms"]
    n = len(a)
    cell = np.asarray(a.cell.array if s["pbc"] else 1000.0 * np.eye(3))
    d = Data(
        pos=torch.tensor(a.positions, dtype=dtype),
        atomic_numbers=torch.tensor(a.numbers, dtype=torch.long),
        natoms=torch.tensor([n]),
        cell=torch.tensor(cell, dtype=dtype)[None],
        tags=torch.tensor(a.get_tags(), dtype=torch.long),
        fixed=torch.zeros(n, dtype=torch.bool),
    )
    data = Batch.from_data_list([d])
    data.natoms = torch.tensor([n])
    cutoffs = gg.Cutoffs.from_constant(s["cutoff"])
    maxn = gg.MaxNeighbors.from_goc_base_proportions(s["k"])
    gg.radius_graph = _radius_graph  # torch_cluster stand-in (no truncation: asserted)
    if s["pbc"] and dtype != torch.float32:
        # JMP's radius_graph_pbc and get_pbc_distances work in float32 only (lattice offsets are
        # cast with .float()): take JMP's graph (edges, image offsets) from a float32 copy and
        # recompute its geometry in float64 by JMP's formula (vector = -(x_s + offset.cell - x_t) / d)
        d32 = data.clone()
        d32.pos, d32.cell = data.pos.float(), data.cell.float()
        aint = gg.generate_graph(d32, cutoff=cutoffs.aint, max_neighbors=maxn.aint, pbc=True)
        s_, t_ = aint["edge_index"]
        off = aint["cell_offset"].to(dtype)
        vec = data.pos[s_] - data.pos[t_] + off @ data.cell[0]
        aint["distance"] = vec.norm(dim=-1)
        aint["vector"] = -vec / aint["distance"][:, None]
        aint["cell_offset"] = off
    else:
        aint = gg.generate_graph(data, cutoff=cutoffs.aint, max_neighbors=maxn.aint, pbc=s["pbc"])
    sub = partial(gg.subselect_graph, data, aint, cutoff_orig=cutoffs.aint, max_neighbors_orig=maxn.aint)
    graphs = {
        "main": sub(cutoffs.main, maxn.main),
        "a2a": aint,
        "a2ee2a": sub(cutoffs.aeaint, maxn.aeaint),
        "qint": gg.tag_mask(data, sub(cutoffs.qint, maxn.qint), tags=[1, 2]),
    }
    for name, g in graphs.items():
        for key, value in g.items():
            setattr(data, f"{name}_{key}", value)
    return data, {k: {"edge_index": g["edge_index"].numpy(), "cell_offset": g["cell_offset"].numpy().astype(np.int64)} for k, g in graphs.items()}


def run_case(cfg: dict, cases: list[dict], dtype: torch.dtype, seed: int = 0, ema_seed: int | None = None):
    """Outputs of JMP's model with seeded weights (raw, or EMA through JMP's finetune loader)."""
    from jmp.utils.finetune_state_dict import retreive_ft_state_dict_from_loaded_ckpt

    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # JMP allocates some buffers (e.g. neighbour sorting) in the default dtype
    try:
        model = JMPModel(cfg).to(dtype)
        sd = seeded_state_dict(model, seed, dtype)
        if ema_seed is not None:
            ema_keys = [k for k in sd if not is_alias_or_buffer(k)]
            ema = tuple(seeded_tensor(k, tuple(sd[k].shape), ema_seed).to(dtype) for k in ema_keys)
            sd = retreive_ft_state_dict_from_loaded_ckpt({"state_dict": sd, "optimizer_states": [{"ema": ema}]}, load_emas=True)
        model.load_state_dict(sd, strict=True)
        model.eval()
        results = []
        with torch.no_grad():
            for s in cases:
                data, graphs = jmp_data(s, dtype)
                out, E, F = model(data)
                results.append({"features": out["energy"].double().numpy(), "energy": E.double().numpy(), "forces": F.double().numpy(), "graphs": graphs})
        keys = {k: list(v.shape) for k, v in model.state_dict().items()}
        return results, keys
    finally:
        torch.set_default_dtype(prev)


# ----------------------------------------------------------------------------- configs

# a reduced-width config with JMP's structure (every path, L = 7, 128 radial functions), JMP-S,
# JMP-L (from JMP's own BackboneConfig.base() / .large()), and atomsift's tiny
REDUCED = dict(num_blocks=2, emb_size_atom=32, emb_size_edge=48, emb_size_trip_in=8, emb_size_trip_out=12, emb_size_quad_in=4,
               emb_size_quad_out=6, emb_size_aint_in=8, emb_size_aint_out=10, emb_size_rbf=5, emb_size_cbf=6, emb_size_sbf=7,
               num_before_skip=1, num_after_skip=2, num_concat=2, num_atom=2, num_output_afteratom=1, num_atom_emb_layers=1,
               num_global_out_layers=1)


def configs() -> dict[str, dict]:
    from jmp.models.gemnet.config import BackboneConfig

    from atomsift.models.gemnet_oc import SIZES

    keys = set(SIZES["small"].to_dict()) - {"direct_forces", "envelope_exponent"}
    tiny = {k: v for k, v in SIZES["tiny"].to_dict().items() if k in keys}
    large = {k: v for k, v in dict(BackboneConfig.large()).items() if k in keys}
    return {"reduced": REDUCED, "small": {}, "large": large, "tiny": tiny}


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jmp", required=True, type=Path, help="a checkout of facebookresearch/JMP (its src/ is imported)")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "jmp_reference.npz")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(args.jmp / "src"))
    used = install_standins()
    cases = structures()
    cfgs = configs()
    plan = [  # (case name, config, dtype, ema seed, structures)
        ("reduced64", "reduced", torch.float64, None, cases),
        ("reduced32", "reduced", torch.float32, None, cases),
        ("tiny64", "tiny", torch.float64, None, cases),
        ("small64", "small", torch.float64, None, cases),
        ("small32", "small", torch.float32, None, cases),
        ("small_ema64", "small", torch.float64, 1, cases[:3] + cases[-1:]),
        ("large64", "large", torch.float64, None, cases[2:3] + cases[-1:]),
        ("large32", "large", torch.float32, None, cases[2:3]),
    ]
    arrays: dict[str, np.ndarray] = {}
    meta = {"jmp": str(args.jmp), "standins": used, "structures": [], "cases": {}, "configs": cfgs, "tasks": list(TASKS)}
    for s in cases:
        a = s["atoms"]
        name = s["name"]
        meta["structures"].append({"name": name, "cutoff": s["cutoff"], "k": s["k"], "pbc": s["pbc"]})
        arrays[f"{name}/numbers"] = a.numbers.astype(np.int64)
        arrays[f"{name}/pos"] = a.positions.astype(np.float64)
        arrays[f"{name}/cell"] = np.asarray(a.cell.array if s["pbc"] else np.zeros((3, 3)), dtype=np.float64)
        arrays[f"{name}/tags"] = a.get_tags().astype(np.int64)
    for case, cfg_name, dtype, ema_seed, sub in plan:
        print(f"{case}: {cfg_name} {dtype} on {len(sub)} structures", file=sys.stderr)
        results, keys = run_case(cfgs[cfg_name], sub, dtype, seed=0, ema_seed=ema_seed)
        meta["cases"][case] = {"config": cfg_name, "dtype": str(dtype).removeprefix("torch."), "ema_seed": ema_seed, "seed": 0,
                               "structures": [s["name"] for s in sub]}
        meta.setdefault("keys", {})[cfg_name] = keys
        for s, r in zip(sub, results):
            p = f"{case}/{s['name']}"
            arrays[f"{p}/features"] = r["features"]
            arrays[f"{p}/energy"] = r["energy"]
            arrays[f"{p}/forces"] = r["forces"]
            if case == "reduced64":
                for g, ei in r["graphs"].items():
                    arrays[f"graphs/{s['name']}/{g}/edge_index"] = ei["edge_index"]
                    arrays[f"graphs/{s['name']}/{g}/cell_offset"] = ei["cell_offset"]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    # features stored in float32 where the case ran in float32 (no information lost); float64 cases in full
    for k in list(arrays):
        if "32/" in k and arrays[k].dtype == np.float64:
            arrays[k] = arrays[k].astype(np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
