"""``atomsift finetune``: one downstream task from a pretrained, JMP or random backbone (PAPER.md §4).

New heads on the backbone, layer-wise LR scales, warmup + cosine then reduce-on-plateau, EMA;
the test MAE is computed on the final EMA weights (as the paper) or on the best-validation EMA
weights (``test_weights: best``) and reported in the paper's unit.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

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


def task_store(cfg: FinetuneConfig, r: TaskRecipe, config_path):
    """The task's store and target (None for force tasks), checked to hold what the task learns."""
    from atomsift.data.store import Store

    spath = Path(cfg.store)
    if not spath.exists():
        raise InputError("store does not exist", path=config_path or spath, field="store")
    store = Store(spath)
    if r.kind == "forces":
        if not (store.has("energy") and store.has("forces")):
            raise InputError(f"task '{cfg.task}' needs a store with energy and forces", path=store.path, field="fields")
        return store, None
    target = cfg.target or r.default_target
    if target is None:
        if len(store.target_names) != 1:
            raise InputError(f"name the target: the store has {', '.join(store.target_names) or 'no targets'}",
                             path=config_path or store.path, field="target")
        target = store.target_names[0]
    if target not in store.target_names:
        raise InputError(f"store has no target '{target}' (has: {', '.join(store.target_names) or 'none'})",
                         path=config_path or store.path, field="target")
    return store, target


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


def load_pretrained(model, pretrained: str, size: str, config_path, loader: Callable | None = None) -> dict:
    """Copy the backbone of checkpoint ``pretrained`` into ``model``; what was loaded."""
    if loader is None:
        from atomsift.train.checkpointing import load_model as loader
    pre_model, _ = loader(Path(pretrained))
    pre_size = getattr(pre_model, "size", None)
    if pre_size not in (None, "toy") and pre_size != size:
        raise InputError(f"checkpoint is size '{pre_size}' but the run file says '{size}'", path=config_path, field="size")
    # the backbone was trained on these graphs: finetuning keeps them unless the run file says otherwise
    return {**transfer_backbone(pre_model, model), "graph": dict(getattr(pre_model, "graph_overrides", {}) or {})}


def graph_of(model, dataset):
    """The graph settings ``model`` uses for ``dataset`` (JMP's table, the model's rule and graph
    overrides); models without them (test stand-ins) take the table's."""
    from atomsift.data.graphs import graph_settings

    return model.graph_for(dataset) if hasattr(model, "graph_for") else graph_settings(dataset)


def set_graph(model, overrides: dict) -> None:
    if hasattr(model, "graph_overrides"):
        model.graph_overrides = {k: v for k, v in (overrides or {}).items() if v is not None}


def run_finetune(cfg: FinetuneConfig, out: str | Path, pretrained: str | None, *, config_path: str | Path | None = None,
                 model_factory: Callable | None = None, model_loader: Callable | None = None, callbacks: list | None = None,
                 fit_scales: bool = True, on_changed_inputs: str = "refuse") -> dict:
    """Run (or resume, or report) one finetuning run into ``out``; return its metrics. Nothing is
    written into ``out`` until every input (store, run file, ``pretrained``) has been read."""
    from atomsift.train.data import AtomsDataModule
    from atomsift.train.linref import fit_dataset_norm, scalar_norm
    from atomsift.train.module import FinetuneModule, Plateau
    from atomsift.train.pretrain import default_model_factory, fit_scales_if_available
    from atomsift.train.runtime import (check_run, clean_stale_temporaries, make_trainer, record_run, run_inputs,
                                        set_threads, world_size)

    out = Path(out)
    clean_stale_temporaries(out)
    cfg, r = resolve(cfg)
    store, target = task_store(cfg, r, config_path)
    dm = AtomsDataModule.finetuning(cfg, store, world_size(cfg), config_path)
    if pretrained and pretrained != "none" and not Path(pretrained).is_file():
        raise InputError("pretrained checkpoint does not exist", path=pretrained)
    # the run's identity; a resume with other inputs (or a planted checkpoint) stops here
    inputs = run_inputs(cfg, config_path, {"store": store.path}, pretrained)
    prev = check_run(cfg, out, inputs, config_path, on_changed=on_changed_inputs)
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    set_threads(cfg.threads)
    t0 = time.time()

    train_idx = dm.splits["train"].parts[0].indices
    atom_refs = cfg.atom_refs or (r.atom_refs if (r.name == "qm9" and target in QM9_ATOM_REFS_JMP) else "none")
    norm = fit_dataset_norm(store, train_idx) if r.kind == "forces" else scalar_norm(store, train_idx, target, atom_refs, config_path)
    model = (model_factory or default_model_factory)(cfg.size, {"task": _head_spec(r, cfg.forces)},
                                                     r.kind == "forces" and cfg.forces == "direct", cfg.seed)
    if inputs["pretrained"] is not None:
        if prev is not None:  # the weights come from last.ckpt; what the transfer loaded was recorded at the start
            inputs["pretrained"] = {**prev["pretrained"], "path": inputs["pretrained"]["path"]}
        else:
            inputs["pretrained"].update(load_pretrained(model, pretrained, cfg.size, config_path, model_loader))
        set_graph(model, inputs["pretrained"].get("graph"))
    if cfg.graph is not None:
        set_graph(model, {"cutoff": cfg.graph.cutoff, "max_neighbors": cfg.graph.max_neighbors})
    if inputs["pretrained"] is None and fit_scales and cfg.n_scale_fit_batches() > 0 and prev is None:
        fit_scales_if_available(model, dm.first_batches(cfg.n_scale_fit_batches()))
    record_run(cfg, out, inputs)  # every input has been read: the run directory starts here

    spe = dm.steps_per_epoch
    cosine_steps = max(int(round(cfg.cosine_epochs * spe)), 1)
    module = FinetuneModule(
        model, head="task", kind=r.kind, graph=graph_of(model, store.dataset), norm=norm, target=target,
        energy_loss_scale=cfg.energy_loss_scale, force_loss_scale=cfg.force_loss_scale,
        gradient_forces=(cfg.forces == "gradient"), edge_dropout=cfg.edge_dropout,
        embedding_lr_scale=cfg.embedding_lr_scale, block_lr_scales=cfg.block_lr_scales,
        default_scales=default_block_lr_scales, plateau=Plateau(cfg.plateau_factor, cfg.plateau_patience),
        cosine_steps=cosine_steps, seed=cfg.seed, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas,
        warmup=int(round(cfg.warmup_epochs * spe)), total_steps=cosine_steps, start_factor=cfg.warmup_start_factor,
        min_lr_factor=cfg.min_lr_factor, record_seen=cfg.record_seen)
    trainer = make_trainer(cfg, out, monitor="val/mae", gradient_clip_val=cfg.grad_clip_value,
                           gradient_clip_algorithm="value", find_unused_parameters=True, steps_per_epoch=spe,
                           callbacks=callbacks or ())
    setup_s = time.time() - t0  # data, references, model
    trainer.fit(module, datamodule=dm, ckpt_path=str(out / "last.ckpt") if prev is not None else None)
    if trainer.interrupted:
        raise KeyboardInterrupt
    fit_time = time.time() - t0
    tested = _test(cfg, out, trainer, module, dm)
    if trainer.global_rank != 0:
        return {}
    return _finish(cfg, r, out, trainer, module, dm, target, norm, atom_refs, inputs["pretrained"] or {}, tested,
                   setup_s, fit_time)


