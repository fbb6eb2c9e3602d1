"""Scale factors of GemNet-OC: JMP's shipped values and the fitting routine (JMP.md §1.12).

Default values for ``small`` and ``large`` are JMP's ``scale_files/{small,large}.pt`` rounded to 4
decimals (JMP.md Appendix A); loading a JMP checkpoint replaces them with the exact values from its
state dict. ``tiny`` gets values fitted once here on QM9 (see ``_TINY_INT``), like JMP's shipped
files; :func:`fit_scale_factors` refits any model on other data.
"""

from __future__ import annotations

from typing import Iterable

import torch

from atomsift.models.layers import ScaleFactor

# Order inside an interaction block (Appendix A).
INT_BLOCK_FACTORS = (
    "trip_interaction.scale_rbf",
    "trip_interaction.scale_cbf_sum",
    "quad_interaction.scale_rbf",
    "quad_interaction.scale_cbf",
    "quad_interaction.scale_sbf_sum",
    "atom_edge_interaction.scale_rbf",
    "atom_edge_interaction.scale_cbf_sum",
    "edge_atom_interaction.scale_rbf",
    "edge_atom_interaction.scale_cbf_sum",
    "atom_interaction.scale_rbf_sum",
    "atom_update.scale_sum",
)

_SMALL_INT = [
    [9.1764, 4.4744, 8.7886, 30.6798, 9.2561, 8.7406, 5.8885, 8.3232, 0.5284, 0.5551, 0.8314],
    [9.4285, 4.6532, 8.9942, 30.4324, 8.9621, 9.0437, 6.0217, 8.5997, 0.5373, 0.5148, 0.7888],
    [9.5692, 4.5931, 9.0342, 30.0220, 8.4069, 9.3497, 6.0255, 8.7310, 0.4919, 0.4720, 0.8016],
    [9.5659, 4.3126, 9.1650, 25.5366, 6.4141, 9.3845, 5.9476, 8.5652, 0.3856, 0.4701, 0.7923],
]
_SMALL_OUT = [(0.8372, 8.1875), (0.7591, 8.0404), (0.7411, 8.6489), (0.6887, 9.1320), (0.5871, 9.2458)]
_LARGE_INT = [
    [8.6122, 4.5892, 8.9873, 30.6466, 8.9491, 8.0385, 5.8841, 8.4334, 0.5874, 0.5619, 0.8013],
    [8.9763, 4.9231, 9.4198, 31.0663, 8.8377, 8.0507, 6.0074, 8.8496, 0.6211, 0.5011, 0.7783],
    [9.1396, 5.0497, 9.6043, 31.2978, 8.7266, 8.2055, 6.0233, 9.0120, 0.6028, 0.4599, 0.7974],
    [9.2230, 4.9071, 9.6659, 30.7091, 8.3550, 8.2454, 5.8692, 9.0567, 0.5419, 0.4244, 0.8151],
    [9.1979, 4.8165, 9.7526, 30.5048, 8.1734, 8.3334, 5.6328, 9.1139, 0.5281, 0.4284, 0.8268],
    [9.2216, 4.8004, 9.7140, 30.3707, 8.0478, 8.2136, 5.5796, 9.1504, 0.5089, 0.4111, 0.8354],
]
_LARGE_OUT = [(0.7891, 7.3092), (0.7005, 7.2087), (0.6985, 7.5690), (0.7199, 7.8815), (0.7391, 8.1678), (0.7517, 8.2570), (0.7637, 8.3453)]

# tiny: fitted with fit_scale_factors on 4 random QM9 batches of 32 (numpy seed 0), weights of seed 0,
# direct-force branch on, rounded to 4 decimals (tools/fit_tiny_scales.py; refitted for format 2) (JMP's pattern at smaller values: rbf gates ~1-3, quadruplet
# cbf ~11-15, edge->atom sums ~0.1-0.4; the recipe is fit_scale_factors, see docs/model.md)
_TINY_INT = [[3.375, 1.7926, 2.9378, 13.0036, 1.3911, 2.6905, 1.115, 3.1971, 0.1048, 0.7995, 0.438], [3.2833, 1.6807, 2.9862, 12.0983, 1.4664, 2.715, 1.2318, 3.2074, 0.1434, 0.6981, 0.3879]]
_TINY_OUT = [(0.4584, 3.0444), (0.3374, 2.9917), (0.3287, 2.8236)]


def _table(int_rows, out_rows) -> dict[str, float]:
    d: dict[str, float] = {}
    for i, row in enumerate(int_rows):
        for name, v in zip(INT_BLOCK_FACTORS, row):
            d[f"int_blocks.{i}.{name}"] = v
    for k, (s, f) in enumerate(out_rows):
        d[f"out_blocks.{k}.scale_sum"] = s
        d[f"out_blocks.{k}.scale_rbf_F"] = f
    return d


DEFAULT_SCALES = {
    "tiny": _table(_TINY_INT, _TINY_OUT),
    "small": _table(_SMALL_INT, _SMALL_OUT),
    "large": _table(_LARGE_INT, _LARGE_OUT),
}


def scale_factors(model) -> dict[str, ScaleFactor]:
    """name (relative to the backbone) -> ScaleFactor module, in module order."""
    bb = model.backbone if hasattr(model, "backbone") else model
    return {n: m for n, m in bb.named_modules() if isinstance(m, ScaleFactor)}


def apply_default_scales(model) -> None:
    """Set JMP's shipped values on small / large models (factors of the force branch only when present)."""
    table = DEFAULT_SCALES.get(getattr(model, "size", None) or "")
    if not table:
        return
    for name, mod in scale_factors(model).items():
        if name in table:
            mod.scale_factor.fill_(table[name])


@torch.no_grad()
def fit_scale_factors(model, batches: Iterable, graph=None) -> dict[str, float]:
    """Fit every ScaleFactor so its output variance matches its reference input's, one after the
    other in forward order (earlier fitted factors stay active), as JMP's ``fit_scales``:
    s = sqrt(Var(ref) / Var(x)), variances averaged over the batches weighted by rows.

    ``batches``: PyG batches (:mod:`atomsift.data.batch`) (iterated once per factor, so keep them few: JMP uses 16).
    ``graph``: GraphSettings (default: each batch's dataset). Returns name -> fitted value.
    The model runs in eval mode in the batches' dtype (fp32 in JMP).
    """
    batches = list(batches)
    if not batches:
        raise ValueError("fit_scale_factors needs at least one batch")
    factors = scale_factors(model)
    was_training = model.training
    model.eval()
    for mod in factors.values():
        mod.scale_factor.zero_()
        mod.fitting, mod.stats = False, []

    def run():
        for b in batches:
            model._features(b, graph, 0.0, b.pos)

    # forward order = the order in which the factors are first called
    order: list[str] = []
    hooks = [
        mod.register_forward_hook(lambda m, i, o, name=name: order.append(name) if name not in order else None)
        for name, mod in factors.items()
    ]
    model._features(batches[0], graph, 0.0, batches[0].pos)
    for h in hooks:
        h.remove()
    result: dict[str, float] = {}
    for name in order:
        mod = factors[name]
        mod.fitting, mod.stats = True, []
        run()
        mod.fitting = False
        n = sum(s[0] for s in mod.stats)
        vi = sum(s[0] * s[1] for s in mod.stats) / max(n, 1)
        vo = sum(s[0] * s[2] for s in mod.stats) / max(n, 1)
        value = (vi / vo) ** 0.5 if vo > 0 and vi > 0 else 1.0
        mod.scale_factor.fill_(value)
        mod.stats = []
        result[name] = float(value)
    model.train(was_training)
    return result
