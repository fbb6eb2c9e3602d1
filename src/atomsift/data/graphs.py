"""Radius graphs and interaction indices for GemNet-OC, in pure torch (JMP.md §1.3-1.4).

Edge convention (as JMP / OCP): ``edge_index[0]`` is the source s (neighbour), ``edge_index[1]`` the
target t (centre atom); the source sits in the periodic image ``cell_offset`` (integer lattice
vector), so the edge vector is ``x_t - (x_s + cell_offset @ cell)``. Every graph here is sorted by
target atom, which makes each per-atom neighbour list a contiguous slice.

Only integer indices and offsets are built here (without gradient). Distances and unit vectors
are recomputed from positions by :func:`edge_geometry`, so gradient forces flow through them.

Why pure torch: the compiled torch_cluster / torch_scatter are not installable here, and an
all-pairs-within-each-structure search is exact and cheap at the sizes we batch (32 QM9
molecules: ~10k candidate pairs); periodic images are enumerated like OCP's ``radius_graph_pbc``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class GraphSettings:
    """Cutoff (Angstrom) and nearest-k cap of the main graph; the other graphs follow JMP's
    base proportions (a2ee2a k*20/30, qint k*8/30, a2a k*1000/30, one cutoff for all four).

    ``pbc``: True / False forces periodicity on or off for every structure, None takes each
    structure's own pbc flags. ``conditional_max_neighbors``: JMP's QMOF / MatBench rule, k = 30
    up to 200 atoms, 10 above 200, 5 above 300.
    """

    cutoff: float = 12.0
    max_neighbors: int = 30
    pbc: bool | None = None
    conditional_max_neighbors: bool = False
    qint_tags: tuple[int, ...] = (1, 2)
    rule: str = "invariant"

    def __post_init__(self):
        if self.rule not in RULES:
            raise ValueError(f"unknown neighbour rule {self.rule!r}; choose from {', '.join(RULES)}")


# "invariant" (default): a nearest-k cap keeps every neighbour tied with the k-th (within
# TIE_TOL), and the main graph is symmetrised by union (a pair is kept when either atom counts
# the other among its k nearest), so graphs do not depend on atom order, cell choice or rotation.
# "jmp": JMP's own rules, for exact reproduction: a strict cap (ties broken by enumeration order)
# and a symmetrisation that keeps a pair only when the edge whose source has the lower atom index
# was selected (so an asymmetric pair survives or not depending on atom order). docs/model.md.
RULES = ("invariant", "jmp")
TIE_TOL = 1e-4  # Angstrom: distances this close to the k-th are the same shell


# JMP's per-dataset table (JMP.md §1.3).
_TABLE: dict[str, GraphSettings] = {
    "oc20": GraphSettings(12.0, 30, True),
    "oc22": GraphSettings(12.0, 30, True),
    "ani1x": GraphSettings(8.0, 30, False),
    "transition1x": GraphSettings(8.0, 30, False),
    "rmd17": GraphSettings(7.0, 100, False),
    "md22": GraphSettings(12.0, 30, False),
    "md17": GraphSettings(12.0, 30, False),
    "spice": GraphSettings(12.0, 30, False),
    "qm9": GraphSettings(8.0, 30, False),
    "qmof": GraphSettings(19.0, 30, True, True),
    "matbench": GraphSettings(12.0, 30, True, True),
}


def graph_settings(dataset: str | list[str] | None, rule: str = "invariant") -> GraphSettings:
    """JMP's graph settings for a dataset family; unknown names (and "ase") get 12 Angstrom, k=30,
    pbc taken from each structure. A list of names (mixed batch) uses its first name."""
    if isinstance(dataset, (list, tuple)):
        dataset = dataset[0] if dataset else None
    base = GraphSettings() if dataset is None else _TABLE.get(str(dataset).lower(), GraphSettings())
    return base if rule == base.rule else replace(base, rule=rule)


def cap_sizes(k_main):
    """(a2a, a2ee2a, qint) nearest-k caps for a main-graph cap ``k_main`` (an int or a tensor of
    them): JMP's proportions 1000/30, 20/30 and 8/30."""
    return (k_main * 1000) // 30, (k_main * 20) // 30, (k_main * 8) // 30


