"""Model files written by the training verbs, in the models' checkpoint format."""

from __future__ import annotations

import os
from pathlib import Path


def save_model(path: str | Path, model, meta: dict) -> None:
    """Write ``model`` + ``meta`` with :func:`atomsift.models.save_checkpoint`, atomically."""
    from atomsift.models import save_checkpoint

    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    save_checkpoint(tmp, model, meta)
    os.replace(tmp, p)


def load_model(path: str | Path, ema: bool = True):
    """(model, meta) from one of our checkpoints or a JMP checkpoint."""
    from atomsift.models import load_checkpoint

    return load_checkpoint(path, ema=ema)
