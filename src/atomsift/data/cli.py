"""Verbs of atomsift.data: prepare, info, show (and generate, from the mini-universe)."""

from __future__ import annotations



def register(sub) -> None:
    p = sub.add_parser("prepare", help="convert a dataset into the canonical store")
    p.add_argument("dataset", help="dataset name: qm9, ase, ani1x, transition1x, oc20, oc22, rmd17, md22, md17, spice, qmof, matbench")
    p.add_argument("--source", help="the downloaded release file or directory (qm9: defaults to the qm9pack wheel)")
    p.add_argument("--out", required=True, help="store directory to write")
    p.add_argument("--subset", help="molecule / SPICE subset / MatBench task, for readers that take one")
    p.add_argument("--energy-key", help="key of the energy (ase: info key; ani1x: level of theory, e.g. wb97x_dz.energy)")
    p.add_argument("--forces-key", help="key of the forces (ase: arrays key; ani1x: e.g. wb97x_dz.forces)")
    p.add_argument("--class-key", help="ase: info key holding the class label (default: the formula)")
    p.add_argument("--target-key", dest="target_keys", action="append", metavar="KEY",
                   help="ase: a scalar target, an info key or calculator result (repeatable)")
    p.add_argument("--metadata", help="oc20/oc22: metadata pickle with bulk_symbols per system")
    p.add_argument("--ref-energies", help="oc20: reference energies (.txt or .pkl) to turn referenced into total energies")
    p.add_argument("--total-energy", action="store_true", help="oc20: store total instead of referenced energies")
    p.add_argument("--fold", type=int, help="matbench: fold 0-4 (default: all five, as splits foldK_train/val/test)")
    p.add_argument("--seed", type=int, default=None, help="seed of the split permutation (default: the reader's JMP value)")
    p.add_argument("--limit", type=int, default=None, help="read at most this many structures (for quick tests)")
    p.add_argument("--json", action="store_true", help="print the store summary as JSON")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("info", help="summarise a store")
    p.add_argument("store")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_info)

    p = sub.add_parser("show", help="print one structure of a store (eV, Angstrom)")
    p.add_argument("store")
    p.add_argument("index", type=int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_show)

    p = sub.add_parser("download", help="fetch the official release files of a dataset or model (resumable, verified)")
    p.add_argument("dataset", help="ani1x, transition1x, oc20, oc22, rmd17, md22, md17, spice, qm9, qmof, matbench; "
                                   "model checkpoints jmp-s, jmp-l, eqv2-31m")
    p.add_argument("--dest", help="folder to write the files into (required unless --list)")
    p.add_argument("--subset", action="append", help="subset(s) to fetch (molecule, task, split; repeat or comma-separate; "
                   "default: the release's default set; --list shows them)")
    p.add_argument("--url", help="fetch the one selected file from this URL instead (a mirror)")
    p.add_argument("--sha256", help="expected sha256 of the one selected file (replaces the published checksum)")
    p.add_argument("--list", action="store_true", help="list the subsets, files and URLs; download nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_download)

    from atomsift.data.mini.cli import register as register_mini

    register_mini(sub)


_READER_OPTIONS = ("subset", "energy_key", "forces_key", "class_key", "target_keys", "metadata", "ref_energies", "total_energy", "fold", "seed", "limit")


def _prepare(args) -> int:
    import time

    from atomsift.fsio import print_json
    from atomsift.data.readers import prepare
    from atomsift.data.store import Store

    from atomsift.data.store import check_store_output
    from atomsift.errors import InputError

    if args.limit is not None and args.limit < 1:
        raise InputError(f"must be at least 1 (structures to read), got {args.limit}", field="--limit")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise InputError(f"must be in 0..2**32-1 (a numpy RandomState seed), got {args.seed}", field="--seed")
    check_store_output(args.out)  # before reading anything: --out must be a store, empty or new
    opts = {k: getattr(args, k) for k in _READER_OPTIONS if getattr(args, k) is not None and getattr(args, k) is not False}  # keeps --fold 0 / --seed 0
    t0 = time.perf_counter()
    out = prepare(args.dataset, args.source, args.out, **opts)
    info = Store(out).info()
    if args.json:
        print_json(info)
    else:
        splits = ", ".join(f"{k} {v}" for k, v in info["splits"].items())
        print(f"prepared {args.dataset}: {info['n_structures']} structures, {info['n_atoms']} atoms, elements "
              f"{info['elements']}, splits {splits or 'none'} -> {out} ({time.perf_counter() - t0:.1f} s; details: atomsift info)")
    return 0


def _print_info(info: dict) -> None:
    print(f"dataset      {info['dataset']}  ({info['reader']['name']} reader v{info['reader']['version']})")
    print(f"structures   {info['n_structures']}")
    print(f"atoms        {info['n_atoms']}")
    print(f"elements     {info['elements']}")
    print("splits       " + ", ".join(f"{k} {v}" for k, v in info["splits"].items()))
    print(f"classes      {info['n_classes']}")
    print(f"fields       {', '.join(info['fields'])}")
    if info.get("targets"):
        print(f"targets      {', '.join(info['targets'])}")
    if info.get("level_of_theory"):
        print(f"theory       {info['level_of_theory']}")


def _info(args) -> int:
    from atomsift.fsio import print_json
    from atomsift.data.store import Store

    info = Store(args.store).info()
    if args.json:
        print_json(info)
    else:
        _print_info(info)
    return 0


def _show(args) -> int:
    from atomsift.fsio import print_json
    from atomsift.data.store import Store
    from atomsift.errors import InputError

    store = Store(args.store)
    if not 0 <= args.index < len(store):
        raise InputError(f"index {args.index} out of range (store has {len(store)} structures)", path=args.store, field="INDEX")
    r = store[args.index]
    out = {
        "index": r.index,
        "numbers": r.numbers.tolist(),
        "positions": r.positions.tolist(),
        "cell": r.cell.tolist(),
        "pbc": r.pbc.tolist(),
        "energy": r.energy,
        "forces": None if r.forces is None else r.forces.tolist(),
        "tags": r.tags.tolist(),
        "fixed": r.fixed.tolist(),
        "targets": r.targets,
        "class": r.cls,
        "sid": r.sid,
    }
    if args.json:
        print_json(out)
    else:
        from atomsift.data.store import formula

        print(f"structure {r.index}: {formula(r.numbers)}, {r.natoms} atoms, class {r.cls}")
        if r.energy is not None:
            print(f"energy  {r.energy:.6f} eV")
        for k, v in r.targets.items():
            print(f"{k:8s}{v:.8g}")
    return 0


def _download(args) -> int:
    from atomsift.fsio import print_json
    from atomsift.data.download import DATASETS, download, select
    from atomsift.errors import InputError

    subsets = [x for s in args.subset or [] for x in s.split(",") if x] or None
    if args.list:
        select(args.dataset)  # an unknown name is a one-line error
        files = {k: [dict(f.__dict__) for f in v] for k, v in DATASETS[args.dataset].files.items()}
        if args.json:
            print_json({"dataset": args.dataset, "default": list(DATASETS[args.dataset].default), "subsets": files})
        else:
            for k, fs in files.items():
                mark = "*" if k in DATASETS[args.dataset].default else " "
                for f in fs:
                    print(f"{mark} {k:22s} {f['filename']:44s} {f['url']}")
            print("(* = fetched by default)")
        return 0
    if not args.dest:
        raise InputError("--dest is required", field="dest")
    paths = download(args.dataset, args.dest, subsets=subsets, url=args.url, sha256=args.sha256)
    if args.json:
        print_json({"dataset": args.dataset, "files": [{"path": str(p), "bytes": p.stat().st_size} for p in paths]})
    else:
        for p in paths:
            print(f"{p}  ({p.stat().st_size} bytes)")
        print(f"next: {DATASETS[args.dataset].then}")
    return 0
