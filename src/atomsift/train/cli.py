"""Verbs of atomsift.train: ``pretrain`` and ``finetune`` (one YAML run file each)."""

from __future__ import annotations

import sys


def register(sub) -> None:
    """Add this package's verbs to the atomsift parser."""
    p = sub.add_parser("pretrain", help="budgeted pretraining (N structures x E epochs) from a YAML run file",
                       description="Pretrain GemNet-OC on N structures from one upstream store or a mixture for E "
                                   "epochs. Rerunning the same command resumes from OUT/last.ckpt; a finished OUT "
                                   "(metrics.json present) is reported, not retrained. Keys: docs/training.md.")
    p.add_argument("--config", required=True, help="run file (YAML)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--json", action="store_true", help="print metrics.json on stdout")
    _on_changed_inputs(p)
    p.set_defaults(func=_pretrain)

    f = sub.add_parser("finetune", help="finetune on a downstream task (a YAML run file) or on your own file (--data)",
                       description="Finetune on one task (rmd17, md22, spice, qm9, qmof, matbench) with the paper's "
                                   "recipe; test MAE in the paper's units in OUT/metrics.json. Keys: docs/training.md. "
                                   "With --data FILE (anything ASE reads, with energies and forces or a --target "
                                   "scalar): the store, split and run file are made from the file (--config then adds "
                                   "keys) and OUT/data.json records the test errors at step 0 and at the end.")
    f.add_argument("--config", help="run file (YAML); required without --data")
    f.add_argument("--pretrained", help="our model.pt, a JMP checkpoint (jmp-s.pt / jmp-l.pt), or 'none' "
                                        "(required with --config; default with --data: none)")
    f.add_argument("--out", required=True, help="output directory")
    f.add_argument("--seeds", help="comma-separated seeds (e.g. 0,1,2,3,4): one run per seed in this process, into "
                                   "OUT/s<seed>/, the run file's seed replaced (saves the start-up of a process per seed)")
    f.add_argument("--json", action="store_true", help="print metrics.json (with --data: data.json and the metrics) on stdout")
    _on_changed_inputs(f)
    d = f.add_argument_group("your own data (--data)")
    d.add_argument("--data", metavar="FILE", help="an ASE-readable file (extxyz, ASE db, traj, ...)")
    d.add_argument("--target", help="finetune on this scalar (an info key; 'energy' for an energy-only file) "
                                    "instead of energies and forces")
    d.add_argument("--readout", choices=("sum", "mean", "max"), help="scalar: reduction over atoms (default sum, "
                                                                     "with element references fitted on the training split)")
    d.add_argument("--energy-key", help="info key of the energy (default: the file's calculator energy)")
    d.add_argument("--forces-key", help="arrays key of the forces (default: the file's calculator forces)")
    d.add_argument("--split-seed", type=int, help="seed of the 80/10/10 split (default 42)")
    d.add_argument("--size", choices=("tiny", "small", "large"), help="backbone size (default: the checkpoint's)")
    d.add_argument("--epochs", type=int, help="epochs (default: the recipe's, 100)")
    d.add_argument("--batch-size", type=int, help="batch size (default: the recipe's)")
    d.add_argument("--lr", type=float, help="peak learning rate (default 8e-5)")
    d.add_argument("--seed", type=int, help="seed of the new heads and of the batch order (default 0)")
    d.add_argument("--cache", help="directory of prepared stores (default: $ATOMSIFT_CACHE or ~/.cache/atomsift)")
    f.set_defaults(func=_finetune)


def _on_changed_inputs(p) -> None:
    p.add_argument("--on-changed-inputs", choices=("refuse", "restart"), default="refuse",
                   help="when OUT holds a run started from other inputs (run file, stores, --pretrained): refuse "
                        "(default, one-line error) or restart (remove OUT's run state and start over; the "
                        "workflow's rules use this, since Snakemake reruns a job whose inputs changed)")


def _summary(m: dict, keys) -> str:
    return ", ".join(f"{k}={_short(m[k])}" for k in keys if k in m)


