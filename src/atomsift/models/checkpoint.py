"""Checkpoint I/O: our own format, JMP's public Lightning checkpoints, and feature extractors.

Our format is a plain ``torch.save`` of ``{"format": "atomsift-model", "version": 2, "config":
{...}, "state_dict": {...}, "meta": {...}}`` (dicts, strings, numbers, tensors only: no pickled
classes); every file is read through :mod:`atomsift.safeload`, which never calls a callable it does
not allow.

JMP's ``jmp-s.pt`` / ``jmp-l.pt`` (JMP.md §2) are mapped key by key: ``embedding.atom_embedding.weight``
-> ``embedding.weight``; ``backbone.*`` unchanged except the deterministic radial-basis buffers
(``*.rbf.offset`` / ``*.rbf.temps``, recomputed here; shapes checked) and the ``seq_energy_pre``
alias of ``out_blocks.*.layers`` (dropped); ``output.out_energy.{t}`` / ``output.out_forces.{t}``
-> ``heads.{task}.energy_mlp`` / ``force_mlp``; ``task_steps.*`` (metric state) ignored. With
``ema=True`` (default) the EMA weights of ``optimizer_states[0]["ema"]`` replace the raw ones
(zipped with the state-dict keys in order, minus buffers, aliases and metric state, as JMP's
``finetune_state_dict``). JMP's finetuning then loads that state dict with
``load_state_dict``, which visits the ``seq_energy_pre`` alias after ``layers`` and so puts the
raw weights back into ``out_blocks.*.layers`` (JMP.md §2 "Quirk"); we do the same by default
(``raw_alias=True``), so a model loaded here computes what JMP's finetuning starts from, and
``raw_alias=False`` gives EMA weights everywhere.

Format versions (``FORMAT_VERSION``; docs/model.md): 2 since GemNet-OC computes JMP's function;
format-1 files are converted on load where that is exact, refused in one line where not.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import Tensor

from atomsift import fsio
from atomsift.data.batch import cast
from atomsift.errors import InputError
from atomsift.models.gemnet_oc import SIZES, BackboneConfig
from atomsift.models.heads import HeadSpec
from atomsift.models.model import GemNetModel, build_model

FORMAT = "atomsift-model"
# 2: GemNet-OC computes JMP's function (issue 13): BasisEmbedding reads its radial x angular
#    projection as JMP does, and the atom update has JMP's Dense only when emb_size_edge !=
#    emb_size_atom. 1: before that (see upgrade_state_dict).
FORMAT_VERSION = 2
JMP_TASKS = ("oc20", "oc22", "ani1x", "transition1x")


def save_checkpoint(path, model: GemNetModel, meta: dict | None = None) -> Path:
    """Write ``model`` (config + weights) and ``meta`` atomically to ``path``."""
    path = Path(path)
    obj = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": model.model_config(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    with fsio.atomic_path(path) as tmp:
        torch.save(obj, tmp)
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


def load_checkpoint(path, ema: bool = True, graph_rule: str | None = None, raw_alias: bool = True) -> tuple[GemNetModel, dict]:
    """Load our checkpoint or a JMP one (``ema``: use JMP's EMA weights; ``raw_alias``: keep the
    raw weights in ``out_blocks.*.layers`` as JMP's finetuning does, see the module docstring).
    ``graph_rule``: the neighbour rule its graphs use (``data.graphs.RULES``; default: the one
    stored with our checkpoints, "jmp" for JMP's, whose weights were trained with it). Returns
    (model, meta); the model is in eval mode."""
    from atomsift.data.graphs import RULES

    if graph_rule is not None and graph_rule not in RULES:
        raise InputError(f"unknown graph rule {graph_rule!r}; choose from {', '.join(RULES)}")
    path = Path(path)
    if not path.exists():
        raise InputError("checkpoint does not exist", path=path)
    obj = _read(path)
    if not isinstance(obj, dict):
        raise InputError("not a checkpoint (expected a dict)", path=path)
    if obj.get("format") == FORMAT:
        cfg = obj.get("config") or {}
        try:
            bb = BackboneConfig(**cfg["backbone"])
            heads = {k: HeadSpec(**v) for k, v in cfg["heads"].items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"bad model config ({exc})", path=path, field="config") from exc
        sd = obj.get("state_dict")
        if not isinstance(sd, dict):
            raise InputError("no state_dict", path=path, field="state_dict")
        meta = dict(obj.get("meta") or {})
        version = obj.get("version")
        if version != FORMAT_VERSION:
            sd = upgrade_state_dict(sd, bb, version, path)
            meta["converted_from_version"] = version
        stored_rule = cfg.get("graph_rule", "invariant")
        if stored_rule not in RULES:
            raise InputError(f"unknown graph rule {stored_rule!r}; choose from {', '.join(RULES)}", path=path, field="config.graph_rule")
        model = _empty_model(bb, heads, cfg.get("size"), _float_dtype(sd))
        model.graph_rule = graph_rule or stored_rule
        model.graph_overrides = _graph_overrides(cfg.get("graph"), path)
        _load_strict(model, sd, path)
        model.eval()
        return model, meta
    sd = obj.get("state_dict")
    if isinstance(sd, dict) and any(k.startswith("backbone.") for k in sd):
        model, meta = _load_jmp(obj, path, ema, raw_alias)
        # JMP's weights compute JMP's function with JMP's neighbour rules (docs/model.md)
        model.graph_rule = graph_rule or "jmp"
        model.eval()
        return model, meta
    raise InputError("neither an atomsift model nor a JMP checkpoint (no 'format' / 'state_dict' with backbone.* keys)", path=path)


def _graph_overrides(value, path: Path) -> dict:
    """A checkpoint's ``config.graph`` (cutoff, max_neighbors), checked."""
    if value in (None, {}):
        return {}
    ok = isinstance(value, dict) and set(value) <= {"cutoff", "max_neighbors"}
    cutoff, k = (value.get("cutoff"), value.get("max_neighbors")) if ok else (None, None)
    ok = ok and (cutoff is None or (isinstance(cutoff, (int, float)) and 0 < cutoff <= 30))
    ok = ok and (k is None or (isinstance(k, int) and not isinstance(k, bool) and k >= 1))
    if not ok:
        raise InputError(f"expected {{cutoff: 0 < Angstrom <= 30, max_neighbors: int >= 1}}, got {value!r}", path=path,
                         field="config.graph")
    return {k: v for k, v in value.items() if v is not None}


def upgrade_state_dict(sd: dict, cfg: BackboneConfig, version, path: Path) -> dict:
    """Weights of checkpoint format ``version`` rewritten for the current model, or a one-line
    refusal where the old function cannot be expressed (docs/model.md, "Checkpoint format").

    Format 1 read a BasisEmbedding's (num_radial, L, emb) weight as R[i, l] = W[:, l, i]; format
    2 reads it as JMP does, R[i, l] = W.reshape(num_radial, L * emb)[:, i * L + l]. The same
    function in format 2 is the weight with its (L, emb) axes transposed and re-flattened, exact.
    Format 1 also put a Dense(emb_size_edge -> emb_size_atom) in every atom-update MLP, which JMP
    omits when the two widths are equal (the tiny size): no format-2 model computes that function."""
    if version == 1:
        if cfg.emb_size_edge == cfg.emb_size_atom:
            raise InputError(
                "checkpoint format 1 with emb_size_edge == emb_size_atom (e.g. size tiny) cannot be converted: its atom "
                "update has a dense layer that JMP's GemNet-OC (format 2) does not; retrain it with this version",
                path=path, field="version")
        out = dict(sd)
        for k, v in sd.items():
            if re.fullmatch(r"backbone\.bases\.mlp_(cbf|sbf)_\w+\.weight", k) and isinstance(v, Tensor) and v.dim() == 3:
                n_rad, n_sph, emb = v.shape
                out[k] = v.permute(0, 2, 1).reshape(n_rad, n_sph, emb).clone()
        return out
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise InputError(f"checkpoint format {version} is newer than this atomsift reads ({FORMAT_VERSION}); upgrade atomsift",
                         path=path, field="version")
    raise InputError(f"unknown checkpoint format version {version!r} (this atomsift reads 1 and {FORMAT_VERSION})", path=path, field="version")


def _float_dtype(sd: dict) -> torch.dtype:
    """The floating dtype of a state dict's tensors (a float64 checkpoint gives a float64 model:
    loading into float32 first would round its weights)."""
    for v in sd.values():
        if isinstance(v, Tensor) and v.is_floating_point():
            return v.dtype
    return torch.float32


def _empty_model(cfg: BackboneConfig, heads: dict, size: str | None, dtype: torch.dtype = torch.float32) -> GemNetModel:
    """A model with uninitialised weights (built on the meta device: no init cost), to be filled
    by a state dict."""
    from atomsift.models.bases import RadialBasis

    with torch.device("meta"):
        model = GemNetModel(cfg, heads, size=size)
    model = model.to_empty(device="cpu").to(dtype)
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


def _load_jmp(obj: dict, path: Path, ema: bool, raw_alias: bool = True) -> tuple[GemNetModel, dict]:
    sd = jmp_ema_state_dict(obj, path) if ema else obj["state_dict"]
    if ema and raw_alias:
        # JMP's load_state_dict visits the seq_energy_pre alias last: out_blocks.*.layers keep
        # the raw weights stored under that name
        raw = obj["state_dict"]
        sd = {k: (raw[k.replace(".layers.", ".seq_energy_pre.", 1)] if _is_aliased_layer(k, raw) else v) for k, v in sd.items()}
    cfg = _jmp_config(obj, sd)
    tasks = sorted({int(m.group(1)) for k in sd for m in [re.match(r"output\.out_energy\.(\d+)\.", k)] if m})
    names = _jmp_task_names(obj, len(tasks))
    kind = "energy_direct_forces" if cfg.direct_forces else "energy"
    heads = {names[t]: HeadSpec(kind) for t in tasks}
    model = _empty_model(cfg, heads, _size_name(cfg), _float_dtype(sd))
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
    meta = {"source": "jmp", "ema": bool(ema), "raw_alias": bool(ema and raw_alias), "tasks": names}
    for k in ("epoch", "global_step"):
        if isinstance(obj.get(k), int):
            meta[k] = obj[k]
    return model, meta


def _is_aliased_layer(key: str, raw: dict) -> bool:
    return bool(re.match(r"backbone\.out_blocks\.\d+\.layers\.", key)) and key.replace(".layers.", ".seq_energy_pre.", 1) in raw


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


def load_extractor(spec: str) -> Extractor:
    """``spec``: a checkpoint path (ours or JMP's) or ``random-<size>-<seed>`` (untrained, seeded);
    ``eqv2:...`` specs go to :mod:`atomsift.models.extractors`."""
    from atomsift.models.extractors import special_extractor

    special = special_extractor(spec)
    if special is not None:
        return special
    m = re.fullmatch(r"random-(tiny|small|large)-(\d+)", str(spec))
    if m:
        model = build_model(m.group(1), {}, direct_forces_backbone=False, seed=int(m.group(2)))
        return Extractor(model, str(spec), hashlib.sha256(str(spec).encode()).hexdigest())
    path = Path(spec)
    if not path.exists():
        raise InputError("extractor is neither random-<size>-<seed> nor an existing checkpoint", path=path)
    model, _ = load_checkpoint(path)
    return Extractor(model, path.stem, fsio.file_digest(path))
