"""Verbs of atomsift.csi: moments, csi, select, csi-table, csi-figure, coverage."""

from __future__ import annotations

import argparse

DEFAULT_BLOCKS = 20  # blocks of structures per moments file (docs/csi.md: the CSI estimator)


def register(sub) -> None:
    p = sub.add_parser("moments", help="stream feature moments (count, mean, covariance) of a store sample",
                       description="Run an extractor over a sample of a store and save the float64 moments of its "
                                   "features (M.npz: n, mean, cov) with a JSON sidecar M.npz.json.")
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("--extractor", required=True, help="checkpoint path, random-<size>-<seed>, eqv2:PATH (EquiformerV2, "
                                                      "the paper's extractor) or eqv2:random-<config>-<seed>")
    p.add_argument("--sampling", choices=("balanced", "random"), default="balanced",
                   help="balanced: the paper's class-balanced upstream sampler; random: a seeded random subset (default: balanced)")
    p.add_argument("--n", type=int, default=10_000, help="structures to sample (default: 10000, as the paper)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--agg", choices=("flat", "mean", "sum", "max"), default="flat",
                   help="flat: every atom one sample (the paper's main setting); mean/sum/max: one sample per structure")
    p.add_argument("--split", default="train", help="split to sample from (default: train; the whole store if it has no splits)")
    p.add_argument("--batch-size", type=int, default=32, help="structures per extractor call")
    p.add_argument("--device", default="auto", help="cpu, cuda[:i], or auto (default: cuda when available, for "
                                                    "extractors that can move there: eqv2)")
    p.add_argument("--edge-dropout", type=float, default=0.0,
                   help="drop this fraction of graph edges (the official upstream extraction used 0.1); default 0")
    p.add_argument("--min-atoms", type=int, default=0,
                   help="skip structures with fewer atoms before sampling (the official downstream extraction uses 4)")
    p.add_argument("--shard", metavar="I/K", help="only the I-th of K equal slices of the sample (0-based); "
                                                "combine the K files with atomsift moments-merge")
    p.add_argument("--blocks", type=int, default=DEFAULT_BLOCKS,
                   help=f"also keep the moments of this many random blocks of structures, for CSI error bars "
                        f"(default {DEFAULT_BLOCKS}; 1 = none; memory and file size grow as blocks x d^2)")
    p.add_argument("--out", required=True, help="moments file to write (.npz)")
    p.add_argument("--json", action="store_true", help="print the sidecar as JSON")
    p.set_defaults(func=_moments)

    p = sub.add_parser("moments-merge", help="combine moments files of shards of one sample (exact pairwise merge)")
    p.add_argument("parts", nargs="+", help="moments files from atomsift moments --shard I/K")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_merge)

    p = sub.add_parser("csi", help="CSI (Fréchet distance) between two moments files")
    p.add_argument("a", help="moments file (.npz)")
    p.add_argument("b", help="moments file (.npz)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_csi)

    p = sub.add_parser("select", help="rank upstream datasets by CSI to your downstream data",
                       description="Compute the moments of DATA (a store, or any file ase.io.read understands) with the "
                                   "extractor recorded in the upstream moments' sidecars and rank the upstreams by CSI.")
    p.add_argument("data", help="downstream store directory or ASE-readable file")
    p.add_argument("--upstream", action="append", default=[], metavar="NAME=M.npz", help="candidate upstream moments (repeatable)")
    p.add_argument("--upstream-dir", help="every *.npz with a sidecar in this directory is a candidate, named by its dataset "
                        "(default, with no --upstream: the class-balanced, flat moments of ani1x/transition1x/oc20/oc22 "
                        "under results/moments/, as a DAG run leaves them)")
    p.add_argument("--extractor", help="extractor spec (default: the one recorded in the upstream sidecars; its sha256 must match; "
                        "picks among several extractors under results/moments/)")
    p.add_argument("--n", type=int, default=10_000, help="at most this many downstream structures (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", help="store split to use (default train)")
    p.add_argument("--min-atoms", type=int, default=4, help="skip structures with fewer atoms (default 4, as the official code)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dataset", help="dataset family whose graph settings the extractor uses for a file (default: none)")
    p.add_argument("--device", default="auto", help="cpu, cuda[:i], or auto (default: cuda when available, for eqv2)")
    p.add_argument("--save-moments", help="also save the downstream moments here (.npz)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--best", action="store_true", help="print only the recommended upstream's name on stdout (the "
                                                       "ranking goes to stderr): UP=$(atomsift select FILE --best)")
    p.set_defaults(func=_select)

    p = sub.add_parser("csi-table", help="CSV of CSI for every (upstream, downstream) pair of moments files")
    p.add_argument("--upstream", action="append", default=[], metavar="NAME=M.npz", required=True)
    p.add_argument("--downstream", action="append", default=[], metavar="NAME=M.npz", required=True)
    p.add_argument("--out", required=True, help="CSV: extractor, sampling, agg, upstream, downstream, csi, seed")
    p.add_argument("--append", action="store_true", help="keep the rows already in --out (pairs recomputed here replace theirs)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_table)

    p = sub.add_parser("csi-figure", help="render a CSI bar chart (Figs 3, 5-8) or the class-coverage chart (Fig 9)")
    p.add_argument("--table", required=True, nargs="+", help="bars: a CSI table CSV; coverage: coverage JSON files or a CSV")
    p.add_argument("--kind", choices=("bars", "coverage"), default="bars")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--tasks", nargs="+", help="downstream tasks to show, in order (default: all)")
    p.add_argument("--upstreams", nargs="+", help="upstreams to show, in order (default: all, paper order)")
    p.add_argument("--extractor", help="only rows of this extractor")
    p.add_argument("--sampling", help="only rows of this sampling")
    p.add_argument("--agg", help="only rows of this aggregation")
    p.add_argument("--log", action=argparse.BooleanOptionalAction, default=None,
                   help="logarithmic CSI axis (default: automatic, when the values span more than two decades)")
    p.add_argument("--title")
    p.set_defaults(func=_figure)

    p = sub.add_parser("coverage", help="classes covered by random vs class-balanced samples of a store (Fig 9)")
    p.add_argument("--store", required=True)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_coverage)


def _positive(value: int, name: str) -> None:
    from atomsift.errors import InputError

    if value <= 0:
        raise InputError(f"must be positive, got {value}", field=name)


MAX_BLOCKS = 1000


def _blocks(value: int) -> None:
    from atomsift.errors import InputError

    if not 1 <= value <= MAX_BLOCKS:
        raise InputError(f"must be in 1..{MAX_BLOCKS}, got {value}", field="--blocks")


def _sample_size(value: int, name: str = "--n") -> None:
    """A positive sample size below :data:`atomsift.csi.sampling.MAX_SAMPLE` (bounded before the
    samplers allocate index arrays of that length)."""
    from atomsift.csi.sampling import check_sample_size

    check_sample_size(value, name)


def _output(path, moments: bool = True) -> None:
    """Refuse an output that cannot be published (a directory, ...) before any work."""
    from atomsift.csi.moments import sidecar_path
    from atomsift.fsio import check_output_file

    check_output_file(path, *([sidecar_path(path)] if moments else []))


def _moments(args) -> int:
    import time

    import numpy as np

    from atomsift import __version__
    from atomsift.errors import InputError
    from atomsift.fsio import print_json
    from atomsift.csi.moments import assign_blocks, compute_moments, save_moments
    from atomsift.csi.sampling import sample_store
    from atomsift.data.store import Store
    from atomsift.models.checkpoint import load_extractor

    _sample_size(args.n)
    _positive(args.batch_size, "--batch-size")
    _blocks(args.blocks)
    _output(args.out)
    store = Store(args.store)
    split = args.split if (store.split_names() or args.split != "train") else None
    idx = sample_store(store, args.sampling, args.n, args.seed, split=split, min_atoms=args.min_atoms)
    n_sample, n_unique = int(idx.size), int(np.unique(idx).size)
    blocks = assign_blocks(idx, args.blocks, args.seed) if args.blocks > 1 else None
    shard = _parse_shard(args.shard) if args.shard else None
    if shard:
        idx = np.array_split(idx, shard[1])[shard[0]]
        if blocks is not None:
            blocks = np.array_split(blocks, shard[1])[shard[0]]
        if idx.size == 0:
            raise InputError(f"shard {args.shard} of a {n_sample}-structure sample is empty", field="--shard")
    ex = on_device(load_extractor(args.extractor), args.device)
    if args.edge_dropout > 0:
        import torch

        torch.manual_seed(args.seed)  # the dropped edges are drawn from torch's global generator
    t0 = time.perf_counter()
    m = compute_moments(store, ex, idx, agg=args.agg, batch_size=args.batch_size, edge_dropout=args.edge_dropout,
                        blocks=blocks, n_blocks=args.blocks if blocks is not None else None)
    meta = {
        "extractor": args.extractor,
        "extractor_name": getattr(ex, "name", str(args.extractor)),
        "extractor_sha256": getattr(ex, "sha256", None),
        "dataset": store.dataset,
        "store": str(store.path.resolve()),
        "store_source_sha256": (store.manifest.get("source") or {}).get("sha256"),
        "split": split,
        "sampling": args.sampling,
        "aggregation": args.agg,
        "n_structures": n_sample,
        "n_requested": int(args.n),
        "n_unique_structures": n_unique,
        "n": int(m.n),
        "seed": int(args.seed),
        "min_atoms": int(args.min_atoms),
        "edge_dropout": float(args.edge_dropout),
        "dim": m.dim,
        "n_skipped_structures": int(getattr(ex, "skipped", 0)),
        "seconds": round(time.perf_counter() - t0, 3),
        "atomsift_version": __version__,
    }
    if shard:
        meta["shard"] = {"index": shard[0], "count": shard[1], "n_structures": int(idx.size)}
    save_moments(args.out, m, meta)
    if args.json:
        print_json(meta)
    else:
        print(f"moments of {m.n} {args.agg} samples (d={m.dim}) from {idx.size} {store.dataset} structures -> {args.out}")
    return 0


def _parse_shard(text: str) -> tuple[int, int]:
    from atomsift.errors import InputError

    try:
        i, k = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"expected I/K, got {text!r}", field="--shard") from None
    if not (k >= 1 and 0 <= i < k):
        raise InputError(f"need 0 <= I < K, got {text!r}", field="--shard")
    return i, k


