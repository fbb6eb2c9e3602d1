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
        offset = torch.linspace(0, 1, num_radial)
        self.register_buffer("offset", offset, persistent=False)
        self.register_buffer("temps", torch.tensor(-0.5 / float(offset[1] - offset[0]) ** 2), persistent=False)

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
        r = rbf @ self.weight.reshape(self.num_radial, -1)
        return r.view(-1, self.num_spherical, self.emb).transpose(1, 2)  # (n, emb, L)


class EdgeEmbedding(nn.Module):
    """m_st = Dense([h_s || h_t || e_st]) with activation."""

    def __init__(self, atom_features: int, edge_features: int, out_features: int):
        super().__init__()
        self.dense = Dense(2 * atom_features + edge_features, out_features, activation=True)

    def forward(self, h: Tensor, e: Tensor, idx_s: Tensor, idx_t: Tensor) -> Tensor:
        return self.dense(torch.cat([h[idx_s], h[idx_t], e], dim=-1))


def _cos(u: Tensor, v: Tensor) -> Tensor:
    return (u * v).sum(-1).clamp(-1.0, 1.0)


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

        # e2e triplets: angle between c->a (out) and b->a (in), both main
        cbf_t = circular_basis(_cos(V_m[g.trip.out], V_m[g.trip.in_]), L)
        # a2e: out main c->a, in a2ee2a b->a; e2a: out a2ee2a c->a, in main b->a
        cbf_a2e = circular_basis(_cos(V_m[g.a2e.out], V_ae[g.a2e.in_]), L)
        cbf_e2a = circular_basis(_cos(V_ae[g.e2a.out], V_m[g.e2a.in_]), L)
        # quadruplets: triplet_in d->b (main) into b->a (qint): angle abd
        q = g.quad
        tin, tout = q.triplet_in, q.triplet_out
        cbf_qint = circular_basis(_cos(V_q[tin.out], V_m[tin.in_]), L)
        # triplet_out: c->a (main) with b->a (qint): angle cab; dihedral per quadruplet
        cos_phi = circular_basis(_cos(V_m[tout.out], V_q[tout.in_]), L)
        V_ca = V_m[q.out]
        V_ba = V_q[tout.in_[q.trip_out_to_quad]]
        V_db = V_m[tin.in_[q.trip_in_to_quad]]
        u = torch.linalg.cross(V_ca, V_ba, dim=-1)
        v = torch.linalg.cross(V_db, V_ba, dim=-1)
        w = torch.linalg.cross(u, v, dim=-1)
        y = torch.sqrt((w * w).sum(-1).clamp_min(1e-18))  # |u x v| clamped >= 1e-9
        x = (u * v).sum(-1)
        cos_theta = x / torch.sqrt(x * x + y * y)  # cos(atan2(y, x)): unsigned dihedral
        sbf_theta = circular_basis(cos_theta, L)

        # qint cbf has no aggregation: per triplet_in vector sum_l R[qint edge][:, l] Y_l
        r_qint = self.mlp_cbf_qint(rbf_q)[tin.out]  # (n_tin, emb_cbf, L)
        cbf_qint_vec = (r_qint * cbf_qint[:, None, :]).sum(-1)

        bases = {
            "rbf_main": rbf_m,
            "tint": {"rad": self.mlp_rbf_tint(rbf_m), "R": self.mlp_cbf_tint(rbf_m), "sph": cbf_t},
            "qint": {
                "rad": self.mlp_rbf_qint(rbf_m),
                "cbf": cbf_qint_vec,
                "R": self.mlp_sbf_qint(rbf_m),
                "sph_phi": cos_phi,
                "sph_theta": sbf_theta,
            },
            "aeint": {"rad": self.mlp_rbf_aeint(rbf_ae), "R": self.mlp_cbf_aeint(rbf_m), "sph": cbf_a2e},
            "eaint": {"rad": self.mlp_rbf_eaint(rbf_m), "R": self.mlp_cbf_eaint(rbf_ae), "sph": cbf_e2a},
            "aint": self.mlp_rbf_aint(rbf_aa),
            "h": self.mlp_rbf_h(rbf_m),
            "out": self.mlp_rbf_out(rbf_m),
        }
        m = self.edge_emb(h, rbf_m, g.main.edge_index[0], g.main.edge_index[1])
        return m, bases
