"""Model files written by the training verbs, in the models' checkpoint format."""

from __future__ import annotations

from pathlib import Path


def save_model(path: str | Path, model, meta: dict) -> None:
    """Write ``model`` + ``meta`` with :func:`atomsift.models.save_checkpoint` (atomic)."""
    from atomsift.models import save_checkpoint

    save_checkpoint(path, model, meta)


def load_model(path: str | Path, ema: bool = True):
    """(model, meta) from one of our checkpoints or a JMP checkpoint (EMA weights by default)."""
    from atomsift.models import load_checkpoint

    return load_checkpoint(path, ema=ema)
