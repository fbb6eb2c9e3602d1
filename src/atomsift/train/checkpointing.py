"""Model files written by the training verbs, in the models' checkpoint format."""

from __future__ import annotations

import errno
from pathlib import Path


def save_model(path: str | Path, model, meta: dict) -> None:
    """Write ``model`` + ``meta`` with :func:`atomsift.models.save_checkpoint` (atomic: a failed
    write leaves no temporary). torch's zip writer reports a failed write (a full disk) as a
    RuntimeError about its temporary file: re-raised as an OSError naming ``path``."""
    from atomsift.models import save_checkpoint

    try:
        save_checkpoint(path, model, meta)
    except OSError as exc:
        raise OSError(exc.errno or errno.EIO, exc.strerror or str(exc), str(path)) from exc
    except RuntimeError as exc:
        if "PytorchStreamWriter" not in str(exc) and "inline_container" not in str(exc):
            raise
        raise OSError(errno.EIO, f"cannot write ({str(exc).splitlines()[0][:200]})", str(path)) from exc


def load_model(path: str | Path, ema: bool = True):
    """(model, meta) from one of our checkpoints or a JMP checkpoint (EMA weights by default)."""
    from atomsift.models import load_checkpoint

    return load_checkpoint(path, ema=ema)