_SAME_SAMPLE = ("extractor_sha256", "dataset", "store", "split", "sampling", "aggregation", "seed", "n_requested", "min_atoms",
                "edge_dropout", "blocks")


def _merge(args) -> int:
    from atomsift.csi.moments import load_moments, save_moments, sidecar_path
    from atomsift.errors import InputError

    _output(args.out)
    total, meta0, seen = None, None, set()
    for path in args.parts:
        m, meta = load_moments(path)
        if meta0 is None:
            total, meta0 = m, meta
        else:
            for key in _SAME_SAMPLE:
                if meta.get(key) != meta0.get(key):
                    raise InputError(f"{meta.get(key)!r} differs from {meta0.get(key)!r} of {args.parts[0]}; "
                                     "only shards of one sample merge", path=sidecar_path(path), field=key)
            if m.dim != total.dim:
                raise InputError(f"dimension {m.dim} differs from {total.dim} of {args.parts[0]}", path=path, field="mean")
            total = total.merge(m)
        sh = meta.get("shard")
        if sh:
            key = (sh.get("index"), sh.get("count"))
            if key in seen:
                raise InputError(f"shard {key[0]}/{key[1]} given twice", path=path, field="shard")
            seen.add(key)
    counts = {k for _, k in seen}
    if seen and (len(counts) != 1 or len(seen) != next(iter(counts))):
        raise InputError(f"incomplete set of shards: got {sorted(i for i, _ in seen)} of {sorted(counts)}", field="shard")
    meta = {k: v for k, v in meta0.items() if k not in ("shard", "seconds")}
    meta["n"] = int(total.n)
    meta["merged_from"] = [str(p) for p in args.parts]
    save_moments(args.out, total, meta)
    print(f"merged {len(args.parts)} files: {total.n} samples -> {args.out}")
    return 0


