"""Verbs of atomsift.models: model-info, predict."""

from __future__ import annotations

import sys

SIZES = ("tiny", "small", "large")


def register(sub) -> None:
    """Add this package's verbs to the atomsift parser."""
    p = sub.add_parser("model-info", help="parameter counts of a GemNet-OC size (embedding, backbone, heads)")
    p.add_argument("--size", choices=SIZES, default="small")
    p.add_argument("--tasks", default="", help="comma-separated pretraining tasks, one energy + direct-force head pair each (e.g. oc20,oc22,ani1x,transition1x)")
    p.add_argument("--no-direct-forces", action="store_true", help="backbone without the direct-force branch (heads then predict energy only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_model_info)

    p = sub.add_parser("predict", help="energy (eV) and forces (eV/A) of every frame of an ASE-readable file",
                       description="Predictions of a checkpoint's head for every frame, through atomsift.calculator "
                                   "(the head, graph settings and units taken from the checkpoint; a scalar head gives "
                                   "its target). Without --checkpoint: random weights from --seed.")
    p.add_argument("file")
    p.add_argument("--size", choices=SIZES, default="tiny", help="model size when no checkpoint is given")
    p.add_argument("--checkpoint", help="atomsift or JMP checkpoint (default: random weights from --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", help="use the graph settings of this dataset family instead of the checkpoint's "
                                     "(without a checkpoint: 12 A, k=30, pbc from the file)")
    p.add_argument("--head", help="head of the checkpoint to use (default: a finetuned model's head, else the first energy head)")
    p.add_argument("--stress", action="store_true", help="also the stress (periodic structures, gradient-force heads)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto", help="cpu, cuda[:i], or auto (default: cuda when available)")
    p.add_argument("--float64", action="store_true", help="evaluate in float64")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_predict)


def _model_info(args) -> int:
    import torch

    from atomsift.fsio import print_json
    from atomsift.models.gemnet_oc import backbone_config
    from atomsift.models.heads import HeadSpec
    from atomsift.models.model import GemNetModel

    direct = not args.no_direct_forces
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    heads = {t: HeadSpec("energy_direct_forces" if direct else "energy") for t in tasks}
    with torch.device("meta"):  # shapes only: counting needs no initialisation
        model = GemNetModel(backbone_config(args.size, direct), heads, size=args.size)
    counts = model.count_parameters()
    if args.json:
        print_json({"size": args.size, "direct_forces": direct, "tasks": tasks, "parameters": counts})
    else:
        for k, v in counts.items():
            print(f"{k:10s} {v:>14,d}")
    return 0


def _predict(args) -> int:
    from atomsift.data.readers.ase_reader import read_frames
    from atomsift.errors import InputError, require_file

    path = require_file(args.file)
    frames = read_frames(path)  # the structure checks every verb shares, before torch is imported
    if args.batch_size < 1:
        raise InputError(f"must be at least 1, got {args.batch_size}", field="--batch-size")
    if args.checkpoint:
        require_file(args.checkpoint, "checkpoint")

    from ase.calculators.calculator import PropertyNotImplementedError

    from atomsift.calculator import AtomsiftCalculator
    from atomsift.fsio import print_json

    if args.checkpoint:
        model, meta = args.checkpoint, None
    else:
        from atomsift.models.heads import HeadSpec
        from atomsift.models.model import build_model

        model = build_model(args.size, {"energy": HeadSpec("energy_grad_forces")}, direct_forces_backbone=False, seed=args.seed)
        meta = {}
    calc = AtomsiftCalculator(model, meta=meta, head=args.head, graph=args.dataset, device=args.device,
                              dtype="float64" if args.float64 else None, batch_size=args.batch_size)
    props = [p for p in ("energy", "forces") if p in calc.implemented_properties] or calc.implemented_properties[:1]
    if args.stress:
        props.append("stress")
    try:
        results = calc.calculate_batch(frames, props)
    except PropertyNotImplementedError as exc:
        raise InputError(str(exc), path=args.checkpoint, field="--stress" if args.stress else "heads") from None
    out_frames = [{k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in r.items() if k != "free_energy"} for r in results]
    result = {"file": str(path), "head": calc.head, "calculator": calc.describe(), "frames": out_frames}
    if args.json:
        print_json(result)
    else:
        key = props[0]
        unit = " eV" if key == "energy" else ""
        for i, fr in enumerate(out_frames):
            sys.stdout.write(f"{i}\t{fr[key]:.6f}{unit}\n")
    return 0
