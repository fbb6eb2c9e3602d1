"""Run files of ``atomsift pretrain`` and ``atomsift finetune``: YAML -> validated dataclasses.

One small dataclass per verb; every key, its type, default and allowed values live here and in
``docs/training.md``. Validation happens before any work: an unknown key, a wrong type or a value
out of range raises :class:`~atomsift.errors.InputError` naming the file and the dotted key, which
the CLI prints as one line.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from atomsift.errors import InputError

SIZES = ("tiny", "small", "large")
MIXTURES = ("single", "balanced", "temperature", "proportions")
PRECISIONS = ("32-true", "32", "64-true", "16-mixed", "bf16-mixed", "bf16-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
TASKS = ("rmd17", "md22", "spice", "qm9", "qmof", "matbench")


@dataclass
class UpstreamConfig:
    """Where pretraining structures come from (``upstream:`` block)."""

    stores: dict[str, str] = field(default_factory=dict)  # head name -> store directory, ordered
    mixture: Literal["single", "balanced", "temperature", "proportions"] = "single"
    proportions: Optional[dict[str, float]] = None  # mixture=proportions: name -> weight (normalised)
    temperature: float = 2.0  # mixture=temperature: p_i ~ n_i^(1/T)
    sizes: Optional[dict[str, float]] = None  # mixture=temperature: n_i (default: train-split sizes)
    train_split: str = "train"
    val_split: str = "val"


@dataclass
class RuntimeConfig:
    """Keys shared by both verbs: devices, precision, loader, checkpoints, logging."""

    devices: int = 1
    num_nodes: int = 1
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    threads: Optional[int] = None  # torch intra-op threads (default: $OMP_NUM_THREADS, else torch's)
    checkpoint_every_n_steps: int = 500  # how often DIR/last.ckpt is refreshed inside an epoch
    val_every_n_steps: Optional[int] = None  # default: validate once per epoch
    progress_bar: Optional[bool] = None  # default: only when stderr is a TTY
    log_every_n_steps: int = 10  # training-loss rows in DIR/logs/metrics.csv
    record_seen: bool = False  # write DIR/seen_rank{r}.json (structure ids per epoch) for audits
    # GemNet-OC scale factors are fitted on this many training batches when starting from random
    # weights (0: keep the defaults); null: 16 (JMP) for small/large, 4 for tiny (CPU cost)
    scale_fit_batches: Optional[int] = None

    def n_scale_fit_batches(self) -> int:
        if self.scale_fit_batches is not None:
            return self.scale_fit_batches
        return 4 if getattr(self, "size", "small") == "tiny" else 16


@dataclass
class PretrainConfig(RuntimeConfig):
    """``atomsift pretrain --config RUN.yaml``: budget C = epochs x n_structures (PAPER.md §3)."""

    size: Literal["tiny", "small", "large"] = "small"
    seed: int = 0
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    n_structures: int = 0
    epochs: int = 1
    batch_size: int = 20
    lr: float = 2.0e-4
    warmup_steps: Optional[int] = None
    warmup_fraction: Optional[float] = None  # used when warmup_steps is absent (default 0.05)
    warmup_start_factor: float = 0.2
    min_lr_factor: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip_norm: float = 1.0
    ema_decay: float = 0.99
    edge_dropout: float = 0.1
    energy_loss_scale: float = 1.0
    force_loss_scale: float = 10.0
    val_size: int = 2000
    val_batch_size: Optional[int] = None

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        frac = 0.05 if self.warmup_fraction is None else self.warmup_fraction
        return int(round(frac * total_steps))


@dataclass
class FinetuneConfig(RuntimeConfig):
    """``atomsift finetune --config RUN.yaml``: one task, one target, one seed (PAPER.md §4).

    Keys left at None take the task's recipe value from :mod:`atomsift.train.tasks`.
    """

    task: Literal["rmd17", "md22", "spice", "qm9", "qmof", "matbench"] = "qm9"
    store: str = ""
    target: Optional[str] = None
    size: Literal["tiny", "small", "large"] = "small"
    seed: int = 0
    fold: Optional[int] = None  # MatBench fold (recorded; selects splits fold{k}_train/... when present)
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "val": "val", "test": "test"})
    max_train: Optional[int] = None  # first k structures of a seeded permutation of each split
    max_val: Optional[int] = None
    max_test: Optional[int] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    val_batch_size: Optional[int] = None
    lr: float = 8.0e-5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip_value: float = 1.0
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.1
    cosine_epochs: float = 32.0
    min_lr_factor: float = 0.1
    plateau_patience: Optional[int] = None
    plateau_factor: float = 0.8
    embedding_lr_scale: float = 0.3
    block_lr_scales: Optional[list[float]] = None
    ema_decay: float = 0.99
    test_weights: Literal["ema", "best"] = "ema"
    forces: Optional[Literal["gradient", "direct"]] = None
    energy_loss_scale: Optional[float] = None
    force_loss_scale: Optional[float] = None
    atom_refs: Optional[Literal["jmp", "fit", "none"]] = None
    edge_dropout: float = 0.0


# ------------------------------------------------------------------------------------- validation


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (or null)"
    if origin in (dict,):
        k, v = typing.get_args(tp)
        return f"a mapping of {_type_name(k)} to {_type_name(v)}"
    if origin in (list,):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin in (tuple,):
        return f"a list of {len(typing.get_args(tp))} numbers"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp, path: Path, key: str):
    """``value`` as type ``tp`` or an InputError naming ``key``."""

    def bad(msg: str | None = None):
        return InputError(msg or f"expected {_type_name(tp)}, got {value!r}", path=path, field=key)

    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path, key)
            except InputError:
                continue
        raise bad()
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad()
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, value, path, key + ".")
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            raise bad()
        return {_coerce(k, kt, path, key): _coerce(v, vt, path, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        (et,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise bad()
        return [_coerce(v, et, path, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        ets = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(ets):
            raise bad()
        return tuple(_coerce(v, et, path, f"{key}[{i}]") for i, (v, et) in enumerate(zip(value, ets)))
    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp in (int, float) and isinstance(value, str):
        # PyYAML reads 2.0e6 (no sign in the exponent) as a string: accept numeric text
        try:
            value = float(value)
        except ValueError:
            raise bad() from None
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, float) and value.is_integer():  # 2.0e6 in YAML
            return int(value)
        if not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        if not math.isfinite(float(value)):
            raise bad(f"expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    raise TypeError(f"unsupported config type {tp}")


def _build(cls, data: dict, path: Path, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            raise InputError(f"unknown key (allowed: {', '.join(sorted(names))})", path=path, field=f"{prefix}{k}")
    kwargs = {k: _coerce(v, hints[k], path, f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def _check(cond: bool, path: Path, key: str, msg: str) -> None:
    if not cond:
        raise InputError(msg, path=path, field=key)


def _check_runtime(c: RuntimeConfig, p: Path) -> None:
    _check(c.devices >= 1, p, "devices", "must be >= 1")
    _check(c.num_nodes >= 1, p, "num_nodes", "must be >= 1")
    _check(c.precision in PRECISIONS, p, "precision", f"expected one of {', '.join(PRECISIONS)}, got {c.precision!r}")
    _check(c.num_workers >= 0, p, "num_workers", "must be >= 0")
    _check(c.threads is None or c.threads >= 1, p, "threads", "must be >= 1")
    _check(c.checkpoint_every_n_steps >= 1, p, "checkpoint_every_n_steps", "must be >= 1")
    _check(c.val_every_n_steps is None or c.val_every_n_steps >= 1, p, "val_every_n_steps", "must be >= 1")
    _check(c.log_every_n_steps >= 1, p, "log_every_n_steps", "must be >= 1")
    _check(c.scale_fit_batches is None or c.scale_fit_batches >= 0, p, "scale_fit_batches", "must be >= 0")


def validate_pretrain(c: PretrainConfig, p: Path) -> PretrainConfig:
    _check_runtime(c, p)
    u = c.upstream
    _check(len(u.stores) >= 1, p, "upstream.stores", "name at least one store (head name: store directory)")
    if u.mixture == "single":
        _check(len(u.stores) == 1, p, "upstream.mixture", f"'single' takes one store, got {len(u.stores)}; use balanced, temperature or proportions")
    if u.mixture == "proportions":
        _check(u.proportions is not None, p, "upstream.proportions", "required when mixture is 'proportions'")
    if u.proportions is not None:
        _check(set(u.proportions) == set(u.stores), p, "upstream.proportions", f"names must equal the stores' names {sorted(u.stores)}")
        for k, v in u.proportions.items():
            _check(v > 0, p, f"upstream.proportions.{k}", "must be > 0")
    if u.sizes is not None:
        _check(set(u.sizes) == set(u.stores), p, "upstream.sizes", f"names must equal the stores' names {sorted(u.stores)}")
        for k, v in u.sizes.items():
            _check(v > 0, p, f"upstream.sizes.{k}", "must be > 0")
    _check(u.temperature > 0, p, "upstream.temperature", "must be > 0")
    _check(c.n_structures >= 1, p, "n_structures", "must be >= 1")
    _check(c.n_structures >= len(u.stores), p, "n_structures", f"must be at least the number of stores ({len(u.stores)})")
    _check(c.epochs >= 1, p, "epochs", "must be >= 1")
    _check(c.batch_size >= 1, p, "batch_size", "must be >= 1")
    _check(c.val_batch_size is None or c.val_batch_size >= 1, p, "val_batch_size", "must be >= 1")
    _check(c.lr > 0, p, "lr", "must be > 0")
    _check(not (c.warmup_steps is not None and c.warmup_fraction is not None), p, "warmup_fraction", "give warmup_steps or warmup_fraction, not both")
    _check(c.warmup_steps is None or c.warmup_steps >= 0, p, "warmup_steps", "must be >= 0")
    _check(c.warmup_fraction is None or 0 <= c.warmup_fraction < 1, p, "warmup_fraction", "must be in [0, 1)")
    _check(0 < c.warmup_start_factor <= 1, p, "warmup_start_factor", "must be in (0, 1]")
    _check(0 < c.min_lr_factor <= 1, p, "min_lr_factor", "must be in (0, 1]")
    _check(c.weight_decay >= 0, p, "weight_decay", "must be >= 0")
    _check(all(0 <= b < 1 for b in c.betas), p, "betas", "each must be in [0, 1)")
    _check(c.grad_clip_norm > 0, p, "grad_clip_norm", "must be > 0")
    _check(0 <= c.ema_decay < 1, p, "ema_decay", "must be in [0, 1) (0 disables EMA)")
    _check(0 <= c.edge_dropout < 1, p, "edge_dropout", "must be in [0, 1)")
    _check(c.energy_loss_scale >= 0, p, "energy_loss_scale", "must be >= 0")
    _check(c.force_loss_scale >= 0, p, "force_loss_scale", "must be >= 0")
    _check(c.val_size >= 1, p, "val_size", "must be >= 1")
    return c


def validate_finetune(c: FinetuneConfig, p: Path) -> FinetuneConfig:
    _check_runtime(c, p)
    _check(bool(c.store), p, "store", "required: the task's store directory")
    _check(set(c.splits) == {"train", "val", "test"}, p, "splits", "must map exactly train, val and test to split names")
    for k in ("max_train", "max_val", "max_test", "epochs", "batch_size", "val_batch_size", "plateau_patience"):
        v = getattr(c, k)
        _check(v is None or v >= (0 if k == "plateau_patience" else 1), p, k, "must be >= 1" if k != "plateau_patience" else "must be >= 0")
    _check(c.fold is None or c.fold >= 0, p, "fold", "must be >= 0")
    _check(c.lr > 0, p, "lr", "must be > 0")
    _check(c.weight_decay >= 0, p, "weight_decay", "must be >= 0")
    _check(all(0 <= b < 1 for b in c.betas), p, "betas", "each must be in [0, 1)")
    _check(c.grad_clip_value > 0, p, "grad_clip_value", "must be > 0")
    _check(c.warmup_epochs >= 0, p, "warmup_epochs", "must be >= 0")
    _check(0 < c.warmup_start_factor <= 1, p, "warmup_start_factor", "must be in (0, 1]")
    _check(c.cosine_epochs > 0, p, "cosine_epochs", "must be > 0")
    _check(0 < c.min_lr_factor <= 1, p, "min_lr_factor", "must be in (0, 1]")
    _check(0 < c.plateau_factor <= 1, p, "plateau_factor", "must be in (0, 1]")
    _check(c.embedding_lr_scale > 0, p, "embedding_lr_scale", "must be > 0")
    if c.block_lr_scales is not None:
        _check(len(c.block_lr_scales) >= 1 and all(s > 0 for s in c.block_lr_scales), p, "block_lr_scales", "must be a non-empty list of positive numbers")
    _check(0 <= c.ema_decay < 1, p, "ema_decay", "must be in [0, 1) (0 disables EMA)")
    _check(c.energy_loss_scale is None or c.energy_loss_scale >= 0, p, "energy_loss_scale", "must be >= 0")
    _check(c.force_loss_scale is None or c.force_loss_scale >= 0, p, "force_loss_scale", "must be >= 0")
    _check(0 <= c.edge_dropout < 1, p, "edge_dropout", "must be in [0, 1)")
    return c


def _read_yaml(path: str | Path) -> tuple[Path, dict]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError("run file does not exist", path=p)
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"not valid YAML{where}", path=p) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError("expected a mapping of keys at the top level", path=p)
    return p, data


def load_pretrain_config(path: str | Path) -> PretrainConfig:
    """Read and validate a pretraining run file."""
    p, data = _read_yaml(path)
    for k in ("upstream", "n_structures"):
        if k not in data:
            raise InputError("required key missing", path=p, field=k)
    return validate_pretrain(_build(PretrainConfig, data, p), p)


def load_finetune_config(path: str | Path) -> FinetuneConfig:
    """Read and validate a finetuning run file."""
    p, data = _read_yaml(path)
    for k in ("task", "store"):
        if k not in data:
            raise InputError("required key missing", path=p, field=k)
    return validate_finetune(_build(FinetuneConfig, data, p), p)


def pretrain_config_from_dict(data: dict, path: str | Path = "<config>") -> PretrainConfig:
    p = Path(path)
    return validate_pretrain(_build(PretrainConfig, data, p), p)


def finetune_config_from_dict(data: dict, path: str | Path = "<config>") -> FinetuneConfig:
    p = Path(path)
    return validate_finetune(_build(FinetuneConfig, data, p), p)


def to_dict(c) -> dict:
    """The config as plain YAML/JSON-able data (tuples as lists)."""

    def conv(v):
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(c))
