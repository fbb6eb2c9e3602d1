"""EquiformerV2 graphs, the public OC20 checkpoints, and the ``eqv2:`` feature extractor.

Graph (PAPER.md §2.5; EquiformerV2's OC20 setting): radius 12 A with periodic images, nearest 20
neighbours per atom, built by the project's radius graph (:mod:`atomsift.data.graphs`), so ties at
the 20th neighbour are handled as in our GemNet-OC graphs. fairchem cuts at exactly 20 edges with
an arbitrary choice among equidistant neighbours (``enforce_max_neighbors_strictly``), so the two
can differ where the 20th and 21st neighbours are equidistant (symmetric crystals), nowhere else.

Checkpoint (``eq2_31M_ec4_allmd.pt``, PAPER.md §2.1): a fairchem training checkpoint whose
``state_dict`` holds the monolithic ``equiformer_v2`` model behind DistributedDataParallel
(``module.module.`` prefixes; JMP's copy renames them to ``backbone.``). Loaded strictly: every
backbone parameter must be present with its shape, ``energy_block.*`` / ``force_block.*`` (the
heads) are dropped, the deterministic tables the checkpoint also stores (S2 grids, coefficient
layouts, distance centres; duplicated in every block) are checked against ours and not loaded,
and anything else is an error that lists the keys. Raw weights (not the EMA), as the paper.
Files are read by the safe loader (``atomsift.safeload``): nothing in them can run code.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import Tensor

from atomsift.data.batch import cast
from atomsift.errors import InputError
from atomsift.models.equiformer_v2 import so3
from atomsift.models.equiformer_v2.model import CONFIGS, EquiformerV2Backbone, EquiformerV2Config

MAX_CHECKPOINT_BYTES = 4 << 30  # the 31M training checkpoint (with optimizer and EMA) is far below
HEAD_PREFIXES = ("energy_block.", "force_block.")
CONFIG_FIELDS = {  # fairchem model argument -> our field
    "num_layers": "num_layers", "sphere_channels": "sphere_channels", "attn_hidden_channels": "attn_hidden_channels",
    "num_heads": "num_heads", "attn_alpha_channels": "attn_alpha_channels", "attn_value_channels": "attn_value_channels",
    "ffn_hidden_channels": "ffn_hidden_channels", "grid_resolution": "grid_resolution", "edge_channels": "edge_channels",
    "max_radius": "max_radius", "max_neighbors": "max_neighbors", "max_num_elements": "max_num_elements",
}
# options of fairchem's model that this implementation fixes to the OC20 models' values
REQUIRED_OPTIONS = {"norm_type": "layer_norm_sh", "use_grid_mlp": True, "use_gate_act": False, "use_s2_act_attn": False,
                    "use_sep_s2_act": True, "use_attn_renorm": True, "use_m_share_rad": False,
                    "share_atom_edge_embedding": False, "use_atom_edge_embedding": True, "distance_function": "gaussian"}


# ----------------------------------------------------------------------------- graphs


def structure_pbc(batch) -> Tensor:
    """(B, 3) periodicity: the dataset family's setting (``graph_settings``) when it forces one,
    else each structure's own flags; never periodic without a usable cell."""
    from atomsift.data.graphs import graph_settings

    pbc = batch.pbc
    forced = graph_settings(batch.dataset).pbc
    if forced is not None:
        pbc = torch.full_like(pbc, bool(forced))
    ok = torch.linalg.det(batch.cell.double()).abs() > 1e-9
    return pbc & ok[:, None]


