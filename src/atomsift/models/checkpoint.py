"""Checkpoint I/O: our own format, JMP's public Lightning checkpoints, and feature extractors.

Our format is a plain ``torch.save`` of ``{"format": "atomsift-model", "version": 1, "config":
{...}, "state_dict": {...}, "meta": {...}}`` (dicts, strings, numbers, tensors only: no pickled
classes), so it loads with ``torch.load(weights_only=True)``.

JMP's ``jmp-s.pt`` / ``jmp-l.pt`` (JMP.md §2) are mapped key by key: ``embedding.atom_embedding.weight``
-> ``embedding.weight``; ``backbone.*`` unchanged except the deterministic radial-basis buffers
(``*.rbf.offset`` / ``*.rbf.temps``, recomputed here; shapes checked) and the ``seq_energy_pre``
alias of ``out_blocks.*.layers`` (dropped); ``output.out_energy.{t}`` / ``output.out_forces.{t}``
-> ``heads.{task}.energy_mlp`` / ``force_mlp``; ``task_steps.*`` (metric state) ignored. With
``ema=True`` (default) the EMA weights of ``optimizer_states[0]["ema"]`` replace the raw ones
(zipped with the state-dict keys in order, minus buffers, aliases and metric state, as JMP's
``finetune_state_dict``); we use EMA weights everywhere, including ``out_blocks.*.layers``
(JMP's own loader leaves the raw weights there through the alias; see JMP.md §2 "Quirk").
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from atomsift.data.batch import cast
from atomsift.errors import InputError
from atomsift.models.gemnet_oc import SIZES, BackboneConfig
from atomsift.models.heads import HeadSpec
from atomsift.models.model import GemNetModel, build_model

FORMAT = "atomsift-model"
JMP_TASKS = ("oc20", "oc22", "ani1x", "transition1x")


def save_checkpoint(path, model: GemNetModel, meta: dict | None = None) -> Path:
    """Write ``model`` (config + weights) and ``meta`` atomically to ``path``."""
    path = Path(path)
    obj = {
        "format": FORMAT,
        "version": 1,
        "config": model.model_config(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _read(path: Path) -> dict:
    """The checkpoint's object, through :mod:`atomsift.safeload` (nothing in it can run code).

    JMP's Lightning files pickle their hyper-parameters (``jmp`` config classes, pydantic
    models): those come back as inert stand-ins. Ours hold no classes, so a stand-in in a file
    that says it is ours is refused."""
    from atomsift.safeload import ANY, Inert, load_torch

    found: set[str] = set()
    obj = load_torch(path, stand_ins=ANY, found=found)
    if not isinstance(obj, dict):
        held = obj.pickled_name if isinstance(obj, Inert) else type(obj).__name__
        raise InputError(f"not a checkpoint (holds a {held}, expected a dict)", path=path)
    if obj.get("format") == FORMAT and found:
        raise InputError(f"pickles {', '.join(sorted(found)[:3])}: an atomsift checkpoint holds no classes", path=path)
    sd = obj.get("state_dict")
    if isinstance(sd, dict):
        bad = next((k for k, v in sd.items() if not isinstance(v, Tensor)), None)
        if bad is not None:
            raise InputError(f"state_dict[{bad!r}] is a {type(sd[bad]).__name__}, not a tensor", path=path, field="state_dict")
    return obj


def _fields(obj) -> dict:
    """A mapping view of a config that may be a dict or an unpickled stand-in (pydantic keeps
    its fields under ``__dict__`` in the pickled state)."""
    from atomsift.safeload import Inert

    if isinstance(obj, dict):
        return obj
    if not isinstance(obj, Inert):
        return {}
    d = obj.fields()
    inner = d.get("__dict__")
    return inner if isinstance(inner, dict) else d


def load_checkpoint(path, ema: bool = True) -> tuple[GemNetModel, dict]:
    """Load our checkpoint or a JMP one (``ema``: use JMP's EMA weights). Returns (model, meta);
    the model is in eval mode."""
    path = Path(path)
    if not path.exists():
        raise InputError("checkpoint does not exist", path=path)
    obj = _read(path)
    if not isinstance(obj, dict):
        raise InputError("not a checkpoint (expected a dict)", path=path)
    if obj.get("format") == FORMAT:
        cfg = obj.get("config") or {}
        try:
            model = _empty_model(BackboneConfig(**cfg["backbone"]), {k: HeadSpec(**v) for k, v in cfg["heads"].items()}, cfg.get("size"))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"bad model config ({exc})", path=path, field="config") from exc
        _load_strict(model, obj["state_dict"], path)
        model.eval()
        return model, dict(obj.get("meta") or {})
    sd = obj.get("state_dict")
    if isinstance(sd, dict) and any(k.startswith("backbone.") for k in sd):
        model, meta = _load_jmp(obj, path, ema)
        model.eval()
        return model, meta
    raise InputError("neither an atomsift model nor a JMP checkpoint (no 'format' / 'state_dict' with backbone.* keys)", path=path)


def _empty_model(cfg: BackboneConfig, heads: dict, size: str | None) -> GemNetModel:
    """A model with uninitialised weights (built on the meta device: no init cost), to be filled
    by a state dict."""
    from atomsift.models.bases import RadialBasis

    with torch.device("meta"):
        model = GemNetModel(cfg, heads, size=size)
    model = model.to_empty(device="cpu")
    for mod in model.modules():
        if isinstance(mod, RadialBasis):
            mod.reset_buffers()
    return model


def _load_strict(model: GemNetModel, sd: dict, path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}" for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise InputError("checkpoint does not match the model; " + "; ".join(parts), path=path, field="state_dict")
    model.load_state_dict({k: sd[k] for k in own}, strict=True)


# ----------------------------------------------------------------------------- JMP


def _is_ignored_for_ema(key: str) -> bool:
    return (
        key.endswith("rbf.offset")
        or key.endswith("rbf.temps")
        or ".seq_energy_pre." in key
        or key.startswith("task_steps")
        or key.endswith("scale_factor")
    )


def _jmp_config(obj: dict, sd: dict) -> BackboneConfig:
    direct = any(k.startswith("backbone.out_mlp_F.") for k in sd)
    hp = _fields(obj.get("hyper_parameters"))
    bb = _fields(hp.get("backbone")) or None
    fields = set(BackboneConfig.__dataclass_fields__)
    if bb:
        vals = {k: v for k, v in bb.items() if k in fields and k != "direct_forces"}
        try:
            return BackboneConfig(**{**SIZES["small"].to_dict(), **vals, "direct_forces": direct})
        except TypeError:
            pass
    # no hyper-parameters: recognise JMP-S / JMP-L from the shapes
    n_blocks = len({int(m.group(1)) for k in sd for m in [re.match(r"backbone\.int_blocks\.(\d+)\.", k)] if m})
    e = sd.get("backbone.bases.edge_emb.dense.linear.weight")
    for name in ("small", "large"):
        c = SIZES[name]
        if c.num_blocks == n_blocks and e is not None and e.shape[0] == c.emb_size_edge:
            return BackboneConfig(**{**c.to_dict(), "direct_forces": direct})
    raise InputError("JMP checkpoint: cannot tell the backbone size (no hyper_parameters['backbone'], shapes match neither JMP-S nor JMP-L)")


def _jmp_task_names(obj: dict, n: int) -> list[str]:
    hp = _fields(obj.get("hyper_parameters"))
    tasks = hp.get("tasks")
    names = []
    if isinstance(tasks, (list, tuple)):
        for t in tasks:
            name = _fields(t).get("name")
            if isinstance(name, str):
                names.append(name)
    if len(names) == n:
        return names
    if n <= len(JMP_TASKS):
        return list(JMP_TASKS[:n])
    return [f"task{i}" for i in range(n)]


def jmp_ema_state_dict(obj: dict, path: Path) -> dict:
    """JMP's state dict with the EMA tensors in place of the raw parameters."""
    sd = obj["state_dict"]
    try:
        ema = obj["optimizer_states"][0]["ema"]
    except (KeyError, IndexError, TypeError) as exc:
        raise InputError("JMP checkpoint has no EMA weights (optimizer_states[0]['ema']); use ema=False", path=path, field="optimizer_states") from exc
    keys = [k for k in sd if not _is_ignored_for_ema(k)]
    if len(keys) != len(ema):
        raise InputError(f"EMA has {len(ema)} tensors but the state dict has {len(keys)} parameters", path=path, field="optimizer_states")
    out = dict(sd)
    for k, v in zip(keys, ema):
        if not isinstance(v, Tensor):
            raise InputError(f"EMA entry for {k} is a {type(v).__name__}, not a tensor", path=path, field="optimizer_states")
        if tuple(v.shape) != tuple(sd[k].shape) or v.dtype != sd[k].dtype:
            raise InputError(f"EMA tensor for {k} has shape {tuple(v.shape)} / {v.dtype}, expected {tuple(sd[k].shape)} / {sd[k].dtype}", path=path, field="optimizer_states")
        out[k] = v
    return out


def _load_jmp(obj: dict, path: Path, ema: bool) -> tuple[GemNetModel, dict]:
    sd = jmp_ema_state_dict(obj, path) if ema else obj["state_dict"]
    cfg = _jmp_config(obj, sd)
    tasks = sorted({int(m.group(1)) for k in sd for m in [re.match(r"output\.out_energy\.(\d+)\.", k)] if m})
    names = _jmp_task_names(obj, len(tasks))
    kind = "energy_direct_forces" if cfg.direct_forces else "energy"
    heads = {names[t]: HeadSpec(kind) for t in tasks}
    model = _empty_model(cfg, heads, _size_name(cfg))
    mapped: dict[str, Tensor] = {}
    unmatched: list[str] = []
    for k, v in sd.items():
        if k.startswith("backbone.") and (k.endswith("rbf.offset") or k.endswith("rbf.temps")):
            if v.numel() not in (1, cfg.num_radial):  # deterministic buffers, recomputed here
                unmatched.append(f"{k} {tuple(v.shape)}")
            continue
        ours = jmp_key_to_ours(k, names)
        if ours is None:
            if not (k.startswith("task_steps") or ".seq_energy_pre." in k):
                unmatched.append(k)
        else:
            mapped[ours] = v
    if unmatched:
        shown = ", ".join(unmatched[:8]) + (f", ... ({len(unmatched)} in all)" if len(unmatched) > 8 else "")
        raise InputError(f"JMP checkpoint has keys with no counterpart: {shown}", path=path, field="state_dict")
    _load_strict(model, mapped, path)
    meta = {"source": "jmp", "ema": bool(ema), "tasks": names}
    for k in ("epoch", "global_step"):
        if isinstance(obj.get(k), int):
            meta[k] = obj[k]
    return model, meta


def jmp_key_to_ours(key: str, task_names: list[str]) -> str | None:
    """Our parameter name for a JMP state-dict key; None for keys we do not load (radial-basis
    buffers, the ``seq_energy_pre`` alias, metric state, unknown keys)."""
    if key == "embedding.atom_embedding.weight":
        return "embedding.weight"
    if key.startswith("backbone."):
        if key.endswith("rbf.offset") or key.endswith("rbf.temps") or ".seq_energy_pre." in key:
            return None
        return key
    m = re.match(r"output\.out_(energy|forces)\.(\d+)\.(.*)$", key)
    if m and int(m.group(2)) < len(task_names):
        mlp = "energy_mlp" if m.group(1) == "energy" else "force_mlp"
        return f"heads.{task_names[int(m.group(2))]}.{mlp}.{m.group(3)}"
    return None


def _size_name(cfg: BackboneConfig) -> str | None:
    for name, c in SIZES.items():
        if {**c.to_dict(), "direct_forces": cfg.direct_forces} == cfg.to_dict():
            return name
    return None


# ----------------------------------------------------------------------------- extractors


class Extractor:
    """Per-atom features of a backbone in eval mode, without gradients."""

    def __init__(self, model: GemNetModel, name: str, sha256: str):
        self.model = model.eval()
        self.name = name
        self.sha256 = sha256
        self.dim = model.config.emb_size_atom

    @torch.no_grad()
    def __call__(self, batch, graph=None, edge_dropout: float = 0.0, generator=None) -> Tensor:
        dtype = next(self.model.parameters()).dtype
        return self.model.backbone_features(cast(batch, dtype), graph, edge_dropout=edge_dropout, generator=generator)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_extractor(spec: str) -> Extractor:
    """``spec``: a checkpoint path (ours or JMP's) or ``random-<size>-<seed>`` (untrained, seeded)."""
    m = re.fullmatch(r"random-(tiny|small|large)-(\d+)", str(spec))
    if m:
        model = build_model(m.group(1), {}, direct_forces_backbone=False, seed=int(m.group(2)))
        return Extractor(model, str(spec), hashlib.sha256(str(spec).encode()).hexdigest())
    path = Path(spec)
    if not path.exists():
        raise InputError("extractor is neither random-<size>-<seed> nor an existing checkpoint", path=path)
    model, _ = load_checkpoint(path)
    return Extractor(model, path.stem, _sha256_file(path))