def max_neighbors_per_structure(settings: GraphSettings, natoms: Tensor) -> Tensor:
    """(B,) main-graph k of every structure (JMP's conditional 30 / 10 / 5 rule when enabled)."""
    k = torch.full_like(natoms, int(settings.max_neighbors))
    if settings.conditional_max_neighbors:
        k = torch.where(natoms > 200, torch.full_like(k, 10), k)
        k = torch.where(natoms > 300, torch.full_like(k, 5), k)
    return k


# ----------------------------------------------------------------------------- containers


@dataclass
class Graph:
    """One directed graph over a batch, sorted by target atom."""

    edge_index: Tensor  # (2, E) long: source, target
    cell_offset: Tensor  # (E, 3) long lattice offset of the source image
    distance: Tensor  # (E,) distances at construction time (no grad), used for selection only
    num_neighbors: Tensor  # (B,) edges per structure
    id_swap: Tensor | None = None  # (E,) index of the reverse edge (main graph only)

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def select(self, mask: Tensor, batch: Tensor, num_graphs: int) -> "Graph":
        ei = self.edge_index[:, mask]
        return Graph(
            edge_index=ei,
            cell_offset=self.cell_offset[mask],
            distance=self.distance[mask],
            num_neighbors=torch.bincount(batch[ei[1]], minlength=num_graphs),
        )


@dataclass
class Triplets:
    """Pairs of edges sharing an atom: ``in_`` feeds ``out``; ``out`` is sorted and ``out_agg``
    is the rank of the triplet among those of its output edge."""

    in_: Tensor
    out: Tensor
    out_agg: Tensor


@dataclass
class Quadruplets:
    """d->b->a<-c built from ``triplet_in`` (d->b main into b->a qint) and ``triplet_out`` (b->a
    qint into c->a main); ``out`` is the main edge c->a of each quadruplet (sorted)."""

    triplet_in: Triplets
    triplet_out: Triplets
    out: Tensor
    trip_in_to_quad: Tensor
    trip_out_to_quad: Tensor
    out_agg: Tensor


@dataclass
class QuadTriplets:
    """What the factorised quadruplet interaction needs instead of the quadruplet list: the two
    triplet sets, and the (triplet_out, triplet_in) pairs whose quadruplet is excluded because
    d == c in the same image (``excl_out``, ``excl_in``)."""

    triplet_in: Triplets
    triplet_out: Triplets
    excl_out: Tensor
    excl_in: Tensor
    # the excluded pairs in the dense per-atom layout: atom a, main slot of c, qint slot of b
    excl_a: Tensor | None = None
    excl_c: Tensor | None = None
    excl_b: Tensor | None = None
    # triplet_in dense per qint edge b->a: the main edges d->b into b (n_qint, Kmain), masked
    # where padding or d == a in the same image; the excluded pairs as (qint edge, main slot)
    in_index: Tensor | None = None
    in_mask: Tensor | None = None
    excl_e: Tensor | None = None
    excl_slot: Tensor | None = None


@dataclass
class Padded:
    """Per-target-atom dense layout of a target-sorted graph: ``index`` (N, K) holds the edge ids
    into each atom (padding = E, one past the last edge), ``slot`` (E,) each edge's column.

    The triplets of GemNet-OC (every pair of edges into the same atom) become dense (K x K) blocks
    per atom, so the triplet sums are batched matrix products instead of per-triplet tensors.
    """

    index: Tensor
    mask: Tensor
    slot: Tensor
    K: int


def padded(g: Graph, n_atoms: int) -> Padded:
    t = g.edge_index[1]
    deg = torch.bincount(t, minlength=n_atoms)
    K = int(deg.max()) if deg.numel() and t.numel() else 0
    slot = ragged_arange(deg)
    index = torch.full((n_atoms, max(K, 1)), t.numel(), dtype=torch.long, device=t.device)
    index[t, slot] = torch.arange(t.numel(), device=t.device)
    return Padded(index, index < t.numel(), slot, max(K, 1))


@dataclass
class GraphSet:
    """Everything the backbone needs about connectivity, for one batch. The triplet lists of
    JMP (``trip``, ``a2e``, ``e2a``) are built on request (:meth:`triplet_lists`); the model uses
    the equivalent dense per-atom layouts ``main_pad`` and ``a2ee2a_pad``."""

    main: Graph
    a2a: Graph
    a2ee2a: Graph
    qint: Graph
    quad: QuadTriplets
    main_pad: Padded
    a2ee2a_pad: Padded
    qint_pad: Padded
    n_atoms: int

    def triplet_lists(self) -> dict[str, Triplets]:
        N = self.n_atoms
        return {
            "trip": triplets(self.main, N),
            "a2e": mixed_triplets(self.a2ee2a, self.main, N),
            "e2a": mixed_triplets(self.main, self.a2ee2a, N),
        }


