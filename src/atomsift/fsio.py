"""I/O shared by every verb: atomic file output (every artefact is written to a temporary sibling
and renamed into place, so a killed job never leaves a half-written file under its final name),
the sha256 of a file and the ``--json`` output on stdout. A leaf module: it imports nothing of ours
but :mod:`atomsift.errors`.

A temporary of ``DIR/NAME`` is ``DIR/.NAME.tmp-<token>[suffix]`` (a file or a directory). Its
writer holds an exclusive ``flock`` on it while it lives; a temporary nobody holds is a leftover
of a killed run, and the next write of the same output removes it (:func:`remove_stale`). Where
the file system does not support ``flock``, nothing is removed (a live writer is never touched).
Errors while writing name the final path, never the temporary.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from atomsift.errors import InputError

# errors of the disk rather than of the caller: reported as "cannot write FINAL"
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def temp_sibling(path: str | Path, suffix: str = "") -> Path:
    """A fresh temporary name beside ``path`` that :func:`remove_stale` recognises."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


class TempLock:
    """An exclusive ``flock`` on a temporary file or directory, held while its writer lives."""

    def __init__(self, tmp: Path):
        self.fd: int | None = None
        try:
            self.fd = os.open(tmp, os.O_RDONLY | (os.O_DIRECTORY if tmp.is_dir() else 0))
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # no flock on this file system: the temporary is merely never cleaned
            pass

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _held(p: Path) -> bool:
    """Whether a live writer holds ``p`` (True too when that cannot be told: never delete then)."""
    try:
        fd = os.open(p, os.O_RDONLY | (os.O_DIRECTORY if p.is_dir() and not p.is_symlink() else 0))
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:  # EWOULDBLOCK: held; anything else: cannot tell
        return True
    finally:
        os.close(fd)


def remove_stale(path: str | Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by killed runs (``.NAME.tmp-*`` that no live writer
    holds, ``.NAME.old-*`` left between the two renames of a store replacement); return them."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    stem = _glob_escape(path.name)
    removed = []
    for p in sorted(parent.glob(f".{stem}.tmp-*")) + sorted(parent.glob(f".{stem}.old-*")):
        if p.name.startswith(f".{path.name}.tmp-") and _held(p):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_error(exc: OSError, final: str | Path, tmp: str | Path | None = None) -> InputError | None:
    """An InputError naming ``final`` for an OSError of writing it (an error on the temporary
    ``tmp`` or below it, or a disk error: full, read-only, quota), else None (not a write error
    of ours: the caller re-raises it)."""
    fname = getattr(exc, "filename", None)
    on_tmp = tmp is not None and fname is not None and (str(fname) == str(tmp) or str(fname).startswith(str(tmp) + os.sep))
    if on_tmp or exc.errno in _WRITE_ERRNOS:
        return InputError(f"cannot write ({exc.strerror or exc})", path=final)
    return None


def check_output_file(path: str | Path, *also: str | Path) -> Path:
    """Refuse, before any work, an output file path that cannot be published: an existing
    directory (``--out results/`` must not become ``results.json`` beside it) or a parent that is
    a file. ``also`` are sibling outputs published with it (a sidecar)."""
    path = Path(path)
    for p in (path, *map(Path, also)):
        if p.is_dir():
            raise InputError("is a directory; expected a file name to write", path=p)
        for parent in p.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise InputError(f"cannot write: {parent} is not a directory", path=p)
                break
    return path


@contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """Yield temporary paths beside ``paths`` (same suffixes); on success rename them into place
    together (:func:`publish_together`), on any error remove them. Parent directories are
    created; stale temporaries of each path are removed first; an OSError of the write names the
    final path."""
    finals = [Path(p) for p in paths]
    check_output_file(*finals)
    tmps: list[Path] = []
    locks: list[TempLock] = []
    try:
        for final in finals:
            final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(final)
            tmp = temp_sibling(final, final.suffix)
            tmp.touch(exist_ok=False)
            tmps.append(tmp)
            locks.append(TempLock(tmp))
        yield tmps
        publish_together(list(zip(tmps, finals)))
    except OSError as exc:
        err = None
        for final, tmp in zip(finals, tmps):  # the output whose temporary failed
            if str(getattr(exc, "filename", None)) == str(tmp):
                err = write_error(exc, final, tmp)
        err = err or write_error(exc, finals[0])  # a disk error without a file name: the first output
        if err is not None:
            raise err from None
        raise
    finally:
        for lock in locks:
            lock.release()
        for tmp in tmps:
            if tmp.is_symlink() or tmp.exists():
                tmp.unlink()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it to ``path`` on success,
    remove it on any error (:func:`atomic_paths` of one path)."""
    with atomic_paths(path) as (tmp,):
        yield tmp


def publish_together(pairs: list[tuple[Path, Path]]) -> None:
    """Rename each (temporary, final) in order; if a later rename fails, the finals already
    published are removed again, so the outputs appear together or not at all."""
    done = []
    try:
        for tmp, final in pairs:
            os.replace(tmp, final)
            done.append(final)
    except OSError:
        for final in done:
            final.unlink(missing_ok=True)
        raise


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
