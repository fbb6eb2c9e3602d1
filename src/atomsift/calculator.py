"""An ASE calculator over atomsift's checkpoints (pretrained or finetuned, any size) and JMP's.

``AtomsiftCalculator("ft/model.pt")`` is an ordinary ASE ``Calculator``: attach it to ``Atoms``
and ask for ``energy`` (eV), ``forces`` (eV/Å) and, for a periodic structure and a head whose
forces are the energy's gradient, ``stress`` (eV/Å^3, ASE's Voigt order). What the checkpoint
knows is used, not guessed:

- the head: a finetuned checkpoint's one head ("task"); otherwise the first energy head (a
  pretraining checkpoint has one per upstream dataset, JMP's one per pretraining task);
- the graph: the settings stored with a finetuned checkpoint (cutoff, neighbour cap, pbc,
  neighbour rule), else those of the dataset family the head was trained on (JMP.md §1.3);
- the units: heads predict normalised, referenced values (docs/training.md, "Losses,
  normalisation"); the normalisation and linear references saved in the checkpoint's meta map
  them back to eV and eV/Å (:func:`head_scaling`). JMP's checkpoints hold neither: their heads
  are scaled by JMP's published per-task standard deviations (mean 0), so forces are in eV/Å and
  energies are referenced energies whose reference JMP does not ship.

Forces of an ``energy_grad_forces`` head are -dE/dx (conservative: NVE dynamics conserves
energy); a direct-force head predicts them (faster, not conservative; no stress). Many
structures go through the model in batches with :meth:`AtomsiftCalculator.calculate_batch`
(``atomsift predict`` uses it).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from atomsift.errors import InputError

N_ELEMENTS = 120
ENERGY_KINDS = ("energy_grad_forces", "energy_direct_forces", "energy")

# JMP's pretraining normalisation (JMP.md §3, config/jmp_l_pretrain.ipynb): mean 0, std(y) eV and
# std(F) eV/Å per task; no linear reference is stored with the checkpoint.
JMP_STD = {
    "oc20": (24.901469505465872, 0.5111534595489502),
    "oc22": (25.229595396538468, 0.25678861141204834),
    "ani1x": (2.8700712783472118, 2.131422996520996),
    "transition1x": (1.787466168382901, 0.3591422140598297),
}


@dataclass(frozen=True)
class Scaling:
    """Physical values from a head's outputs: E = e_scale * out + sum_i coeff[Z_i] + e_mean (eV,
    or the target's unit), F = f_scale * out_forces (eV/Å). ``source`` says where the numbers
    came from."""

    e_scale: float = 1.0
    e_mean: float = 0.0
    coeff: tuple[float, ...] = (0.0,) * N_ELEMENTS
    f_scale: float = 1.0
    source: str = "none (raw head outputs)"

    def reference(self, numbers: np.ndarray) -> float:
        return float(np.asarray(self.coeff, dtype=np.float64)[np.asarray(numbers, dtype=np.int64)].sum())


def head_scaling(meta: dict, head: str, kind: str) -> Scaling:
    """The :class:`Scaling` of head ``head`` (of kind ``kind``) of a checkpoint with ``meta``.

    Finetuning (``meta["normalization"]``, as :class:`atomsift.train.module.FinetuneModule`
    trains): scalar and direct-force heads use the energy std, gradient-force heads the force std
    for both (F = -dE/dx in the scaled units). Pretraining (``meta["normalization"][head]``, as
    ``PretrainModule``): energy std and force std. JMP: :data:`JMP_STD`. Gradient forces are
    always scaled as the energy they differentiate."""
    norm = meta.get("normalization")
    if meta.get("stage") == "finetune" and isinstance(norm, dict) and "coeff" in norm:
        e_scale = norm["force_std"] if kind == "energy_grad_forces" else norm["energy_std"]
        scaling = Scaling(float(e_scale), float(norm.get("energy_mean", 0.0)), _coeff(norm), float(norm.get("force_std", 1.0)),
                          "finetuning normalisation and linear references")
    elif isinstance(norm, dict) and isinstance(norm.get(head), dict):
        n = norm[head]
        scaling = Scaling(float(n["energy_std"]), float(n.get("energy_mean", 0.0)), _coeff(n), float(n.get("force_std", 1.0)),
                          f"pretraining normalisation and linear references of '{head}'")
    elif meta.get("source") == "jmp" and head in JMP_STD:
        e_std, f_std = JMP_STD[head]
        scaling = Scaling(e_std, 0.0, (0.0,) * N_ELEMENTS, f_std, f"JMP's published std of '{head}' (energy reference unknown)")
    else:
        scaling = Scaling()
    if kind == "energy_grad_forces":
        scaling = dataclasses.replace(scaling, f_scale=scaling.e_scale)
    return scaling


def _coeff(norm: dict) -> tuple[float, ...]:
    c = [float(x) for x in norm.get("coeff", [])][:N_ELEMENTS]
    return tuple(c + [0.0] * (N_ELEMENTS - len(c)))


def choose_head(model, meta: dict, head: str | None, path=None) -> str:
    """The head to use: ``head`` if given, else the finetuned checkpoint's "task", else the first
    energy head, else the first head."""
    specs = model.head_specs
    if head is not None:
        if head not in specs:
            raise InputError(f"no head '{head}' (heads: {', '.join(specs) or 'none'})", path=path, field="heads")
        return head
    if not specs:
        raise InputError("checkpoint has no heads (a bare backbone: use it as an extractor)", path=path, field="heads")
    if meta.get("stage") == "finetune" and "task" in specs:
        return "task"
    return next((k for k, v in specs.items() if v.kind in ENERGY_KINDS), next(iter(specs)))


def checkpoint_graph(meta: dict, head: str, model=None, path=None):
    """The graph settings a head was trained with: those stored by finetuning (``meta["graph"]``),
    else those of its dataset family (``meta["dataset"]``, a pretraining head's dataset, or the
    head's own name, as JMP's heads are named), with the model's neighbour rule where it has one."""
    from atomsift.data.graphs import GraphSettings

    stored = meta.get("graph")
    if isinstance(stored, dict):
        known = {f.name for f in dataclasses.fields(GraphSettings)}
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in stored.items() if k in known}
        try:
            return GraphSettings(**values)
        except (TypeError, ValueError) as exc:
            raise InputError(f"bad graph settings ({exc})", path=path, field="meta.graph") from None
    datasets = meta.get("datasets") if isinstance(meta.get("datasets"), dict) else {}
    return family_graph(meta.get("dataset") or datasets.get(head) or head, model)


