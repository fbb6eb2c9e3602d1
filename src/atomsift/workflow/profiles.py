"""Install the project's Snakemake profiles where ``snakemake --profile NAME`` looks for them.

Snakemake resolves a bare profile name only under ``$XDG_CONFIG_HOME/snakemake`` (default
``~/.config/snakemake``) and ``/etc/xdg/snakemake``; ``--profile profiles/slurm`` works from the
checkout without this. Installing links the checkout's profile, so later edits apply.
"""

from __future__ import annotations

import os
from pathlib import Path

from atomsift.errors import InputError
from atomsift.fsio import atomic_path


def default_dest() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "snakemake"


def find_profiles(source: str | None = None) -> Path:
    """The project's ``profiles/`` directory: ``source``, ./profiles, or the checkout of this package."""
    candidates = [Path(source)] if source else [Path.cwd() / "profiles", Path(__file__).resolve().parents[3] / "profiles"]
    for c in candidates:
        if (c / "slurm").is_dir() or (c / "local").is_dir():
            return c.resolve()
    where = ", ".join(str(c) for c in candidates)
    raise InputError(f"no profiles directory found (looked in {where}); pass --from PATH/profiles", field="--from")


def install(name: str, *, source: str | None = None, dest: str | None = None, force: bool = False) -> tuple[Path, Path, bool]:
    """Link ``profiles/NAME`` to ``DEST/NAME``; returns (link, target, whether anything changed)."""
    target = find_profiles(source) / name
    if not (target / "config.yaml").is_file():
        raise InputError("profile has no config.yaml", path=target)
    root = Path(dest) if dest else default_dest()
    link = root / name
    if link.is_symlink() and Path(os.readlink(link)).resolve() == target.resolve():
        return link, target, False
    if link.exists() or link.is_symlink():
        if not force:
            raise InputError(f"exists and is not a link to {target} (use --force to replace it)", path=link)
        if link.is_symlink() or link.is_file():
            link.unlink()
        else:
            raise InputError("is a directory; move it away first", path=link)
    if root.exists() and not root.is_dir():
        raise InputError("is not a directory", path=root)
    with atomic_path(link) as tmp:  # a temporary link renamed over the name
        tmp.unlink()  # atomic_path holds the temporary name as an empty file
        tmp.symlink_to(target, target_is_directory=True)
    return link, target, True
