"""The Trainer both stages run under, built from Lightning's parts (DDP/SLURM, precision, threads,
``ModelCheckpoint`` for ``last.ckpt``/``best.ckpt``, weight averaging for the EMA, a ``Timer``, CSV
logs), and the run directory's guarantees: checkpoints read through :mod:`atomsift.safeload` and
written atomically, resume only with the inputs the run was started from, no stale temporaries."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, Timer, WeightAveraging
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DDPStrategy
from torch.optim.swa_utils import get_ema_multi_avg_fn

from atomsift import fsio
from atomsift.errors import InputError
from atomsift.train.config import to_dict


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


def world_size(cfg) -> int:
    """Processes of a run: devices per node x nodes (what Lightning launches, or SLURM's tasks)."""
    return cfg.devices * cfg.num_nodes


# ----------------------------------------------------------------------------- Lightning parts


class SafeCheckpointIO(TorchCheckpointIO):
    """Reads ``last.ckpt``/``best.ckpt`` (resume, best weights) with
    :func:`atomsift.safeload.load_torch`, so Lightning never unpickles a checkpoint itself, and
    writes them atomically (:func:`atomsift.fsio.write_bytes`: a failed write leaves no temporary
    and names the checkpoint, not the temporary)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        buf = io.BytesIO()  # serialised first: a disk error is then an OSError of the write
        torch.save(checkpoint, buf)
        fsio.write_bytes(path, buf.getbuffer())

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        return load_lightning_checkpoint(path)


def load_lightning_checkpoint(path, read_data: bool = True) -> dict:
    """A ``last.ckpt`` / ``best.ckpt`` through the safe loader (no stand-ins: Lightning's files
    hold no classes), checked to be a Lightning checkpoint; ``read_data=False`` checks the file
    without reading tensor bytes."""
    from atomsift.safeload import load_torch

    obj = load_torch(path, read_data=read_data)
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise InputError("not a Lightning checkpoint (no state_dict)", path=path)
    return obj


class EMA(WeightAveraging):
    """Exponential moving average of the weights, p_ema <- d p_ema + (1 - d) p after every optimizer
    step (torch's ``AveragedModel`` with ``get_ema_multi_avg_fn``; buffers are copied, not
    averaged; the first step copies). Validation runs on the averaged weights and checkpoints hold
    them as ``state_dict`` (so ``best.ckpt`` is the best EMA). When ``fit`` ends they replace the
    module's, whose raw weights are kept in ``raw_model`` (``model_raw.pt``)."""

    def __init__(self, decay: float):
        super().__init__(use_buffers=False, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.raw_model: torch.nn.Module | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        # the module reaches its device after setup: keep the average where the module will be
        self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)

    def on_train_end(self, trainer, pl_module) -> None:
        pass  # done in on_fit_end, which also runs when a resumed run had no step left to train

    def on_fit_end(self, trainer, pl_module) -> None:
        self.raw_model = copy.deepcopy(pl_module.model)
        super().on_train_end(trainer, pl_module)


class InEpochCheckpoint(ModelCheckpoint):
    """``last.ckpt`` every n optimizer steps, except at a step followed by a validation (the
    epoch's last, or every ``val_every_n_steps``): a kill during that validation would resume past
    it and lose its point of the curve. The epoch's last step is saved after its validation."""

    def __init__(self, dirpath: Path, every: int):
        super().__init__(dirpath=dirpath, filename="last", every_n_train_steps=every, enable_version_counter=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        k = batch_idx + 1
        if k < trainer.num_training_batches and (not trainer.val_check_batch or k % trainer.val_check_batch != 0):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def make_trainer(cfg, out: Path, *, monitor: str, gradient_clip_val: float, gradient_clip_algorithm: str,
                 find_unused_parameters: bool, steps_per_epoch: int, callbacks=()) -> pl.Trainer:
    """A Lightning Trainer for one run writing into ``out``: ``best.ckpt`` (lowest ``monitor``),
    ``last.ckpt`` every ``checkpoint_every_n_steps`` optimizer steps (:class:`InEpochCheckpoint`)
    and at every epoch end after its validation, the EMA when ``ema_decay`` > 0, a Timer, CSV
    logs, DDP when the run spans processes."""
    accel = accelerator_name(cfg)
    slurm_multi = int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ
    if world_size(cfg) > 1 or slurm_multi:
        strategy = DDPStrategy(find_unused_parameters=find_unused_parameters,
                               process_group_backend="nccl" if accel == "gpu" else "gloo")
    else:
        strategy = "auto"
    ours = [
        ModelCheckpoint(dirpath=out, filename="best", monitor=monitor, mode="min", save_top_k=1,
                        enable_version_counter=False, save_on_train_epoch_end=False),
        InEpochCheckpoint(out, cfg.checkpoint_every_n_steps),
        ModelCheckpoint(dirpath=out, filename="last", every_n_epochs=1, save_on_train_epoch_end=True,
                        enable_version_counter=False),
        Timer(verbose=False),
    ]
    if cfg.ema_decay > 0:
        ours.append(EMA(cfg.ema_decay))
    # the run directory holds the run's records by design: Lightning's warning about it is noise
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    progress = cfg.progress_bar if cfg.progress_bar is not None else sys.stderr.isatty()
    return pl.Trainer(
        accelerator=accel,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        precision=cfg.precision,
        max_epochs=cfg.epochs,
        callbacks=[*callbacks, *ours],
        plugins=[SafeCheckpointIO()],
        logger=CSVLogger(str(out), name="logs", version=""),
        enable_progress_bar=bool(progress),
        enable_model_summary=False,
        gradient_clip_val=gradient_clip_val,
        gradient_clip_algorithm=gradient_clip_algorithm,
        num_sanity_val_steps=0,
        inference_mode=False,
        use_distributed_sampler=False,
        # Lightning rejects an interval longer than the epoch: cap it (validation at epoch end anyway)
        val_check_interval=min(cfg.val_every_n_steps, steps_per_epoch) if cfg.val_every_n_steps else None,
        log_every_n_steps=cfg.log_every_n_steps,
        default_root_dir=str(out),
        deterministic=False,
        benchmark=False,
    )


def callback(trainer: pl.Trainer, kind: type):
    """The trainer's callback of type ``kind`` (None if absent)."""
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def run_time(trainer: pl.Trainer) -> float:
    """Seconds in ``fit`` over every segment of the run (Lightning's Timer, resumed with it), plus
    ``test``."""
    timer = callback(trainer, Timer)
    return timer.time_elapsed("train") + timer.time_elapsed("test")


# ----------------------------------------------------------------------------- the run directory


RUNTIME_KEYS = ("accelerator", "num_workers", "threads", "progress_bar", "log_every_n_steps", "checkpoint_every_n_steps")

# temporaries of the files a training run writes: fsio's ".NAME.tmp-PID-XXXXXX.EXT", the
# ".NAME.tmp" of earlier versions and models.save_checkpoint's mkstemp ".model.pt.XXXXXXXX"
_OUTPUTS = r"(?:last|best|metrics|run|inputs|linref|seen_rank\d+|model|model_raw)"
_STALE = re.compile(rf"^\.{_OUTPUTS}(?:\.tmp-\d+-[0-9a-f]{{6}}\.(?:ckpt|json|pt)|\.(?:ckpt|json|pt)\.tmp|\.pt\.[A-Za-z0-9_]{{8}})$")
_STATE = re.compile(rf"^{_OUTPUTS}\.(?:ckpt|json|pt)$")  # what a run directory holds of its run


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
    return {k: v for k, v in to_dict(cfg).items() if k not in RUNTIME_KEYS}


def run_inputs(cfg, config_path, stores: dict[str, str | Path], pretrained: str | Path | None) -> dict:
    """The identity of a run: sha256 of its run file (and of its result-affecting settings, which
    is what a resume compares), of each store's manifest and of the pretrained checkpoint."""
    settings = json.dumps(_settings(cfg), sort_keys=True)
    cp = Path(config_path) if config_path else None
    stores_rec = {}
    for name, sp in stores.items():
        m = Path(sp) / "manifest.json"
        stores_rec[name] = {"path": str(Path(sp).resolve()), "manifest_sha256": fsio.file_digest(m) if m.is_file() else None}
    pre = None
    if pretrained is not None and str(pretrained) != "none":
        pre = {"path": str(Path(pretrained).resolve()), "sha256": fsio.file_digest(pretrained)}
    return {
        "run_file": {"path": str(cp.resolve()) if cp else None, "sha256": fsio.file_digest(cp) if cp and cp.is_file() else None,
                     "settings_sha256": hashlib.sha256(settings.encode()).hexdigest()},
        "stores": stores_rec,
        "pretrained": pre,
        "formats": formats(),
    }


# What a run directory's checkpoints hold: the model's weight layout (models.checkpoint
# FORMAT_VERSION) and the training state Lightning saves (2: EMA by Lightning's weight averaging,
# ModelCheckpoint callbacks, issue 15). A run started by another version is not resumed.
TRAINING_STATE_VERSION = 2


def formats() -> dict:
    from atomsift.models.checkpoint import FORMAT_VERSION

    return {"model": FORMAT_VERSION, "training_state": TRAINING_STATE_VERSION}


def _changed(cfg, out: Path, before: dict, prev: dict, inputs: dict, config_path, store_field) -> InputError | None:
    """What differs between the run recorded in ``out`` and this one (None: nothing), as the
    one-line refusal; its ``what`` attribute names the change alone."""

    def change(what: str, restore: str, path, field):
        err = InputError(f"{what}; delete {out} to start over or {restore}", path=path, field=field)
        err.what = what
        return err

    if prev.get("formats") != inputs["formats"]:
        was = prev.get("formats") or {"model": 1, "training_state": 1}
        return change(f"{out} holds a run written by another atomsift (model format {was.get('model')}, training state "
                      f"{was.get('training_state')}; this one writes {inputs['formats']['model']} and "
                      f"{inputs['formats']['training_state']})", "use the atomsift that started it", out / "run.json", "formats")
    now = _settings(cfg)
    for k in sorted(set(now) | set(before)):
        if k not in RUNTIME_KEYS and now.get(k) != before.get(k):
            return change(f"{out} holds a run started with {k}={before.get(k)!r}", "restore the run file", config_path, k)
    old_stores = prev.get("stores") if isinstance(prev.get("stores"), dict) else {}
    for name, rec in inputs["stores"].items():
        old = (old_stores.get(name) or {}).get("manifest_sha256")
        if old != rec["manifest_sha256"]:
            return change(f"{out} holds a run started from another version of this store: "
                          f"{Path(rec['path']) / 'manifest.json'} has sha256 {str(rec['manifest_sha256'])[:12]}, "
                          f"the run started with {str(old)[:12]}", "restore the inputs", config_path, store_field(name))
    old_pre = prev.get("pretrained") if isinstance(prev.get("pretrained"), dict) else None
    new_pre = inputs["pretrained"]
    if (old_pre or {}).get("sha256") != (new_pre or {}).get("sha256"):
        was = f"{old_pre.get('path')} (sha256 {str(old_pre.get('sha256'))[:12]})" if old_pre else "none"
        now_s = f"sha256 {new_pre['sha256'][:12]}" if new_pre else "none"
        return change(f"{out} holds a run started from --pretrained {was}, not this one ({now_s})", "restore the inputs",
                      new_pre["path"] if new_pre else None, None if new_pre else "--pretrained")
    return None


def check_run(cfg, out: Path, inputs: dict, config_path=None, store_field=lambda name: "store",
              on_changed: str = "refuse") -> dict | None:
    """Refuse a run that cannot start or resume; return the inputs record of the run being
    resumed or reported (None for a fresh start). Nothing is written, except by ``restart``.

    A run directory (``DIR/last.ckpt``, or a finished ``DIR/metrics.json``) is resumed or reported
    only with the same run file (keys that do not change the result may differ), the same store
    manifests and the same ``--pretrained`` (by sha256), as recorded in ``DIR/run.json`` and
    ``DIR/inputs.json``. A change is a one-line refusal (``on_changed="refuse"``), or, with
    ``"restart"`` (what the workflow's rules pass: Snakemake reruns a job whose inputs changed),
    one line on stderr and the directory's run state removed. A ``last.ckpt`` without a readable
    record is refused either way, and ``last.ckpt``/``best.ckpt`` are checked with the safe loader
    before Lightning sees them."""
    if cfg.precision == "16-mixed" and accelerator_name(cfg) == "cpu":
        raise InputError("16-mixed needs a GPU; use 32-true or bf16-mixed on CPU", path=config_path, field="precision")
    out = Path(out)
    last, finished = out / "last.ckpt", (out / "metrics.json").exists()
    if not last.exists() and not finished:
        return None
    try:
        before = json.loads((out / "run.json").read_text())
        prev = json.loads((out / "inputs.json").read_text())
        if not isinstance(before, dict) or not isinstance(prev, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        if finished:  # a finished run from before these records: reported as it is
            return None
        raise InputError(f"has no readable record of the inputs it was started from (run.json, inputs.json: "
                         f"{type(exc).__name__}); delete {out} to start over", path=last) from None
    change = _changed(cfg, out, before, prev, inputs, config_path, store_field)
    if change is not None:
        if on_changed != "restart":
            raise change
        print(f"atomsift: {change.what}; starting over (--on-changed-inputs restart)", file=sys.stderr)
        clear_run_state(out)
        return None
    if not finished:
        # a planted or damaged checkpoint is refused here, in one line, before Lightning prints anything
        load_lightning_checkpoint(last, read_data=False)
        if (out / "best.ckpt").exists():
            load_lightning_checkpoint(out / "best.ckpt", read_data=False)
    return prev


def clear_run_state(out: Path) -> None:
    """Remove what ``out`` holds of a run (checkpoints, models, records, metrics, logs; rank 0
    only); files that are not ours stay."""
    if not is_global_zero_by_env():
        return
    for p in Path(out).iterdir():
        if _STATE.match(p.name) and p.is_file():
            p.unlink()
    shutil.rmtree(Path(out) / "logs", ignore_errors=True)


def record_run(cfg, out: Path, inputs: dict) -> None:
    """Write ``DIR/run.json`` (the run file) and ``DIR/inputs.json`` (:func:`run_inputs` plus what
    the pretrained transfer loaded), once every input has been read successfully. A fresh start
    drops a ``best.ckpt`` left by a run that is not being resumed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "last.ckpt").exists() and (out / "best.ckpt").exists() and is_global_zero_by_env():
        (out / "best.ckpt").unlink()
    fsio.write_json(out / "run.json", to_dict(cfg))
    fsio.write_json(out / "inputs.json", inputs)


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's state dict (to compare weights across ranks and runs)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
