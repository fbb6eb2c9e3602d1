"""Errors that carry a one-line, user-facing message.

Raise :class:`InputError` where bad input is first seen, naming the file and the field; the CLI
turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path
from typing import Callable, Iterable


class InputError(Exception):
    """Bad user input: a missing or malformed file, a bad field, an invalid parameter."""

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None):
        parts = []
        if path is not None:
            parts.append(str(path))
        if field is not None:
            parts.append(f"field '{field}'")
        prefix = ": ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path = None if path is None else str(path)
        self.field = field


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return ``path`` as a Path, or raise InputError if it does not exist."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} does not exist", path=p)
    return p


def unknown_key(key: str, allowed) -> str:
    """The one phrase for a key no schema knows, with the closest allowed key when there is one
    (run files, ``options`` blocks and the workflow configuration all use it)."""
    allowed = sorted(str(a) for a in allowed)
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f", did you mean '{close[0]}'?" if close else ""
    return f"unknown key '{key}'{hint} (allowed: {', '.join(allowed)})"


def check_options(func: Callable, options: Iterable[str], owner: str, fixed: Iterable[str] = (),
                  unlisted: Iterable[str] = ()) -> None:
    """Refuse options that ``func`` (a reader's ``convert``, a generator) does not take, naming
    the first and the ones it does take; ``fixed`` are its arguments that are not options,
    ``unlisted`` options of the Python API that the command line does not offer."""
    known = [k for k, p in inspect.signature(func).parameters.items()
             if p.kind is p.KEYWORD_ONLY and k not in set(fixed)]
    for k in options:
        if k not in known:
            takes = ", ".join(f"--{o.replace('_', '-')}" for o in known if o not in set(unlisted)) or "none"
            raise InputError(f"--{k.replace('_', '-')} does not apply to {owner} (its options: {takes})", field=k)


def dotted_path(parts) -> str:
    """A field's path as users write it: ``finetune.options.epochs``, list items as ``[0]``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out
