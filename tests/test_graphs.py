"""Graphs and interaction indices of GemNet-OC against brute-force references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import Tensor

from atomsift.data.batch import collate
from atomsift.data.graphs import (
    GraphSettings,
    build_graphs,
    edge_geometry,
    graph_settings,
    mixed_triplets,
    quadruplets,
    radius_graph,
    triplets,
)
from atomsift.data.store import Record
from atomsift.models.bases import circular_basis
from atomsift.models.layers import segment_sum


def _rec(i, numbers, pos, cell=None, pbc=False, tags=None):
    n = len(numbers)
    return Record(
        index=i,
        numbers=np.asarray(numbers, dtype=np.int64),
        positions=np.asarray(pos, dtype=np.float64),
        cell=np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64),
        pbc=np.full(3, pbc, dtype=bool),
        tags=np.zeros(n, np.int64) if tags is None else np.asarray(tags, dtype=np.int64),
        fixed=np.zeros(n, bool),
        energy=None,
        forces=None,
    )


def _molecules(seed=0, sizes=(7, 11, 4)):
    rng = np.random.default_rng(seed)
    return [_rec(i, rng.integers(1, 9, n), rng.uniform(0, 6, (n, 3))) for i, n in enumerate(sizes)]


def _crystals(seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate((3, 2)):
        cell = np.diag(rng.uniform(2.5, 4.0, 3)) + rng.uniform(-0.4, 0.4, (3, 3))
        frac = rng.uniform(0, 1, (n, 3))
        out.append(_rec(i, rng.integers(1, 30, n), frac @ cell, cell, True))
    return out


def _brute_edges(recs, cutoff, reps=4):
    """Set of (s, t, ox, oy, oz) with global atom ids, by explicit enumeration of images."""
    edges = {}
    start = 0
    for r in recs:
        n = len(r.numbers)
        offs = list(itertools.product(range(-reps, reps + 1), repeat=3)) if r.pbc.any() else [(0, 0, 0)]
        for s in range(n):
            for t in range(n):
                for o in offs:
                    d = np.linalg.norm(r.positions[s] + np.asarray(o) @ r.cell - r.positions[t])
                    if 1e-2 < d <= cutoff:
                        edges[(start + s, start + t) + tuple(o)] = d
        start += n
    return edges


def dihedral_sum_bruteforce(V_m: Tensor, V_q: Tensor, main, qint, x_tin: Tensor, n_atoms: int, L: int) -> Tensor:
    """Reference for :func:`dihedral_sum`: enumerate the quadruplets (JMP ``get_quadruplets``) and
    use JMP's dihedral formula on each."""
    Q = quadruplets(main, qint, n_atoms)
    tin, tout = Q.triplet_in, Q.triplet_out
    V_ca = V_m[Q.out]
    V_ba = V_q[tout.in_[Q.trip_out_to_quad]]
    V_db = V_m[tin.in_[Q.trip_in_to_quad]]
    u = torch.linalg.cross(V_ca, V_ba, dim=-1)
    v = torch.linalg.cross(V_db, V_ba, dim=-1)
    w = torch.linalg.cross(u, v, dim=-1)
    y = torch.sqrt((w * w).sum(-1).clamp_min(1e-18))
    x = (u * v).sum(-1)
    Y = circular_basis(x / torch.sqrt(x * x + y * y), L)
    return segment_sum(Y[:, :, None] * x_tin[Q.trip_in_to_quad][:, None, :], Q.trip_out_to_quad, tout.out.numel())


def _edge_set(g):
    s, t = g.edge_index
    return {(int(a), int(b)) + tuple(int(x) for x in o) for a, b, o in zip(s, t, g.cell_offset)}


@pytest.mark.parametrize("kind", ["molecules", "crystals"])
def test_radius_graph_matches_brute_force(kind):
    recs = _molecules() if kind == "molecules" else _crystals()
    b = collate(recs, dtype=torch.float64)
    cutoff = 4.5
    g = radius_graph(b.pos, b.cell, b.pbc, b.natoms, cutoff, 10_000)
    ref = _brute_edges(recs, cutoff)
    assert _edge_set(g) == set(ref)
    d, _ = edge_geometry(b.pos, b.cell, b.batch, g)
    got = {e: float(x) for e, x in zip([(int(a), int(c)) + tuple(int(v) for v in o) for a, c, o in zip(*g.edge_index, g.cell_offset)], d)}
    assert max(abs(got[e] - ref[e]) for e in ref) < 1e-10
    # sorted by target; per-structure counts
    assert bool((g.edge_index[1][1:] >= g.edge_index[1][:-1]).all())
    assert int(g.num_neighbors.sum()) == g.num_edges


def test_nearest_k_keeps_the_k_closest():
    recs = _molecules(sizes=(15, 9))
    b = collate(recs, dtype=torch.float64)
    k = 4
    full = radius_graph(b.pos, b.cell, b.pbc, b.natoms, 100.0, 10_000)
    capped = radius_graph(b.pos, b.cell, b.pbc, b.natoms, 100.0, k)
    for t in range(b.pos.shape[0]):
        dists = np.sort(full.distance[full.edge_index[1] == t].numpy())
        kept = np.sort(capped.distance[capped.edge_index[1] == t].numpy())
        np.testing.assert_allclose(kept, dists[:k])


