"""Trainer construction shared by both stages: devices, DDP/SLURM, precision, threads, logs,
and the run directory's guarantees: checkpoints read through :mod:`atomsift.safeload` and
written atomically, resume only with the inputs the run was started from, no stale temporaries."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
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
    """``trainer.save_checkpoint`` (all ranks call it; rank 0 writes, through
    :class:`SafeCheckpointIO`: to a temporary name, renamed when complete)."""
    trainer.save_checkpoint(Path(path))


def safe_checkpoint_io():
    """A Lightning ``CheckpointIO`` that reads ``last.ckpt``/``best.ckpt`` (resume, best weights)
    with :func:`atomsift.safeload.load_torch`, so Lightning never unpickles a checkpoint itself,
    and writes them atomically (:func:`atomsift.fsio.write_bytes`: a failed write leaves no
    temporary and names the checkpoint, not the temporary)."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class SafeCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
            buf = io.BytesIO()  # serialised first: a disk error is then an OSError of the write
            torch.save(checkpoint, buf)
            fsio.write_bytes(path, buf.getbuffer())

        def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
            return load_lightning_checkpoint(path)

    return SafeCheckpointIO()


def load_lightning_checkpoint(path, read_data: bool = True) -> dict:
    """A ``last.ckpt`` / ``best.ckpt`` through the safe loader (no stand-ins: Lightning's files
    hold no classes), checked to be a Lightning checkpoint; ``read_data=False`` checks the file
    without reading tensor bytes."""
    from atomsift.errors import InputError
    from atomsift.safeload import load_torch

    obj = load_torch(path, read_data=read_data)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise InputError("not a Lightning checkpoint (no state_dict)", path=path)
    return obj


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


RUNTIME_KEYS = ("accelerator", "num_workers", "threads", "progress_bar", "log_every_n_steps", "checkpoint_every_n_steps")

# temporaries of the files a training run writes: fsio's ".NAME.tmp-PID-XXXXXX.EXT", the
# ".NAME.tmp" of earlier versions and models.save_checkpoint's mkstemp ".model.pt.XXXXXXXX"
_OUTPUTS = r"(?:last|best|metrics|run|inputs|linref|seen_rank\d+|model|model_raw)"
_STALE = re.compile(rf"^\.{_OUTPUTS}(?:\.tmp-\d+-[0-9a-f]{{6}}\.(?:ckpt|json|pt)|\.(?:ckpt|json|pt)\.tmp|\.pt\.[A-Za-z0-9_]{{8}})$")


