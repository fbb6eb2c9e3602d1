"""The full model: atom embedding + GemNet-OC backbone + named heads, built from config only."""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from atomsift.data.graphs import GraphSettings, build_graphs, edge_geometry, graph_settings
from atomsift.models.gemnet_oc import BackboneConfig, GemNetOCBackbone, backbone_config
from atomsift.models.heads import Head, HeadSpec


class GemNetModel(nn.Module):
    """``embedding`` (Z -> emb_size_atom, indexed Z - 1) + ``backbone`` + ``heads[name]``."""

    def __init__(self, config: BackboneConfig, heads: dict[str, HeadSpec], size: str | None = None, graph_rule: str = "invariant"):
        super().__init__()
        self.size = size
        self.config = config
        # neighbour rule of the graphs built from each batch's dataset settings (data/graphs.py
        # RULES): "invariant" (default) or "jmp" (JMP's order-dependent rules, exact reproduction)
        self.graph_rule = graph_rule
        # cutoff / max_neighbors in place of the dataset table's (a run file's ``graph:`` block)
        self.graph_overrides: dict = {}
        self.embedding = nn.Embedding(config.num_elements, config.emb_size_atom)
        self.backbone = GemNetOCBackbone(config)
        self.head_specs = {k: (v if isinstance(v, HeadSpec) else HeadSpec(**v)) for k, v in heads.items()}
        for name, spec in self.head_specs.items():
            if spec.kind == "energy_direct_forces" and not config.direct_forces:
                raise ValueError(f"head {name!r} needs direct forces but the backbone was built without them")
        self.heads = nn.ModuleDict({k: Head(v, config.emb_size_atom, config.emb_size_edge) for k, v in self.head_specs.items()})

    # ---------------------------------------------------------------- config

    def model_config(self) -> dict:
        return {
            "size": self.size,
            "graph_rule": self.graph_rule,
            "graph": dict(self.graph_overrides),
            "backbone": self.config.to_dict(),
            "heads": {k: v.to_dict() for k, v in self.head_specs.items()},
        }

    # ---------------------------------------------------------------- forward

    def _features(self, batch, graph: GraphSettings | None, edge_dropout: float, pos: Tensor, generator=None,
                  graph_dropout_in_eval: bool = False) -> dict:
        settings = graph if graph is not None else self.graph_for(batch.dataset)
        p = edge_dropout if self.training else 0.0
        p_graph = edge_dropout if (self.training or graph_dropout_in_eval) else 0.0
        g = build_graphs(pos.detach(), batch.cell, batch.pbc, batch.natoms, batch.tags, settings, p_graph, generator)
        cell = batch.cell.to(pos.dtype)
        geo = {
            "main": edge_geometry(pos, cell, batch.batch, g.main),
            "a2a": edge_geometry(pos, cell, batch.batch, g.a2a),
            "a2ee2a": edge_geometry(pos, cell, batch.batch, g.a2ee2a),
            "qint": edge_geometry(pos, cell, batch.batch, g.qint),
        }
        h = self.embedding(batch.numbers - 1)
        return self.backbone(h, geo, g, p)

    def graph_for(self, dataset) -> GraphSettings:
        """The graph settings of a batch of ``dataset``: JMP's table entry (data/graphs.py) with
        this model's neighbour rule and graph overrides."""
        from dataclasses import replace

        return replace(graph_settings(dataset, self.graph_rule), **self.graph_overrides)

    def forward(self, batch, head: str, graph: GraphSettings | None = None, edge_dropout: float = 0.0, generator=None) -> dict:
        """Predictions of head ``head``: "energy" (B,) eV, "forces" (N, 3) eV/A, "y" (B,)."""
        if head not in self.heads:
            raise KeyError(f"model has no head {head!r}; heads: {', '.join(self.heads)}")
        h = self.heads[head]
        B = batch.num_graphs
        if h.spec.kind == "energy_grad_forces":
            with torch.enable_grad():
                pos = batch.pos.detach().requires_grad_(True)
                feats = self._features(batch, graph, edge_dropout, pos, generator)
                out = h(feats, batch.batch, B)
                (grad,) = torch.autograd.grad(out["energy"].sum(), pos, create_graph=self.training)
            out["forces"] = -grad
            return out
        feats = self._features(batch, graph, edge_dropout, batch.pos, generator)
        return h(feats, batch.batch, B)

    def backbone_features(self, batch, graph: GraphSettings | None = None, edge_dropout: float = 0.0, generator=None) -> Tensor:
        """(N, emb_size_atom) per-atom features: out_mlp_E over the concatenated block outputs.

        ``edge_dropout`` drops a2a edges of the graph even in eval mode, as the paper's upstream
        feature extraction did (training-mode graph transforms on an eval-mode model); the
        backbone itself stays in its current mode (no train-time rescaling in eval)."""
        return self._features(batch, graph, edge_dropout, batch.pos, generator, graph_dropout_in_eval=True)["energy"]

    # ---------------------------------------------------------------- parameter groups

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {
            "embedding": list(self.embedding.parameters()),
            "backbone": list(self.backbone.parameters()),
            "heads": list(self.heads.parameters()),
        }

    def block_index(self, name: str) -> int | None:
        """Layer-wise LR group of a parameter (JMP ``param_specific_util``): -1 for the embedding,
        i for ``backbone.int_blocks.i`` and ``backbone.out_blocks.{i+1}`` (``out_blocks.0`` -> 0),
        None for the rest (bases, out_mlp_E/F, heads)."""
        if name.startswith("embedding."):
            return -1
        m = re.match(r"backbone\.int_blocks\.(\d+)\.", name)
        if m:
            return int(m.group(1))
        m = re.match(r"backbone\.out_blocks\.(\d+)\.", name)
        if m:
            return max(0, int(m.group(1)) - 1)
        return None

    def count_parameters(self) -> dict[str, int]:
        g = self.parameter_groups()
        c = {k: sum(p.numel() for p in v) for k, v in g.items()}
        c["total"] = sum(c.values())
        return c


def build_model(
    size: str = "tiny",
    heads: dict[str, HeadSpec] | None = None,
    direct_forces_backbone: bool | None = None,
    seed: int = 0,
    config: BackboneConfig | dict | None = None,
) -> GemNetModel:
    """Embedding + GemNet-OC ``size`` + ``heads``, with weights drawn from ``seed`` (the global
    RNG is left untouched). ``direct_forces_backbone`` defaults to True when a head needs it.
    Default JMP scale factors are set for small / large (``atomsift.models.scaling``)."""
    from atomsift.models.scaling import apply_default_scales

    heads = dict(heads or {})
    heads = {k: (v if isinstance(v, HeadSpec) else HeadSpec(**v)) for k, v in heads.items()}
    if direct_forces_backbone is None:
        direct_forces_backbone = any(h.kind == "energy_direct_forces" for h in heads.values())
    if config is None:
        cfg = backbone_config(size, direct_forces_backbone)
    else:
        cfg = config if isinstance(config, BackboneConfig) else BackboneConfig(**config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = GemNetModel(cfg, heads, size=size)
    apply_default_scales(model)
    return model
