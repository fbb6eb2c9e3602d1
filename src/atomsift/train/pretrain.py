"""``atomsift pretrain``: budgeted pretraining on one upstream store or a mixture (PAPER.md §3).

:func:`run_pretrain` samples N structures, fits per-dataset linear references and normalisation on
them, builds the backbone with one energy + direct-force head per dataset, trains E epochs under
Lightning and writes ``DIR/model.pt`` (EMA weights), ``DIR/metrics.json`` and the rest. The
structures actually trained on are counted per dataset; a count that differs from the plan x E
is an error, not a footnote.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from atomsift.errors import InputError
from atomsift.train.config import PretrainConfig, to_dict


class BudgetError(RuntimeError):
    """The structures seen differ from the planned budget."""


def _graphs_for(stores):
    from atomsift.data.graphs import graph_settings

    return [graph_settings(st.dataset) for st in stores]


def default_model_factory(size: str, heads: dict, direct_forces_backbone: bool, seed: int):
    from atomsift.models.model import build_model

    return build_model(size=size, heads=heads, direct_forces_backbone=direct_forces_backbone, seed=seed)


def fit_scales_if_available(model, batches) -> bool:
    """Fit GemNet-OC scale factors on ``batches`` (JMP: 16 batches before training) if supported."""
    try:
        from atomsift.models.scaling import fit_scale_factors, scale_factors
    except ImportError:
        return False
    if not hasattr(model, "config") or not scale_factors(model):
        return False
    fit_scale_factors(model, batches)  # graph=None: each batch's dataset family picks its graph
    return True


def run_pretrain(cfg: PretrainConfig, out: str | Path, *, config_path: str | Path | None = None,
                 model_factory: Callable | None = None, callbacks: list | None = None, fit_scales: bool = True) -> dict:
    """Run (or resume, or report) one pretraining run into ``out``; return its metrics."""
    import torch

    from atomsift.models.heads import HeadSpec
    from atomsift.train import data as D
    from atomsift.train.linref import fit_dataset_norm, save_norms
    from atomsift.train.module import PretrainModule
    from atomsift.train.runtime import (check_run, clean_stale_temporaries, make_trainer, record_run, run_inputs,
                                        save_checkpoint_atomic, set_threads, weights_digest, write_json)

    out = Path(out)
    metrics_path = out / "metrics.json"
    clean_stale_temporaries(out)
    if metrics_path.exists():
        import json

        return json.loads(metrics_path.read_text())
    set_threads(cfg.threads)
    t0 = time.time()
    pdata = D.build_pretrain_data(cfg, config_path)
    # the run's identity; a resume with other inputs (or a planted checkpoint) stops here
    inputs = run_inputs(cfg, config_path, {nm: st.path for nm, st in pdata.stores.items()}, None)
    prev = check_run(cfg, out, inputs, config_path, store_field=lambda name: f"upstream.stores.{name}")
    record_run(cfg, out, inputs)
    names = pdata.names
    parts = pdata.train.parts
    norms = {p.name: fit_dataset_norm(p.store, p.indices) for p in parts}
    save_norms(out / "linref.json", norms)
    graphs = _graphs_for([p.store for p in parts])
    datasets = [p.store.dataset for p in parts]

    factory = model_factory or default_model_factory
    model = factory(cfg.size, {nm: HeadSpec("energy_direct_forces") for nm in names}, True, cfg.seed)
    collate = D.Collate(datasets, len(names))
    resume = prev is not None
    if fit_scales and cfg.n_scale_fit_batches() > 0 and not resume:
        # scale factors from up to 16 training batches of the first epoch's order (fixed by the seed)
        sampler = D.EpochBatchSampler(len(pdata.train), cfg.batch_size, seed=cfg.seed)
        batches = []
        for idx in sampler.batches(0, 0)[: cfg.n_scale_fit_batches()]:
            batches.extend(collate([pdata.train[i] for i in idx]).sub.values())
        fit_scales_if_available(model, batches)

    world = cfg.devices * cfg.num_nodes
    steps_per_epoch = math.ceil(cfg.n_structures / (cfg.batch_size * world))
    sched_steps = max(cfg.n_structures // (cfg.batch_size * world), 1) * cfg.epochs
    warmup = min(cfg.warmup(sched_steps), sched_steps)
    progress: dict = {}
    module = PretrainModule(
        model, names=names, graphs=graphs, norms=[norms[nm] for nm in names],
        energy_loss_scale=cfg.energy_loss_scale, force_loss_scale=cfg.force_loss_scale, edge_dropout=cfg.edge_dropout,
        seed=cfg.seed, ema_decay=cfg.ema_decay, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
        warmup=warmup, total_steps=sched_steps, start_factor=cfg.warmup_start_factor, min_lr_factor=cfg.min_lr_factor,
        progress=progress, record_seen=cfg.record_seen)
    vbs = cfg.val_batch_size or cfg.batch_size
    module.train_loader_fn = lambda rank, ws: D.make_loader(
        pdata.train, D.EpochBatchSampler(len(pdata.train), cfg.batch_size, seed=cfg.seed, rank=rank, world_size=ws),
        collate, cfg.num_workers, progress)
    module.val_loader_fn = lambda rank, ws: D.make_loader(
        pdata.val, D.EpochBatchSampler(len(pdata.val), vbs, seed=cfg.seed, shuffle=False, rank=rank, world_size=ws),
        collate, cfg.num_workers)

    trainer = make_trainer(cfg, out, max_epochs=cfg.epochs, callbacks=list(callbacks or []), monitor="val/loss",
                           gradient_clip_val=cfg.grad_clip_norm, gradient_clip_algorithm="norm",
                           find_unused_parameters=len(names) > 1, steps_per_epoch=steps_per_epoch)
    setup_s = time.time() - t0  # data, references, model (before the module's clock starts)
    module._t0 = time.time()
    trainer.fit(module, ckpt_path=str(out / "last.ckpt") if resume else None)
    rank = trainer.global_rank
    if cfg.record_seen:
        write_json(out / f"seen_rank{rank}.json", {"rank": rank, "world_size": trainer.world_size,
                                                   "seen": {str(k): v for k, v in module.seen_ids.items()},
                                                   "weights_sha256": weights_digest(module.model),
                                                   "ema_sha256": weights_digest(module.eval_model)})
    if trainer.interrupted:
        raise KeyboardInterrupt
    seen = {nm: int(module.seen[i]) for i, nm in enumerate(names)}
    expected = {nm: pdata.counts[nm] * cfg.epochs for nm in names}
    save_checkpoint_atomic(trainer, out / "last.ckpt")  # every rank takes part (barrier under DDP)
    if seen != expected:
        raise BudgetError(f"budget mismatch: structures seen {seen} != planned {expected} (N x E)")
    if rank != 0:
        return {}

    from atomsift.train.checkpointing import save_model

    meta = {
        "stage": "pretrain",
        "config": to_dict(cfg),
        "heads": names,
        "datasets": dict(zip(names, datasets)),
        "budget": {"n_structures": cfg.n_structures, "epochs": cfg.epochs, "C": cfg.n_structures * cfg.epochs,
                   "counts": pdata.counts, "seen": seen},
        "normalization": {nm: vars(norms[nm]) for nm in names},
        "weights": "ema" if module.ema_model is not None else "raw",
    }
    save_model(out / "model.pt", module.eval_model, meta)
    if module.ema_model is not None:
        save_model(out / "model_raw.pt", module.model, {**meta, "weights": "raw"})
    best = out / "best.ckpt"
    curve = module.val_curve
    metrics = {
        "stage": "pretrain",
        "seed": cfg.seed,
        "size": cfg.size,
        "mixture": cfg.upstream.mixture,
        "datasets": dict(zip(names, datasets)),
        "n_structures": cfg.n_structures,
        "epochs": cfg.epochs,
        "budget_C": cfg.n_structures * cfg.epochs,
        "planned_per_dataset": pdata.counts,
        "structures_seen": seen,
        "structures_seen_total": int(sum(seen.values())),
        "steps": int(trainer.global_step),
        "steps_per_epoch": steps_per_epoch,
        "scheduled_steps": sched_steps,
        "warmup_steps": warmup,
        "world_size": trainer.world_size,
        "wall_time_s": module.elapsed() + setup_s,
        "best_val_loss": min((r["loss"] for r in curve), default=None),
        "best_checkpoint": str(best) if best.exists() else None,
        "val_curve": curve,
    }
    write_json(out / "metrics.json", metrics)
    return metrics
