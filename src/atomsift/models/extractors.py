"""Extractor specs beyond GemNet-OC checkpoints (``checkpoint.load_extractor`` asks here first).

``eqv2:PATH``: EquiformerV2 from a fairchem checkpoint (the paper's ``eq2_31M_ec4_allmd.pt``);
``eqv2:random-<config>-<seed>``: EquiformerV2 (config ``31m`` or ``tiny``) with seeded weights.
"""

from __future__ import annotations

PREFIXES = ("eqv2:",)


def special_extractor(spec):
    """The extractor for ``spec`` when it names one of the families above, else None."""
    spec = str(spec)
    if spec.startswith("eqv2:"):
        from atomsift.models.equiformer_v2.io import load_eqv2_extractor

        return load_eqv2_extractor(spec[len("eqv2:"):])
    return None
