"""EquiformerV2 (Liao et al. 2024) trained on OC20: the CSI feature extractor of Ghunaim et al.
(PAPER.md §2.1). ``so3``: spherical-harmonic tables; ``model``: the backbone; ``io``: the public
checkpoints' layout and the ``eqv2:`` extractor."""

from atomsift.models.equiformer_v2.model import CONFIGS, EquiformerV2Backbone, EquiformerV2Config, seeded_tensor

__all__ = ["CONFIGS", "EquiformerV2Backbone", "EquiformerV2Config", "seeded_tensor"]
