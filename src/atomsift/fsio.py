"""I/O shared by every verb: atomic file output (every artefact is written to a temporary sibling
and renamed into place, so a killed job never leaves a half-written file under its final name),
the sha256 of a file and the ``--json`` output on stdout. A leaf module: it imports nothing of ours."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it to ``path`` on success,
    remove it on any error. Parent directories are created. An OSError while writing the
    temporary (a full disk) is re-raised naming ``path``: the user knows that name, not ours."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is None or str(exc.filename) == str(tmp):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    finally:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()


def write_bytes(path: str | Path, data) -> Path:
    """Write ``data`` (bytes or a buffer) to ``path`` atomically."""
    view = memoryview(data).cast("B")
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            for i in range(0, len(view), 1 << 26):
                fh.write(view[i:i + (1 << 26)])
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (with a final newline)."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_figure(fig, out: str | Path, dpi: int = 150, **kwargs) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(out).suffix.lstrip(".") or "png", **kwargs)
    finally:
        plt.close(fig)
    return Path(out)


def file_digest(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a file's bytes (sha256 unless ``algo`` names another hashlib algorithm)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, algo).hexdigest()


def print_json(obj) -> None:
    """Print ``obj`` as indented JSON on stdout (the ``--json`` output of every verb)."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
