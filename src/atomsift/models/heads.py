"""Output heads on top of the GemNet-OC backbone (JMP.md §1.11)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn
from torch_geometric.utils import scatter

from atomsift.models.layers import ScaledSiLU, segment_sum

HEAD_KINDS = ("energy_direct_forces", "energy_grad_forces", "energy", "scalar")
REDUCTIONS = ("sum", "mean", "max")


@dataclass(frozen=True)
class HeadSpec:
    """What a head predicts.

    ``kind``: "energy_direct_forces" (JMP pretraining: energy MLP summed over atoms + direct-force
    MLP over edges projected on unit edge vectors), "energy_grad_forces" (energy; forces =
    -dE/dx), "energy" (energy only) or "scalar" (one target ``y`` with ``reduction`` sum / mean /
    max over atoms). ``num_mlps``: linear layers in each MLP (JMP: 5).
    """

    kind: str = "energy_grad_forces"
    reduction: str = "sum"
    num_mlps: int = 5

    def __post_init__(self):
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"unknown head kind {self.kind!r}; choose from {', '.join(HEAD_KINDS)}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduction!r}; choose from {', '.join(REDUCTIONS)}")

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(width: int, num_mlps: int, bias: bool, last_bias: bool = False) -> nn.Sequential:
    """[width] * num_mlps + [1] linear layers with ScaledSiLU between (indices 0, 2, 4, ...)."""
    layers: list[nn.Module] = []
    for i in range(num_mlps - 1):
        layers += [nn.Linear(width, width, bias=bias), ScaledSiLU()]
    layers.append(nn.Linear(width, 1, bias=last_bias))
    return nn.Sequential(*layers)


def reduce_atoms(x: Tensor, batch: Tensor, num_graphs: int, reduction: str) -> Tensor:
    """(N,) per-atom values -> (B,) by sum / mean / max (PyG's scatter)."""
    return scatter(x, batch, 0, num_graphs, reduce=reduction)


class Head(nn.Module):
    """One named head: ``energy_mlp`` on per-atom features and, for direct forces, ``force_mlp``
    on per-edge features."""

    def __init__(self, spec: HeadSpec, emb_atom: int, emb_edge: int):
        super().__init__()
        self.spec = spec
        if spec.kind == "energy_direct_forces":
            self.energy_mlp = mlp(emb_atom, spec.num_mlps, bias=True)
            self.force_mlp = mlp(emb_edge, spec.num_mlps, bias=True)
        elif spec.kind in ("energy_grad_forces", "energy"):
            # JMP's EnergyForcesModelBase energy head: bias=False on all layers
            self.energy_mlp = mlp(emb_atom, spec.num_mlps, bias=False)
        else:
            self.energy_mlp = mlp(emb_atom, spec.num_mlps, bias=True)

    @property
    def needs_direct_forces(self) -> bool:
        return self.spec.kind == "energy_direct_forces"

    def forward(self, feats: dict, batch: Tensor, num_graphs: int) -> dict:
        per_atom = self.energy_mlp(feats["energy"]).squeeze(-1)
        if self.spec.kind == "scalar":
            return {"y": reduce_atoms(per_atom, batch, num_graphs, self.spec.reduction)}
        out = {"energy": reduce_atoms(per_atom, batch, num_graphs, self.spec.reduction)}
        if self.needs_direct_forces:
            f_st = self.force_mlp(feats["forces"])  # (E, 1)
            out["forces"] = segment_sum(f_st * feats["V_st"], feats["idx_t"], batch.shape[0])
        return out
