"""EquiformerV2 backbone for inference, as fairchem's OC20 S2EF models are configured.

Liao, Shuaibi, Sriram, Zitnick & Smidt 2024, "EquiformerV2: Improved Equivariant Transformer for
Scaling to Higher-Degree Representations" (ICLR), with the SO(2) convolution of eSCN (Passaro &
Zitnick 2023, "Reducing SO(3) Convolutions to SO(2) for Efficient Equivariant GNNs", ICML).

Node features are SO(3) embeddings x (N, (lmax+1)^2, C): C channels of real spherical-harmonic
coefficients, l-primary (``so3``). On an edge s -> t the pair (x_s, x_t) is rotated into the frame
where the edge is the y axis; there a rotation about the edge mixes only the +m / -m pair of each
order m, so an equivariant linear map is block-diagonal in m (an "SO(2) convolution", eSCN
eq. 8-11), and orders |m| > mmax are dropped. Blocks appear in data-flow order: distance basis,
radial MLP, SO(3) linear, layer norm, edge-degree embedding, SO(2) convolution, the edge rotation,
graph attention, the S2-grid feed-forward network, the transformer block, the backbone.

Only the options of the OC20 configuration are implemented (``layer_norm_sh``, separable S2
activation, attention re-normalisation, per-block atom-edge embeddings, grid MLP feed-forward,
one resolution). Parameter names follow the published checkpoints so they load by name
(``io.py``). Inference only: no dropout, drop-path or gradient paths are needed for features.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from atomsift.models.equiformer_v2 import so3

# Average degree of the IS2RE 100k graphs (5 A, 100 neighbours) that fairchem divides the
# edge-degree embedding by; the OC20 checkpoints were trained with it.
AVG_DEGREE = 23.395238876342773


@dataclass(frozen=True)
class EquiformerV2Config:
    """Hyperparameters (fairchem ``equiformer_v2``; defaults: the 31M OC20 S2EF All+MD model,
    ``configs/oc20/s2ef/all/equiformer_v2/equiformer_v2_N@8_L@4_M@2_31M.yml``).

    ``num_gaussians``: the distance basis has 600 Gaussians on [0, max_radius] whatever
    ``num_distance_basis`` (512) says; the checkpoints' first radial layers have 600 + 2 C inputs.
    """

    num_layers: int = 8
    sphere_channels: int = 128
    attn_hidden_channels: int = 64
    num_heads: int = 8
    attn_alpha_channels: int = 64
    attn_value_channels: int = 16
    ffn_hidden_channels: int = 128
    lmax: int = 4
    mmax: int = 2
    grid_resolution: int = 18
    edge_channels: int = 128
    num_gaussians: int = 600
    gaussian_width: float = 2.0
    max_radius: float = 12.0
    max_neighbors: int = 20
    max_num_elements: int = 90
    avg_degree: float = AVG_DEGREE

    def to_dict(self) -> dict:
        return asdict(self)


CONFIGS: dict[str, EquiformerV2Config] = {
    # PAPER.md §2.1: the CSI extractor of Ghunaim et al. (eq2_31M_ec4_allmd.pt)
    "31m": EquiformerV2Config(),
    # a reduced width (and lmax 3, mmax 1) for fast tests of the same code paths
    "tiny": EquiformerV2Config(num_layers=2, sphere_channels=16, attn_hidden_channels=16, num_heads=2,
                               attn_alpha_channels=8, attn_value_channels=4, ffn_hidden_channels=16, lmax=3,
                               mmax=1, grid_resolution=10, edge_channels=16),
}


# ----------------------------------------------------------------------------- edge scalars


class GaussianBasis(nn.Module):
    """exp(-(d - mu_k)^2 / (2 (w dmu)^2)) on ``num`` centres mu_k evenly on [0, cutoff] (SchNet's
    smearing; fairchem ``GaussianSmearing(0, cutoff, 600, 2.0)``)."""

    def __init__(self, cutoff: float, num: int, width: float):
        super().__init__()
        # float32 centres and width, as the checkpoints' buffer and fairchem's coefficient
        offset = torch.linspace(0.0, cutoff, num, dtype=torch.float32)
        self.coeff = -0.5 / (width * (offset[1] - offset[0])).item() ** 2
        self.register_buffer("offset", offset, persistent=False)

    def forward(self, d: Tensor) -> Tensor:
        d = d.view(-1, 1) - self.offset.view(1, -1)
        return torch.exp(self.coeff * torch.pow(d, 2))


class RadialMLP(nn.Module):
    """Linear -> LayerNorm -> SiLU per hidden width, then Linear (EquiformerV2 §3.1, the radial
    functions of edge scalars: Gaussian distances and source / target element embeddings)."""

    def __init__(self, channels: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(1, len(channels)):
            layers.append(nn.Linear(channels[i - 1], channels[i]))
            if i < len(channels) - 1:
                layers += [nn.LayerNorm(channels[i]), nn.SiLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _edge_scalars(dist_basis: Tensor, numbers: Tensor, edge_index: Tensor, source: nn.Embedding,
                  target: nn.Embedding) -> Tensor:
    """[Gaussian(d_st), E_src(Z_s), E_tgt(Z_t)]: the invariant inputs of every radial function."""
    return torch.cat((dist_basis, source(numbers[edge_index[0]]), target(numbers[edge_index[1]])), dim=1)


# ----------------------------------------------------------------------------- SO(3) layers


class SO3Linear(nn.Module):
    """Per-degree linear map of an SO(3) embedding: y_l = W_l x_l (+ bias on l = 0 only), the
    equivariant linear layer of EquiformerV2 §3.1."""

    def __init__(self, in_features: int, out_features: int, lmax: int):
        super().__init__()
        self.lmax = lmax
        self.weight = nn.Parameter(torch.empty(lmax + 1, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)
        self.register_buffer("expand_index", torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)]),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        w = torch.index_select(self.weight, 0, self.expand_index)
        out = torch.einsum("bmi, moi -> bmo", x, w)
        out[:, 0:1, :] = out.narrow(1, 0, 1) + self.bias.view(1, 1, -1)
        return out


class EquivariantLayerNormSH(nn.Module):
    """EquiformerV2's ``layer_norm_sh`` (§3.3, "equivariant layer normalization"): a LayerNorm on
    the l = 0 channels; for l > 0 one scale per node, the root mean square over channels of the
    degree-balanced mean square sum_l (1 / lmax) mean_m x_lm^2, times a learnt weight per (l, C)."""

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.lmax = lmax
        self.eps = eps
        self.norm_l0 = nn.LayerNorm(channels, eps=eps)
        self.affine_weight = nn.Parameter(torch.ones(lmax, channels))
        w = torch.zeros((lmax + 1) ** 2 - 1, 1)
        for l in range(1, lmax + 1):
            w[l * l - 1 : (l + 1) ** 2 - 1] = 1.0 / (2 * l + 1)
        self.register_buffer("balance_degree_weight", w / lmax, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        out = [self.norm_l0(x.narrow(1, 0, 1))]
        norm = torch.einsum("nic, ia -> nac", x.narrow(1, 1, x.shape[1] - 1).pow(2), self.balance_degree_weight)
        norm = (torch.mean(norm, dim=2, keepdim=True) + self.eps).pow(-0.5)
        for l in range(1, self.lmax + 1):
            scale = norm * self.affine_weight.narrow(0, l - 1, 1).view(1, 1, -1)
            out.append(x.narrow(1, l * l, 2 * l + 1) * scale)
        return torch.cat(out, dim=1)


# ----------------------------------------------------------------------------- tables and edge rotation


class SO3Tables(nn.Module):
    """Constant tables shared by every block (non-persistent buffers; ``so3`` computes them):
    J_l of the Wigner-D matrices, the reduced layouts, and the S2 grids at (lmax, mmax) (edge
    messages) and (lmax, lmax) (node feed-forward)."""

    def __init__(self, lmax: int, mmax: int, resolution: int):
        super().__init__()
        self.lmax, self.mmax = lmax, mmax
        dt = torch.get_default_dtype()
        for l in range(lmax + 1):
            self.register_buffer(f"j{l}", torch.tensor(so3.j_matrix(l), dtype=dt), persistent=False)
        red = torch.tensor(so3.reduced_index(lmax, mmax))
        perm = torch.tensor(so3.m_primary_order(lmax, mmax))
        self.register_buffer("reduced", red, persistent=False)
        self.register_buffer("to_m", perm, persistent=False)  # l-primary -> m-primary (gather)
        self.register_buffer("to_l", torch.argsort(perm), persistent=False)  # m-primary -> l-primary
        self.register_buffer("rescale", torch.tensor(so3.degree_rescale(lmax, mmax), dtype=dt), persistent=False)
        self.m_sizes = so3.m_sizes(lmax, mmax)
        to_e, from_e = so3.grid_matrices(lmax, mmax, resolution)
        to_n, from_n = so3.grid_matrices(lmax, lmax, resolution)
        r2 = resolution * resolution
        self.register_buffer("to_grid_edge", torch.tensor(to_e.reshape(r2, -1), dtype=dt), persistent=False)
        self.register_buffer("from_grid_edge", torch.tensor(from_e.reshape(r2, -1).T.copy(), dtype=dt), persistent=False)
        self.register_buffer("to_grid_node", torch.tensor(to_n.reshape(r2, -1), dtype=dt), persistent=False)
        self.register_buffer("from_grid_node", torch.tensor(from_n.reshape(r2, -1).T.copy(), dtype=dt), persistent=False)

    def j(self) -> list[Tensor]:
        return [getattr(self, f"j{l}") for l in range(self.lmax + 1)]


class EdgeRotation:
    """The Wigner-D matrices of one graph's edge frames (eSCN §3): ``to_edge`` rotates node
    coefficients into the edge frame keeping |m| <= mmax (m-primary), ``from_edge`` rotates back
    with the degree rescaling of the dropped orders."""

    def __init__(self, frames: Tensor, tables: SO3Tables):
        wigner = so3.wigner_d(frames, tables.lmax, tables.j())
        self.tables = tables
        self.forward_d = wigner[:, tables.reduced[tables.to_m], :]
        self.inverse_d = torch.transpose(wigner, 1, 2)[:, :, tables.reduced] * tables.rescale.view(1, 1, -1)

    def to_edge(self, x: Tensor) -> Tensor:
        return torch.bmm(self.forward_d, x)

    def from_edge(self, x_m: Tensor) -> Tensor:
        return torch.bmm(self.inverse_d, x_m[:, self.tables.to_l])


# ----------------------------------------------------------------------------- input block


class EdgeDegreeEmbedding(nn.Module):
    """Initial l > 0 features (EquiformerV2 §3.4, "edge-degree embedding"): a radial MLP of the
    edge scalars gives the m = 0 coefficients of every degree in the edge frame; rotated back and
    summed over the incoming edges, divided by the average degree."""

    def __init__(self, cfg: EquiformerV2Config):
        super().__init__()
        C, E = cfg.sphere_channels, cfg.edge_channels
        self.channels = C
        self.n_m0 = cfg.lmax + 1
        self.source_embedding = nn.Embedding(cfg.max_num_elements, E)
        self.target_embedding = nn.Embedding(cfg.max_num_elements, E)
        self.rad_func = RadialMLP([cfg.num_gaussians + 2 * E, E, E, self.n_m0 * C])
        self.rescale = cfg.avg_degree

    def forward(self, numbers: Tensor, dist_basis: Tensor, edge_index: Tensor, rot: EdgeRotation, n_nodes: int) -> Tensor:
        x_edge = _edge_scalars(dist_basis, numbers, edge_index, self.source_embedding, self.target_embedding)
        m0 = self.rad_func(x_edge).reshape(-1, self.n_m0, self.channels)
        pad = m0.new_zeros((m0.shape[0], rot.tables.reduced.numel() - self.n_m0, self.channels))
        msg = rot.from_edge(torch.cat((m0, pad), dim=1))
        out = msg.new_zeros((n_nodes, msg.shape[1], msg.shape[2]))
        out.index_add_(0, edge_index[1], msg)
        return out / self.rescale


# ----------------------------------------------------------------------------- SO(2) convolution


class SO2MConvolution(nn.Module):
    """The order-m block of an SO(2) convolution (eSCN eq. 10): the (+m, -m) pair is one complex
    coefficient and the map is complex multiplication, (W_r x_r - W_i x_i, W_r x_i + W_i x_r)."""

    def __init__(self, in_channels: int, out_channels: int, n_degrees: int):
        super().__init__()
        self.fc = nn.Linear(n_degrees * in_channels, 2 * out_channels * n_degrees, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (E, 2, n_degrees * in) -> (E, 2, n_degrees * out)
        y = self.fc(x)
        half = self.fc.out_features // 2
        y_r, y_i = y.narrow(2, 0, half), y.narrow(2, half, half)
        return torch.cat((y_r.narrow(1, 0, 1) - y_i.narrow(1, 1, 1), y_r.narrow(1, 1, 1) + y_i.narrow(1, 0, 1)), dim=1)


class SO2Convolution(nn.Module):
    """An SO(2)-equivariant linear map of edge-frame coefficients (m-primary layout), optionally
    modulated per input component by a radial MLP of the edge scalars (eSCN §3.3); ``extra_m0``
    extra invariant outputs come from the m = 0 block (attention logits and gates)."""

    def __init__(self, in_channels: int, out_channels: int, lmax: int, mmax: int,
                 rad_channels: list[int] | None = None, extra_m0: int = 0):
        super().__init__()
        self.out_channels = out_channels
        self.extra_m0 = extra_m0
        self.m_sizes = so3.m_sizes(lmax, mmax)
        self.fc_m0 = nn.Linear(self.m_sizes[0] * in_channels, self.m_sizes[0] * out_channels + extra_m0)
        self.so2_m_conv = nn.ModuleList(SO2MConvolution(in_channels, out_channels, n) for n in self.m_sizes[1:])
        self.rad_func = None
        if rad_channels is not None:
            n_rad = in_channels * (self.m_sizes[0] + sum(self.m_sizes[1:]))
            self.rad_func = RadialMLP([*rad_channels, n_rad])

    def forward(self, x: Tensor, x_edge: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        E = x.shape[0]
        rad = self.rad_func(x_edge) if self.rad_func is not None else None
        n0 = self.m_sizes[0]
        x0 = x.narrow(1, 0, n0).reshape(E, -1)
        if rad is not None:
            x0 = x0 * rad.narrow(1, 0, self.fc_m0.in_features)
        x0 = self.fc_m0(x0)
        extra = None
        if self.extra_m0:
            extra = x0.narrow(-1, 0, self.extra_m0)
            x0 = x0.narrow(-1, self.extra_m0, self.fc_m0.out_features - self.extra_m0)
        out = [x0.view(E, -1, self.out_channels)]
        offset, offset_rad = n0, self.fc_m0.in_features
        for n, conv in zip(self.m_sizes[1:], self.so2_m_conv):
            xm = x.narrow(1, offset, 2 * n).reshape(E, 2, -1)
            if rad is not None:
                k = conv.fc.in_features
                xm = xm * rad.narrow(1, offset_rad, k).reshape(E, 1, k)
                offset_rad += k
            out.append(conv(xm).view(E, -1, self.out_channels))
            offset += 2 * n
        return torch.cat(out, dim=1), extra


# ----------------------------------------------------------------------------- attention


class SmoothLeakyReLU(nn.Module):
    """(1 + a)/2 x + (1 - a)/2 x (2 sigmoid(x) - 1), a = 0.2 (EquiformerV2 §3.2, attention logits)."""

    def __init__(self, negative_slope: float = 0.2):
        super().__init__()
        self.alpha = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        return ((1 + self.alpha) / 2) * x + ((1 - self.alpha) / 2) * x * (2 * torch.sigmoid(x) - 1)


def segment_softmax(logits: Tensor, index: Tensor, n: int) -> Tensor:
    """softmax of (E, H) logits over the edges of each target (torch-geometric's ``softmax``)."""
    idx = index.view(-1, 1).expand_as(logits)
    peak = logits.new_full((n, logits.shape[1]), -math.inf).scatter_reduce(0, idx, logits.detach(), "amax", include_self=True)
    out = (logits - peak.index_select(0, index)).exp()
    total = out.new_zeros((n, logits.shape[1])).scatter_add_(0, idx, out) + 1e-16
    return out / total.index_select(0, index)


def s2_activation(x: Tensor, to_grid: Tensor, from_grid: Tensor) -> Tensor:
    """SiLU applied pointwise on an S2 grid (EquiformerV2 §3.3, "S2 activation"; Cohen et al.
    2018): coefficients -> grid values -> SiLU -> coefficients."""
    grid = torch.nn.functional.silu(torch.matmul(to_grid, x))
    return torch.matmul(from_grid, grid)


class SO2EquivariantGraphAttention(nn.Module):
    """Equivariant graph attention (EquiformerV2 §3.2, Fig. 1b): [x_s, x_t] rotated to the edge
    frame -> SO(2) convolution with radial weights -> separable S2 activation (SiLU gates on l = 0,
    S2 activation on l > 0) -> SO(2) convolution = values; attention weights per head from the
    m = 0 extras (LayerNorm, smooth leaky ReLU, dot product, softmax over the target's edges);
    weighted values rotated back, summed per target and projected."""

    def __init__(self, cfg: EquiformerV2Config):
        super().__init__()
        C, H, E = cfg.sphere_channels, cfg.attn_hidden_channels, cfg.edge_channels
        self.num_heads, self.alpha_channels, self.value_channels = cfg.num_heads, cfg.attn_alpha_channels, cfg.attn_value_channels
        self.source_embedding = nn.Embedding(cfg.max_num_elements, E)
        self.target_embedding = nn.Embedding(cfg.max_num_elements, E)
        self.n_alpha = cfg.num_heads * cfg.attn_alpha_channels
        self.so2_conv_1 = SO2Convolution(2 * C, H, cfg.lmax, cfg.mmax, rad_channels=[cfg.num_gaussians + 2 * E, E, E],
                                         extra_m0=self.n_alpha + H)
        self.alpha_norm = nn.LayerNorm(cfg.attn_alpha_channels)
        self.alpha_act = SmoothLeakyReLU()
        self.alpha_dot = nn.Parameter(torch.empty(cfg.num_heads, cfg.attn_alpha_channels))
        nn.init.uniform_(self.alpha_dot, -1.0 / math.sqrt(cfg.attn_alpha_channels), 1.0 / math.sqrt(cfg.attn_alpha_channels))
        self.so2_conv_2 = SO2Convolution(H, cfg.num_heads * cfg.attn_value_channels, cfg.lmax, cfg.mmax)
        self.proj = SO3Linear(cfg.num_heads * cfg.attn_value_channels, C, cfg.lmax)

    def forward(self, x: Tensor, numbers: Tensor, dist_basis: Tensor, edge_index: Tensor, rot: EdgeRotation) -> Tensor:
        t = rot.tables
        x_edge = _edge_scalars(dist_basis, numbers, edge_index, self.source_embedding, self.target_embedding)
        msg = rot.to_edge(torch.cat((x[edge_index[0]], x[edge_index[1]]), dim=2))
        msg, extra = self.so2_conv_1(msg, x_edge)
        logits, gates = extra.narrow(1, 0, self.n_alpha), extra.narrow(1, self.n_alpha, extra.shape[1] - self.n_alpha)
        # separable S2 activation, in the l-primary layout of the grid
        msg_l = msg[:, t.to_l]
        act = s2_activation(msg_l, t.to_grid_edge, t.from_grid_edge)
        msg_l = torch.cat((torch.nn.functional.silu(gates).unsqueeze(1), act.narrow(1, 1, act.shape[1] - 1)), dim=1)
        msg, _ = self.so2_conv_2(msg_l[:, t.to_m])
        alpha = self.alpha_act(self.alpha_norm(logits.reshape(-1, self.num_heads, self.alpha_channels)))
        alpha = segment_softmax(torch.einsum("bik, ik -> bi", alpha, self.alpha_dot), edge_index[1], x.shape[0])
        E, K = msg.shape[0], msg.shape[1]
        msg = (msg.reshape(E, K, self.num_heads, self.value_channels) * alpha.reshape(E, 1, self.num_heads, 1))
        msg = rot.from_edge(msg.reshape(E, K, self.num_heads * self.value_channels))
        out = msg.new_zeros((x.shape[0], msg.shape[1], msg.shape[2]))
        out.index_add_(0, edge_index[1], msg)
        return self.proj(out)


# ----------------------------------------------------------------------------- feed-forward


class GridFeedForward(nn.Module):
    """Feed-forward network on the S2 grid (EquiformerV2 §3.3 with ``use_grid_mlp``): SO(3) linear,
    project to the grid, a pointwise 3-layer SiLU MLP, project back; the l = 0 output is a separate
    SiLU MLP of the input scalars; SO(3) linear."""

    def __init__(self, cfg: EquiformerV2Config):
        super().__init__()
        C, H = cfg.sphere_channels, cfg.ffn_hidden_channels
        self.so3_linear_1 = SO3Linear(C, H, cfg.lmax)
        self.scalar_mlp = nn.Sequential(nn.Linear(C, H), nn.SiLU())
        self.grid_mlp = nn.Sequential(nn.Linear(H, H, bias=False), nn.SiLU(), nn.Linear(H, H, bias=False), nn.SiLU(),
                                      nn.Linear(H, H, bias=False))
        self.so3_linear_2 = SO3Linear(H, C, cfg.lmax)

    def forward(self, x: Tensor, tables: SO3Tables) -> Tensor:
        gates = self.scalar_mlp(x.narrow(1, 0, 1))
        h = self.so3_linear_1(x)
        h = torch.matmul(tables.from_grid_node, self.grid_mlp(torch.matmul(tables.to_grid_node, h)))
        h = torch.cat((gates, h.narrow(1, 1, h.shape[1] - 1)), dim=1)
        return self.so3_linear_2(h)


class TransformerBlock(nn.Module):
    """Pre-norm transformer block (EquiformerV2 Fig. 1a): x + attn(norm_1 x), then + ffn(norm_2 x)."""

    def __init__(self, cfg: EquiformerV2Config):
        super().__init__()
        self.norm_1 = EquivariantLayerNormSH(cfg.lmax, cfg.sphere_channels)
        self.ga = SO2EquivariantGraphAttention(cfg)
        self.norm_2 = EquivariantLayerNormSH(cfg.lmax, cfg.sphere_channels)
        self.ffn = GridFeedForward(cfg)

    def forward(self, x: Tensor, numbers: Tensor, dist_basis: Tensor, edge_index: Tensor, rot: EdgeRotation) -> Tensor:
        x = x + self.ga(self.norm_1(x), numbers, dist_basis, edge_index, rot)
        return x + self.ffn(self.norm_2(x), rot.tables)


# ----------------------------------------------------------------------------- backbone


class EquiformerV2Backbone(nn.Module):
    """Atom embedding (l = 0) + edge-degree embedding -> ``num_layers`` transformer blocks ->
    final equivariant layer norm. :meth:`forward` returns the normalised node embedding
    (N, (lmax+1)^2, C): with the 31M OC20 model, 25 x 128 = 3200 numbers per atom, the
    representation of Ghunaim et al.'s CSI (PAPER.md §2.1)."""

    def __init__(self, cfg: EquiformerV2Config | None = None):
        super().__init__()
        cfg = cfg or EquiformerV2Config()
        self.config = cfg
        self.sphere_embedding = nn.Embedding(cfg.max_num_elements, cfg.sphere_channels)
        self.distance_expansion = GaussianBasis(cfg.max_radius, cfg.num_gaussians, cfg.gaussian_width)
        self.tables = SO3Tables(cfg.lmax, cfg.mmax, cfg.grid_resolution)
        self.edge_degree_embedding = EdgeDegreeEmbedding(cfg)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = EquivariantLayerNormSH(cfg.lmax, cfg.sphere_channels)

    @classmethod
    def from_checkpoint(cls, path) -> "EquiformerV2Backbone":
        """The backbone of a fairchem EquiformerV2 checkpoint, e.g. ``eq2_31M_ec4_allmd.pt``
        (strict; see :func:`atomsift.models.equiformer_v2.io.load_eqv2_checkpoint`)."""
        from atomsift.models.equiformer_v2.io import load_eqv2_checkpoint

        return load_eqv2_checkpoint(path)[0]

    @property
    def feature_dim(self) -> int:
        return (self.config.lmax + 1) ** 2 * self.config.sphere_channels

    def forward(self, numbers: Tensor, edge_index: Tensor, edge_vec: Tensor, roll: Tensor | None = None) -> Tensor:
        """``numbers`` (N,) atomic numbers < max_num_elements; ``edge_index`` (2, E) source, target;
        ``edge_vec`` (E, 3) = x_source (image) - x_target, Angstrom; ``roll`` (E, 3) the edge
        frames' reference vectors (default :func:`so3.least_aligned_axis`)."""
        cfg = self.config
        if numbers.numel() and int(numbers.max()) >= cfg.max_num_elements:
            raise ValueError(f"atomic number {int(numbers.max())} >= max_num_elements {cfg.max_num_elements}")
        dist = edge_vec.norm(dim=-1)
        frames = so3.edge_frames(edge_vec, so3.least_aligned_axis(edge_vec) if roll is None else roll)
        rot = EdgeRotation(frames, self.tables)
        n = numbers.shape[0]
        x = edge_vec.new_zeros((n, (cfg.lmax + 1) ** 2, cfg.sphere_channels))
        x[:, 0, :] = self.sphere_embedding(numbers)
        basis = self.distance_expansion(dist)
        x = x + self.edge_degree_embedding(numbers, basis, edge_index, rot, n)
        for block in self.blocks:
            x = block(x, numbers, basis, edge_index, rot)
        return self.norm(x)

    # ---------------------------------------------------------------- weights

    @torch.no_grad()
    def seed_parameters(self, seed: int) -> "EquiformerV2Backbone":
        """Fill every parameter by :func:`seeded_tensor` of its name: reproducible weights that the
        reference implementation can be given too (tools/eqv2_reference.py)."""
        for name, p in self.named_parameters():
            p.copy_(seeded_tensor(name, tuple(p.shape), seed).to(p.dtype))
        return self


def seeded_tensor(name: str, shape: tuple[int, ...], seed: int) -> Tensor:
    """A float64 tensor drawn from a ``torch.Generator`` seeded by sha256("seed/name"): u uniform in
    [-1, 1), scaled by the parameter's kind: 1 + 0.1 u for norm weights (1-D ``weight``,
    ``affine_weight``), 0.1 u for biases, u for embedding tables, u / sqrt(fan_in) otherwise."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    u = torch.rand(shape, generator=g, dtype=torch.float64) * 2.0 - 1.0
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "affine_weight" or (leaf == "weight" and len(shape) == 1):
        return 1.0 + 0.1 * u
    if leaf == "bias":
        return 0.1 * u
    if "embedding" in name:
        return u
    return u / math.sqrt(shape[-1])


def parameter_count(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


__all__ = ["EquiformerV2Config", "CONFIGS", "EquiformerV2Backbone", "seeded_tensor", "parameter_count"]
