"""Stores back out as files other tools read: extended XYZ with energies and forces.

``atomsift generate NAME --out FILE.extxyz`` writes a mini-universe analog this way, so the
README's worked example (and a test) has a user-style file to start from.
"""

from __future__ import annotations

from pathlib import Path

EXTXYZ_SUFFIXES = (".extxyz", ".xyz")


def is_extxyz(path: str | Path) -> bool:
    return Path(path).suffix.lower() in EXTXYZ_SUFFIXES


def store_frames(store) -> list:
    """Every structure of ``store`` as ``Atoms`` (:meth:`Record.to_atoms`: energy and forces as a
    single-point calculator, as ASE reads them back), with scalar targets and the class label in
    ``info``."""
    frames = []
    for g in range(len(store)):
        r = store.record(g)
        a = r.to_atoms()
        a.info.update({k: float(v) for k, v in r.targets.items()})
        if r.cls:
            a.info["class"] = str(r.cls)
        frames.append(a)
    return frames


def write_extxyz(store, out: str | Path) -> Path:
    """Write ``store`` as one extended-XYZ file (atomically: a temporary name, then renamed)."""
    import ase.io

    from atomsift.fsio import atomic_path

    frames = store_frames(store)
    with atomic_path(out) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    return Path(out)