def _short(v):
    """Numbers as a log line shows them (4 significant digits; dicts of them too)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    return v


def _pretrain(args) -> int:
    from atomsift.train.config import load_pretrain_config

    cfg = load_pretrain_config(args.config)  # validated before any heavy import
    from atomsift.fsio import print_json
    from atomsift.quiet import quiet_third_party

    quiet_third_party()
    from atomsift.train.pretrain import BudgetError, run_pretrain

    try:
        m = run_pretrain(cfg, args.out, config_path=args.config, on_changed_inputs=args.on_changed_inputs)
    except BudgetError as exc:
        print(f"atomsift pretrain: error: {exc}", file=sys.stderr)
        return 1
    if not m:  # non-zero DDP rank
        return 0
    if args.json:
        print_json(m)
    else:
        print(f"pretrain: {_summary(m, ('structures_seen', 'steps', 'best_val_loss', 'wall_time_s'))}", file=sys.stderr)
    return 0


def _seeds(text: str | None) -> list[int] | None:
    from atomsift.errors import InputError

    if text is None:
        return None
    try:
        seeds = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        seeds = []
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise InputError(f"expected distinct comma-separated seeds >= 0 (e.g. 0,1,2), got {text!r}", field="--seeds")
    return seeds


def _finetune(args) -> int:
    import dataclasses
    from pathlib import Path

    from atomsift.errors import InputError

    data_flags = [k for k in _DATA_FLAGS if getattr(args, k) is not None]
    if args.data:
        if args.seeds is not None:
            raise InputError("--seeds goes with --config (with --data: --seed)", field="--seeds")
        return _finetune_data(args)
    if data_flags:
        raise InputError(f"--{data_flags[0].replace('_', '-')} goes with --data FILE", field=f"--{data_flags[0].replace('_', '-')}")
    if args.config is None or args.pretrained is None:
        raise InputError("give --config RUN.yaml and --pretrained CKPT|none (or --data FILE)",
                         field="--config" if args.config is None else "--pretrained")
    from atomsift.train.config import load_finetune_config

    cfg = load_finetune_config(args.config)
    seeds = _seeds(args.seeds)
    from atomsift.fsio import print_json
    from atomsift.quiet import quiet_third_party
    from atomsift.train.finetune import run_finetune

    quiet_third_party()

    runs = [(cfg, Path(args.out))] if seeds is None else [(dataclasses.replace(cfg, seed=s), Path(args.out) / f"s{s}") for s in seeds]
    out = []
    for c, o in runs:
        m = run_finetune(c, o, args.pretrained, config_path=args.config, on_changed_inputs=args.on_changed_inputs)
        if not m:  # a non-zero DDP rank
            continue
        out.append(m)
        if not args.json:
            print(f"finetune: {_summary(m, ('task', 'target', 'seed', 'test_mae', 'unit', 'tested_weights', 'wall_time_s'))}",
                  file=sys.stderr)
    if args.json and out:
        print_json(out[0] if seeds is None else out)
    return 0


_DATA_FLAGS = ("target", "readout", "energy_key", "forces_key", "split_seed", "size", "epochs", "batch_size", "lr", "seed", "cache")
_RUN_KEYS = ("size", "epochs", "batch_size", "lr", "seed")  # flags that are run-file keys of the same name


def _finetune_data(args) -> int:
    from pathlib import Path

    from atomsift.train.own_data import DataOptions

    base = {}
    if args.config:
        from atomsift.safeio import read_yaml_mapping
        from atomsift.train.config import MAX_RUN_FILE_BYTES

        base = read_yaml_mapping(args.config, what="run file", max_bytes=MAX_RUN_FILE_BYTES)
    base.update({key: getattr(args, key) for key in _RUN_KEYS if getattr(args, key) is not None})
    split_seed = 42 if args.split_seed is None else args.split_seed
    if not 0 <= split_seed < 2**32:
        from atomsift.errors import InputError

        raise InputError(f"must be in 0..2**32-1 (a numpy RandomState seed), got {split_seed}", field="--split-seed")
    opts = DataOptions(Path(args.data), target=args.target, energy_key=args.energy_key, forces_key=args.forces_key,
                       split_seed=split_seed)
    from atomsift.fsio import print_json
    from atomsift.quiet import quiet_third_party
    from atomsift.train.own_data import finetune_data, summary

    quiet_third_party()
    rec = finetune_data(opts, args.out, args.pretrained, base, readout=args.readout, cache=args.cache,
                        source=args.config or "finetune --data")
    if not rec:
        return 0
    if args.json:
        print_json(rec)
    else:
        print(summary(rec), file=sys.stderr)
    return 0
