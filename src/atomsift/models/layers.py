"""Building blocks of GemNet-OC (JMP.md §1.7): ScaledSiLU, Dense, ResidualLayer, ScaleFactor,
the He-orthogonal initialiser and segment sums (torch-geometric's scatter)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter


def segment_sum(x: Tensor, index: Tensor, size: int) -> Tensor:
    """sum of rows of ``x`` into ``size`` rows by ``index`` (PyG's scatter, twice differentiable)."""
    return scatter(x, index, 0, size, reduce="sum")


def he_orthogonal_init(weight: Tensor) -> Tensor:
    """Orthogonal init, each output row standardised (over the first two axes for 3-D weights),
    times sqrt(1 / fan_in) (GemNet's ``he_orthogonal_init``)."""
    with torch.no_grad():
        tensor = torch.empty_like(weight)
        flat = tensor.view(tensor.shape[0], -1) if tensor.dim() != 3 else tensor.view(-1, tensor.shape[-1]).t()
        nn.init.orthogonal_(flat)
        if tensor.dim() == 3:
            fan_in = tensor.shape[0] * tensor.shape[1]
            t = tensor.reshape(-1, tensor.shape[-1])
            mean = t.mean(dim=0, keepdim=True)
            var = t.var(dim=0, keepdim=True, unbiased=True)
            t = (t - mean) / torch.sqrt(var + 1e-6)
            tensor = t.reshape(tensor.shape)
        else:
            fan_in = tensor.shape[1]
            mean = tensor.mean(dim=1, keepdim=True)
            var = tensor.var(dim=1, keepdim=True, unbiased=True)
            tensor = (tensor - mean) / torch.sqrt(var + 1e-6)
        weight.copy_(tensor * math.sqrt(1.0 / fan_in))
    return weight


class ScaledSiLU(nn.Module):
    """SiLU(x) / 0.6, keeping activations near unit variance."""

    def forward(self, x: Tensor) -> Tensor:
        # silu's backward keeps its input, not its output, so the scale can be applied in place
        return torch.nn.functional.silu(x).mul_(1.0 / 0.6)


class Dense(nn.Module):
    """Linear (bias-free by default) then ScaledSiLU (``activation=True``) or identity."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, activation: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.act = ScaledSiLU() if activation else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        he_orthogonal_init(self.linear.weight)
        if self.linear.bias is not None:
            nn.init.zeros_(self.linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.linear(x))


class ResidualLayer(nn.Module):
    """y = (x + Dense(Dense(x))) / sqrt(2), both Dense with activation and no bias."""

    def __init__(self, units: int, n_layers: int = 2):
        super().__init__()
        self.dense_mlp = nn.Sequential(*[Dense(units, units) for _ in range(n_layers)])

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.dense_mlp(x)) * (1.0 / math.sqrt(2.0))


class ScaleFactor(nn.Module):
    """Multiply by a fitted scalar (buffer ``scale_factor``; 0 means unfitted = identity).

    While ``fitting`` is on, the module accumulates the variances of its unscaled output and of
    its reference input (see :func:`atomsift.models.scaling.fit_scale_factors`).
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("scale_factor", torch.tensor(0.0))
        self.fitting = False
        self.stats: list[tuple[int, float, float]] = []

    def forward(self, x: Tensor, ref: Tensor | None = None) -> Tensor:
        if self.fitting:
            with torch.no_grad():
                n = x.shape[0]
                vo = float(x.float().var(dim=0, unbiased=False).mean()) if n > 0 else 0.0
                vi = float(ref.float().var(dim=0, unbiased=False).mean()) if (ref is not None and ref.shape[0] > 0) else 1.0
                self.stats.append((n, vi, vo))
        s = self.scale_factor.to(x.dtype)
        # 0 = unfitted = identity; torch.where keeps this free of a host sync on GPUs
        return x * torch.where(s == 0, torch.ones_like(s), s)