def on_device(ex, device: str):
    """Move an extractor that can move (it has ``to``) to ``device``; "auto" picks CUDA when present.
    Extractors without ``to`` run on the CPU, and asking for another device is an error."""
    import torch

    from atomsift.errors import InputError

    movable = hasattr(ex, "to")
    if device == "auto":
        device = "cuda" if movable and torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"not a device: {device!r}", field="--device") from None
    if dev.type == "cpu":
        return ex.to(dev) if movable else ex
    if not movable:
        raise InputError(f"extractor {getattr(ex, 'name', ex)!r} runs on the CPU only", field="--device")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA is not available here", field="--device")
    return ex.to(dev)


def _csi(args) -> int:
    from atomsift.fsio import print_json
    from atomsift.csi.select import Candidate, csi
    from atomsift.csi.moments import load_moments

    a = Candidate(args.a, *_pair(args.a, load_moments))
    b = Candidate(args.b, *_pair(args.b, load_moments))
    e = csi(a, b)
    if args.json:
        print_json(e.as_dict())
    elif e.has_interval:
        print(f"csi {e.value:.10g}  corrected {e.corrected:.6g}  {round(100 * e.level)}% interval "
              f"[{e.low:.6g}, {e.high:.6g}]  (block jackknife, {e.blocks[0]} x {e.blocks[1]} blocks)")
    else:
        print(f"csi {e.value:.10g}  (no blocks in the moments files: no correction or interval; recompute with --blocks)")
    return 0