def is_global_zero_by_env() -> bool:
    """Whether this process is rank 0 of its job, from the launchers' variables (before
    Lightning knows): torchrun/Lightning (RANK, LOCAL_RANK, NODE_RANK) and SLURM (SLURM_PROCID)."""
    return all(os.environ.get(k, "0") in ("", "0") for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def clean_stale_temporaries(out: Path) -> list[str]:
    """Remove temporaries of this run's outputs left by a killed process (rank 0 only: other
    ranks may start while rank 0 already writes). Returns the names removed."""
    out = Path(out)
    if not out.is_dir() or not is_global_zero_by_env():
        return []
    removed = []
    for p in out.iterdir():
        if _STALE.match(p.name) and p.is_file():
            try:
                p.unlink()
                removed.append(p.name)
            except FileNotFoundError:
                pass
    return removed


def _settings(cfg) -> dict:
    from atomsift.train.config import to_dict

    return {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME_KEYS}


def run_inputs(cfg, config_path, stores: dict[str, str | Path], pretrained: str | Path | None) -> dict:
    """The identity of a run: sha256 of its run file (and of its result-affecting settings, which
    is what a resume compares), of each store's manifest and of the pretrained checkpoint."""
    settings = json.dumps(_settings(cfg), sort_keys=True)
    cp = Path(config_path) if config_path else None
    stores_rec = {}
    for name, sp in stores.items():
        m = Path(sp) / "manifest.json"
        stores_rec[name] = {"path": str(Path(sp).resolve()), "manifest_sha256": sha256_of(m) if m.is_file() else None}
    pre = None
    if pretrained is not None and str(pretrained) != "none":
        pre = {"path": str(Path(pretrained).resolve()), "sha256": sha256_of(pretrained)}
    return {
        "run_file": {"path": str(cp.resolve()) if cp else None, "sha256": sha256_of(cp) if cp and cp.is_file() else None,
                     "settings_sha256": hashlib.sha256(settings.encode()).hexdigest()},
        "stores": stores_rec,
        "pretrained": pre,
    }


def check_run(cfg, out: Path, inputs: dict, config_path=None, store_field=lambda name: "store") -> dict | None:
    """Refuse a run that cannot start or resume; return the inputs record of the run being
    resumed (None for a fresh start). Nothing is written.

    A resume (``DIR/last.ckpt`` present) needs ``DIR/run.json`` and ``DIR/inputs.json`` and the
    same run file (keys that do not change the result may differ), the same store manifests and
    the same ``--pretrained`` (by sha256); ``last.ckpt`` and ``best.ckpt`` are checked with the
    safe loader before Lightning sees them. Each refusal is one line naming what changed."""
    from atomsift.errors import InputError

    if cfg.precision == "16-mixed" and accelerator_name(cfg) == "cpu":
        raise InputError("16-mixed needs a GPU; use 32-true or bf16-mixed on CPU", path=config_path, field="precision")
    out = Path(out)
    last = out / "last.ckpt"
    if not last.exists():
        return None
    restart = f"delete {out} to start over or restore the inputs"
    try:
        before = json.loads((out / "run.json").read_text())
        prev = json.loads((out / "inputs.json").read_text())
        if not isinstance(before, dict) or not isinstance(prev, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise InputError(f"has no readable record of the inputs it was started from (run.json, inputs.json: "
                         f"{type(exc).__name__}); delete {out} to start over", path=last) from None
    now = _settings(cfg)
    for k in sorted(set(now) | set(before)):
        if k not in RUNTIME_KEYS and now.get(k) != before.get(k):
            raise InputError(f"{out} holds a run started with {k}={before.get(k)!r}; delete {out} to start over "
                             f"or restore the run file", path=config_path, field=k)
    old_stores = prev.get("stores") if isinstance(prev.get("stores"), dict) else {}
    for name, rec in inputs["stores"].items():
        old = (old_stores.get(name) or {}).get("manifest_sha256")
        if old != rec["manifest_sha256"]:
            raise InputError(f"{out} holds a run started from another version of this store: "
                             f"{Path(rec['path']) / 'manifest.json'} has sha256 {str(rec['manifest_sha256'])[:12]}, "
                             f"the run started with {str(old)[:12]}; {restart}", path=config_path, field=store_field(name))
    old_pre = prev.get("pretrained") if isinstance(prev.get("pretrained"), dict) else None
    new_pre = inputs["pretrained"]
    if (old_pre or {}).get("sha256") != (new_pre or {}).get("sha256"):
        was = f"{old_pre.get('path')} (sha256 {str(old_pre.get('sha256'))[:12]})" if old_pre else "none"
        now_s = f"sha256 {new_pre['sha256'][:12]}" if new_pre else "none"
        raise InputError(f"{out} holds a run started from --pretrained {was}, not this one ({now_s}); {restart}",
                         path=new_pre["path"] if new_pre else None, field=None if new_pre else "--pretrained")
    # a planted or damaged checkpoint is refused here, in one line, before Lightning prints anything
    load_lightning_checkpoint(last, read_data=False)
    if (out / "best.ckpt").exists():
        load_lightning_checkpoint(out / "best.ckpt", read_data=False)
    return prev


def record_run(cfg, out: Path, inputs: dict) -> None:
    """Write ``DIR/run.json`` (the run file) and ``DIR/inputs.json`` (:func:`run_inputs` plus what
    the pretrained transfer loaded), once every input has been read successfully. A fresh start
    drops a ``best.ckpt`` left by a run that is not being resumed."""
    from atomsift.train.config import to_dict

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "last.ckpt").exists() and (out / "best.ckpt").exists() and is_global_zero_by_env():
        (out / "best.ckpt").unlink()
    write_json(out / "run.json", to_dict(cfg))
    write_json(out / "inputs.json", inputs)


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
        plugins=[safe_checkpoint_io()],
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
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


write_json = fsio.write_json


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict (to compare weights across ranks and runs)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
