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

    f = sub.add_parser("finetune", help="finetune on one downstream task from a YAML run file",
                       description="Finetune on one task (rmd17, md22, spice, qm9, qmof, matbench) with the paper's "
                                   "recipe; test MAE in the paper's units in OUT/metrics.json. Keys: docs/training.md.")
    f.add_argument("--config", required=True, help="run file (YAML)")
    f.add_argument("--pretrained", required=True, help="our model.pt, a JMP checkpoint (jmp-s.pt / jmp-l.pt), or 'none'")
    f.add_argument("--out", required=True, help="output directory")
    f.add_argument("--seeds", help="comma-separated seeds (e.g. 0,1,2,3,4): one run per seed in this process, into "
                                   "OUT/s<seed>/, the run file's seed replaced (saves the start-up of a process per seed)")
    f.add_argument("--json", action="store_true", help="print metrics.json on stdout")
    _on_changed_inputs(f)
    f.set_defaults(func=_finetune)


def _on_changed_inputs(p) -> None:
    p.add_argument("--on-changed-inputs", choices=("refuse", "restart"), default="refuse",
                   help="when OUT holds a run started from other inputs (run file, stores, --pretrained): refuse "
                        "(default, one-line error) or restart (remove OUT's run state and start over; the "
                        "workflow's rules use this, since Snakemake reruns a job whose inputs changed)")


def _summary(m: dict, keys) -> str:
    return ", ".join(f"{k}={m[k]}" for k in keys if k in m)


def _pretrain(args) -> int:
    from atomsift.train.config import load_pretrain_config

    cfg = load_pretrain_config(args.config)  # validated before any heavy import
    from atomsift.fsio import print_json
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

    from atomsift.train.config import load_finetune_config

    cfg = load_finetune_config(args.config)
    seeds = _seeds(args.seeds)
    from atomsift.fsio import print_json
    from atomsift.train.finetune import run_finetune

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