def _pair(path, loader):
    from pathlib import Path

    m, meta = loader(path)
    return Path(path), m, meta


def _select(args) -> int:
    import numpy as np

    from atomsift.fsio import print_json
    from atomsift.csi.moments import accumulate_batches, save_moments
    from atomsift.csi.select import check_compatible, default_candidates, load_candidates, parse_named, rank, read_data, recommendation
    from atomsift.errors import InputError
    from atomsift.models.checkpoint import load_extractor

    _sample_size(args.n)
    _positive(args.batch_size, "--batch-size")
    if args.best and args.json:
        raise InputError("give --json or --best, not both", field="--best")
    if args.save_moments:
        _output(args.save_moments)
    named = parse_named(args.upstream)
    if not named and args.upstream_dir is None:
        named = default_candidates(extractor=args.extractor)
    cands = load_candidates(named, args.upstream_dir)
    if not cands:
        raise InputError("no upstream candidates: give --upstream NAME=M.npz or --upstream-dir DIR", field="upstream")
    check_compatible(cands)
    meta0 = cands[0].meta
    spec = args.extractor or meta0.get("extractor")
    if not spec:
        raise InputError("the upstream sidecar records no extractor; pass --extractor", path=cands[0].path, field="extractor")
    agg = meta0.get("aggregation", "flat")
    # the user's structures are read and checked before the extractor is loaded (seconds of torch)
    name, family, batches, n_struct = read_data(args.data, args.n, args.seed, split=args.split, min_atoms=args.min_atoms)
    family = args.dataset or family
    blocks = int(meta0.get("blocks") or DEFAULT_BLOCKS)  # the upstreams' block count (20 for older files)
    ex = on_device(load_extractor(spec), args.device)
    sha = getattr(ex, "sha256", None)
    for c in cands:
        if c.sha256 and sha and c.sha256 != sha:
            raise InputError(f"extractor {spec} has sha256 {sha[:12]}, but these moments were computed with "
                             f"{c.meta.get('extractor')} (sha256 {c.sha256[:12]})", path=c.path, field="extractor_sha256")

    def tagged(bs):
        for b in batches(bs):
            if family is not None:
                b.dataset = family
            yield b

    from atomsift.csi.moments import assign_blocks

    ids = assign_blocks(np.arange(n_struct), blocks, args.seed) if blocks > 1 else None
    m = accumulate_batches(tagged(args.batch_size), ex, agg, blocks=ids, n_blocks=blocks if ids is not None else None)
    if m.dim != cands[0].moments.dim:
        raise InputError(f"extractor {spec} gives {m.dim}-D features, the upstream moments are {cands[0].moments.dim}-D",
                         path=cands[0].path, field="mean")
    if args.save_moments:
        save_moments(args.save_moments, m, {
            "extractor": spec, "extractor_name": getattr(ex, "name", spec), "extractor_sha256": sha,
            "dataset": name, "data": str(args.data), "sampling": "random", "aggregation": agg,
            "n_structures": n_struct, "n": int(m.n), "seed": int(args.seed), "min_atoms": int(args.min_atoms),
        })
    ranking = rank(m, cands)
    tied = [r["upstream"] for r in ranking if r["tied_with_lowest"]]
    result = {
        "downstream": name,
        "n_structures": n_struct,
        "extractor": spec,
        "aggregation": agg,
        "ranking": [{k: v for k, v in r.items() if not k.startswith("_")} for r in ranking],
        "lowest": tied,
        "tie": len(tied) > 1,
        "recommendation": recommendation(name, ranking),
    }
    if args.json:
        print_json(result)
    else:
        import sys

        text = sys.stderr if args.best else sys.stdout
        level = round(100 * ranking[0]["_estimate"].level)
        print(f"{'upstream':<20} {'CSI':>12} {'corrected':>12}  {level}% interval", file=text)
        for r in ranking:
            e = r["_estimate"]
            interval = f"[{e.low:.4g}, {e.high:.4g}]" if e.has_interval else "–"
            mark = "  (tied with the lowest)" if r["tied_with_lowest"] and len(tied) > 1 else ""
            corr = f"{e.corrected:.5g}" if e.has_interval else "–"
            print(f"{r['upstream']:<20} {e.value:>12.5g} {corr:>12}  {interval}{mark}", file=text)
        print(result["recommendation"], file=text)
        if args.best:
            print(ranking[0]["upstream"])
    return 0


