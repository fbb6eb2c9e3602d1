"""Run files of ``atomsift pretrain`` and ``atomsift finetune``: one typed definition each.

Each run file is a pydantic dataclass: its keys, types, defaults, bounds and allowed values are
declared once below, and everything else is derived from them: the validation of a run file
(:func:`load_pretrain_config`, :func:`load_finetune_config`), the JSON schema of the ``options``
blocks of the workflow configuration (:func:`options_schema`, checked in as
``workflow/schemas/run-options.schema.json`` and referenced by ``config.schema.yaml``), and the
check of those blocks before any job runs (:func:`check_options`). A bad value is one
:class:`~atomsift.errors.InputError` naming the file and the dotted key, phrased the same way
whether it comes from a run file or from ``config.yaml`` (:func:`input_error`).

Numbers may be written as text (PyYAML reads ``1e-3`` and ``2.0e6`` as strings); booleans must
be ``true``/``false``; integers may be written as integral floats (``2.0e6``).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError, create_model, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

from atomsift.errors import InputError, dotted_path, unknown_key

SIZES = ("tiny", "small", "large")
MIXTURES = ("single", "balanced", "temperature", "proportions")
PRECISIONS = ("32-true", "32", "64-true", "16-mixed", "bf16-mixed", "bf16-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
TASKS = ("rmd17", "md22", "spice", "qm9", "qmof", "matbench", "energy-forces", "scalar")
MAX_RUN_FILE_BYTES = 1 << 20  # a run file is a few dozen lines; anything larger is not one


# ------------------------------------------------------------------------------------- value types


def _number(v):
    """Numeric text as a float (PyYAML 1.1 reads ``1e-3`` and ``2.0e6`` as strings)."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v
    return v


