"""The ``atomsift generate`` verb: write one mini-universe analog as a canonical store."""

from __future__ import annotations


def register(sub) -> None:
    from atomsift.data.mini import DEFAULT_SEED, DEFAULT_SIZES, GENERATORS

    sizes = ", ".join(f"{k} {v}" for k, v in DEFAULT_SIZES.items())
    p = sub.add_parser("generate", help="generate a mini-universe analog (ani1x-mini, oc20-mini, ...) as a store",
                       description=f"Generate a small analog of a paper dataset, labelled by GFN2-xTB / GFN1-xTB / EMT. Default sizes: {sizes}.")
    p.add_argument("name", metavar="NAME", help="one of: " + ", ".join(GENERATORS))
    p.add_argument("--out", required=True, help="store directory to write; a FILE.extxyz (or .xyz) writes the "
                                                "structures as extended XYZ with energies and forces instead")
    p.add_argument("--n", type=int, default=None, help="number of structures (default: the embedded default size)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    p.add_argument("--workers", type=int, default=None, help="worker processes, one xtb thread each (default: all cores)")
    p.add_argument("--qm9", help="ani1x-mini / transition1x-mini: QM9 store whose train split gives the molecules (default: qm9pack with JMP's split)")
    p.add_argument("--metals", help="oc20-mini: comma-separated metals (default Cu,Ag,Au,Ni,Pd,Pt,Al)")
    p.add_argument("--oxides", help="oc22-mini: comma-separated oxides (default MgO,CaO,SrO)")
    p.add_argument("--adsorbates", help="oc20-mini / oc22-mini: comma-separated adsorbates (default: all of the generator's)")
    p.add_argument("--molecule", help="rmd17-mini: aspirin (default), ethanol or benzene")
    p.add_argument("--amino-acids", help="spice-mini: comma-separated of glycine, alanine, serine (default all three)")
    p.add_argument("--paths", help="transition1x-mini: comma-separated of htransfer, stretch (default htransfer)")
    p.add_argument("--json", action="store_true", help="print the store summary and generation record as JSON")
    p.set_defaults(func=_generate)


def _generate(args) -> int:
    import logging
    import sys

    from atomsift.fsio import print_json
    from atomsift.data.mini import GENERATORS, generate
    from atomsift.data.store import Store
    from atomsift.errors import InputError

    if args.name not in GENERATORS:
        raise InputError(f"unknown generator '{args.name}' (known: {', '.join(GENERATORS)})", field="NAME")
    if args.n is not None:
        from atomsift.data.mini.common import check_n

        check_n(args.n, args.name)
    from atomsift.data.store import check_store_output

    if not 0 <= args.seed < 2**32:
        raise InputError(f"must be in 0..2**32-1 (a numpy RandomState seed), got {args.seed}", field="--seed")
    from atomsift.data.export import is_extxyz

    file_out = is_extxyz(args.out)
    if file_out:  # a store in a temporary directory beside the file, exported, then removed
        import shutil
        import tempfile
        from pathlib import Path

        from atomsift.fsio import check_output_file

        check_output_file(args.out)
        Path(args.out).resolve().parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{Path(args.out).name}.", dir=Path(args.out).resolve().parent)
        store_out = Path(tmp) / "store"
    else:
        check_store_output(args.out)  # before minutes of labelling: --out must be a store, empty or new
        store_out = args.out
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    opts = {k: getattr(args, k) for k in ("metals", "oxides", "adsorbates", "molecule", "amino_acids", "paths")
            if getattr(args, k) is not None}
    try:
        summary = generate(args.name, store_out, n=args.n, seed=args.seed, workers=args.workers, qm9=args.qm9, **opts)
        info = Store(summary["path"]).info()
        if file_out:
            from atomsift.data.export import write_extxyz

            summary["path"] = str(write_extxyz(Store(summary["path"]), args.out))
    finally:
        if file_out:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print_json({**info, "generation": summary})
    else:
        sk = summary["skips"]
        print(f"generated {args.name}: {info['n_structures']} structures, {info['n_atoms']} atoms -> {summary['path']} "
              f"({summary['seconds']:.1f} s, {summary['workers']} workers, {sk['redrawn_total']} redrawn: "
              f"{sk['calculator_failures']} calculator failures, {sk['rejected_geometries']} rejected geometries)")
    return 0