def eqv2_graph(batch, cfg: EquiformerV2Config, edge_dropout: float = 0.0, generator: torch.Generator | None = None):
    """The radius graph (source, target, image offsets) of ``batch`` at ``cfg.max_radius`` with the
    nearest ``cfg.max_neighbors`` per atom. With ``edge_dropout`` a fraction of the candidate edges
    (those within the cutoff, up to JMP's a2a cap of 1000/30 x k) is dropped before the cap, as
    JMP's upstream transforms do."""
    from atomsift.data.graphs import nearest_k_mask, radius_graph

    pbc = structure_pbc(batch)
    k = int(cfg.max_neighbors)
    if edge_dropout <= 0.0:
        return radius_graph(batch.pos, batch.cell, pbc, batch.natoms, cfg.max_radius, k)
    g = radius_graph(batch.pos, batch.cell, pbc, batch.natoms, cfg.max_radius, k * 1000 // 30)
    B = batch.natoms.numel()
    keep = torch.rand(g.num_edges, generator=generator, device=g.edge_index.device) >= edge_dropout
    g = g.select(keep, batch.batch, B)
    t = g.edge_index[1]
    cap = torch.full_like(t, k)
    return g.select(nearest_k_mask(t, g.distance, cap, batch.pos.shape[0]), batch.batch, B)


def edge_vectors(pos: Tensor, cell: Tensor, batch_index: Tensor, edge_index: Tensor, cell_offset: Tensor) -> Tensor:
    """x_source + offset @ cell - x_target (E, 3): fairchem's ``distance_vec`` (source minus target;
    our GemNet-OC edges point the other way)."""
    s, t = edge_index
    vec = pos[s] - pos[t]
    if cell_offset.numel() and bool((cell_offset != 0).any()):
        vec = vec + cell_offset.to(pos.dtype).view(-1, 1, 3).bmm(cell[batch_index[s]].to(pos.dtype)).view(-1, 3)
    return vec


# ----------------------------------------------------------------------------- extractor


class EquiformerV2Extractor:
    """Per-atom EquiformerV2 features (the output of the final layer norm, flattened to
    (lmax+1)^2 x C = 3200 numbers per atom for the 31M model), without gradients. Structures with
    an element the model has no embedding for (Z >= 90) are skipped, as the paper's extraction
    (``keep``); calling it on such a structure is an error."""

    def __init__(self, model: EquiformerV2Backbone, name: str, sha256: str):
        self.model = model.eval()
        self.name = name
        self.sha256 = sha256
        self.dim = model.feature_dim
        self.skipped = 0  # structures ``keep`` has turned away so far

    def to(self, device) -> "EquiformerV2Extractor":
        self.model.to(device)
        return self

    def keep(self, batch) -> Tensor:
        """(B,) True for the structures the extractor can describe (every Z < max_num_elements)."""
        too_heavy = (batch.numbers >= self.model.config.max_num_elements).long()
        bad = torch.zeros(batch.num_graphs, dtype=torch.long, device=too_heavy.device).index_add_(0, batch.batch, too_heavy)
        self.skipped += int((bad > 0).sum())
        return bad == 0

    @torch.no_grad()
    def __call__(self, batch, edge_dropout: float = 0.0, generator=None, roll: Tensor | None = None) -> Tensor:
        if not bool(self.keep(batch).all()):
            z = int(batch.numbers.max())
            raise InputError(f"atomic number {z} >= {self.model.config.max_num_elements}: EquiformerV2 has no embedding "
                             "for it (the paper skips such structures)", field="numbers")
        dtype = next(self.model.parameters()).dtype
        device = next(self.model.parameters()).device
        b = cast(batch.to(device), dtype)
        g = eqv2_graph(b, self.model.config, edge_dropout, generator)
        vec = edge_vectors(b.pos, b.cell, b.batch, g.edge_index, g.cell_offset)
        x = self.model(b.numbers, g.edge_index, vec, roll)
        return x.reshape(x.shape[0], -1)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_eqv2_extractor(spec: str) -> EquiformerV2Extractor:
    """``spec`` after ``eqv2:``: a checkpoint path, or ``random-<config>-<seed>`` (weights by
    :func:`~atomsift.models.equiformer_v2.model.seeded_tensor`; configs: 31m, tiny)."""
    m = re.fullmatch(r"random-([a-z0-9]+)-(\d+)", spec)
    if m:
        if m.group(1) not in CONFIGS:
            raise InputError(f"unknown EquiformerV2 config '{m.group(1)}' (known: {', '.join(CONFIGS)})", field="extractor")
        model = EquiformerV2Backbone(CONFIGS[m.group(1)]).seed_parameters(int(m.group(2)))
        name = f"eqv2-{spec}"
        return EquiformerV2Extractor(model, name, hashlib.sha256(name.encode()).hexdigest())
    path = Path(spec)
    model, _ = load_eqv2_checkpoint(path)
    return EquiformerV2Extractor(model, path.stem, _sha256_file(path))


# ----------------------------------------------------------------------------- checkpoints


def read_checkpoint(path: Path) -> object:
    """The checkpoint's tensors and plain data, through the project's safe loader
    (``atomsift.safeload``): anything else is refused, never unpickled."""
    from atomsift import safeload

    if not path.is_file():
        raise InputError("checkpoint does not exist", path=path)
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise InputError(f"{size} bytes is more than an EquiformerV2 checkpoint can be ({MAX_CHECKPOINT_BYTES})", path=path)
    return safeload.load_torch(path)

def _plain(obj) -> dict:
    return obj if isinstance(obj, dict) else {}


def checkpoint_config(obj: dict, path: Path) -> EquiformerV2Config:
    """The model configuration of a fairchem checkpoint (``config["model"]`` as a dict, or the older
    ``config["model_attributes"]``); the 31M OC20 configuration when the file records none.
    Options this implementation does not have are an error."""
    cfg = _plain(obj.get("config"))
    attrs = cfg.get("model_attributes") if isinstance(cfg.get("model_attributes"), dict) else cfg.get("model")
    attrs = _plain(attrs)
    base = CONFIGS["31m"].to_dict()
    if not attrs:
        return EquiformerV2Config(**base)
    wrong = [f"{k}={attrs[k]!r} (need {v!r})" for k, v in REQUIRED_OPTIONS.items() if k in attrs and attrs[k] != v]
    lmax, mmax = attrs.get("lmax_list", [base["lmax"]]), attrs.get("mmax_list", [base["mmax"]])
    if not (isinstance(lmax, list) and isinstance(mmax, list) and len(lmax) == 1 and len(mmax) == 1):
        wrong.append(f"lmax_list={lmax!r} mmax_list={mmax!r} (one resolution only)")
    if wrong:
        raise InputError("EquiformerV2 options not implemented here: " + ", ".join(wrong), path=path, field="config")
    vals = {ours: attrs[theirs] for theirs, ours in CONFIG_FIELDS.items() if theirs in attrs and attrs[theirs] is not None}
    try:
        return EquiformerV2Config(**{**base, **vals, "lmax": int(lmax[0]), "mmax": int(mmax[0])})
    except TypeError as exc:
        raise InputError(f"bad model config ({exc})", path=path, field="config") from None


def checkpoint_state_dict(obj) -> dict:
    """The tensors of a checkpoint: its ``state_dict``, or the object itself when it is one."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return obj["state_dict"]
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    return {}


def strip_prefix(key: str) -> str:
    """Our name for a checkpoint key: without the DataParallel / DDP ``module.`` prefixes or JMP's
    ``backbone.`` rename."""
    while key.startswith("module."):
        key = key[len("module."):]
    if key.startswith("backbone."):
        key = key[len("backbone."):]
    return key


def load_eqv2_checkpoint(path) -> tuple[EquiformerV2Backbone, dict]:
    """(model in eval mode, meta) from a fairchem EquiformerV2 checkpoint (see module doc)."""
    path = Path(path)
    obj = read_checkpoint(path)
    sd = checkpoint_state_dict(obj)
    if not sd:
        raise InputError("no state_dict of tensors in the checkpoint", path=path, field="state_dict")
    cfg = checkpoint_config(obj if isinstance(obj, dict) else {}, path)
    model = EquiformerV2Backbone(cfg)
    load_backbone_state(model, sd, path)
    meta = {"source": "fairchem", "config": cfg.to_dict()}
    for k in ("epoch", "step"):
        if isinstance(obj.get(k), int):
            meta[k] = obj[k]
    return model.eval(), meta


def load_backbone_state(model: EquiformerV2Backbone, sd: dict, path: Path | str = "state_dict") -> None:
    """Strict load of a checkpoint-layout state dict into ``model`` (see module doc)."""
    own = dict(model.named_parameters())
    mapped: dict[str, Tensor] = {}
    unmatched, bad_constants = [], []
    for key, value in sd.items():
        name = strip_prefix(key)
        if name.startswith(HEAD_PREFIXES):
            continue
        if name in own:
            mapped[name] = value
            continue
        expected = expected_constant(name, model.config)
        if expected is None:
            unmatched.append(key)
        elif not _same_constant(value, expected):
            bad_constants.append(key)
    missing = [k for k in own if k not in mapped]
    shapes = [f"{k} {tuple(mapped[k].shape)} != {tuple(own[k].shape)}" for k in own if k in mapped and tuple(mapped[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unmatched), ("shape mismatch", shapes),
                         ("constant tables differ from EquiformerV2's", bad_constants)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            parts.append(f"{label}: {shown}")
    if parts:
        raise InputError("checkpoint does not match EquiformerV2; " + "; ".join(parts), path=path, field="state_dict")
    with torch.no_grad():
        for k, p in own.items():
            p.copy_(mapped[k].to(p.dtype))


# ----------------------------------------------------------------------------- the stored constant tables


def expected_constant(name: str, cfg: EquiformerV2Config) -> Tensor | None:
    """The value fairchem stores under buffer ``name`` (a deterministic table), or None if
    ``name`` is not one. Tables are stored for every (l, m) grid and in every block."""
    lmax, mmax, res = cfg.lmax, cfg.mmax, cfg.grid_resolution
    if name == "distance_expansion.offset":
        return torch.linspace(0.0, cfg.max_radius, cfg.num_gaussians, dtype=torch.float32)
    m = re.search(r"(?:^|\.)SO3_grid\.(\d+)\.(\d+)\.(to_grid_mat|from_grid_mat)$", name)
    if m:
        l, mm = int(m.group(1)), int(m.group(2))
        if l > lmax or mm > lmax:
            return None
        to_grid, from_grid = so3.grid_matrices(l, min(mm, l), res)
        return torch.tensor(to_grid if m.group(3) == "to_grid_mat" else from_grid, dtype=torch.float32)
    m = re.search(r"(?:^|\.)SO3_grid\.(\d+)\.(\d+)\.mapping\.(\w+)$", name)
    if m:
        l = int(m.group(1))
        return _mapping_buffer(l, l, m.group(3)) if l <= lmax and int(m.group(2)) <= lmax else None
    m = re.search(r"(?:^|\.)SO3_rotation\.0\.mapping\.(\w+)$", name)
    if m:
        return _mapping_buffer(lmax, lmax, m.group(1))
    m = re.search(r"(?:^|\.)mappingReduced\.(\w+)$", name)
    if m:
        return _mapping_buffer(lmax, mmax, m.group(1))
    if name.endswith(".expand_index"):
        return torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)])
    if name.endswith(".balance_degree_weight"):
        w = torch.zeros((lmax + 1) ** 2 - 1, 1)
        for l in range(1, lmax + 1):
            w[l * l - 1 : (l + 1) ** 2 - 1] = 1.0 / (2 * l + 1)
        return w / lmax
    return None


def _mapping_buffer(lmax: int, mmax: int, field: str) -> Tensor | None:
    """fairchem's ``CoefficientMappingModule`` buffers for one resolution (lmax, mmax)."""
    lm = so3.lm_list(lmax, mmax)
    if field == "l_harmonic":
        return torch.tensor([l for l, _ in lm])
    if field == "m_complex":
        return torch.tensor([m for _, m in lm])
    if field == "m_harmonic":
        return torch.tensor([abs(m) for _, m in lm])
    if field == "res_size":
        return torch.tensor([len(lm)])
    if field == "m_size":
        return torch.tensor(so3.m_sizes(lmax, mmax))
    if field == "to_m":
        n = len(lm)
        out = torch.zeros(n, n)
        out[torch.arange(n), torch.tensor(so3.m_primary_order(lmax, mmax))] = 1.0
        return out
    return None


def _same_constant(value, expected: Tensor) -> bool:
    if not isinstance(value, Tensor) or tuple(value.shape) != tuple(expected.shape):
        return False
    if not value.is_floating_point():
        return bool(torch.equal(value.long(), expected.long()))
    # the published tables were computed in float32 by e3nn: agree to float32 rounding
    return bool(torch.allclose(value.double(), expected.double(), rtol=1e-4, atol=1e-5))


def seeded_state_dict(names_shapes, cfg: EquiformerV2Config, seed: int) -> dict:
    """A checkpoint-layout state dict for the keys and shapes ``names_shapes`` (as the public file
    has them): parameters from :func:`seeded_tensor`, tables from :func:`expected_constant`,
    heads and unknown keys seeded like parameters. For tests of the loader without the file."""
    from atomsift.models.equiformer_v2.model import seeded_tensor

    out = {}
    for key, shape in names_shapes:
        name = strip_prefix(key)
        const = None if name.startswith(HEAD_PREFIXES) else expected_constant(name, cfg)
        out[key] = const if const is not None else seeded_tensor(name, tuple(shape), seed).float()
    return out


__all__ = ["EquiformerV2Extractor", "eqv2_graph", "edge_vectors", "load_eqv2_checkpoint", "load_eqv2_extractor",
           "load_backbone_state", "expected_constant", "strip_prefix", "seeded_state_dict"]
