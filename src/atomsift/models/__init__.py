"""GemNet-OC backbone, heads and checkpoint I/O."""


def __getattr__(name):
    # lazy exports: importing atomsift.models must not import torch (keeps `atomsift --help` fast)
    if name == "build_model":
        from atomsift.models.model import build_model

        return build_model
    if name in ("load_checkpoint", "save_checkpoint", "load_extractor"):
        from atomsift.models import checkpoint

        return getattr(checkpoint, name)
    if name == "fit_scale_factors":
        from atomsift.models.scaling import fit_scale_factors

        return fit_scale_factors
    raise AttributeError(name)


__all__ = ["build_model", "load_checkpoint", "save_checkpoint", "load_extractor", "fit_scale_factors"]