def family_graph(family: str, model=None):
    """The graph settings ``model`` uses for a dataset family: JMP's table entry with the model's
    neighbour rule and graph overrides where it records them (``GemNetModel.graph_for``)."""
    from atomsift.data.graphs import graph_settings

    if hasattr(model, "graph_for"):
        return model.graph_for(family)
    settings = graph_settings(family)
    rule = getattr(model, "graph_rule", None)
    if rule is None or "rule" not in {f.name for f in dataclasses.fields(settings)}:
        return settings
    return dataclasses.replace(settings, rule=rule)


def pick_device(device: str | None):
    """``auto``/None: CUDA when available, else the CPU; otherwise a torch device string."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"not a device: {device!r}", field="device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but CUDA is not available", field="device")
    return dev


def _dtype(dtype):
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "float64": torch.float64, "32": torch.float32, "64": torch.float64}
    if str(dtype) not in names:
        raise InputError(f"expected float32 or float64, got {dtype!r}", field="dtype")
    return names[str(dtype)]


class AtomsiftCalculator(Calculator):
    """ASE calculator over a GemNet-OC checkpoint (ours, pretrained or finetuned, or JMP's).

    ``model``: a checkpoint path or a loaded ``GemNetModel`` (then ``meta`` is its checkpoint
    meta, {} for raw outputs). ``head``: which head (default: see :func:`choose_head`).
    ``graph``: ``GraphSettings`` or a dataset family overriding the checkpoint's. ``device``:
    "auto" (CUDA when available), "cpu", "cuda:1", ... ``dtype``: float32 or float64 (default:
    the checkpoint's). ``batch_size``: structures per model call in :meth:`calculate_batch`.

    A scalar head (finetuned on a named target) gives that target as the property of its name
    (``calc.get_property("gap", atoms)``); energy, forces and stress are then not implemented.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]
    default_parameters: dict = {}

    def __init__(self, model, *, head: str | None = None, graph=None, device: str | None = "auto", dtype=None,
                 batch_size: int = 32, meta: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        import torch

        from atomsift.data.graphs import GraphSettings

        self.path = None
        if isinstance(model, (str, Path)):
            from atomsift.models.checkpoint import load_checkpoint

            self.path = Path(model)
            model, meta = load_checkpoint(self.path)
        self.meta = dict(meta or {})
        self.head = choose_head(model, self.meta, head, self.path)
        self.spec = model.head_specs[self.head]
        self.device = pick_device(device)
        dt = _dtype(dtype) or next(model.parameters()).dtype
        self.model = model.to(device=self.device, dtype=dt).eval()
        self.dtype = dt
        if graph is None:
            self.graph = checkpoint_graph(self.meta, self.head, model, self.path)
        elif isinstance(graph, GraphSettings):
            self.graph = graph
        else:
            self.graph = family_graph(str(graph), model)
        if int(batch_size) < 1:
            raise InputError(f"must be at least 1, got {batch_size}", field="batch_size")
        self.batch_size = int(batch_size)
        self.scaling = head_scaling(self.meta, self.head, self.spec.kind)
        self.target = self.meta.get("target") if self.spec.kind == "scalar" else None
        if self.spec.kind == "scalar":
            self.implemented_properties = [self.target or "y"]
        elif self.spec.kind == "energy":
            self.implemented_properties = ["energy", "free_energy"]
        elif self.spec.kind == "energy_direct_forces":
            self.implemented_properties = ["energy", "free_energy", "forces"]
        self._torch = torch

    # ------------------------------------------------------------------ properties

    @property
    def conservative(self) -> bool:
        """Forces are -dE/dx (NVE dynamics conserves energy)."""
        return self.spec.kind == "energy_grad_forces"

    def describe(self) -> dict:
        """What this calculator computes, as JSON-able data (``atomsift predict --json`` prints it)."""
        return {"checkpoint": None if self.path is None else str(self.path), "head": self.head, "kind": self.spec.kind,
                "target": self.target, "graph": dataclasses.asdict(self.graph), "device": str(self.device),
                "dtype": str(self.dtype).replace("torch.", ""), "units": self.scaling.source,
                "properties": list(self.implemented_properties)}

    # ------------------------------------------------------------------ ASE interface

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name not in self.implemented_properties:
            raise PropertyNotImplementedError(self._why_not(name))
        return super().get_property(name, atoms, allow_calculation)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.results = self.calculate_batch([self.atoms], properties)[0]

    def calculate_batch(self, frames, properties=("energy", "forces")) -> list[dict]:
        """Results for every ``Atoms`` of ``frames``, ``batch_size`` structures per model call:
        one dict per frame with ``energy``/``free_energy`` (eV), ``forces`` ((N, 3) eV/Å) and
        ``stress`` (Voigt, eV/Å^3) as asked, or the scalar target of a scalar head."""
        props = set(properties)
        missing = [p for p in props if p not in self.implemented_properties]
        if missing:
            raise PropertyNotImplementedError(self._why_not(missing[0]))
        want_stress = "stress" in props
        out: list[dict] = []
        for lo in range(0, len(frames), self.batch_size):
            chunk = frames[lo:lo + self.batch_size]
            if want_stress:
                flat = [i for i, a in enumerate(chunk) if not np.asarray(a.pbc).all()]
                if flat:
                    raise PropertyNotImplementedError(f"stress needs a structure periodic in all three directions "
                                                      f"(structure {lo + flat[0]} has pbc={list(map(bool, chunk[flat[0]].pbc))})")
            out.extend(self._chunk(chunk, want_stress))
        return out

    def _why_not(self, prop: str) -> str:
        if self.spec.kind == "scalar":
            return f"head '{self.head}' predicts the scalar '{self.target or 'y'}', not {prop}"
        if prop == "stress":
            return (f"stress needs a head whose forces are the energy's gradient; head '{self.head}' is "
                    f"{self.spec.kind} (finetune with forces: gradient for stress and conservative dynamics)")
        return f"head '{self.head}' ({self.spec.kind}) does not predict {prop}"

    # ------------------------------------------------------------------ the model call

    def _batch(self, chunk):
        from atomsift.data.batch import from_atoms

        plain = []
        for a in chunk:
            b = a.copy()  # without its calculator: from_atoms would ask it for labels
            b.calc = None
            plain.append(b)
        return from_atoms(plain, dtype=self.dtype).to(self.device)

    def _chunk(self, chunk, want_stress: bool) -> list[dict]:
        torch = self._torch
        batch = self._batch(chunk)
        s = self.scaling
        if want_stress:
            raw = self._with_stress(batch)
        elif self.spec.kind == "energy_grad_forces":
            raw = self.model(batch, self.head, graph=self.graph)
        else:
            with torch.no_grad():
                raw = self.model(batch, self.head, graph=self.graph)
        natoms = batch.natoms.cpu().numpy()
        offsets = np.concatenate([[0], np.cumsum(natoms)])
        results = []
        if self.spec.kind == "scalar":
            y = raw["y"].detach().double().cpu().numpy()
            for j, a in enumerate(chunk):
                results.append({self.implemented_properties[0]: float(y[j] * s.e_scale + s.reference(a.numbers) + s.e_mean)})
            return results
        e = raw["energy"].detach().double().cpu().numpy()
        f = raw.get("forces")
        f = None if f is None else f.detach().double().cpu().numpy() * s.f_scale
        for j, a in enumerate(chunk):
            energy = float(e[j] * s.e_scale + s.reference(a.numbers) + s.e_mean)
            r = {"energy": energy, "free_energy": energy}
            if f is not None:
                r["forces"] = f[offsets[j]:offsets[j + 1]].copy()
            if want_stress:
                r["stress"] = raw["stress"][j] * s.e_scale
            results.append(r)
        return results

    def _with_stress(self, batch) -> dict:
        """Energy, forces and dE/d(strain) / V by autograd through a symmetric strain applied to
        positions and cell (the route of every gradient-stress MLIP: r' = r (1 + e), h' = h (1 + e)).
        ``GemNetModel.forward`` differentiates positions only, so this calls its feature pass."""
        from ase.stress import full_3x3_to_voigt_6_stress

        torch = self._torch
        model, head = self.model, self.model.heads[self.head]
        B = batch.num_graphs
        with torch.enable_grad():
            pos = batch.pos.detach().requires_grad_(True)
            eps = torch.zeros((B, 3, 3), dtype=pos.dtype, device=pos.device, requires_grad=True)
            strain = torch.eye(3, dtype=pos.dtype, device=pos.device) + 0.5 * (eps + eps.transpose(1, 2))
            spos = torch.bmm(pos.unsqueeze(1), strain[batch.batch]).squeeze(1)
            strained = copy.copy(batch)
            strained.pos = spos
            strained.cell = torch.bmm(batch.cell.to(pos.dtype), strain)
            feats = model._features(strained, self.graph, 0.0, spos)
            energy = head(feats, strained.batch, B)["energy"]
            g_pos, g_eps = torch.autograd.grad(energy.sum(), [pos, eps])
        volume = torch.linalg.det(batch.cell.to(pos.dtype)).abs()
        sigma = (g_eps / volume[:, None, None]).detach().double().cpu().numpy()
        return {"energy": energy.detach(), "forces": -g_pos.detach(), "stress": [full_3x3_to_voigt_6_stress(x) for x in sigma]}
