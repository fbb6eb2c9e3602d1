"""GemNet-OC backbone as JMP configures it (Gasteiger et al. 2022, "GemNet-OC: Developing Graph
Neural Networks for Large and Diverse Molecular Simulation Datasets"; JMP.md §1).

Blocks appear in data-flow order: the efficient bilinear layer, the four message paths (edge,
quadruplet, atom<->edge, atom), the interaction block, the output block, the backbone.

The "efficient bilinear" layer computes out_o = W vec(R_o (S_o X_o)) with S_o X_o a segment sum
over the triplets / quadruplets of o (index_add), never a zero-padded (Kmax) tensor. Quadruplets
use the outer-product structure of the legendre_outer basis: sum_q Y_l(phi) Y_l'(theta_q) x_q is
summed first over the quadruplets of each (c, a, b) triplet with Y_l'(theta) (7 values), then
times Y_l(phi) (7 values) per triplet; this is exactly the 49-function sum, 7x cheaper per quadruplet.
R_o (emb_sbf x 49) is contracted with Y_l(phi) once per forward (bases.quadruplet_operators), so a
block never forms the (edge, 49, C) sum: one (emb_sbf, Kq*7) x (Kq*7, C) product per edge.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from atomsift.data.graphs import GraphSet
from atomsift.models.bases import Bases, EdgeEmbedding, quadruplet_message
from atomsift.models.layers import Dense, ResidualLayer, ScaleFactor, segment_sum

INV_SQRT2 = 1.0 / math.sqrt(2.0)


@dataclass(frozen=True)
class BackboneConfig:
    """GemNet-OC hyperparameters (JMP ``BackboneConfig``)."""

    num_blocks: int = 4
    emb_size_atom: int = 256
    emb_size_edge: int = 512
    emb_size_trip_in: int = 64
    emb_size_trip_out: int = 64
    emb_size_quad_in: int = 32
    emb_size_quad_out: int = 32
    emb_size_aint_in: int = 64
    emb_size_aint_out: int = 64
    emb_size_rbf: int = 16
    emb_size_cbf: int = 16
    emb_size_sbf: int = 32
    num_spherical: int = 7
    num_radial: int = 128
    num_before_skip: int = 2
    num_after_skip: int = 2
    num_concat: int = 1
    num_atom: int = 3
    num_output_afteratom: int = 3
    num_atom_emb_layers: int = 2
    num_global_out_layers: int = 2
    num_elements: int = 120
    absolute_rbf_cutoff: float = 12.0
    envelope_exponent: int = 5
    direct_forces: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


SIZES: dict[str, BackboneConfig] = {
    # JMP-S = BackboneConfig.base() (JMP.md §1.1)
    "small": BackboneConfig(),
    # JMP-L = BackboneConfig.large()
    "large": BackboneConfig(
        num_blocks=6,
        emb_size_edge=1024,
        emb_size_trip_out=128,
        emb_size_quad_in=64,
        emb_size_rbf=32,
        emb_size_sbf=64,
        num_concat=4,
    ),
    # CPU size for the embedded grid (docs/model.md): every path of GemNet-OC, narrow and shallow.
    # Angular orders L = 4 (JMP: 7) and 16 radial Gaussians: the quadruplet path's cost grows with
    # L^2 x emb_size_sbf and was 45% of a gradient-force training step at L = 7 (bench/backbone_step.py)
    "tiny": BackboneConfig(
        num_blocks=2,
        emb_size_atom=64,
        emb_size_edge=64,
        emb_size_trip_in=16,
        emb_size_trip_out=16,
        emb_size_quad_in=4,
        emb_size_quad_out=8,
        emb_size_aint_in=16,
        emb_size_aint_out=16,
        emb_size_rbf=8,
        emb_size_cbf=8,
        emb_size_sbf=4,
        num_radial=16,
        num_spherical=4,
        num_before_skip=1,
        num_after_skip=1,
        num_concat=1,
        num_atom=1,
        num_output_afteratom=1,
        num_atom_emb_layers=1,
        num_global_out_layers=1,
    ),
}


def backbone_config(size: str, direct_forces: bool = True) -> BackboneConfig:
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(SIZES)}")
    return BackboneConfig(**{**SIZES[size].to_dict(), "direct_forces": bool(direct_forces)})


# ----------------------------------------------------------------------------- bilinear


class EfficientInteractionBilinear(nn.Module):
    """out_o = W_bil vec(R_o . sum_j Y(angle_j) x_j^T) with W_bil a bias-free linear map of
    (emb_interm * emb_in) -> emb_out; the sum over j is a segment sum."""

    def __init__(self, emb_in: int, emb_interm: int, emb_out: int):
        super().__init__()
        self.emb_in, self.emb_interm = emb_in, emb_interm
        self.bilinear = Dense(emb_in * emb_interm, emb_out, activation=False)

    @staticmethod
    def aggregate(sph: Tensor, x: Tensor, out: Tensor, n_out: int) -> Tensor:
        """(n_out, L, C): sum over items j of o of Y_j (L) outer x_j (C)."""
        return segment_sum(sph[:, :, None] * x[:, None, :], out, n_out)

    def project(self, R: Tensor, sx: Tensor) -> Tensor:
        """R (n, I, L) @ sx (n, L, C) -> flattened (n, I*C) -> W_bil."""
        y = torch.bmm(R, sx)
        return self.bilinear(y.reshape(y.shape[0], -1))


# ----------------------------------------------------------------------------- message paths


class TripletInteraction(nn.Module):
    """Edge->edge (in = out = E, symmetric), atom->edge (in = A, symmetric) or edge->atom
    (out = A, not symmetric) triplet message passing (JMP.md §1.9, steps 2, 4, 5)."""

    def __init__(self, emb_in: int, emb_trip_in: int, emb_trip_out: int, emb_out: int, emb_rbf: int, emb_cbf: int, symmetric: bool):
        super().__init__()
        self.symmetric = symmetric
        self.dense_ba = Dense(emb_in, emb_in)
        self.mlp_rbf = Dense(emb_rbf, emb_in, activation=False)
        self.scale_rbf = ScaleFactor()
        self.mlp_cbf = EfficientInteractionBilinear(emb_trip_in, emb_cbf, emb_trip_out)
        self.scale_cbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_in, emb_trip_in)
        self.up_projection_ca = Dense(emb_trip_out, emb_out)
        if symmetric:
            self.up_projection_ac = Dense(emb_trip_out, emb_out)

    def forward(
        self,
        x_in: Tensor,
        rad: Tensor,
        basis: dict,
        id_swap: Tensor | None = None,
        expand_idx: Tensor | None = None,
    ) -> Tensor:
        """``basis``: "Y" (N, Kc*L, Kb) angular blocks, "in_index" (N, Kb) padded in-edges, and
        either "R" (out edges, emb_cbf, L) with "out_t" / "out_slot", or "R_pad" (N, emb_cbf,
        Kc*L) for the fused edge -> atom aggregation."""
        x = self.dense_ba(x_in)
        if expand_idx is not None:
            x = x[expand_idx]
        x2 = x * self.mlp_rbf(rad)
        x = self.scale_rbf(x2, ref=x)
        x = self.down_projection(x)  # per input edge
        X = torch.cat([x, x.new_zeros(1, x.shape[1])])[basis["in_index"]]  # (N, Kb, C)
        S = torch.bmm(basis["Y"], X)  # (N, Kc*L, C): sum_b Y_l(angle cab) x_b for every out slot c
        if "R_pad" in basis:  # edge -> atom: sum over out edges c of R_c . S_c, then W_bil
            y = torch.bmm(basis["R_pad"], S)
            y = self.mlp_cbf.bilinear(y.reshape(y.shape[0], -1))
        else:
            N, KL, C = S.shape
            L = basis["R"].shape[2]
            sx = S.view(N, KL // L, L, C)[basis["out_t"], basis["out_slot"]]  # (E_out, L, C)
            y = self.mlp_cbf.project(basis["R"], sx)
        y = self.scale_cbf_sum(y, ref=x)
        if self.symmetric:
            # Dense acts row by row, so swapping its (narrow) input equals swapping its output
            return (self.up_projection_ca(y) + self.up_projection_ac(y[id_swap])) * INV_SQRT2
        return self.up_projection_ca(y)


class QuadrupletInteraction(nn.Module):
    """Quadruplet message passing d->b->a<-c (JMP.md §1.9 step 3), symmetric."""

    def __init__(self, emb_edge: int, emb_quad_in: int, emb_quad_out: int, emb_rbf: int, emb_cbf: int, emb_sbf: int):
        super().__init__()
        self.dense_db = Dense(emb_edge, emb_edge)
        self.mlp_rbf = Dense(emb_rbf, emb_edge, activation=False)
        self.scale_rbf = ScaleFactor()
        self.mlp_cbf = Dense(emb_cbf, emb_quad_in, activation=False)
        self.scale_cbf = ScaleFactor()
        self.mlp_sbf = EfficientInteractionBilinear(emb_quad_in, emb_sbf, emb_quad_out)
        self.scale_sbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_edge, emb_quad_in)
        self.up_projection_ca = Dense(emb_quad_out, emb_edge)
        self.up_projection_ac = Dense(emb_quad_out, emb_edge)

    def forward(self, m: Tensor, basis: dict, quad, id_swap: Tensor) -> Tensor:
        x = self.dense_db(m)
        x2 = x * self.mlp_rbf(basis["rad"])
        x = self.scale_rbf(x2, ref=x)
        x = self.down_projection(x)
        # triplet_in d->b -> b->a, dense per qint edge (main slot d)
        x = torch.cat([x, x.new_zeros(1, x.shape[1])])[basis["in_index"]]
        x = x * basis["in_mask"][..., None].to(x.dtype)
        x2 = x * self.mlp_cbf(basis["cbf"])
        x = self.scale_cbf(x2.reshape(-1, x2.shape[-1]), ref=x.reshape(-1, x.shape[-1])).view(x2.shape)
        # z[a, b, c] = sum over d of Y_l'(theta_cabd) x_d, contracted with R_e . Y_l(phi_cab)
        # (the shared operator Q) per out edge e = c->a (bases.quadruplet_message)
        y = quadruplet_message(basis["dihedral"], basis["ops"], x, basis["out_t"], basis["out_slot"])
        y = self.mlp_sbf.bilinear(y.reshape(y.shape[0], -1))
        y = self.scale_sbf_sum(y, ref=x.reshape(-1, x.shape[-1]))
        return (self.up_projection_ca(y) + self.up_projection_ac(y[id_swap])) * INV_SQRT2


class PairInteraction(nn.Module):
    """Atom->atom message passing over the a2a graph (JMP.md §1.9 step 6)."""

    def __init__(self, emb_atom: int, emb_pair_in: int, emb_pair_out: int, emb_rbf: int):
        super().__init__()
        self.emb_rbf = emb_rbf
        self.bilinear = Dense(emb_rbf * emb_pair_in, emb_pair_out, activation=False)
        self.scale_rbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_atom, emb_pair_in)
        self.up_projection = Dense(emb_pair_out, emb_atom)

    def forward(self, h: Tensor, rad_W: Tensor, edge_index: Tensor) -> Tensor:
        x_b = self.down_projection(h)
        x_ba = x_b[edge_index[0]]
        y = segment_sum(rad_W[:, :, None] * x_ba[:, None, :], edge_index[1], h.shape[0])  # (N, rbf, in)
        y = self.bilinear(y.reshape(h.shape[0], -1))
        y = self.scale_rbf_sum(y, ref=x_ba)
        return self.up_projection(y)


def _mlp(units_in: int, units: int, n_hidden: int) -> nn.Sequential:
    """JMP's ``get_mlp``: Dense(units_in -> units) only when the widths differ, then ``n_hidden``
    residual layers (so an atom update with emb_size_edge == emb_size_atom has no Dense)."""
    first = [Dense(units_in, units)] if units_in != units else []
    return nn.Sequential(*first, *[ResidualLayer(units) for _ in range(n_hidden)])


class AtomUpdateBlock(nn.Module):
    """h2 = layers(scale_sum(sum_{s->t} m_st * dense_rbf(basis)))."""

    def __init__(self, emb_atom: int, emb_edge: int, emb_rbf: int, n_hidden: int):
        super().__init__()
        self.dense_rbf = Dense(emb_rbf, emb_edge, activation=False)
        self.scale_sum = ScaleFactor()
        self.layers = _mlp(emb_edge, emb_atom, n_hidden)

    def aggregate(self, m: Tensor, rad: Tensor, idx_t: Tensor, n_atoms: int, dropout_scale: float = 1.0) -> Tensor:
        x = segment_sum(m * self.dense_rbf(rad), idx_t, n_atoms)
        if dropout_scale != 1.0:
            x = x * dropout_scale
        return self.scale_sum(x, ref=m)

    def forward(self, m: Tensor, rad: Tensor, idx_t: Tensor, n_atoms: int) -> Tensor:
        return self.layers(self.aggregate(m, rad, idx_t, n_atoms))


class OutputBlock(AtomUpdateBlock):
    """Per-block energy (atoms) and direct-force (edges) features (JMP.md §1.10)."""

    def __init__(self, emb_atom: int, emb_edge: int, emb_rbf: int, n_hidden: int, n_after_atom: int, direct_forces: bool):
        super().__init__(emb_atom, emb_edge, emb_rbf, n_hidden)
        # JMP adds the atom embedding h (and runs seq_energy2) only with num_output_afteratom >= 1
        self.seq_energy2 = nn.Sequential(*[ResidualLayer(emb_atom) for _ in range(n_after_atom)]) if n_after_atom >= 1 else None
        self.direct_forces = direct_forces
        if direct_forces:
            self.scale_rbf_F = ScaleFactor()
            # JMP: get_mlp(E, E, nHidden) with nHidden = num_atom (not num_output_afteratom)
            self.seq_forces = _mlp(emb_edge, emb_edge, n_hidden)
            self.dense_rbf_F = Dense(emb_rbf, emb_edge, activation=False)

    def forward(self, h: Tensor, m: Tensor, rad: Tensor, idx_t: Tensor, dropout_scale: float = 1.0):
        x_E = self.layers(self.aggregate(m, rad, idx_t, h.shape[0], dropout_scale))
        if self.seq_energy2 is not None:
            x_E = self.seq_energy2((x_E + h) * INV_SQRT2)
        x_F = None
        if self.direct_forces:
            x_F = self.seq_forces(m)
            x_F = self.scale_rbf_F(x_F * self.dense_rbf_F(rad), ref=x_F)
        return x_E, x_F


class InteractionBlock(nn.Module):
    """One GemNet-OC interaction block: six message paths, then edge and atom updates."""

    def __init__(self, c: BackboneConfig):
        super().__init__()
        A, E = c.emb_size_atom, c.emb_size_edge
        self.dense_ca = Dense(E, E)
        self.trip_interaction = TripletInteraction(E, c.emb_size_trip_in, c.emb_size_trip_out, E, c.emb_size_rbf, c.emb_size_cbf, True)
        self.quad_interaction = QuadrupletInteraction(E, c.emb_size_quad_in, c.emb_size_quad_out, c.emb_size_rbf, c.emb_size_cbf, c.emb_size_sbf)
        self.atom_edge_interaction = TripletInteraction(A, c.emb_size_trip_in, c.emb_size_trip_out, E, c.emb_size_rbf, c.emb_size_cbf, True)
        self.edge_atom_interaction = TripletInteraction(E, c.emb_size_trip_in, c.emb_size_trip_out, A, c.emb_size_rbf, c.emb_size_cbf, False)
        self.atom_interaction = PairInteraction(A, c.emb_size_aint_in, c.emb_size_aint_out, c.emb_size_rbf)
        self.layers_before_skip = nn.Sequential(*[ResidualLayer(E) for _ in range(c.num_before_skip)])
        self.layers_after_skip = nn.Sequential(*[ResidualLayer(E) for _ in range(c.num_after_skip)])
        self.atom_emb_layers = nn.Sequential(*[ResidualLayer(A) for _ in range(c.num_atom_emb_layers)])
        self.atom_update = AtomUpdateBlock(A, E, c.emb_size_rbf, c.num_atom)
        self.concat_layer = EdgeEmbedding(A, E, E)
        self.residual_m = nn.Sequential(*[ResidualLayer(E) for _ in range(c.num_concat)])

    def forward(self, h: Tensor, m: Tensor, bases: dict, g: GraphSet) -> tuple[Tensor, Tensor]:
        N = h.shape[0]
        id_swap = g.main.id_swap
        idx_s, idx_t = g.main.edge_index
        x_skip = self.dense_ca(m)
        x_e2e = self.trip_interaction(m, bases["tint"]["rad"], bases["tint"], id_swap=id_swap)
        x_qint = self.quad_interaction(m, bases["qint"], g.quad, id_swap)
        x_a2e = self.atom_edge_interaction(h, bases["aeint"]["rad"], bases["aeint"], id_swap=id_swap, expand_idx=g.a2ee2a.edge_index[0])
        h_e2a = self.edge_atom_interaction(m, bases["eaint"]["rad"], bases["eaint"])
        h_a2a = self.atom_interaction(h, bases["aint"], g.a2a.edge_index)
        x = (x_skip + x_e2e + x_qint + x_a2e) * 0.5
        h = (h + h_e2a + h_a2a) * (1.0 / math.sqrt(3.0))
        x = self.layers_before_skip(x)
        m = (m + x) * INV_SQRT2
        m = self.layers_after_skip(m)
        h = self.atom_emb_layers(h)
        h2 = self.atom_update(m, bases["h"], idx_t, N)
        h = (h + h2) * INV_SQRT2
        m2 = self.residual_m(self.concat_layer(h, m, idx_s, idx_t))
        m = (m + m2) * INV_SQRT2
        return h, m


class GlobalOutMLP(nn.Module):
    def __init__(self, in_features: int, out_features: int, n_res: int):
        super().__init__()
        self.out_mlp = nn.Sequential(Dense(in_features, out_features), *[ResidualLayer(out_features) for _ in range(n_res)])

    def forward(self, x: Tensor) -> Tensor:
        return self.out_mlp(x)


class GemNetOCBackbone(nn.Module):
    """GemNet-OC without the atom embedding (JMP keeps it outside). ``forward(h, pos, cell,
    batch, graphs)`` returns per-atom energy features (N, A), per-edge force features (E_main, E)
    or None, and the main-graph geometry (V_st, idx_t) the heads need."""

    def __init__(self, config: BackboneConfig):
        super().__init__()
        c = config
        self.config = c
        A, E = c.emb_size_atom, c.emb_size_edge
        self.bases = Bases(c)
        self.int_blocks = nn.ModuleList([InteractionBlock(c) for _ in range(c.num_blocks)])
        self.out_blocks = nn.ModuleList(
            [OutputBlock(A, E, c.emb_size_rbf, c.num_atom, c.num_output_afteratom, c.direct_forces) for _ in range(c.num_blocks + 1)]
        )
        self.out_mlp_E = GlobalOutMLP(A * (c.num_blocks + 1), A, c.num_global_out_layers)
        if c.direct_forces:
            self.out_mlp_F = GlobalOutMLP(E * (c.num_blocks + 1), E, c.num_global_out_layers)

    def forward(self, h: Tensor, geo: dict, g: GraphSet, edge_dropout: float = 0.0) -> dict:
        m, bases = self.bases(h, geo, g)
        idx_t = g.main.edge_index[1]
        scale = 1.0 / (1.0 - edge_dropout) if (self.training and edge_dropout > 0) else 1.0
        x_E, x_F = self.out_blocks[0](h, m, bases["out"], idx_t, scale)
        xs_E, xs_F = [x_E], [x_F]
        for i, block in enumerate(self.int_blocks):
            h, m = block(h, m, bases, g)
            x_E, x_F = self.out_blocks[i + 1](h, m, bases["out"], idx_t, scale)
            xs_E.append(x_E)
            xs_F.append(x_F)
        out = {"energy": self.out_mlp_E(torch.cat(xs_E, dim=-1)), "forces": None}
        if self.config.direct_forces:
            out["forces"] = self.out_mlp_F(torch.cat(xs_F, dim=-1))
        out["V_st"] = geo["main"][1]
        out["idx_t"] = idx_t
        return out