def _test(cfg: FinetuneConfig, out: Path, trainer, module, dm) -> str:
    """Test the chosen weights (after fit the module holds the final EMA); which ones they were."""
    from atomsift.train.runtime import EMA, callback, load_lightning_checkpoint

    kind = "ema" if callback(trainer, EMA) is not None else "raw"
    tested = f"final_{kind}"
    if cfg.test_weights == "best" and (out / "best.ckpt").exists():
        # safe loader: a planted best.ckpt runs nothing; its state_dict holds the weights validated
        module.load_state_dict(load_lightning_checkpoint(out / "best.ckpt")["state_dict"])
        tested = f"best_{kind}"
    trainer.test(module, datamodule=dm, verbose=False)
    return tested


def _finish(cfg, r: TaskRecipe, out: Path, trainer, module, dm, target, norm, atom_refs, pre_info: dict, tested: str,
            setup_s: float, fit_time: float) -> dict:
    """``model.pt`` (the tested weights) and ``metrics.json`` (test MAE in the paper's unit)."""
    from atomsift.fsio import write_json
    from atomsift.train.checkpointing import save_model
    from atomsift.train.runtime import run_time, weights_digest
    from atomsift.train.trivial import trivial_mae

    store = dm.stores[cfg.task]
    splits = {k: ds.parts[0].indices for k, ds in dm.splits.items()}
    trivial, trivial_kind = trivial_mae(store, splits, r.kind, target)  # same test structures: the learning ratio's floor
    unit_name, factor = report_unit(r, target, store.manifest.get("units", {}).get("targets", {}).get(target) if target else None)
    meta = {"stage": "finetune", "task": cfg.task, "target": target, "config": to_dict(cfg), "tested_weights": tested,
            "normalization": vars(norm), "pretrained": pre_info, "dataset": store.dataset, "graph": asdict(module.graph)}
    save_model(out / "model.pt", module.model, meta)
    res = module.test_result
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
        "test_n": len(dm.splits["test"]),
        "trivial_test_mae": trivial * factor,
        "trivial_predictor": trivial_kind,
        "tested_weights": tested,
        "test_weights": cfg.test_weights,
        "pretrained": pre_info.get("path") or "none",
        "pretrained_sha256": pre_info.get("sha256"),
        "pretrained_transfer": {k: v for k, v in pre_info.items() if k in ("loaded", "reinitialised")},
        "n_train": len(dm.splits["train"]),
        "n_val": len(dm.splits["val"]),
        "n_test": len(dm.splits["test"]),
        "epochs": int(cfg.epochs),
        "epochs_run": int(trainer.current_epoch),
        "steps": int(trainer.global_step),
        "structures_seen": int(module.seen_total[0]),
        "wall_time_s": run_time(trainer) + setup_s,
        "fit_time_s": fit_time,
        "forces": cfg.forces,
        "readout": r.readout if r.kind == "scalar" else None,
        "atom_refs": atom_refs if r.kind == "scalar" else None,
        "best_val_mae": min((row["mae"] for row in module.val_curve), default=None),
        "val_curve": curve,
        "weights_sha256": weights_digest(module.model),
    }
    write_json(out / "metrics.json", metrics)
    return metrics
