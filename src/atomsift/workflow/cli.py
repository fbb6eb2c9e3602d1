"""Verbs of atomsift.workflow: profile."""

from __future__ import annotations

PROFILES = ("slurm", "local")


def register(sub) -> None:
    """Add this package's verbs to the atomsift parser."""
    p = sub.add_parser("profile", help="install a Snakemake profile of this project under ~/.config/snakemake")
    psub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = psub.add_parser("install", help="link profiles/NAME to ~/.config/snakemake/NAME (so --profile NAME works)")
    q.add_argument("name", choices=PROFILES)
    q.add_argument("--from", dest="source", help="the project's profiles/ directory (default: found from the checkout)")
    q.add_argument("--dest", help="profile directory root (default: $XDG_CONFIG_HOME/snakemake or ~/.config/snakemake)")
    q.add_argument("--force", action="store_true", help="replace an existing, different profile of that name")
    q.set_defaults(func=_profile_install)


def _profile_install(args) -> int:
    from atomsift.workflow.profiles import install

    link, target, changed = install(args.name, source=args.source, dest=args.dest, force=args.force)
    state = "installed" if changed else "already installed"
    print(f"{state}: {link} -> {target}  (use: snakemake --profile {args.name})")
    return 0