def _integer(v):
    """Numeric text and integral floats (``2.0e6``) as int; anything else is left to fail."""
    v = _number(v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _pair(v):
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise PydanticCustomError("atomsift", "expected a list of 2 numbers, got {value}", {"value": _show(v)})
    return v


def Int(**bounds):  # noqa: N802 - a type
    """An integer with optional bounds (``ge``, ``gt``, ``le``, ``lt``). The conversion runs
    before the strict check and must come last in ``Annotated`` for the bounds to reach the JSON
    schema as ``minimum``/``maximum``."""
    return Annotated[int, Strict(), Field(**bounds), BeforeValidator(_integer)]


def Float(**bounds):  # noqa: N802 - a type
    """A finite number with optional bounds (see :func:`Int`)."""
    return Annotated[float, Strict(), Field(allow_inf_nan=False, **bounds), BeforeValidator(_number)]


Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Betas = Annotated[tuple[Float(ge=0, lt=1), Float(ge=0, lt=1)], BeforeValidator(_pair)]  # AdamW's (beta1, beta2)


# Run files are pydantic *dataclasses*: validated like models, and still plain dataclasses for the
# code that uses them (``dataclasses.replace`` fills in a recipe's defaults, re-validating).
_CONFIG = ConfigDict(extra="forbid", use_attribute_docstrings=True)
_run_file = dataclass(config=_CONFIG, kw_only=True)


class FieldError(ValueError):
    """A check across keys failed: ``field`` (dotted, relative to the run file) and the message."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _check(cond: bool, field: str, msg: str) -> None:
    if not cond:
        raise FieldError(field, msg)


# ------------------------------------------------------------------------------------- the models


@_run_file
class UpstreamConfig:
    """Where pretraining structures come from (``upstream:`` block)."""

    stores: dict[Str, Str] = Field(default_factory=dict)
    """head name -> store directory (order matters for remainders)"""
    mixture: Literal["single", "balanced", "temperature", "proportions"] = "single"
    proportions: Optional[dict[Str, Float(gt=0)]] = None
    """mixture=proportions: name -> weight (normalised)"""
    temperature: Float(gt=0) = 2.0
    """mixture=temperature: p_i proportional to n_i^(1/T)"""
    sizes: Optional[dict[Str, Float(gt=0)]] = None
    """mixture=temperature: n_i (null: the stores' train-split sizes)"""
    train_split: Str = "train"
    val_split: Str = "val"


@_run_file
class GraphConfig:
    """``graph:`` block: the cutoff and nearest-k cap of the main graph for every dataset of the
    run, in place of JMP's per-dataset table (the other graphs keep JMP's proportions of k). The
    model records it, so finetuning, feature extraction and the calculator use the same graphs."""

    cutoff: Float(gt=0, le=30) = 12.0
    """Angstrom"""
    max_neighbors: Int(ge=1) = 30


@_run_file
class RuntimeConfig:
    """Keys shared by both verbs: devices, precision, loader, checkpoints, logging."""

    devices: Int(ge=1) = 1
    """devices per node; > 1 (or num_nodes > 1) selects DDP"""
    num_nodes: Int(ge=1) = 1
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    precision: Literal["32-true", "32", "64-true", "16-mixed", "bf16-mixed", "bf16-true"] = "32-true"
    num_workers: Int(ge=0) = 0
    """DataLoader worker processes"""
    threads: Optional[Int(ge=1)] = None
    """torch intra-op threads (null: $OMP_NUM_THREADS, else torch's default)"""
    checkpoint_every_n_steps: Int(ge=1) = 500
    """how often DIR/last.ckpt is refreshed inside an epoch"""
    val_every_n_steps: Optional[Int(ge=1)] = None
    """validate every n training batches (null: once per epoch)"""
    progress_bar: Optional[Bool] = None
    """null: only when stderr is a TTY"""
    log_every_n_steps: Int(ge=1) = 10
    """training-loss rows in DIR/logs/metrics.csv"""
    record_seen: Bool = False
    """write DIR/seen_rank{r}.json (structure ids per epoch) for audits"""
    scale_fit_batches: Optional[Int(ge=0)] = None
    """GemNet-OC scale factors are fitted on this many training batches when starting from random
    weights (0: keep the defaults); null: 16 (JMP) for small/large, 4 for tiny (CPU cost)"""
    graph: Optional[GraphConfig] = None
    """null: JMP's per-dataset graphs (pretraining), the pretrained model's (finetuning)"""

    def n_scale_fit_batches(self) -> int:
        if self.scale_fit_batches is not None:
            return self.scale_fit_batches
        return 4 if getattr(self, "size", "small") == "tiny" else 16


@_run_file
class PretrainConfig(RuntimeConfig):
    """``atomsift pretrain --config RUN.yaml``: budget C = epochs x n_structures (PAPER.md §3)."""

    size: Literal["tiny", "small", "large"] = "small"
    seed: Int(ge=0) = 0
    upstream: UpstreamConfig
    """heads and stores to pretrain on, and how they mix"""
    n_structures: Int(ge=1)
    """N: structures drawn from the upstream(s)"""
    epochs: Int(ge=1) = 1
    """E: budget C = N x E structures"""
    batch_size: Int(ge=1) = 20
    """per device"""
    lr: Float(gt=0) = 2.0e-4
    """peak learning rate"""
    warmup_steps: Optional[Int(ge=0)] = None
    """linear warmup length in steps (paper: 2000)"""
    warmup_fraction: Optional[Float(ge=0, lt=1)] = None
    """... or as a fraction of the scheduled steps (used when warmup_steps is absent; default 0.05)"""
    warmup_start_factor: Float(gt=0, le=1) = 0.2
    min_lr_factor: Float(gt=0, le=1) = 0.1
    weight_decay: Float(ge=0) = 0.1
    betas: Betas = (0.9, 0.95)
    grad_clip_norm: Float(gt=0) = 1.0
    ema_decay: Float(ge=0, lt=1) = 0.99
    """0 disables EMA"""
    edge_dropout: Float(ge=0, lt=1) = 0.1
    energy_loss_scale: Float(ge=0) = 1.0
    force_loss_scale: Float(ge=0) = 10.0
    val_size: Int(ge=1) = 2000
    """validation structures per store"""
    val_batch_size: Optional[Int(ge=1)] = None
    """null: batch_size"""

    def warmup(self, total_steps: int) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        frac = 0.05 if self.warmup_fraction is None else self.warmup_fraction
        return int(round(frac * total_steps))

    @model_validator(mode="after")
    def _across_keys(self):
        u = self.upstream
        _check(len(u.stores) >= 1, "upstream.stores", "name at least one store (head name: store directory)")
        if u.mixture == "single":
            _check(len(u.stores) == 1, "upstream.mixture",
                   f"'single' takes one store, got {len(u.stores)}; use balanced, temperature or proportions")
        if u.mixture == "proportions":
            _check(u.proportions is not None, "upstream.proportions", "required when mixture is 'proportions'")
        for key in ("proportions", "sizes"):
            names = getattr(u, key)
            if names is not None:
                _check(set(names) == set(u.stores), f"upstream.{key}", f"names must equal the stores' names {sorted(u.stores)}")
        _check(self.n_structures >= len(u.stores), "n_structures", f"must be at least the number of stores ({len(u.stores)})")
        _check(not (self.warmup_steps is not None and self.warmup_fraction is not None), "warmup_fraction",
               "give warmup_steps or warmup_fraction, not both")
        return self


@_run_file
class FinetuneConfig(RuntimeConfig):
    """``atomsift finetune --config RUN.yaml``: one task, one target, one seed (PAPER.md §4).

    Keys left at None take the task's recipe value from :mod:`atomsift.train.tasks`.
    """

    task: Literal["rmd17", "md22", "spice", "qm9", "qmof", "matbench", "energy-forces", "scalar"]
    """the finetuning recipe (docs/training.md; energy-forces and scalar: your own data)"""
    store: Annotated[Str, Field(min_length=1)]
    """the task's store directory"""
    target: Optional[Str] = None
    """scalar tasks: the store's target name (null: the recipe's, else the store's only one)"""
    size: Literal["tiny", "small", "large"] = "small"
    seed: Int(ge=0) = 0
    fold: Optional[Int(ge=0)] = None
    """MatBench fold (recorded; selects splits fold{k}_train/... when present)"""
    splits: dict[Str, Str] = Field(default_factory=lambda: {"train": "train", "val": "val", "test": "test"})
    max_train: Optional[Int(ge=1)] = None
    """first k structures of a seeded permutation of each split"""
    max_val: Optional[Int(ge=1)] = None
    max_test: Optional[Int(ge=1)] = None
    epochs: Optional[Int(ge=1)] = None
    batch_size: Optional[Int(ge=1)] = None
    val_batch_size: Optional[Int(ge=1)] = None
    lr: Float(gt=0) = 8.0e-5
    weight_decay: Float(ge=0) = 0.1
    betas: Betas = (0.9, 0.95)
    grad_clip_value: Float(gt=0) = 1.0
    warmup_epochs: Float(ge=0) = 0.0
    warmup_start_factor: Float(gt=0, le=1) = 0.1
    cosine_epochs: Float(gt=0) = 32.0
    min_lr_factor: Float(gt=0, le=1) = 0.1
    plateau_patience: Optional[Int(ge=0)] = None
    plateau_factor: Float(gt=0, le=1) = 0.8
    embedding_lr_scale: Float(gt=0) = 0.3
    block_lr_scales: Optional[list[Float(gt=0)]] = None
    """null: the size's profile (docs/training.md)"""
    ema_decay: Float(ge=0, lt=1) = 0.99
    """0 disables EMA"""
    test_weights: Literal["ema", "best"] = "ema"
    forces: Optional[Literal["gradient", "direct"]] = None
    energy_loss_scale: Optional[Float(ge=0)] = None
    force_loss_scale: Optional[Float(ge=0)] = None
    atom_refs: Optional[Literal["jmp", "fit", "none"]] = None
    readout: Optional[Literal["sum", "mean", "max"]] = None
    """scalar tasks: reduction over atoms (null: the recipe's)"""
    edge_dropout: Float(ge=0, lt=1) = 0.0

    @model_validator(mode="after")
    def _across_keys(self):
        from atomsift.train.tasks import RECIPES

        _check(set(self.splits) == {"train", "val", "test"}, "splits", "must map exactly train, val and test to split names")
        _check(self.block_lr_scales is None or len(self.block_lr_scales) >= 1, "block_lr_scales",
               "must be a non-empty list of positive numbers")
        if RECIPES[self.task].kind == "forces":
            _check(self.target is None, "target", f"task {self.task} learns forces: it takes no target (valid targets: "
                   "none; remove the key)")
            _check(self.readout is None, "readout", f"task {self.task} learns forces: its energy is a sum over atoms "
                   "(remove the key)")
        return self


# ------------------------------------------------------------------------------------------ errors


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fields(cls) -> dict:
    """The FieldInfo of each key of a run-file dataclass or options model."""
    return getattr(cls, "__pydantic_fields__", {}) if cls is not None else {}


def _model_at(model: type, loc) -> tuple[type | None, Any]:
    """The class holding the last key of ``loc`` and that key's FieldInfo (None if unknown)."""
    cls, info = model, None
    for i, part in enumerate(loc):
        if cls is None or not isinstance(part, str) or part not in _fields(cls):
            return (cls if i == len(loc) - 1 else None), None
        info = _fields(cls)[part]
        if i < len(loc) - 1:
            ann = info.annotation
            cls = ann if isinstance(ann, type) and (dataclasses.is_dataclass(ann) or issubclass(ann, BaseModel)) else None
    return cls, info


def _bounds(info) -> str | None:
    """``must be in [0, 1)`` for a field with two bounds (else None: the single bound is phrased)."""
    if info is None:
        return None
    lo = hi = None
    for m in _metadata(info):
        for attr, kind in (("ge", "["), ("gt", "(")):
            if getattr(m, attr, None) is not None:
                lo = (kind, getattr(m, attr))
        for attr, kind in (("le", "]"), ("lt", ")")):
            if getattr(m, attr, None) is not None:
                hi = (kind, getattr(m, attr))
    if lo and hi:
        return f"must be in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    return None


def _metadata(info) -> list:
    """Constraint objects of a field, looking through Optional[...] and Annotated[...]."""
    out = list(info.metadata)
    stack = [info.annotation]
    while stack:
        tp = stack.pop()
        if typing.get_origin(tp) is Annotated:
            args = typing.get_args(tp)
            stack.append(args[0])
            for a in args[1:]:
                out.append(a)
                out.extend(getattr(a, "metadata", []))
        elif typing.get_origin(tp) in (typing.Union, types.UnionType):
            stack.extend(typing.get_args(tp))
    return out


_PHRASES = {
    "int_type": "expected an integer", "int_parsing": "expected an integer", "int_from_float": "expected an integer",
    "float_type": "expected a number", "float_parsing": "expected a number",
    "finite_number": "expected a finite number",
    "bool_type": "expected true or false", "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "dict_type": "expected a mapping", "model_type": "expected a mapping", "model_attributes_type": "expected a mapping",
    "list_type": "expected a list", "tuple_type": "expected a list",
}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}


_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument")
_MISSING = ("missing", "missing_keyword_only_argument", "missing_argument")


def _order(err) -> int:
    # an unknown key first (a typo often explains a missing one), then missing keys, then values
    return 0 if err["type"] in _UNKNOWN else 1 if err["type"] in _MISSING else 2


def describe(exc: ValidationError, model: type) -> tuple[str, str]:
    """(dotted field, message) of the first error of ``exc`` raised validating ``model``."""
    err = sorted(exc.errors(), key=_order)[0]
    loc = tuple(err["loc"])
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "value_error" and isinstance(ctx.get("error"), FieldError):
        bad = ctx["error"]
        return dotted_path(loc + tuple(bad.field.split("."))), bad.message
    if kind in _UNKNOWN:
        holder, _ = _model_at(model, loc)
        return dotted_path(loc), unknown_key(loc[-1], _fields(holder))
    if kind in _MISSING:
        return dotted_path(loc), "required key missing"
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        head, _, last = expected.rpartition(" or ")
        options = f"{head}, {last}" if head else expected
        return dotted_path(loc), f"expected one of {options}, got {_show(value)}"
    if kind in _BOUNDS:
        attr, op = _BOUNDS[kind]
        both = _bounds(_model_at(model, loc)[1]) if all(isinstance(p, str) for p in loc) else None
        bound = ctx.get(attr)
        single = f"must be {op} {bound:g}" if isinstance(bound, (int, float)) else f"must be {op} {bound}"
        return dotted_path(loc), both or single
    if kind == "string_too_short":
        return dotted_path(loc), "must not be empty"
    if kind in _PHRASES:
        return dotted_path(loc), f"{_PHRASES[kind]}, got {_show(value)}"
    return dotted_path(loc), " ".join(str(err.get("msg", "")).split())


def input_error(exc: ValidationError, model: type, path, prefix: str = "") -> InputError:
    """The one-line InputError for a ValidationError: ``path: field 'prefix.key': message``."""
    field, message = describe(exc, model)
    return InputError(message, path=path, field=f"{prefix}{field}" if field else prefix.rstrip(".") or None)


# ----------------------------------------------------------------------------------- run files


@cache
def _adapter(model: type) -> TypeAdapter:
    return TypeAdapter(model)


def _build(model: type, data, path: Path):
    if not isinstance(data, dict):
        raise InputError("expected a mapping of keys at the top level", path=path)
    try:
        return _adapter(model).validate_python(data)
    except ValidationError as exc:
        raise input_error(exc, model, path) from None


def _read_yaml(path: str | Path) -> tuple[Path, dict]:
    from atomsift.safeio import read_yaml_mapping

    return Path(path), read_yaml_mapping(path, what="run file", max_bytes=MAX_RUN_FILE_BYTES)


def load_pretrain_config(path: str | Path) -> PretrainConfig:
    """Read and validate a pretraining run file."""
    p, data = _read_yaml(path)
    return _build(PretrainConfig, data, p)


def load_finetune_config(path: str | Path) -> FinetuneConfig:
    """Read and validate a finetuning run file."""
    p, data = _read_yaml(path)
    return _build(FinetuneConfig, data, p)


def pretrain_config_from_dict(data: dict, path: str | Path = "<config>") -> PretrainConfig:
    return _build(PretrainConfig, data, Path(path))


def finetune_config_from_dict(data: dict, path: str | Path = "<config>") -> FinetuneConfig:
    return _build(FinetuneConfig, data, Path(path))


def to_dict(c) -> dict:
    """The config as plain YAML/JSON-able data (tuples as lists)."""
    return _adapter(type(c)).dump_python(c, mode="json")


# ------------------------------------------------------------------------ the workflow's options

# Keys of a run file the workflow grid sets itself (where in config.yaml): an `options` block may
# not set them, or a budget's label and the run would disagree.
GRID_KEYS = {
    "pretrain": {"size": "backbones.*.size", "seed": "pretrain.seed", "upstream": "upstreams",
                 "n_structures": "budgets: N of NxE", "epochs": "budgets: E of NxE"},
    "finetune": {"task": "tasks.*.recipe", "store": "tasks.*.dataset", "target": "tasks.*.target",
                 "size": "backbones.*.size", "seed": "finetune.seeds"},
}
RUN_MODELS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}