def test_conditional_max_neighbors_and_table():
    assert graph_settings("qm9") == GraphSettings(8.0, 30, False)
    assert graph_settings("rmd17").cutoff == 7.0 and graph_settings("rmd17").max_neighbors == 100
    assert graph_settings("oc20").pbc is True
    assert graph_settings("qmof").cutoff == 19.0 and graph_settings("qmof").conditional_max_neighbors
    assert graph_settings("my_own_data") == GraphSettings(12.0, 30, None)
    from atomsift.data.graphs import max_neighbors_per_structure

    k = max_neighbors_per_structure(graph_settings("matbench"), torch.tensor([10, 200, 201, 300, 301]))
    assert k.tolist() == [30, 30, 10, 10, 5]


@pytest.mark.parametrize("kind", ["molecules", "crystals"])
def test_symmetrised_main_graph_has_every_reverse_edge(kind):
    recs = _molecules() if kind == "molecules" else _crystals()
    b = collate(recs, dtype=torch.float64)
    g = build_graphs(b.pos, b.cell, b.pbc, b.natoms, b.tags, GraphSettings(4.5, 6, None))
    m = g.main
    s, t = m.edge_index
    sw = m.id_swap
    assert bool((s[sw] == t).all()) and bool((t[sw] == s).all())
    assert bool((m.cell_offset[sw] == -m.cell_offset).all())
    assert bool((sw[sw] == torch.arange(m.num_edges)).all())
    assert len(_edge_set(m)) == m.num_edges  # no duplicates
    d, V = edge_geometry(b.pos, b.cell, b.batch, m)
    torch.testing.assert_close(d[sw], d)
    torch.testing.assert_close(V[sw], -V)


def test_triplets_match_brute_force():
    recs = _crystals()
    b = collate(recs, dtype=torch.float64)
    g = build_graphs(b.pos, b.cell, b.pbc, b.natoms, b.tags, GraphSettings(4.0, 8, None))
    m, ae = g.main, g.a2ee2a
    N = b.pos.shape[0]
    # e2e: same target, different edge id
    tr = triplets(m, N)
    ref = {(i, o) for o in range(m.num_edges) for i in range(m.num_edges) if i != o and m.edge_index[1, i] == m.edge_index[1, o]}
    assert set(zip(tr.in_.tolist(), tr.out.tolist())) == ref
    assert bool((tr.out[1:] >= tr.out[:-1]).all())
    # out_agg is the rank within each output edge
    for o in range(0, m.num_edges, 7):
        assert sorted(tr.out_agg[tr.out == o].tolist()) == list(range(int((tr.out == o).sum())))
    # mixed (in: a2ee2a, out: main): same target, not the same source image
    mt = mixed_triplets(ae, m, N)
    ref = {
        (i, o)
        for o in range(m.num_edges)
        for i in range(ae.num_edges)
        if ae.edge_index[1, i] == m.edge_index[1, o]
        and not (ae.edge_index[0, i] == m.edge_index[0, o] and bool((ae.cell_offset[i] == m.cell_offset[o]).all()))
    }
    assert set(zip(mt.in_.tolist(), mt.out.tolist())) == ref
    # to_outedge (in: main d->b, out: qint b->a), d == a in the same image dropped
    q = g.qint
    mt = mixed_triplets(m, q, N, to_outedge=True)
    ref = {
        (i, o)
        for o in range(q.num_edges)
        for i in range(m.num_edges)
        if m.edge_index[1, i] == q.edge_index[0, o]
        and not (m.edge_index[0, i] == q.edge_index[1, o] and bool((m.cell_offset[i] + q.cell_offset[o] == 0).all()))
    }
    assert set(zip(mt.in_.tolist(), mt.out.tolist())) == ref