# ----------------------------------------------------------------------------- helpers


def ragged_arange(counts: Tensor) -> Tensor:
    """concat(arange(c) for c in counts)."""
    counts = counts.long()
    total = int(counts.sum())
    if total == 0:
        return counts.new_zeros(0)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(total, device=counts.device) - torch.repeat_interleave(starts, counts)


def _csr(target: Tensor, n: int) -> tuple[Tensor, Tensor]:
    deg = torch.bincount(target, minlength=n)
    return deg, torch.cumsum(deg, 0) - deg


def nearest_k_mask(target: Tensor, distance: Tensor, k_per_edge: Tensor, n_atoms: int, ties: bool = True) -> Tensor:
    """Keep, for every target atom, its k nearest edges. ``ties``: also every edge within
    ``TIE_TOL`` of the k-th distance (so the result does not depend on edge order); otherwise
    exactly k, ties going to the earlier edge (JMP's strict cap)."""
    if target.numel() == 0:
        return torch.ones(0, dtype=torch.bool, device=target.device)
    order = torch.argsort(distance, stable=True)
    order = order[torch.argsort(target[order], stable=True)]
    deg, start = _csr(target, n_atoms)
    rank = torch.arange(order.numel(), device=target.device) - start[target[order]]
    if not ties:
        mask = torch.zeros_like(target, dtype=torch.bool)
        mask[order] = rank < k_per_edge[order]
        return mask
    # k-th smallest distance of every target atom (inf where it has k or fewer edges)
    k_t = torch.zeros(n_atoms, dtype=torch.long, device=target.device).index_copy_(0, target, k_per_edge)
    kth = torch.full((n_atoms,), math.inf, dtype=distance.dtype, device=distance.device)
    at_k = rank == k_t[target[order]] - 1
    kth[target[order][at_k]] = distance[order][at_k]
    return distance <= kth[target] + TIE_TOL


def _image_repetitions(cell: Tensor, pbc: Tensor, cutoff: float) -> Tensor:
    """(B, 3) images needed along each lattice vector: ceil(r |a_j x a_k| / |V|), 0 if not periodic."""
    cell = cell.double()
    vol = torch.linalg.det(cell).abs()
    reps = torch.zeros(cell.shape[0], 3, dtype=torch.long, device=cell.device)
    for d in range(3):
        cr = torch.linalg.cross(cell[:, (d + 1) % 3], cell[:, (d + 2) % 3], dim=-1).norm(dim=-1)
        ok = pbc[:, d] & (vol > 1e-12)
        r = torch.where(ok, torch.ceil(cutoff * cr / vol.clamp_min(1e-12)), torch.zeros_like(vol))
        reps[:, d] = r.long()
    return reps