def _options_model(verb: str) -> type[BaseModel]:
    """The run file's keys minus the grid's, each with its type, bounds and default, all optional
    and checked one by one (checks across keys run on whole run files: :func:`check_run_file`)."""
    model = RUN_MODELS[verb]
    fields = {name: (info.annotation, info) for name, info in _fields(model).items() if name not in GRID_KEYS[verb]}
    return create_model(f"{model.__name__}Options", __config__=ConfigDict(extra="forbid", use_attribute_docstrings=True),
                        __doc__=f"Keys of the {verb} run file an `options` block of the workflow configuration may set.",
                        **fields)


OPTIONS_MODELS = {verb: _options_model(verb) for verb in RUN_MODELS}


def options_schema() -> dict:
    """The JSON schema of the workflow's ``options`` blocks, generated from the run-file models
    (``workflow/schemas/run-options.schema.json`` is this, checked in; a test keeps it current)."""
    defs = {}
    for verb, model in OPTIONS_MODELS.items():
        schema = model.model_json_schema()
        # nested blocks (graph:) become shared definitions beside the verbs: their "#/$defs/NAME"
        # references resolve against this file's top level
        for name, sub in schema.pop("$defs", {}).items():
            sub = _untitled(sub)
            assert name not in RUN_MODELS and defs.get(name, sub) == sub, f"clashing definition {name}"
            defs[name] = sub
        defs[verb] = _untitled(schema)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": "GENERATED from src/atomsift/train/config.py by `python -m atomsift.train.config`; do not edit.",
        "title": "options blocks of the atomsift workflow configuration",
        "$defs": defs,
    }