@pytest.mark.parametrize("kind", ["molecules", "crystals"])
def test_factorised_dihedral_sum_equals_enumerated_quadruplets(kind):
    from atomsift.models.bases import dihedral_features, dihedral_sum

    recs = _molecules(3) if kind == "molecules" else _crystals(2)
    b = collate(recs, dtype=torch.float64)
    g = build_graphs(b.pos, b.cell, b.pbc, b.natoms, b.tags, GraphSettings(4.5, 12, None))
    Vm = edge_geometry(b.pos, b.cell, b.batch, g.main)[1]
    Vq = edge_geometry(b.pos, b.cell, b.batch, g.qint)[1]
    x = torch.randn(g.quad.triplet_in.out.numel(), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tin, tout = g.quad.triplet_in, g.quad.triplet_out
    # the model lays triplet_in out densely per qint edge (main slot of d)
    xd = torch.zeros(g.qint.num_edges, g.quad.in_index.shape[1], 3, dtype=torch.float64)
    xd[tin.out, g.main_pad.slot[tin.in_]] = x
    assert int(g.quad.in_mask.sum()) == tin.out.numel()
    z = dihedral_sum(dihedral_features(Vm, Vq, g, 7), xd)
    ref = dihedral_sum_bruteforce(Vm, Vq, g.main, g.qint, x, b.pos.shape[0], 7)
    # brute force is per triplet_out; the model's z is dense per (atom a, qint slot b, main slot c)
    z = z[g.main.edge_index[1][tout.out], g.qint_pad.slot[tout.in_], g.main_pad.slot[tout.out]]
    assert g.quad.excl_out.numel() > 0
    # crystals have exactly collinear image triples (c, a, b): JMP's clamp |u x v| >= 1e-9 then
    # gives cos(theta) ~ 1e-8 instead of 0, the only (tiny) difference from the exact expansion
    torch.testing.assert_close(z, ref, rtol=0, atol=1e-9 if kind == "molecules" else 1e-6)


def test_qint_tag_filter_and_molecule_tags():
    rng = np.random.default_rng(5)
    slab = _rec(0, [29] * 6, rng.uniform(0, 4, (6, 3)), tags=[0, 0, 0, 1, 1, 2])
    mol = _rec(1, [6] * 4, rng.uniform(0, 3, (4, 3)))
    b = collate([slab, mol], dtype=torch.float64)
    g = build_graphs(b.pos, b.cell, b.pbc, b.natoms, b.tags, GraphSettings(6.0, 30, False))
    s, t = g.qint.edge_index
    in_slab = t < 6
    # slab: an edge survives only if one end is tagged 1 or 2 (atoms 3, 4, 5)
    assert bool(((s[in_slab] >= 3) | (t[in_slab] >= 3)).all())
    assert int(in_slab.sum()) == 6 * 5 - 3 * 2  # all pairs but those between sub-surface atoms 0-2
    # molecule (all tags 0 = unknown): treated as tag 2, nothing filtered (k_qint = 8 > 3 neighbours)
    assert int((~in_slab).sum()) == 4 * 3


def test_edge_dropout_is_seeded_and_drops():
    b = collate(_molecules(sizes=(12, 12)), dtype=torch.float64)
    st = GraphSettings(8.0, 30, False)
    full = build_graphs(b.pos, b.cell, b.pbc, b.natoms, b.tags, st)
    g1 = build_graphs(b.pos, b.cell, b.pbc, b.natoms, b.tags, st, 0.3, torch.Generator().manual_seed(3))
    g2 = build_graphs(b.pos, b.cell, b.pbc, b.natoms, b.tags, st, 0.3, torch.Generator().manual_seed(3))
    assert torch.equal(g1.a2a.edge_index, g2.a2a.edge_index)
    assert 0.55 * full.a2a.num_edges < g1.a2a.num_edges < 0.85 * full.a2a.num_edges
    s = g1.main.edge_index
    assert bool((s[0][g1.main.id_swap] == s[1]).all())


@pytest.mark.parametrize("kind", ["molecules", "crystals"])
def test_dense_per_atom_triplet_blocks_equal_triplet_lists(kind):
    """The model's dense (K x K per atom) triplet sums equal JMP's triplet-list sums."""
    from atomsift.models.bases import circular_basis, pair_block
    from atomsift.models.layers import segment_sum

    recs = _molecules(4) if kind == "molecules" else _crystals(3)
    b = collate(recs, dtype=torch.float64)
    g = build_graphs(b.pos, b.cell, b.pbc, b.natoms, b.tags, GraphSettings(4.5, 9, None))
    N = b.pos.shape[0]
    V = {n: edge_geometry(b.pos, b.cell, b.batch, getattr(g, n))[1] for n in ("main", "a2ee2a")}
    lists = g.triplet_lists()
    gen = torch.Generator().manual_seed(1)
    cases = [
        ("trip", "main", "main", g.main_pad, g.main_pad, True),
        ("a2e", "main", "a2ee2a", g.main_pad, g.a2ee2a_pad, False),
        ("e2a", "a2ee2a", "main", g.a2ee2a_pad, g.main_pad, False),
    ]
    for name, out_g, in_g, pad_out, pad_in, same in cases:
        go, gi = getattr(g, out_g), getattr(g, in_g)
        Y = pair_block(V[out_g], V[in_g], pad_out, pad_in, go, gi, 7, same_graph=same)
        x = torch.randn(gi.num_edges, 4, dtype=torch.float64, generator=gen)
        X = torch.cat([x, x.new_zeros(1, 4)])[pad_in.index]
        S = torch.bmm(Y, X).view(N, -1, 7, 4)[go.edge_index[1], pad_out.slot]
        tr = lists[name]
        cos = (V[out_g][tr.out] * V[in_g][tr.in_]).sum(-1).clamp(-1, 1)
        ref = segment_sum(circular_basis(cos, 7)[:, :, None] * x[tr.in_][:, None, :], tr.out, go.num_edges)
        assert tr.out.numel() > 0
        torch.testing.assert_close(S, ref, rtol=1e-12, atol=1e-12)