def radius_graph(
    pos: Tensor,
    cell: Tensor,
    pbc: Tensor,
    natoms: Tensor,
    cutoff: float,
    max_neighbors: Tensor | int,
    chunk: int = 4_000_000,
    ties: bool = True,
) -> Graph:
    """All edges s->t with 1e-2 < d <= cutoff between atoms of the same structure (periodic images
    included where ``pbc``), then the nearest-k cap per target atom (k per structure).

    ``pos`` (N,3), ``cell`` (B,3,3), ``pbc`` (B,3) bool, ``natoms`` (B,).
    """
    device = pos.device
    pos = pos.detach()
    cell = cell.detach().to(pos.dtype)
    B = natoms.numel()
    N = pos.shape[0]
    batch = torch.repeat_interleave(torch.arange(B, device=device), natoms)
    start = torch.cumsum(natoms, 0) - natoms
    n2 = natoms * natoms
    pair_b = torch.repeat_interleave(torch.arange(B, device=device), n2)
    local = ragged_arange(n2)
    nb = natoms[pair_b]
    t_all = start[pair_b] + local // nb.clamp_min(1)
    s_all = start[pair_b] + local % nb.clamp_min(1)

    reps = _image_repetitions(cell, pbc, cutoff) if bool(pbc.any()) else torch.zeros(B, 3, dtype=torch.long, device=device)
    rmax = reps.max(0).values if B else torch.zeros(3, dtype=torch.long, device=device)
    rng = [torch.arange(-int(r), int(r) + 1, device=device) for r in rmax]
    offsets = torch.cartesian_prod(*rng).reshape(-1, 3)  # (I, 3), zero offset included
    r2 = cutoff * cutoff

    srcs, tgts, offs, dists = [], [], [], []
    n_img = offsets.shape[0]
    step = max(1, chunk // max(1, n_img))
    for lo in range(0, t_all.numel(), step):
        t = t_all[lo : lo + step]
        s = s_all[lo : lo + step]
        b = pair_b[lo : lo + step]
        # (P, I, 3) source image minus target
        shift = torch.einsum("id,pde->pie", offsets.to(pos.dtype), cell[b]) if n_img > 1 else None
        dvec = (pos[s] - pos[t])[:, None, :]
        if shift is not None:
            dvec = dvec + shift
        d2 = (dvec * dvec).sum(-1)
        ok = (d2 <= r2) & (d2 > 1e-4)
        if n_img > 1:
            ok &= (offsets.abs()[None, :, :] <= reps[b][:, None, :]).all(-1)
        p_idx, i_idx = torch.nonzero(ok, as_tuple=True)
        srcs.append(s[p_idx])
        tgts.append(t[p_idx])
        offs.append(offsets[i_idx])
        dists.append(d2[p_idx, i_idx].sqrt())
    if srcs:
        s = torch.cat(srcs)
        t = torch.cat(tgts)
        off = torch.cat(offs)
        dist = torch.cat(dists)
    else:
        s = t = torch.zeros(0, dtype=torch.long, device=device)
        off = torch.zeros(0, 3, dtype=torch.long, device=device)
        dist = torch.zeros(0, dtype=pos.dtype, device=device)
    g = Graph(torch.stack([s, t]), off, dist, torch.bincount(batch[t], minlength=B))
    if not isinstance(max_neighbors, Tensor):
        max_neighbors = torch.full((B,), int(max_neighbors), dtype=torch.long, device=device)
    keep = nearest_k_mask(t, dist, max_neighbors[batch[t]], N, ties=ties)
    return g.select(keep, batch, B)


def subselect(g: Graph, cutoff: float, k: Tensor, cutoff_parent: float, k_parent: Tensor, batch: Tensor, B: int,
              ties: bool = True) -> Graph:
    """JMP's ``subselect_graph``: a sub-graph with a smaller cutoff and/or k."""
    mask = torch.ones(g.num_edges, dtype=torch.bool, device=g.edge_index.device)
    if cutoff < cutoff_parent:
        mask &= g.distance <= cutoff
    if bool((k < k_parent).any()):
        t = g.edge_index[1]
        mask &= nearest_k_mask(t, torch.where(mask, g.distance, torch.full_like(g.distance, math.inf)), k[batch[t]], batch.numel(), ties=ties)
    return g.select(mask, batch, B)


def _forward_edges(s: Tensor, t: Tensor, o: Tensor) -> Tensor:
    """JMP's "forward" half: s < t, or s == t with a lexicographically negative image offset."""
    neg = (o[:, 0] < 0) | ((o[:, 0] == 0) & (o[:, 1] < 0)) | ((o[:, 0] == 0) & (o[:, 1] == 0) & (o[:, 2] < 0))
    return (s < t) | ((s == t) & neg)


def symmetrize(g: Graph, batch: Tensor, B: int, rule: str = "invariant") -> Graph:
    """Every edge with its reverse (same pair of atoms, negated image offset), sorted by target;
    ``id_swap`` maps each edge to its reverse.

    ``rule="invariant"``: the union — a pair is kept when either direction was selected.
    ``rule="jmp"``: JMP's ``symmetrize_edges`` — keep the "forward" edges (s < t, or s == t with a
    lexicographically negative offset) and add their reverses, which drops a pair selected only
    in its backward direction (a choice that depends on atom order)."""
    s, t = g.edge_index
    o, d = g.cell_offset, g.distance
    if rule != "jmp":  # union: both directions of every selected edge; each pair kept once below
        s, t, o, d = torch.cat([s, t]), torch.cat([t, s]), torch.cat([o, -o]), torch.cat([d, d])
    fwd = _forward_edges(s, t, o)
    s, t, o, d = s[fwd], t[fwd], o[fwd], d[fwd]
    n = max(1, batch.numel())
    K = int(o.abs().max()) + 1 if o.numel() else 1
    if rule != "jmp":
        key = (s * n + t) * (2 * K + 1) ** 3 + _offset_code(o, K)
        perm = torch.argsort(key, stable=True)
        first = torch.ones_like(perm, dtype=torch.bool)
        first[1:] = key[perm][1:] != key[perm][:-1]
        sel = perm[first]
        s, t, o, d = s[sel], t[sel], o[sel], d[sel]
    nf = s.numel()
    s2 = torch.cat([s, t])
    t2 = torch.cat([t, s])
    o2 = torch.cat([o, -o])
    d2 = torch.cat([d, d])
    swap = torch.cat([torch.arange(nf, 2 * nf), torch.arange(0, nf)]).to(s.device)
    # sort by (target, source, image) so per-atom lists are contiguous and deterministic
    perm = torch.argsort((t2 * n + s2) * (2 * K + 1) ** 3 + _offset_code(o2, K), stable=True)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    ei = torch.stack([s2[perm], t2[perm]])
    return Graph(ei, o2[perm], d2[perm], torch.bincount(batch[ei[1]], minlength=B), id_swap=inv[swap[perm]])


def tag_filter(g: Graph, tags: Tensor, qint_tags: tuple[int, ...], batch: Tensor, B: int) -> Graph:
    """Keep qint edges whose source or target has a tag in ``qint_tags``."""
    ok = torch.zeros_like(tags, dtype=torch.bool)
    for q in qint_tags:
        ok |= tags == q
    s, t = g.edge_index
    return g.select(ok[s] | ok[t], batch, B)


def effective_tags(tags: Tensor, batch: Tensor, B: int) -> Tensor:
    """JMP gives every atom of molecules and bulk materials tag 2: a structure whose tags are all 0
    (tags unknown) gets 2 everywhere; OC20-style slabs keep their 0 / 1 / 2 tags."""
    nonzero = torch.zeros(B, dtype=torch.long, device=tags.device).index_add_(0, batch, (tags != 0).long())
    return torch.where(nonzero[batch] > 0, tags, torch.full_like(tags, 2))


# ----------------------------------------------------------------------------- triplets


def _has_offsets(g: Graph) -> bool:
    return g.num_edges > 0 and bool(g.cell_offset.any())


def _filter(in_: Tensor, out: Tensor, keep: Tensor, n_out: int) -> Triplets:
    in_, out = in_[keep], out[keep]
    return Triplets(in_, out, ragged_arange(torch.bincount(out, minlength=n_out)))


def triplets(main: Graph, n_atoms: int) -> Triplets:
    """e2e triplets: for every output edge c->a, every other edge b->a (different edge id)."""
    t = main.edge_index[1]
    deg, start = _csr(t, n_atoms)
    cnt = deg[t]
    out = torch.repeat_interleave(torch.arange(t.numel(), device=t.device), cnt)
    in_ = start[t[out]] + ragged_arange(cnt)
    return _filter(in_, out, in_ != out, t.numel())


def mixed_triplets(g_in: Graph, g_out: Graph, n_atoms: int, to_outedge: bool = False) -> Triplets:
    """Triplets across two graphs (JMP ``get_mixed_triplets``).

    Default: for out-edge c->a, in-edges b->a of ``g_in``; drop b == c in the same image.
    ``to_outedge``: for out-edge b->a, in-edges d->b; drop d == a in the same image.
    """
    s_in, t_in = g_in.edge_index
    s_out, t_out = g_out.edge_index
    deg, start = _csr(t_in, n_atoms)
    key = s_out if to_outedge else t_out
    cnt = deg[key]
    out = torch.repeat_interleave(torch.arange(key.numel(), device=key.device), cnt)
    in_ = start[key[out]] + ragged_arange(cnt)
    periodic = _has_offsets(g_in) or _has_offsets(g_out)
    if to_outedge:
        same = s_in[in_] == t_out[out]
        if periodic:
            same &= (g_in.cell_offset[in_] + g_out.cell_offset[out] == 0).all(-1)
    else:
        same = s_in[in_] == s_out[out]
        if periodic:
            same &= (g_in.cell_offset[in_] == g_out.cell_offset[out]).all(-1)
    return _filter(in_, out, ~same, key.numel())


def quadruplets(main: Graph, qint: Graph, n_atoms: int) -> Quadruplets:
    """d->b->a<-c quadruplets (JMP ``get_quadruplets``); c == d in the same image is dropped."""
    tin = mixed_triplets(main, qint, n_atoms, to_outedge=True)  # in: main d->b, out: qint b->a
    tout = mixed_triplets(qint, main, n_atoms)  # in: qint b->a, out: main c->a
    n_q = qint.num_edges
    deg, start = _csr(tin.out, n_q)
    cnt = deg[tout.in_]
    t_out_idx = torch.repeat_interleave(torch.arange(tout.out.numel(), device=cnt.device), cnt)
    t_in_idx = start[tout.in_[t_out_idx]] + ragged_arange(cnt)
    e_ca = tout.out[t_out_idx]
    e_db = tin.in_[t_in_idx]
    e_ba = tout.in_[t_out_idx]
    s_main = main.edge_index[0]
    same = s_main[e_ca] == s_main[e_db]
    if _has_offsets(main) or _has_offsets(qint):
        same &= (main.cell_offset[e_db] + qint.cell_offset[e_ba] - main.cell_offset[e_ca] == 0).all(-1)
    keep = ~same
    t_out_idx, t_in_idx = t_out_idx[keep], t_in_idx[keep]
    out = tout.out[t_out_idx]
    return Quadruplets(
        triplet_in=tin,
        triplet_out=tout,
        out=out,
        trip_in_to_quad=t_in_idx,
        trip_out_to_quad=t_out_idx,
        out_agg=ragged_arange(torch.bincount(out, minlength=main.num_edges)),
    )


def _offset_code(off: Tensor, K: int) -> Tensor:
    w = 2 * K + 1
    o = off + K
    return (o[:, 0] * w + o[:, 1]) * w + o[:, 2]


def quadruplet_triplets(main: Graph, qint: Graph, n_atoms: int) -> QuadTriplets:
    """triplet_in (d->b main into b->a qint), triplet_out (b->a qint into c->a main) and the
    excluded c == d pairs, without enumerating the quadruplets."""
    tin = mixed_triplets(main, qint, n_atoms, to_outedge=True)
    tout = mixed_triplets(qint, main, n_atoms)
    s_main = main.edge_index[0]
    periodic = _has_offsets(main) or _has_offsets(qint)
    if periodic:
        off_d = main.cell_offset[tin.in_] + qint.cell_offset[tin.out]
        off_c = main.cell_offset[tout.out]
        K = int(max(off_d.abs().max() if off_d.numel() else 0, off_c.abs().max() if off_c.numel() else 0)) + 1
        n_off = (2 * K + 1) ** 3
        code_d, code_c = _offset_code(off_d, K), _offset_code(off_c, K)
    else:
        n_off = 1
        code_d = torch.zeros_like(tin.out)
        code_c = torch.zeros_like(tout.out)
    key_in = (tin.out * n_atoms + s_main[tin.in_]) * n_off + code_d
    key_out = (tout.in_ * n_atoms + s_main[tout.out]) * n_off + code_c
    if key_in.numel() == 0 or key_out.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=key_in.device)
        return QuadTriplets(tin, tout, empty, empty)
    order = torch.argsort(key_in)
    sk = key_in[order]
    pos = torch.searchsorted(sk, key_out).clamp_max(sk.numel() - 1)
    hit = sk[pos] == key_out
    excl_out = torch.nonzero(hit, as_tuple=True)[0]
    return QuadTriplets(tin, tout, excl_out, order[pos[hit]])


