"""``atomsift pretrain``: budgeted pretraining on one upstream store or a mixture (PAPER.md §3).

:func:`run_pretrain` samples N structures, fits per-dataset linear references and normalisation on
them, builds the backbone with one energy + direct-force head per dataset, trains E epochs under
Lightning and writes ``DIR/model.pt`` (EMA weights), ``DIR/metrics.json`` and the rest. The
structures actually trained on are counted per dataset; a count that differs from the plan x E
is an error, not a footnote.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from atomsift.train.config import PretrainConfig, to_dict


class BudgetError(RuntimeError):
    """The structures seen differ from the planned budget."""


def default_model_factory(size: str, heads: dict, direct_forces_backbone: bool, seed: int):
    from atomsift.models.model import build_model

    return build_model(size=size, heads=heads, direct_forces_backbone=direct_forces_backbone, seed=seed)


def fit_scales_if_available(model, batches) -> bool:
    """Fit GemNet-OC scale factors on ``batches`` (JMP: 16 batches before training) if the model has any."""
    from atomsift.models.scaling import fit_scale_factors, scale_factors

    if not hasattr(model, "config") or not scale_factors(model):
        return False
    fit_scale_factors(model, batches)  # graph=None: each batch's dataset family picks its graph
    return True


def run_pretrain(cfg: PretrainConfig, out: str | Path, *, config_path: str | Path | None = None,
                 model_factory: Callable | None = None, callbacks: list | None = None, fit_scales: bool = True,
                 on_changed_inputs: str = "refuse") -> dict:
    """Run (or resume, or report) one pretraining run into ``out``; return its metrics."""
    from atomsift.models.heads import HeadSpec
    from atomsift.train.data import AtomsDataModule
    from atomsift.train.finetune import graph_of, set_graph
    from atomsift.train.linref import fit_dataset_norm, save_norms
    from atomsift.train.module import PretrainModule
    from atomsift.train.runtime import (check_run, clean_stale_temporaries, make_trainer, record_run, run_inputs,
                                        set_threads, world_size)

    out = Path(out)
    clean_stale_temporaries(out)
    # the run's identity; a resume with other inputs (or a planted checkpoint) stops here
    inputs = run_inputs(cfg, config_path, dict(cfg.upstream.stores), None)
    prev = check_run(cfg, out, inputs, config_path, store_field=lambda name: f"upstream.stores.{name}",
                     on_changed=on_changed_inputs)
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    set_threads(cfg.threads)
    t0 = time.time()
    dm = AtomsDataModule.pretraining(cfg, world_size(cfg), config_path)
    record_run(cfg, out, inputs)
    parts = dm.splits["train"].parts
    names = [p.name for p in parts]
    norms = {p.name: fit_dataset_norm(p.store, p.indices) for p in parts}
    save_norms(out / "linref.json", norms)

    model = (model_factory or default_model_factory)(cfg.size, {nm: HeadSpec("energy_direct_forces") for nm in names}, True, cfg.seed)
    if cfg.graph is not None:
        set_graph(model, {"cutoff": cfg.graph.cutoff, "max_neighbors": cfg.graph.max_neighbors})
    if fit_scales and cfg.n_scale_fit_batches() > 0 and prev is None:
        # scale factors from up to 16 training batches of the first epoch's order (fixed by the seed)
        fit_scales_if_available(model, dm.first_batches(cfg.n_scale_fit_batches()))
    sched_steps = max(dm.full_steps_per_epoch, 1) * cfg.epochs
    warmup = min(cfg.warmup(sched_steps), sched_steps)
    module = PretrainModule(
        model, names=names, graphs=[graph_of(model, p.store.dataset) for p in parts], norms=[norms[nm] for nm in names],
        energy_loss_scale=cfg.energy_loss_scale, force_loss_scale=cfg.force_loss_scale, edge_dropout=cfg.edge_dropout,
        seed=cfg.seed, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, warmup=warmup, total_steps=sched_steps,
        start_factor=cfg.warmup_start_factor, min_lr_factor=cfg.min_lr_factor, record_seen=cfg.record_seen)
    trainer = make_trainer(cfg, out, monitor="val/loss", gradient_clip_val=cfg.grad_clip_norm,
                           gradient_clip_algorithm="norm", find_unused_parameters=len(names) > 1,
                           steps_per_epoch=dm.steps_per_epoch, callbacks=callbacks or ())
    setup_s = time.time() - t0  # data, references, model
    trainer.fit(module, datamodule=dm, ckpt_path=str(out / "last.ckpt") if prev is not None else None)
    if trainer.interrupted:
        raise KeyboardInterrupt
    return _finish(cfg, out, trainer, module, dm, norms, sched_steps, warmup, setup_s)


def _finish(cfg, out: Path, trainer, module, dm, norms: dict, sched_steps: int, warmup: int, setup_s: float) -> dict:
    """Audit records, the budget check, then (rank 0) the models and ``metrics.json``."""
    from atomsift.fsio import write_json
    from atomsift.train.checkpointing import save_model
    from atomsift.train.runtime import EMA, callback, run_time, weights_digest

    ema = callback(trainer, EMA)
    raw = ema.raw_model if ema is not None else module.model  # after fit the module holds the EMA weights
    rank = trainer.global_rank
    if cfg.record_seen:
        write_json(out / f"seen_rank{rank}.json", {"rank": rank, "world_size": trainer.world_size,
                                                   "seen": {str(k): v for k, v in module.seen_ids.items()},
                                                   "weights_sha256": weights_digest(raw),
                                                   "ema_sha256": weights_digest(module.model)})
    names = list(dm.counts)
    seen = dict(zip(names, module.seen_total))
    expected = {nm: dm.counts[nm] * cfg.epochs for nm in names}
    if seen != expected:
        raise BudgetError(f"budget mismatch: structures seen {seen} != planned {expected} (N x E)")
    if rank != 0:
        return {}
    datasets = {nm: dm.stores[nm].dataset for nm in names}
    meta = {
        "stage": "pretrain",
        "config": to_dict(cfg),
        "heads": names,
        "datasets": datasets,
        "budget": {"n_structures": cfg.n_structures, "epochs": cfg.epochs, "C": cfg.n_structures * cfg.epochs,
                   "counts": dm.counts, "seen": seen},
        "normalization": {nm: vars(norms[nm]) for nm in names},
        "weights": "ema" if ema is not None else "raw",
    }
    save_model(out / "model.pt", module.model, meta)
    if ema is not None:
        save_model(out / "model_raw.pt", raw, {**meta, "weights": "raw"})
    best = out / "best.ckpt"
    curve = module.val_curve
    metrics = {
        "stage": "pretrain",
        "seed": cfg.seed,
        "size": cfg.size,
        "mixture": cfg.upstream.mixture,
        "datasets": datasets,
        "n_structures": cfg.n_structures,
        "epochs": cfg.epochs,
        "budget_C": cfg.n_structures * cfg.epochs,
        "planned_per_dataset": dm.counts,
        "structures_seen": seen,
        "structures_seen_total": int(sum(seen.values())),
        "steps": int(trainer.global_step),
        "steps_per_epoch": dm.steps_per_epoch,
        "scheduled_steps": sched_steps,
        "warmup_steps": warmup,
        "world_size": trainer.world_size,
        "wall_time_s": run_time(trainer) + setup_s,
        "best_val_loss": min((r["loss"] for r in curve), default=None),
        "best_checkpoint": str(best) if best.exists() else None,
        "val_curve": curve,
    }
    write_json(out / "metrics.json", metrics)
    return metrics