def _untitled(schema):
    """The schema without pydantic's generated titles (noise beside the keys' own names)."""
    if isinstance(schema, dict):
        return {k: _untitled(v) for k, v in schema.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_untitled(v) for v in schema]
    return schema


def check_options(verb: str, options, source: str, where: str) -> dict:
    """Validate one ``options`` block (``where``: its dotted place in the configuration) key by key
    with the run file's own types and bounds; return it normalised (numbers from text, ...).
    A key the grid sets is refused, naming where the grid takes it from."""
    if not isinstance(options, dict):
        raise InputError(f"expected a mapping, got {_show(options)}", path=source, field=where)
    for key in options:
        if key in GRID_KEYS[verb]:
            raise InputError(f"set by the grid ({GRID_KEYS[verb][key]}), not by options", path=source, field=f"{where}.{key}")
    model = OPTIONS_MODELS[verb]
    try:
        parsed = model.model_validate(options)
    except ValidationError as exc:
        raise input_error(exc, model, source, prefix=f"{where}.") from None
    return parsed.model_dump(mode="json", exclude_unset=True)


def check_run_file(verb: str, run: dict, source: str, origin) -> None:
    """Validate a run file the workflow writes (the keys' checks across each other); an error is
    reported at the configuration key the offending run-file key came from (``origin(key)``)."""
    model = RUN_MODELS[verb]
    try:
        _adapter(model).validate_python(run)
    except ValidationError as exc:
        field, message = describe(exc, model)
        top = field.split(".")[0].split("[")[0]
        raise InputError(message, path=source, field=origin(top) + field[len(top):]) from None


def write_options_schema(path: str | Path) -> Path:
    from atomsift.fsio import write_text

    return write_text(path, json.dumps(options_schema(), indent=2) + "\n")


if __name__ == "__main__":  # python -m atomsift.train.config [PATH]: regenerate the checked-in schema
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else "workflow/schemas/run-options.schema.json"
    print(write_options_schema(out))