# ----------------------------------------------------------------------------- the four graphs


def build_graphs(
    pos: Tensor,
    cell: Tensor,
    pbc: Tensor,
    natoms: Tensor,
    tags: Tensor,
    settings: GraphSettings,
    edge_dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> GraphSet:
    """The four GemNet-OC graphs and all interaction indices for one batch (JMP.md §1.3-1.4).

    The a2a graph (k*1000/30) is built first; edge dropout (pretraining only) acts on it; main,
    a2ee2a and qint are sub-selected from it (nearest-k); qint is filtered by tag; main is
    symmetrised with reverse-edge ids.
    """
    B = natoms.numel()
    N = pos.shape[0]
    device = pos.device
    batch = torch.repeat_interleave(torch.arange(B, device=device), natoms)
    if settings.pbc is not None:
        pbc = torch.full_like(pbc, bool(settings.pbc))
        if settings.pbc:
            # structures without a usable cell cannot be periodic
            ok = torch.linalg.det(cell.double()).abs() > 1e-9
            pbc = pbc & ok[:, None]
    k_main = max_neighbors_per_structure(settings, natoms)
    k_aint, k_ae, k_q = cap_sizes(k_main)
    ties = settings.rule != "jmp"
    a2a = radius_graph(pos, cell, pbc, natoms, settings.cutoff, k_aint, ties=ties)
    if edge_dropout > 0.0:
        keep = torch.rand(a2a.num_edges, generator=generator, device=device) >= edge_dropout
        a2a = a2a.select(keep, batch, B)
    main = subselect(a2a, settings.cutoff, k_main, settings.cutoff, k_aint, batch, B, ties)
    a2ee2a = subselect(a2a, settings.cutoff, k_ae, settings.cutoff, k_aint, batch, B, ties)
    qint = subselect(a2a, settings.cutoff, k_q, settings.cutoff, k_aint, batch, B, ties)
    qint = tag_filter(qint, effective_tags(tags, batch, B), settings.qint_tags, batch, B)
    main = symmetrize(main, batch, B, settings.rule)
    main_pad, qint_pad = padded(main, N), padded(qint, N)
    quad = quadruplet_triplets(main, qint, N)
    e_ca = quad.triplet_out.out[quad.excl_out]
    quad.excl_a = main.edge_index[1][e_ca]
    quad.excl_c = main_pad.slot[e_ca]
    quad.excl_b = qint_pad.slot[quad.triplet_out.in_[quad.excl_out]]
    s_q, t_q = qint.edge_index
    in_index = main_pad.index[s_q]  # (n_qint, Kmain): edges d->b into the source b of b->a
    E_main = main.num_edges
    d = torch.cat([main.edge_index[0], main.edge_index.new_full((1,), -1)])[in_index]
    same = d == t_q[:, None]
    if _has_offsets(main) or _has_offsets(qint):
        off = torch.cat([main.cell_offset, main.cell_offset.new_zeros(1, 3)])[in_index]
        same &= (off + qint.cell_offset[:, None, :] == 0).all(-1)
    quad.in_index = in_index
    quad.in_mask = (in_index < E_main) & ~same
    quad.excl_e = quad.triplet_in.out[quad.excl_in]
    quad.excl_slot = main_pad.slot[quad.triplet_in.in_[quad.excl_in]]
    return GraphSet(
        main=main,
        a2a=a2a,
        a2ee2a=a2ee2a,
        qint=qint,
        quad=quad,
        main_pad=main_pad,
        a2ee2a_pad=padded(a2ee2a, N),
        qint_pad=qint_pad,
        n_atoms=N,
    )


def edge_geometry(pos: Tensor, cell: Tensor, batch: Tensor, g: Graph) -> tuple[Tensor, Tensor]:
    """Differentiable distances d_st (E,) and unit vectors V_st = (x_t - x_s') / d_st (E, 3)."""
    s, t = g.edge_index
    vec = pos[t] - pos[s]
    if g.num_edges and bool((g.cell_offset != 0).any()):
        vec = vec - torch.einsum("ed,edk->ek", g.cell_offset.to(pos.dtype), cell[batch[s]])
    d = vec.norm(dim=-1)
    return d, vec / d.clamp_min(1e-12)[:, None]


def batch_graphs(batch, settings: GraphSettings | None = None, edge_dropout: float = 0.0, generator=None) -> GraphSet:
    """:func:`build_graphs` for a PyG ``Batch`` in our ``Data`` layout (:mod:`atomsift.data.batch`)."""
    if settings is None:
        settings = graph_settings(batch.dataset)
    return build_graphs(batch.pos, batch.cell, batch.pbc, batch.natoms, batch.tags, settings, edge_dropout, generator)


__all__ = [
    "GraphSettings",
    "graph_settings",
    "Graph",
    "GraphSet",
    "Triplets",
    "Quadruplets",
    "radius_graph",
    "build_graphs",
    "batch_graphs",
    "edge_geometry",
    "triplets",
    "mixed_triplets",
    "quadruplets",
    "quadruplet_triplets",
    "QuadTriplets",
    "symmetrize",
    "nearest_k_mask",
]
