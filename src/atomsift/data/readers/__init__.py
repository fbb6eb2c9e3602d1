"""Dataset readers: release layout in, canonical store out.

Each reader module exposes ``convert(source, out, **options) -> Path`` and module constants
``NAME`` and ``VERSION``. ``READERS`` maps the ``atomsift prepare`` name to its module; modules are
imported only when used.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from atomsift.errors import InputError, check_options

READERS = {
    "qm9": "atomsift.data.readers.qm9",
    "ase": "atomsift.data.readers.ase_reader",
    "ani1x": "atomsift.data.readers.ani1x",
    "transition1x": "atomsift.data.readers.transition1x",
    "oc20": "atomsift.data.readers.oc",
    "oc22": "atomsift.data.readers.oc",
    "rmd17": "atomsift.data.readers.rmd17",
    "md22": "atomsift.data.readers.sgdml",
    "md17": "atomsift.data.readers.sgdml",
    "spice": "atomsift.data.readers.spice",
    "qmof": "atomsift.data.readers.qmof",
    "matbench": "atomsift.data.readers.matbench",
}


def get_reader(name: str):
    """The reader module for dataset ``name`` (an InputError listing the known names otherwise)."""
    mod = READERS.get(name)
    if mod is None:
        raise InputError(f"unknown dataset '{name}' (known: {', '.join(sorted(READERS))})", field="DATASET")
    return importlib.import_module(mod)


def prepare(name: str, source: str | Path | None, out: str | Path, **options) -> Path:
    """Convert dataset ``name`` from ``source`` into a store at ``out``."""
    reader = get_reader(name)
    check_options(reader.convert, options, f"dataset '{name}'", fixed=("dataset",))
    return reader.convert(source, Path(out), dataset=name, **options)
