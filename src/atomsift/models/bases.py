"""Basis functions of GemNet-OC and their shared projections (JMP.md §1.5-1.6).

Radial: Gaussians on d / 12 Angstrom (JMP's fixed ``absolute_rbf_cutoff``) times the polynomial
envelope (p = 5). Circular: Y_l(cos phi) = sqrt((2l+1)/4pi) P_l(cos phi), l < 7. Spherical
("legendre_outer"): Y_l(cos phi_cab) Y_l'(cos theta_cabd) with the unsigned dihedral theta.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from atomsift.data.graphs import GraphSet
from atomsift.models.layers import Dense, he_orthogonal_init


class PolynomialEnvelope(nn.Module):
    """u(d) = 1 + a d^p + b d^(p+1) + c d^(p+2) for d < 1, else 0 (d already scaled)."""

    def __init__(self, exponent: int = 5):
        super().__init__()
        p = exponent
        self.p = p
        self.a = -(p + 1) * (p + 2) / 2
        self.b = p * (p + 2)
        self.c = -p * (p + 1) / 2

    def forward(self, d: Tensor) -> Tensor:
        dp = d**self.p
        u = 1 + self.a * dp + self.b * dp * d + self.c * dp * d * d
        return torch.where(d < 1, u, torch.zeros_like(u))


class RadialBasis(nn.Module):
    """Gaussian RBF (offsets linspace(0, 1, n), width = spacing) of d / cutoff, times the envelope."""

    def __init__(self, num_radial: int, cutoff: float = 12.0, exponent: int = 5):
        super().__init__()
        self.cutoff = float(cutoff)
        self.envelope = PolynomialEnvelope(exponent)
        self.num_radial = num_radial
        # built in float64 and rounded once to the model's dtype (a float32 linspace is off by an
        # ulp, which a float64 model would otherwise inherit)
        self.register_buffer("offset", torch.linspace(0, 1, num_radial, dtype=torch.float64), persistent=False)
        self.register_buffer("temps", torch.tensor(-0.5 * (num_radial - 1) ** 2, dtype=torch.float64), persistent=False)

    def reset_buffers(self) -> None:
        """Recompute the (non-persistent) buffers, e.g. after ``to_empty``."""
        with torch.no_grad():
            self.offset.copy_(torch.linspace(0, 1, self.num_radial, dtype=torch.float64))
            self.temps.fill_(-0.5 * (self.num_radial - 1) ** 2)

    def forward(self, d: Tensor) -> Tensor:
        ds = d / self.cutoff
        env = self.envelope(ds)
        return env[:, None] * torch.exp(self.temps.to(d.dtype) * (ds[:, None] - self.offset.to(d.dtype)) ** 2)


def circular_basis(cos: Tensor, num_spherical: int) -> Tensor:
    """(n, L): Y_l^0 = sqrt((2l+1)/4pi) P_l(cos), l = 0..L-1, by the Legendre recurrence."""
    p = [torch.ones_like(cos), cos]
    for l in range(1, num_spherical - 1):
        p.append(((2 * l + 1) * cos * p[l] - l * p[l - 1]) / (l + 1))
    p = p[:num_spherical]
    norm = [math.sqrt((2 * l + 1) / (4 * math.pi)) for l in range(num_spherical)]
    return torch.stack([n * q for n, q in zip(norm, p)], dim=-1)


class BasisEmbedding(nn.Module):
    """Projection of the radial basis: weight (num_radial, num_spherical, emb) with an angular part
    (returns R, (n, emb, num_spherical)), or (emb, num_radial) without (returns (n, emb))."""

    def __init__(self, num_radial: int, emb_size_interm: int, num_spherical: int | None = None):
        super().__init__()
        self.num_radial = num_radial
        self.num_spherical = num_spherical
        self.emb = emb_size_interm
        if num_spherical is None:
            self.weight = nn.Parameter(torch.empty(emb_size_interm, num_radial))
        else:
            self.weight = nn.Parameter(torch.empty(num_radial, num_spherical, emb_size_interm))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        he_orthogonal_init(self.weight)

    def forward(self, rbf: Tensor) -> Tensor:
        if self.num_spherical is None:
            return rbf @ self.weight.t()
        r = rbf @ self.weight.reshape(self.num_radial, -1)  # columns (l, i): l * emb + i
        # JMP reshapes these columns to (emb, L) row-major, i.e. R[:, i, l] = r[:, i * L + l]: not
        # the transpose of the weight's (L, emb) layout. Weights trained by JMP only make sense
        # read this way, so we do the same (format 2 of our checkpoints; models/checkpoint.py)
        return r.view(-1, self.emb, self.num_spherical)  # (n, emb, L)


class EdgeEmbedding(nn.Module):
    """m_st = Dense([h_s || h_t || e_st]) with activation."""

    def __init__(self, atom_features: int, edge_features: int, out_features: int):
        super().__init__()
        self.dense = Dense(2 * atom_features + edge_features, out_features, activation=True)

    def forward(self, h: Tensor, e: Tensor, idx_s: Tensor, idx_t: Tensor) -> Tensor:
        # W [h_s || h_t || e] = (W_s h)[s] + (W_t h)[t] + W_e e: the atom parts are projected per
        # atom, then gathered, instead of forming the (edges, 2A + E) concatenation
        lin = self.dense.linear
        A = h.shape[1]
        W = lin.weight
        y = torch.nn.functional.linear(e, W[:, 2 * A :], lin.bias)
        hs = h @ W[:, :A].t()
        ht = h @ W[:, A : 2 * A].t()
        return self.dense.act(y + hs[idx_s] + ht[idx_t])


def _legendre_in_cosines(L: int) -> tuple[Tensor, Tensor]:
    """M (L, 2L-1) with Y_l(cos t) = sum_m M[l, m] cos(m t) (m < L) and Y_l(0) (L,)."""
    import numpy as np

    M = np.zeros((L, 2 * L - 1))
    y0 = np.zeros(L)
    for l in range(L):
        norm = math.sqrt((2 * l + 1) / (4 * math.pi))
        cheb = np.polynomial.Legendre.basis(l).convert(kind=np.polynomial.Chebyshev).coef
        for m, c in enumerate(cheb):
            M[l, m] = norm * c
            if m > 0:
                M[l, L - 1 + m] = norm * c
        y0[l] = norm * np.polynomial.Legendre.basis(l)(0.0)
    return torch.tensor(M), torch.tensor(y0)


def _azimuth_features(w: Tensor, e1: Tensor, e2: Tensor, L: int) -> tuple[Tensor, Tensor]:
    """(n, 2L-1) [cos(m a), m < L; sin(m a), 0 < m < L] of the azimuth a of w in the frame (e1, e2),
    zero rows where w vanishes (degenerate: collinear atoms), and that mask."""
    x = (w * e1).sum(-1)
    y = (w * e2).sum(-1)
    r2 = x * x + y * y
    # |w| below noise level: collinear atoms (e.g. periodic images of one atom on both sides of a),
    # theta = pi / 2 as JMP's clamp |u x v| >= 1e-9 gives. 1e-9 in float64 as JMP; in float32 the
    # cross product of exactly parallel unit vectors is ~1e-7 noise, whose azimuth (and its 1/|w|
    # gradient) would be garbage, so the threshold is 1e-5 there.
    tol = 1e-18 if w.dtype == torch.float64 else 1e-10
    deg = r2 < tol
    r = torch.sqrt(torch.where(deg, torch.ones_like(r2), r2))
    c1 = torch.where(deg, torch.ones_like(x), x / r)
    s1 = torch.where(deg, torch.zeros_like(y), y / r)
    cs, sn = [torch.ones_like(c1), c1], [torch.zeros_like(s1), s1]
    for _ in range(2, L):
        c, s_ = cs[-1], sn[-1]
        cs.append(c * c1 - s_ * s1)
        sn.append(s_ * c1 + c * s1)
    feats = torch.stack(cs[:L] + sn[1:L], dim=-1) * (~deg)[:, None].to(c1.dtype)
    return feats, deg


def dihedral_features(V_m: Tensor, V_q: Tensor, g: GraphSet, L: int) -> dict:
    """Separable form of Y_l(cos theta_cabd) for the factorised quadruplet sum.

    theta is the angle between u = V_ca x V_ba and v = V_db x V_ba, both orthogonal to V_ba; with
    azimuths a_c, a_d of u, v in any frame orthogonal to V_ba, cos theta = cos(a_c - a_d) and
    Y_l(cos theta) = sum_m M[l, m] (cos m a_c cos m a_d + sin m a_c sin m a_d) (Chebyshev
    expansion of P_l). So sum_d Y_l(theta_cabd) x_d needs sums over d per qint edge only.
    d-side features are dense per qint edge b->a (main slot d of b); c-side ones dense per atom a
    (main slot c, qint slot b).
    """
    q = g.quad
    n = V_q
    # a frame orthogonal to every qint edge direction
    ex = torch.zeros_like(n)
    use_y = n[:, 0].abs() > 0.9
    ex[:, 0] = (~use_y).to(n.dtype)
    ex[:, 1] = use_y.to(n.dtype)
    e1 = ex - (ex * n).sum(-1, keepdim=True) * n
    e1 = e1 / e1.norm(dim=-1, keepdim=True)
    e2 = torch.linalg.cross(n, e1, dim=-1)
    nq, Km = q.in_index.shape
    Vd = _pad(V_m, q.in_index)  # (nq, Km, 3): V_db
    v = torch.linalg.cross(Vd, V_q[:, None, :].expand(nq, Km, 3), dim=-1)  # V_db x V_ba
    cs_d, deg_d = _azimuth_features(v.reshape(-1, 3), e1[:, None].expand(nq, Km, 3).reshape(-1, 3), e2[:, None].expand(nq, Km, 3).reshape(-1, 3), L)
    valid = q.in_mask.to(V_m.dtype)
    cs_d = cs_d.view(nq, Km, 2 * L - 1) * valid[..., None]
    deg_d = deg_d.view(nq, Km).to(V_m.dtype) * valid
    mp, qp = g.main_pad, g.qint_pad
    Vc = _pad(V_m, mp.index)  # (N, Kc, 3)
    Vb = _pad(V_q, qp.index)  # (N, Kq, 3)
    N, Kc, Kq = Vc.shape[0], Vc.shape[1], Vb.shape[1]
    u = torch.linalg.cross(Vc[:, :, None, :].expand(N, Kc, Kq, 3), Vb[:, None, :, :].expand(N, Kc, Kq, 3), dim=-1)
    E1 = _pad(e1, qp.index)[:, None].expand(N, Kc, Kq, 3)
    E2 = _pad(e2, qp.index)[:, None].expand(N, Kc, Kq, 3)
    cs_t, deg_t = _azimuth_features(u.reshape(-1, 3), E1.reshape(-1, 3), E2.reshape(-1, 3), L)
    cs_t = cs_t.view(N, Kc, Kq, 2 * L - 1)
    deg_t = deg_t.view(N, Kc, Kq)
    M, y0 = _legendre_in_cosines(L)
    M = M.to(V_m.dtype).to(V_m.device)
    y0 = y0.to(V_m.dtype).to(V_m.device)
    # excluded quadruplets (d == c): subtract exactly the term the separable sum added for them
    ea, ec, eb, ee, es = q.excl_a, q.excl_c, q.excl_b, q.excl_e, q.excl_slot
    y_excl = (cs_t[ea, ec, eb] * cs_d[ee, es]) @ M.t()
    either = torch.maximum(deg_t[ea, ec, eb].to(V_m.dtype), deg_d[ee, es])[:, None]
    y_excl = y_excl * (1 - either) + y0[None, :] * either
    Yex = V_m.new_zeros(N, Kq, Kc, L).index_put((ea, eb, ec), y_excl)  # layout (a, b, c)
    istar = torch.full((N, Kq, Kc), nq * Km, dtype=torch.long, device=V_m.device)
    istar[ea, eb, ec] = ee * Km + es
    return {
        "cs_d": cs_d,
        "deg_d": deg_d,
        # (a, b) batches; columns: the 2L-1 azimuth features, 1 (degenerate d), deg_t (degenerate c)
        "cs_t": torch.cat([cs_t, torch.ones_like(cs_t[..., :1]), deg_t[..., None].to(cs_t.dtype)], dim=-1)
        .permute(0, 2, 1, 3)
        .reshape(N * Kq, Kc, 2 * L + 1),
        "M": M,
        "y0": y0,
        "Yex": Yex,
        "istar": istar,
        "qint_index": qp.index,
        "shape": (N, Kc, Kq),
    }


def dihedral_sum(dh: dict, x_tin: Tensor) -> Tensor:
    """z (N, Kq, Kc, L, C): for every atom a, qint slot b and main slot c, the sum over the
    quadruplets d->b->a<-c of Y_l(cos theta_cabd) x_d, without enumerating quadruplets.

    ``x_tin`` (n_qint, Kmain, C): the message of each triplet_in (d->b, b->a), dense per qint edge.
    """
    N, Kc, Kq = dh["shape"]
    L = dh["y0"].shape[0]
    C = x_tin.shape[-1]
    z = torch.bmm(dh["cs_t"], _dihedral_G(dh, x_tin)).view(N, Kq, Kc, L, C)
    xs = _pad(x_tin.reshape(-1, C), dh["istar"])  # (N, Kq, Kc, C): x of the excluded d == c
    return z - dh["Yex"][..., None] * xs[..., None, :]


def _dihedral_G(dh: dict, x_tin: Tensor) -> Tensor:
    """(N * Kq, 2L+1, L * C): the d-side sums of every (atom a, qint slot b), laid out for the
    contraction with the c-side features ``cs_t``."""
    N, Kc, Kq = dh["shape"]
    L = dh["y0"].shape[0]
    C = x_tin.shape[-1]
    AB = torch.bmm(dh["cs_d"].transpose(1, 2), x_tin)  # (n_q, 2L-1, C): sums over d per qint edge
    D = torch.bmm(dh["deg_d"][:, None, :], x_tin)[:, 0]  # degenerate d: theta = pi/2
    # G[e, k, l, x] = M[l, k] AB[e, k, x]; two more rows carry the degenerate terms (theta = pi/2:
    # y0[l] D[e, x] for degenerate d, y0[l] A_0[e, x] for degenerate c), so one bmm does all
    G = dh["M"].t()[None, :, :, None] * AB[:, :, None, :]
    y0 = dh["y0"][None, None, :, None]
    G = torch.cat([G, y0 * D[:, None, None, :], y0 * AB[:, None, None, 0]], dim=1)  # (n_q, 2L+1, L, C)
    return _pad(G.reshape(G.shape[0], -1, L * C), dh["qint_index"]).view(N * Kq, -1, L * C)


def quadruplet_operators(dh: dict, Y_phi: Tensor, R: Tensor, out_t: Tensor, out_slot: Tensor) -> dict:
    """Geometry-only operators of the quadruplet message, built once per forward and shared by
    every block (so the per-block work never forms the (edge, l_phi, l_theta, C) sum).

    The message of out edge e = c->a is y[e, i, :] = sum_{l, l'} R[e, i, l * L + l'] sx[e, l, l', :]
    with sx[e, l, l'] = sum_b Y_l(phi_cab) z[a, b, c, l'] (:func:`dihedral_sum`). Contracting R with
    Y_l(phi) first gives ``Q`` (E, I, Kq * L), Q[e, i, (b, l')] = sum_l R[e, i, l L + l'] Y_l(phi_cab),
    so y = Q @ z[a, :, c]. The excluded d == c terms of z (Yex (x) x) contract to
    ``Qx`` (E, I, Kq) = sum_l' Q[e, i, b, l'] Yex[a, b, c, l'] times the gathered x (``istar``).
    """
    N, Kc, Kq = dh["shape"]
    L = dh["y0"].shape[0]
    E, I = R.shape[0], R.shape[1]
    Yp = Y_phi.view(N, Kc, L, Kq)[out_t, out_slot]  # (E, L, Kq)
    # R (E, I, L * L), column l * L + l' (legendre_outer order): rows l, columns (l', i)
    Rl = R.view(E, I, L, L).permute(0, 2, 3, 1).reshape(E, L, L * I)
    Q = torch.bmm(Yp.transpose(1, 2), Rl).view(E, Kq, L, I)  # Q[e, b, l', i]
    Yex = dh["Yex"].permute(0, 2, 1, 3)[out_t, out_slot]  # (E, Kq, L)
    Qx = (Q * Yex[..., None]).sum(2)  # (E, Kq, I)
    return {"Q": Q.view(E, Kq * L, I).transpose(1, 2), "Qx": Qx.transpose(1, 2), "istar": dh["istar"].permute(0, 2, 1)[out_t, out_slot]}


def quadruplet_message(dh: dict, ops: dict, x_tin: Tensor, out_t: Tensor, out_slot: Tensor) -> Tensor:
    """(E, I, C): sum_{l, l'} R[e, i, (l, l')] sum over quadruplets d->b->a<-c of Y_l(phi_cab)
    Y_l'(theta_cabd) x_d for every main edge e = c->a; equal to ``R @ sx`` with sx from
    :func:`dihedral_sum` (see :func:`quadruplet_operators`)."""
    N, Kc, Kq = dh["shape"]
    L = dh["y0"].shape[0]
    C = x_tin.shape[-1]
    z = torch.bmm(dh["cs_t"], _dihedral_G(dh, x_tin)).view(N, Kq, Kc, L * C)  # without exclusion
    zE = z.permute(0, 2, 1, 3)[out_t, out_slot].view(-1, Kq * L, C)  # (E, (b, l'), C)
    xs = _pad(x_tin.reshape(-1, C), ops["istar"])  # (E, Kq, C): x of the excluded d == c
    return torch.bmm(ops["Q"], zE) - torch.bmm(ops["Qx"], xs)


def _pad(x: Tensor, index: Tensor) -> Tensor:
    """Rows of ``x`` laid out by a padded index (padding -> zeros)."""
    return torch.cat([x, x.new_zeros((1,) + tuple(x.shape[1:]))])[index]


def pair_block(V_out: Tensor, V_in: Tensor, pad_out, pad_in, g_out, g_in, L: int, same_graph: bool = False) -> Tensor:
    """(N, Kc * L, Kb): Y_l(cos angle(c->a, b->a)) for every out-edge slot c and in-edge slot b
    of each atom a, zero for padding and for excluded pairs (the same edge for e2e; the same
    source atom in the same image for mixed triplets). Row c*L + l, column b."""
    Vo = _pad(V_out, pad_out.index)
    Vi = _pad(V_in, pad_in.index)
    cos = torch.bmm(Vo, Vi.transpose(1, 2)).clamp(-1.0, 1.0)
    valid = pad_out.mask[:, :, None] & pad_in.mask[:, None, :]
    if same_graph:
        valid = valid & ~torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)[None]
    else:
        so = _pad(g_out.edge_index[0], pad_out.index)
        si = _pad(g_in.edge_index[0], pad_in.index)
        same = so[:, :, None] == si[:, None, :]
        if bool(g_out.cell_offset.any()) or bool(g_in.cell_offset.any()):
            oo = _pad(g_out.cell_offset, pad_out.index)
            oi = _pad(g_in.cell_offset, pad_in.index)
            same = same & (oo[:, :, None, :] == oi[:, None, :, :]).all(-1)
        valid = valid & ~same
    Y = circular_basis(cos, L) * valid[..., None].to(cos.dtype)  # (N, Kc, Kb, L)
    N, Kc, Kb, _ = Y.shape
    return Y.permute(0, 1, 3, 2).reshape(N, Kc * L, Kb)


class Bases(nn.Module):
    """Bases computed once per forward and shared by all blocks (JMP ``bases.py:Bases``)."""

    def __init__(self, cfg):
        super().__init__()
        nr, er, ec, es, L = cfg.num_radial, cfg.emb_size_rbf, cfg.emb_size_cbf, cfg.emb_size_sbf, cfg.num_spherical
        self.num_spherical = L
        self.radial_basis = RadialBasis(nr, cfg.absolute_rbf_cutoff, cfg.envelope_exponent)
        self.mlp_rbf_qint = Dense(nr, er, activation=False)
        self.mlp_cbf_qint = BasisEmbedding(nr, ec, L)
        self.mlp_sbf_qint = BasisEmbedding(nr, es, L * L)
        self.mlp_rbf_aeint = Dense(nr, er, activation=False)
        self.mlp_cbf_aeint = BasisEmbedding(nr, ec, L)
        self.mlp_rbf_eaint = Dense(nr, er, activation=False)
        self.mlp_cbf_eaint = BasisEmbedding(nr, ec, L)
        self.mlp_rbf_aint = BasisEmbedding(nr, er)
        self.mlp_rbf_tint = Dense(nr, er, activation=False)
        self.mlp_cbf_tint = BasisEmbedding(nr, ec, L)
        self.mlp_rbf_h = Dense(nr, er, activation=False)
        self.mlp_rbf_out = Dense(nr, er, activation=False)
        self.edge_emb = EdgeEmbedding(cfg.emb_size_atom, nr, cfg.emb_size_edge)

    def forward(self, h: Tensor, geo: dict, g: GraphSet) -> tuple[Tensor, dict]:
        """``geo``: name -> (distance, unit vector) for main, a2a, a2ee2a, qint. Returns the initial
        edge embedding m and the dict of projected bases."""
        L = self.num_spherical
        d_m, V_m = geo["main"]
        d_ae, V_ae = geo["a2ee2a"]
        d_q, V_q = geo["qint"]
        d_aa, _ = geo["a2a"]
        rbf_m = self.radial_basis(d_m)
        rbf_ae = self.radial_basis(d_ae)
        rbf_q = self.radial_basis(d_q)
        rbf_aa = self.radial_basis(d_aa)

        # triplets as dense per-atom blocks (every pair of edges into the same atom a):
        # e2e c->a, b->a both main; a2e out main, in a2ee2a; e2a out a2ee2a, in main
        mp, ap = g.main_pad, g.a2ee2a_pad
        Y_t = pair_block(V_m, V_m, mp, mp, g.main, g.main, L, same_graph=True)
        Y_a2e = pair_block(V_m, V_ae, mp, ap, g.main, g.a2ee2a, L)
        Y_e2a = pair_block(V_ae, V_m, ap, mp, g.a2ee2a, g.main, L)
        # quadruplets: triplet_in d->b (main) into b->a (qint): angle abd
        q = g.quad
        Vd = _pad(V_m, q.in_index)  # (n_qint, Kmain, 3)
        cbf_qint = circular_basis((Vd * V_q[:, None, :]).sum(-1).clamp(-1.0, 1.0), L)  # (n_qint, Km, L)
        # triplet_out: c->a (main) with b->a (qint): angle cab; the dihedral enters factorised
        dihedral = dihedral_features(V_m, V_q, g, L)
        Y_phi = pair_block(V_m, V_q, g.main_pad, g.qint_pad, g.main, g.qint, L)  # (N, Kc*L, Kq)
        # qint cbf has no aggregation: per triplet_in vector sum_l R[qint edge][:, l] Y_l
        r_sbf = self.mlp_sbf_qint(rbf_m)  # (n_main, emb_sbf, L * L)
        r_qint = self.mlp_cbf_qint(rbf_q)  # (n_qint, emb_cbf, L)
        cbf_qint_vec = torch.bmm(cbf_qint, r_qint.transpose(1, 2))  # (n_qint, Km, emb_cbf)

        R_e2a = self.mlp_cbf_eaint(rbf_ae)  # (n_a2ee2a, emb_cbf, L), padded per target atom
        R_e2a = torch.cat([R_e2a, R_e2a.new_zeros((1,) + R_e2a.shape[1:])])[ap.index]  # (N, Kae, I, L)
        N, Kae, I, _ = R_e2a.shape
        R_e2a = R_e2a.permute(0, 2, 1, 3).reshape(N, I, Kae * L)
        t_m = g.main.edge_index[1]
        bases = {
            "rbf_main": rbf_m,
            "tint": {"rad": self.mlp_rbf_tint(rbf_m), "R": self.mlp_cbf_tint(rbf_m), "Y": Y_t, "in_index": mp.index, "out_t": t_m, "out_slot": mp.slot},
            "qint": {
                "rad": self.mlp_rbf_qint(rbf_m),
                "cbf": cbf_qint_vec,
                "in_index": q.in_index,
                "in_mask": q.in_mask,
                "R": r_sbf,
                "Y_phi": Y_phi,
                "out_t": g.main.edge_index[1],
                "out_slot": g.main_pad.slot,
                "dihedral": dihedral,
                "ops": quadruplet_operators(dihedral, Y_phi, r_sbf, g.main.edge_index[1], g.main_pad.slot),
            },
            "aeint": {"rad": self.mlp_rbf_aeint(rbf_ae), "R": self.mlp_cbf_aeint(rbf_m), "Y": Y_a2e, "in_index": ap.index, "out_t": t_m, "out_slot": mp.slot},
            "eaint": {"rad": self.mlp_rbf_eaint(rbf_m), "R_pad": R_e2a, "Y": Y_e2a, "in_index": mp.index},
            "aint": self.mlp_rbf_aint(rbf_aa),
            "h": self.mlp_rbf_h(rbf_m),
            "out": self.mlp_rbf_out(rbf_m),
        }
        m = self.edge_emb(h, rbf_m, g.main.edge_index[0], g.main.edge_index[1])
        return m, bases
