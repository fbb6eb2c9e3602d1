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

    p = sub.add_parser("predict", help="energy (eV) and forces (eV/A) of every frame of an ASE-readable file")
    p.add_argument("file")
    p.add_argument("--size", choices=SIZES, default="tiny", help="model size when no checkpoint is given")
    p.add_argument("--checkpoint", help="atomsift or JMP checkpoint (default: random weights from --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="ase", help="graph settings of this dataset family (default: 12 A, k=30, pbc from the file)")
    p.add_argument("--head", help="head of the checkpoint to use (default: the first energy head)")
    p.add_argument("--batch-size", type=int, default=16)
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

    import numpy as np

    from atomsift.fsio import print_json
    from atomsift.data.batch import from_atoms
    from atomsift.data.graphs import graph_settings
    from atomsift.models.checkpoint import load_checkpoint
    from atomsift.models.heads import HeadSpec
    from atomsift.models.model import build_model

    if args.checkpoint:
        model, _ = load_checkpoint(args.checkpoint)
        specs = model.head_specs
        head = args.head or next((k for k, v in specs.items() if v.kind != "scalar"), None)
        if head is None or head not in specs or specs[head].kind == "scalar":
            raise InputError(f"checkpoint has no energy head{'' if args.head is None else ' named ' + args.head}", path=args.checkpoint, field="heads")
    else:
        head = "energy"
        model = build_model(args.size, {head: HeadSpec("energy_grad_forces")}, direct_forces_backbone=False, seed=args.seed)
    model.eval()
    settings = graph_settings(args.dataset)
    dtype = next(model.parameters()).dtype
    out_frames = []
    for lo in range(0, len(frames), max(1, args.batch_size)):
        chunk = [a.copy() for a in frames[lo : lo + args.batch_size]]
        for a in chunk:
            a.calc = None
        batch = from_atoms(chunk, dtype=dtype)
        batch.dataset = args.dataset
        res = model(batch, head, graph=settings)
        e = res["energy"].detach().double().numpy()
        f = res.get("forces")
        f = None if f is None else f.detach().double().numpy()
        offs = np.concatenate([[0], np.cumsum(batch.natoms.numpy())])
        for j in range(len(chunk)):
            fr = {"energy": float(e[j])}
            if f is not None:
                fr["forces"] = f[offs[j] : offs[j + 1]].tolist()
            out_frames.append(fr)
    result = {"file": str(path), "head": head, "frames": out_frames}
    if args.json:
        print_json(result)
    else:
        for i, fr in enumerate(out_frames):
            sys.stdout.write(f"{i}\t{fr['energy']:.6f} eV\n")
    return 0