def _table(args) -> int:
    from atomsift.fsio import print_json
    from atomsift.csi.select import load_candidates, parse_named, read_table, table_rows, write_csv

    _output(args.out, moments=False)
    ups = load_candidates(parse_named(args.upstream, "--upstream"))
    downs = load_candidates(parse_named(args.downstream, "--downstream"))
    rows = table_rows(ups, downs)
    if args.append:
        from pathlib import Path

        if Path(args.out).exists():
            key = lambda r: (str(r.get("extractor")), str(r.get("sampling")), str(r.get("agg")), r["upstream"], r["downstream"], str(r.get("seed")))
            new = {key(r) for r in rows}
            rows = [r for r in read_table(args.out) if key(r) not in new] + rows
    write_csv(args.out, rows)
    if args.json:
        print_json(rows)
    else:
        print(f"{len(rows)} CSI rows -> {args.out}")
    return 0


def _figure(args) -> int:
    from atomsift.csi import figures

    if args.kind == "coverage":
        figures.coverage_bars(figures.read_coverage(args.table), args.out, title=args.title)
    else:
        from atomsift.csi.select import read_table

        rows = []
        for t in args.table:
            rows += read_table(t)
        rows = figures.filter_rows(rows, extractor=args.extractor, sampling=args.sampling, agg=args.agg)
        figures.csi_bars(rows, args.out, tasks=args.tasks, upstreams=args.upstreams, title=args.title, log=args.log)
        print(f"{len(rows)} CSI values -> {args.out}")
        return 0
    print(f"coverage of {len(args.table)} dataset(s) -> {args.out}")
    return 0


def _coverage(args) -> int:
    from atomsift.fsio import print_json
    from atomsift.csi.sampling import store_coverage
    from atomsift.data.store import Store

    _sample_size(args.n)
    if args.out:
        _output(args.out, moments=False)
    store = Store(args.store)
    split = args.split if (store.split_names() or args.split != "train") else None
    res = store_coverage(store, args.n, args.seed, split=split)
    if args.out:
        from atomsift.fsio import write_json

        write_json(args.out, res)
    if args.json:
        print_json(res)
    else:
        print(f"{res['dataset']}: {res['total_classes']} classes; random {args.n} covers {res['random']}, balanced covers {res['balanced']}")
    return 0
