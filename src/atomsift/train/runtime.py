"""Trainer construction shared by both stages: devices, DDP/SLURM, precision, threads, logs."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from atomsift import fsio


def set_threads(threads: int | None) -> None:
    """torch intra-op threads from the run file, else $OMP_NUM_THREADS, else torch's default."""
    n = threads
    if n is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        n = int(os.environ["OMP_NUM_THREADS"])
    if n is not None and n >= 1:
        torch.set_num_threads(n)


def accelerator_name(cfg) -> str:
    if cfg.accelerator in ("gpu", "cuda"):
        return "gpu"
    if cfg.accelerator == "cpu":
        return "cpu"
    return "gpu" if torch.cuda.is_available() else "cpu"


def save_checkpoint_atomic(trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` to a temporary name, then rename (all ranks call it; rank 0 writes)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    trainer.save_checkpoint(tmp)
    if trainer.is_global_zero:
        os.replace(tmp, path)


def _resume_checkpoint_class():
    import lightning.pytorch as pl

    class ResumeCheckpoint(pl.Callback):
        """Keep ``last.ckpt`` current for resuming: every n optimizer steps inside an epoch and at
        each epoch end after its validation (so a resumed run never skips a validation). Written
        to a temporary name and renamed, so a kill mid-write leaves the previous one intact."""

        def __init__(self, path: Path, every: int):
            self.path = Path(path)
            self.every = int(every)

        def _save(self, trainer) -> None:
            save_checkpoint_atomic(trainer, self.path)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
            if not last_of_epoch and trainer.global_step % self.every == 0:
                self._save(trainer)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._save(trainer)

    return ResumeCheckpoint


def check_run_file(cfg, out: Path, config_path=None, runtime_keys=("accelerator", "num_workers",
                   "threads", "progress_bar", "log_every_n_steps", "checkpoint_every_n_steps")) -> None:
    """Record the run file as DIR/run.json; refuse to resume a DIR written by a different one.

    Keys that do not change the result (threads, workers, progress bar, logging) may differ."""
    import dataclasses

    from atomsift.errors import InputError
    from atomsift.train.config import to_dict

    now = to_dict(cfg)
    if cfg.precision == "16-mixed" and accelerator_name(cfg) == "cpu":
        raise InputError("16-mixed needs a GPU; use 32-true or bf16-mixed on CPU", path=config_path, field="precision")
    path = out / "run.json"
    if path.exists() and (out / "last.ckpt").exists():
        before = json.loads(path.read_text())
        for k in sorted(set(now) | set(before)):
            if k not in runtime_keys and now.get(k) != before.get(k):
                raise InputError(f"{out} holds a run started with {k}={before.get(k)!r}; delete {out} to start over "
                                 f"or restore the run file", path=config_path, field=k)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, now)


def make_trainer(cfg, out: Path, *, max_epochs: int, callbacks: list, monitor: str, gradient_clip_val: float,
                 gradient_clip_algorithm: str, find_unused_parameters: bool, steps_per_epoch: int | None = None):
    """A Lightning Trainer for one run writing into ``out`` (checkpoints, CSV logs)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.strategies import DDPStrategy

    ResumeCheckpoint = _resume_checkpoint_class()
    accel = accelerator_name(cfg)

    world = cfg.devices * cfg.num_nodes
    slurm_multi = int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ
    if world > 1 or slurm_multi:
        strategy = DDPStrategy(find_unused_parameters=find_unused_parameters,
                               process_group_backend="nccl" if accel == "gpu" else "gloo")
    else:
        strategy = "auto"
    best = ModelCheckpoint(dirpath=out, filename="best", monitor=monitor, mode="min", save_top_k=1,
                           enable_version_counter=False, save_on_train_epoch_end=False)
    last = ResumeCheckpoint(out / "last.ckpt", cfg.checkpoint_every_n_steps)
    progress = cfg.progress_bar if cfg.progress_bar is not None else sys.stderr.isatty()
    trainer = pl.Trainer(
        accelerator=accel,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        precision=cfg.precision,
        max_epochs=max_epochs,
        callbacks=[*callbacks, best, last],
        logger=CSVLogger(str(out), name="logs", version=""),
        enable_progress_bar=bool(progress),
        enable_model_summary=False,
        gradient_clip_val=gradient_clip_val,
        gradient_clip_algorithm=gradient_clip_algorithm,
        num_sanity_val_steps=0,
        inference_mode=False,
        use_distributed_sampler=False,
        # Lightning rejects an interval longer than the epoch: cap it (validation at epoch end anyway)
        val_check_interval=(min(cfg.val_every_n_steps, steps_per_epoch) if cfg.val_every_n_steps and steps_per_epoch
                            else cfg.val_every_n_steps),
        log_every_n_steps=cfg.log_every_n_steps,
        default_root_dir=str(out),
        deterministic=False,
        benchmark=False,
    )
    return trainer


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


write_json = fsio.write_json


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict (to compare weights across ranks and runs)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
