"""``atomsift finetune``: one downstream task from a pretrained, JMP or random backbone (PAPER.md §4).

New heads on the backbone, layer-wise LR scales, warmup + cosine then reduce-on-plateau, EMA;
the test MAE is computed on the final EMA weights (as the paper) or on the best-validation EMA
weights (``test_weights: best``) and reported in the paper's unit.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import numpy as np

from atomsift.errors import InputError
from atomsift.train.config import FinetuneConfig, to_dict
from atomsift.train.tasks import QM9_ATOM_REFS_JMP, TaskRecipe, default_block_lr_scales, recipe, report_unit


def resolve(cfg: FinetuneConfig) -> tuple[FinetuneConfig, TaskRecipe]:
    """The run file with every recipe default filled in."""
    r = recipe(cfg.task)
    if cfg.readout is not None:  # a scalar task's reduction over atoms, overriding the recipe's
        r = replace(r, readout=cfg.readout)
    filled = replace(
        cfg,
        epochs=cfg.epochs if cfg.epochs is not None else r.epochs,
        batch_size=cfg.batch_size if cfg.batch_size is not None else r.batch_size,
        plateau_patience=cfg.plateau_patience if cfg.plateau_patience is not None else r.plateau_patience,
        forces=(cfg.forces or r.forces) if r.kind == "forces" else None,
        energy_loss_scale=cfg.energy_loss_scale if cfg.energy_loss_scale is not None else r.energy_loss_scale,
        force_loss_scale=cfg.force_loss_scale if cfg.force_loss_scale is not None else r.force_loss_scale,
    )
    return filled, r


def _split_indices(store, cfg: FinetuneConfig, config_path) -> dict[str, np.ndarray]:
    names = dict(cfg.splits)
    if cfg.fold is not None:
        fold_names = {k: f"fold{cfg.fold}_{k}" for k in names}
        if all(v in store.split_names() for v in fold_names.values()):
            names = fold_names
    out = {}
    caps = {"train": cfg.max_train, "val": cfg.max_val, "test": cfg.max_test}
    for i, (k, split) in enumerate(names.items()):
        if split not in store.split_names():
            raise InputError(f"store has no split '{split}' (has: {', '.join(store.split_names()) or 'none'})",
                             path=config_path or store.path, field=f"splits.{k}")
        idx = store.split(split)
        if caps[k] is not None and caps[k] < idx.size:
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 31, i]))
            idx = np.sort(rng.permutation(idx)[: caps[k]])
        if idx.size == 0:
            raise InputError(f"split '{split}' is empty", path=store.path, field=f"splits.{k}")
        out[k] = idx
    return out


def _head_spec(r: TaskRecipe, forces: str | None):
    from atomsift.models.heads import HeadSpec

    if r.kind == "forces":
        return HeadSpec("energy_grad_forces" if forces == "gradient" else "energy_direct_forces", reduction="sum")
    return HeadSpec("scalar", reduction=r.readout)


def transfer_backbone(src, dst) -> dict:
    """Copy every non-head tensor of ``src`` into ``dst`` (same name and shape); report the rest."""
    s = src.state_dict()
    d = dst.state_dict()
    loaded, missing = [], []
    new = {}
    for k, v in d.items():
        if k.startswith("heads."):
            continue
        if k in s:
            if tuple(s[k].shape) != tuple(v.shape):
                raise InputError(f"pretrained tensor {k} has shape {tuple(s[k].shape)}, the {getattr(dst, 'size', '')} model needs {tuple(v.shape)}: "
                                 "does the run file's size match the checkpoint?", field="size")
            new[k] = s[k]
            loaded.append(k)
        else:
            missing.append(k)
    dst.load_state_dict(new, strict=False)
    return {"loaded": len(loaded), "reinitialised": missing}


def run_finetune(cfg: FinetuneConfig, out: str | Path, pretrained: str | None, *, config_path: str | Path | None = None,
                 model_factory: Callable | None = None, model_loader: Callable | None = None, callbacks: list | None = None,
                 fit_scales: bool = True) -> dict:
    """Run (or resume, or report) one finetuning run into ``out``; return its metrics. Nothing is
    written into ``out`` until every input (store, run file, ``pretrained``) has been read."""
    from atomsift.data.graphs import graph_settings
    from atomsift.data.store import Store
    from atomsift.train import data as D
    from atomsift.train.linref import DatasetNorm, element_counts, fit_dataset_norm, fit_linear_reference
    from atomsift.train.module import FinetuneModule, Plateau
    from atomsift.train.pretrain import default_model_factory, fit_scales_if_available
    from atomsift.train.runtime import (check_run, clean_stale_temporaries, load_lightning_checkpoint, make_trainer,
                                        record_run, run_inputs, save_checkpoint_atomic, set_threads, weights_digest,
                                        write_json)

    out = Path(out)
    metrics_path = out / "metrics.json"
    clean_stale_temporaries(out)
    if metrics_path.exists():
        return json.loads(metrics_path.read_text())
    cfg, r = resolve(cfg)
    set_threads(cfg.threads)
    t0 = time.time()

    # -- data
    spath = Path(cfg.store)
    if not spath.exists():
        raise InputError("store does not exist", path=config_path or spath, field="store")
    store = Store(spath)
    target = None
    if r.kind == "forces":
        if not (store.has("energy") and store.has("forces")):
            raise InputError(f"task '{cfg.task}' needs a store with energy and forces", path=store.path, field="fields")
    else:
        target = cfg.target or r.default_target
        if target is None:
            if len(store.target_names) != 1:
                raise InputError(f"name the target: the store has {', '.join(store.target_names) or 'no targets'}",
                                 path=config_path or store.path, field="target")
            target = store.target_names[0]
        if target not in store.target_names:
            raise InputError(f"store has no target '{target}' (has: {', '.join(store.target_names) or 'none'})",
                             path=config_path or store.path, field="target")
    splits = _split_indices(store, cfg, config_path)
    if pretrained and pretrained != "none" and not Path(pretrained).is_file():
        raise InputError("pretrained checkpoint does not exist", path=pretrained)
    # the run's identity; a resume with other inputs (or a planted checkpoint) stops here
    inputs = run_inputs(cfg, config_path, {"store": store.path}, pretrained)
    prev = check_run(cfg, out, inputs, config_path)
    ds = {k: D.MixedDataset([D.Part(cfg.task, store, v)]) for k, v in splits.items()}
    collate = D.Collate([store.dataset], 1)
    graph = graph_settings(store.dataset)

    # -- labels: reference and scale
    atom_refs = cfg.atom_refs or (r.atom_refs if (r.name == "qm9" and target in QM9_ATOM_REFS_JMP) else "none")
    scalar_mean = scalar_std = 1.0
    if r.kind == "forces":
        norm = fit_dataset_norm(store, splits["train"])
    else:
        y = np.asarray(store.array("targets"))[splits["train"], store.target_names.index(target)]
        coeff = np.zeros(120)
        if atom_refs == "jmp":
            if target not in QM9_ATOM_REFS_JMP:
                raise InputError(f"JMP atom references exist for {', '.join(QM9_ATOM_REFS_JMP)} only", path=config_path, field="atom_refs")
            for z, v in QM9_ATOM_REFS_JMP[target].items():
                coeff[z] = v
        elif atom_refs == "fit":
            coeff = fit_linear_reference(element_counts(store, splits["train"]), y)
        yr = y - element_counts(store, splits["train"]) @ coeff
        scalar_mean = float(yr.mean())
        scalar_std = float(yr.std()) if yr.size > 1 and yr.std() > 1e-12 else 1.0
        norm = DatasetNorm(coeff=[float(c) for c in coeff], energy_mean=scalar_mean, energy_std=scalar_std, force_std=1.0)

    # -- model
    spec = _head_spec(r, cfg.forces)
    direct = r.kind == "forces" and cfg.forces == "direct"
    factory = model_factory or default_model_factory
    model = factory(cfg.size, {"task": spec}, direct, cfg.seed)
    resume = prev is not None
    if inputs["pretrained"] is not None:
        if resume:  # the weights come from last.ckpt; what the transfer loaded was recorded at the start
            inputs["pretrained"] = {**prev["pretrained"], "path": inputs["pretrained"]["path"]}
        else:
            loader = model_loader
            if loader is None:
                from atomsift.train.checkpointing import load_model as loader
            pre_model, pre_meta = loader(Path(pretrained))
            pre_size = getattr(pre_model, "size", None)
            if pre_size not in (None, "toy") and pre_size != cfg.size:
                raise InputError(f"checkpoint is size '{pre_size}' but the run file says '{cfg.size}'", path=config_path, field="size")
            inputs["pretrained"].update(transfer_backbone(pre_model, model))
            del pre_model
    elif fit_scales and cfg.n_scale_fit_batches() > 0 and not resume:
        sampler = D.EpochBatchSampler(len(ds["train"]), cfg.batch_size, seed=cfg.seed)
        batches = [next(iter(collate([ds["train"][i] for i in idx]).sub.values())) for idx in sampler.batches(0, 0)[: cfg.n_scale_fit_batches()]]
        fit_scales_if_available(model, batches)
    record_run(cfg, out, inputs)  # every input has been read: the run directory starts here
    pre_info = inputs["pretrained"] or {}

    world = cfg.devices * cfg.num_nodes
    spe = math.ceil(len(ds["train"]) / (cfg.batch_size * world))
    cosine_steps = max(int(round(cfg.cosine_epochs * spe)), 1)
    warmup = int(round(cfg.warmup_epochs * spe))
    progress: dict = {}
    vbs = cfg.val_batch_size or cfg.batch_size

    def loader_fn(split: str, bs: int, shuffle: bool, prog):
        return lambda rank, ws: D.make_loader(
            ds[split], D.EpochBatchSampler(len(ds[split]), bs, seed=cfg.seed, shuffle=shuffle, rank=rank, world_size=ws),
            collate, cfg.num_workers, prog)

    module = FinetuneModule(
        model, head="task", kind=r.kind, graph=graph, norm=norm, scalar_std=scalar_std, scalar_mean=scalar_mean,
        target=target, energy_loss_scale=cfg.energy_loss_scale, force_loss_scale=cfg.force_loss_scale,
        gradient_forces=(cfg.forces == "gradient"), edge_dropout=cfg.edge_dropout,
        embedding_lr_scale=cfg.embedding_lr_scale, block_lr_scales=cfg.block_lr_scales,
        default_scales=default_block_lr_scales, plateau=Plateau(cfg.plateau_factor, cfg.plateau_patience),
        cosine_steps=cosine_steps,
        train_loader_fn=loader_fn("train", cfg.batch_size, True, progress),
        val_loader_fn=loader_fn("val", vbs, False, None),
        test_loader_fn=loader_fn("test", vbs, False, None),
        seed=cfg.seed, ema_decay=cfg.ema_decay, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
        warmup=warmup, total_steps=cosine_steps, start_factor=cfg.warmup_start_factor, min_lr_factor=cfg.min_lr_factor,
        progress=progress, record_seen=cfg.record_seen)
    trainer = make_trainer(cfg, out, max_epochs=cfg.epochs, callbacks=list(callbacks or []), monitor="val/mae",
                           gradient_clip_val=cfg.grad_clip_value, gradient_clip_algorithm="value",
                           find_unused_parameters=True, steps_per_epoch=spe)
    setup_s = time.time() - t0  # data, references, model (before the module's clock starts)
    module._t0 = time.time()
    trainer.fit(module, ckpt_path=str(out / "last.ckpt") if resume else None)
    if trainer.interrupted:
        raise KeyboardInterrupt
    save_checkpoint_atomic(trainer, out / "last.ckpt")  # every rank takes part (barrier under DDP)
    fit_time = time.time() - t0

    # -- test on the chosen weights
    best = out / "best.ckpt"
    tested = "final_ema" if module.ema_model is not None else "final_raw"
    module.test_model = module.eval_model
    if cfg.test_weights == "best" and best.exists():
        state = load_lightning_checkpoint(best)["state_dict"]  # safe loader: a planted best.ckpt runs nothing
        prefix = "ema_model." if module.ema_model is not None else "model."
        chosen = copy.deepcopy(module.eval_model)
        chosen.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        module.test_model = chosen
        tested = "best_ema" if module.ema_model is not None else "best_raw"
    trainer.test(module, verbose=False)
    res = module.test_result
    if trainer.global_rank != 0:
        return {}

    unit_name, factor = report_unit(r, target, store.manifest.get("units", {}).get("targets", {}).get(target) if target else None)
    from atomsift.train.checkpointing import save_model

    meta = {"stage": "finetune", "task": cfg.task, "target": target, "config": to_dict(cfg), "tested_weights": tested,
            "normalization": vars(norm), "pretrained": pre_info, "dataset": store.dataset, "graph": asdict(module.graph)}
    save_model(out / "model.pt", module.test_model, meta)
    curve = [{**row, "mae_" + unit_name: row["mae"] * factor} for row in module.val_curve]
    metrics = {
        "stage": "finetune",
        "task": cfg.task,
        "target": target if target else "forces",
        "store": str(store.path),
        "dataset": store.dataset,
        "fold": cfg.fold,
        "seed": cfg.seed,
        "size": cfg.size,
        "metric": "force_mae" if r.kind == "forces" else f"{target}_mae",
        "unit": unit_name,
        "test_mae": res["mae"] * factor,
        "test_mae_store_unit": res["mae"],
        "test_n": int(res["n"]),
        "tested_weights": tested,
        "test_weights": cfg.test_weights,
        "pretrained": pre_info.get("path") or "none",
        "pretrained_sha256": pre_info.get("sha256"),
        "pretrained_transfer": {k: v for k, v in pre_info.items() if k in ("loaded", "reinitialised")},
        "n_train": int(len(ds["train"])),
        "n_val": int(len(ds["val"])),
        "n_test": int(len(ds["test"])),
        "epochs": int(cfg.epochs),
        "epochs_run": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "structures_seen": int(module.seen[0]),
        "wall_time_s": module.elapsed() + setup_s,
        "fit_time_s": fit_time,
        "forces": cfg.forces,
        "readout": r.readout if r.kind == "scalar" else None,
        "atom_refs": atom_refs if r.kind == "scalar" else None,
        "best_val_mae": min((row["mae"] for row in module.val_curve), default=None),
        "val_curve": curve,
        "weights_sha256": weights_digest(module.test_model),
    }
    write_json(metrics_path, metrics)
    return metrics
