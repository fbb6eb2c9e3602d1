"""``atomsift finetune --data FILE``: finetune on your own file in one command.

A front end to :func:`atomsift.train.finetune.run_finetune`, which it calls unchanged:

1. the file (anything ASE reads, with energies and forces or a named scalar) is converted into a
   store by the ``ase`` reader, once: the store lives in a cache keyed by the file's sha256 and the
   reading options (``$ATOMSIFT_CACHE``, else ``$XDG_CACHE_HOME/atomsift``, else
   ``~/.cache/atomsift``), so a second run, or a run with another seed or learning rate, reuses it;
2. the store's seeded 80/10/10 split (``--split-seed``, the reader's rule) is written to
   ``OUT/split.json`` as frame indices of the file;
3. the task follows from what the file holds: energies and forces give the ``energy-forces``
   recipe (gradient forces, energy and force losses: a conservative model for MD); a scalar named
   with ``--target`` (an ``info`` key, or ``energy`` for an energy-only file) the ``scalar`` recipe
   (sum readout and element references fitted on the training split, unless ``--readout``);
4. the run file (``OUT/run.yaml``, a :class:`~atomsift.train.config.FinetuneConfig`) gets those
   keys, the backbone size of ``--pretrained``, and any key of ``--config`` or the flags; for
   energies and forces also a ``graph:`` block whose nearest-k cap keeps every neighbour of the
   file's most crowded atom (:func:`smooth_graph`), so that the energy has no jumps;
5. after training, ``OUT/data.json`` records the file, the split and the errors on the test split
   of the finished model and of the model finetuning started from (step 0), through
   :class:`atomsift.calculator.AtomsiftCalculator`, with the energy references re-estimated
   from your training split (what finetuning does) and, for comparison, without them (zero
   references) and with the pretraining checkpoint's own (docs/training.md, "Your own data").

Element references: the new head starts near zero, so the energy it predicts at step 0 is the
linear reference sum_i c[Z_i] fitted on your training split (plus the head's small output times
the label scale). Without that fit the first steps would start from an energy scale that is off
by the total energy of the molecule (hundreds of eV).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atomsift.errors import InputError
from atomsift.fsio import file_digest

# keys of the run file the front end sets itself (from the file and the checkpoint)
SET_HERE = ("task", "store", "target")


@dataclass(frozen=True)
class DataOptions:
    """How to read the user's file: what the reader takes, plus the split seed."""

    path: Path
    target: str | None = None
    energy_key: str | None = None
    forces_key: str | None = None
    split_seed: int = 42

    def reader_options(self, targets: list[str]) -> dict:
        return {"energy_key": self.energy_key, "forces_key": self.forces_key, "target_keys": targets,
                "seed": self.split_seed}


def cache_root(cache: str | Path | None = None) -> Path:
    """Where prepared stores are cached: ``cache``, ``$ATOMSIFT_CACHE``, ``$XDG_CACHE_HOME/atomsift``
    or ``~/.cache/atomsift``."""
    if cache:
        return Path(cache)
    if os.environ.get("ATOMSIFT_CACHE"):
        return Path(os.environ["ATOMSIFT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "atomsift"


def cached_store(opts: DataOptions, targets: list[str], cache: Path, sha: str) -> Path:
    """The store of the file read with ``targets``, from the cache or prepared into it now."""
    from atomsift.data.readers import ase_reader
    from atomsift.data.store import Store

    reading = {**opts.reader_options(targets), "reader": ase_reader.NAME, "reader_version": ase_reader.VERSION}
    key = hashlib.sha256(json.dumps({"sha256": sha, **reading}, sort_keys=True).encode()).hexdigest()[:20]
    out = cache / "stores" / f"{opts.path.stem[:40]}-{key}"
    if (out / "manifest.json").is_file():
        try:
            store = Store(out)
            if (store.manifest.get("source") or {}).get("sha256") == sha:
                return out
        except InputError:
            pass  # a damaged cache entry is prepared again (the writer replaces a store)
    ase_reader.convert(opts.path, out, **opts.reader_options(targets))
    return out


def prepare(opts: DataOptions, cache: Path) -> tuple[Path, str, str | None]:
    """(store, task, target) for the user's file: energies + forces -> energy-forces; a named
    scalar (or the energy of a file without forces) -> scalar."""
    from atomsift.data.store import Store

    sha = file_digest(opts.path)
    store_path = cached_store(opts, [opts.target] if opts.target else [], cache, sha)
    store = Store(store_path)
    if opts.target:
        return store_path, "scalar", opts.target
    if store.has("energy") and store.has("forces"):
        return store_path, "energy-forces", None
    if store.has("energy"):  # energies alone: the energy is the scalar
        return cached_store(opts, ["energy"], cache, sha), "scalar", "energy"
    raise InputError("holds neither energies and forces nor a named scalar: name one with --target KEY (an info key)",
                     path=opts.path, field="--target")


def run_file(base: dict, task: str, store: Path, target: str | None, size: str | None, readout: str | None,
             source: str = "finetune --data") -> dict:
    """The run file: ``base`` (``--config`` and the flags, from ``source``) with the keys the data decides."""
    for key in SET_HERE:
        if key in base:
            raise InputError("set by --data (the file decides it), not by the run file", path=source, field=key)
    run = {"task": task, "store": str(store), **base}
    if target is not None:
        run["target"] = target
    if size is not None and "size" not in base:
        run["size"] = size
    if task == "scalar":
        readout = readout or base.get("readout") or "sum"
        run["readout"] = readout
        # a sum readout is extensive: reference it by element counts; mean / max are not
        run.setdefault("atom_refs", "fit" if readout == "sum" else "none")
    elif readout is not None:
        raise InputError("the file has energies and forces: the energy is a sum over atoms", field="--readout")
    return run


# A nearest-k cap that is active makes the energy jump where two neighbours swap order
# (docs/model.md); ``finetune --data`` raises k (up to JMP's largest, rMD17's 100) until none is.
K_SMOOTH_MAX = 100


def most_neighbours(store, cutoff: float, chunk: int = 512) -> int:
    """The most neighbours (periodic images included) any atom of ``store`` has within ``cutoff`` Å."""
    import torch

    from atomsift.data.graphs import radius_graph

    most, n = 0, len(store)
    for lo in range(0, n, chunk):
        recs = [store[i] for i in range(lo, min(n, lo + chunk))]
        g = radius_graph(torch.as_tensor(np.concatenate([r.positions for r in recs]), dtype=torch.float64),
                         torch.as_tensor(np.stack([r.cell for r in recs]), dtype=torch.float64),
                         torch.as_tensor(np.stack([r.pbc for r in recs]), dtype=torch.bool),
                         torch.tensor([len(r.numbers) for r in recs]), cutoff, 1 << 40)
        if g.num_edges:
            most = max(most, int(torch.bincount(g.edge_index[1]).max()))
    return most


def smooth_k(k: int, most: int) -> int:
    """The smallest main-graph k >= ``k`` whose every nearest-k cap (``graphs.cap_sizes``: the
    quadruplet graph's k * 8 // 30 is the tightest) keeps ``most`` neighbours."""
    from atomsift.data.graphs import cap_sizes

    while min(k, *cap_sizes(k)) < most:
        k += 1
    return k


def smooth_graph(store_path: Path, pre_model, user_graph) -> tuple[dict | None, dict]:
    """(the run file's ``graph:`` block, or None to keep the inherited one; the record for data.json).

    The graph finetuning would use (``user_graph``, the run file's validated ``graph:``; else the
    pretrained model's, ``pre_model``; else JMP's table for the store) keeps its cutoff; its k is
    raised to :func:`smooth_k` of the file's most crowded atom when that is at most
    ``K_SMOOTH_MAX``, so that no nearest-k cap is active on the file and the energy is a continuous
    function of the positions (NVE conserves it). A ``graph:`` set by the user is kept as it is
    and only reported."""
    from atomsift.data.graphs import graph_settings
    from atomsift.data.store import Store
    from atomsift.train.finetune import graph_of

    store = Store(store_path)
    if user_graph is not None:
        cutoff, k = float(user_graph.cutoff), int(user_graph.max_neighbors)
    else:
        settings = graph_of(pre_model, store.dataset) if pre_model is not None else graph_settings(store.dataset)
        cutoff, k = float(settings.cutoff), int(settings.max_neighbors)
    most = most_neighbours(store, cutoff)
    want = smooth_k(k, most)
    raise_k = user_graph is None and k < want <= K_SMOOTH_MAX
    k_run = want if raise_k else k
    record = {"cutoff": cutoff, "max_neighbors": k_run, "most_neighbours": most, "smooth": smooth_k(k_run, most) == k_run}
    if raise_k:
        record["raised_from"] = k
    return ({"cutoff": cutoff, "max_neighbors": k_run} if raise_k else None), record


def pretrained_model(pretrained: str | None):
    """The model of a ``--pretrained`` checkpoint (None for 'none')."""
    if not pretrained or pretrained == "none":
        return None
    from atomsift.train.checkpointing import load_model

    return load_model(Path(pretrained))[0]


def write_split(out: Path, store_path: Path, seed: int) -> dict:
    from atomsift.data.store import Store
    from atomsift.fsio import write_json

    store = Store(store_path)
    split = {k: store.split(k).tolist() for k in ("train", "val", "test")}
    write_json(out / "split.json", {"seed": seed, "rule": store.manifest.get("split") or "RandomState(seed) 80/10/10",
                                    "indices": "frame numbers of the file (0-based)", **split}, indent=None)
    return {k: len(v) for k, v in split.items()}


# ------------------------------------------------------------------------------ errors at step 0


def store_atoms(store, indices) -> list:
    """``Atoms`` of the store's structures ``indices`` (no labels attached)."""
    out = []
    for g in indices:
        a = store.record(int(g)).to_atoms()
        a.calc = None
        out.append(a)
    return out


def start_model(final, meta: dict, pretrained: str | None):
    """The model finetuning started from: fresh heads from the run's seed (as ``run_finetune``
    builds them) and the pretrained backbone copied in."""
    from atomsift.models.model import build_model
    from atomsift.train.finetune import transfer_backbone

    cfg = meta["config"]
    model = build_model(cfg["size"], dict(final.head_specs), direct_forces_backbone=final.config.direct_forces,
                        seed=int(cfg["seed"]))
    if pretrained and pretrained != "none":
        from atomsift.train.checkpointing import load_model

        pre, _ = load_model(Path(pretrained))
        transfer_backbone(pre, model)
    return model.to(next(final.parameters()).dtype)


def test_errors(model, meta: dict, store, indices, target: str | None, upstream: dict | None = None) -> dict:
    """MAEs on ``indices`` of the store through the calculator: forces (eV/Å) and the energy (eV,
    eV/atom) with the run's references, with none, and with each pretraining head's; or the scalar."""
    from atomsift.calculator import AtomsiftCalculator, N_ELEMENTS

    calc = AtomsiftCalculator(model, meta=meta, device="cpu")
    frames = store_atoms(store, indices)
    recs = [store.record(int(g)) for g in indices]
    n_atoms = np.array([len(a) for a in frames], dtype=np.float64)
    if target is not None:
        pred = np.array([r[calc.implemented_properties[0]] for r in calc.calculate_batch(frames, calc.implemented_properties[:1])])
        true = np.array([r.targets[target] for r in recs])
        ref = np.array([calc.scaling.reference(a.numbers) + calc.scaling.e_mean for a in frames])
        return {"n": len(frames), "mae": float(np.abs(pred - true).mean()),
                "mae_without_references": float(np.abs(pred - ref - true).mean())}
    res = calc.calculate_batch(frames, ("energy", "forces"))
    e = np.array([r["energy"] for r in res])
    true_e = np.array([r.energy for r in recs])
    f_err = np.concatenate([np.abs(r["forces"] - t.forces).ravel() for r, t in zip(res, recs)])
    ref = np.array([calc.scaling.reference(a.numbers) + calc.scaling.e_mean for a in frames])

    def energy(pred):
        err = np.abs(pred - true_e)
        return {"energy_mae_eV": float(err.mean()), "energy_mae_eV_per_atom": float((err / n_atoms).mean())}

    out = {"n": len(frames), "force_mae_eV_A": float(f_err.mean()), **energy(e),
           "without_references": energy(e - ref)}
    for head, norm in (upstream or {}).items():
        coeff = np.zeros(N_ELEMENTS)
        c = np.asarray(norm.get("coeff", []), dtype=np.float64)[:N_ELEMENTS]
        coeff[:c.size] = c
        up = np.array([coeff[a.numbers].sum() + float(norm.get("energy_mean", 0.0)) for a in frames])
        out.setdefault("with_pretraining_references", {})[head] = energy(e - ref + up)
    return out


def evaluate(out: Path, pretrained: str | None, store_path: Path, target: str | None) -> dict:
    """Test-split errors of the finished model and of the step-0 model (``OUT/data.json``)."""
    from atomsift.data.store import Store
    from atomsift.models.checkpoint import load_checkpoint

    final, meta = load_checkpoint(out / "model.pt")
    store = Store(store_path)
    test = store.split("test")
    upstream = None
    if pretrained and pretrained != "none":
        _, pre_meta = load_checkpoint(Path(pretrained))
        norm = pre_meta.get("normalization")
        upstream = norm if isinstance(norm, dict) and all(isinstance(v, dict) for v in norm.values()) else None
    t0 = time.time()
    result = {"final": test_errors(final, meta, store, test, target),
              "step0": test_errors(start_model(final, meta, pretrained), meta, store, test, target, upstream)}
    if not pretrained or pretrained == "none":
        result["step0"]["note"] = ("from scratch: the model's initial scale factors; the run fits them on its first "
                                   "batches before step 0")
    result["evaluation_s"] = round(time.time() - t0, 2)
    return result


# ------------------------------------------------------------------------------ the command


def finetune_data(opts: DataOptions, out: str | Path, pretrained: str | None, base: dict, *, size: str | None = None,
                  readout: str | None = None, cache: str | Path | None = None, source: str = "finetune --data") -> dict:
    """Prepare (or reuse) the store, write the split and the run file, run :func:`run_finetune`,
    and record the test errors; returns ``OUT/data.json``'s content (with ``metrics``)."""
    from atomsift.fsio import write_json, write_text
    from atomsift.train.config import finetune_config_from_dict, to_dict
    from atomsift.train.finetune import run_finetune

    import yaml

    t0 = time.time()
    if not opts.path.is_file():
        raise InputError("does not exist" if not opts.path.exists() else "is not a file", path=opts.path, field="--data")
    if pretrained and pretrained != "none" and not Path(pretrained).is_file():
        raise InputError("pretrained checkpoint does not exist", path=pretrained, field="--pretrained")
    store_path, task, target = prepare(opts, cache_root(cache))
    prepared_s = time.time() - t0
    pre_model = pretrained_model(pretrained)
    run = run_file(base, task, store_path, target, size or ("size" not in base and getattr(pre_model, "size", None)) or None,
                   readout, source)
    cfg = finetune_config_from_dict(run, source)  # the flags' errors name the key, before any output
    graph_record = None
    if task == "energy-forces":  # a model for MD: an energy without jumps where it can be had
        block, graph_record = smooth_graph(store_path, pre_model, cfg.graph)
        if block is not None:
            run["graph"] = block
            cfg = finetune_config_from_dict(run, source)
    del pre_model  # training loads its own copy: do not hold a large backbone twice
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = write_split(out, store_path, opts.split_seed)
    run_path = write_text(out / "run.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    metrics = run_finetune(cfg, out, pretrained or "none", config_path=run_path)
    if not metrics:  # a non-zero DDP rank
        return {}
    record = {"data": str(opts.path), "out": str(out), "sha256": file_digest(opts.path), "store": str(store_path), "task": task,
              "target": target, "split_seed": opts.split_seed, "split": sizes, "pretrained": pretrained or "none",
              "prepare_s": round(prepared_s, 2), **({"graph": graph_record} if graph_record else {}),
              **evaluate(out, pretrained, store_path, target)}
    write_json(out / "data.json", record)
    return {**record, "metrics": metrics}


def summary(rec: dict) -> str:
    """The one line a job prints: what was learnt and the errors before and after."""
    m = rec["metrics"]
    s0, fin = rec["step0"], rec["final"]
    split = "/".join(str(rec["split"][k]) for k in ("train", "val", "test"))
    if rec["target"] is None:
        errs = (f"test force MAE {fin['force_mae_eV_A'] * 1000:.4g} meV/Å, energy MAE {fin['energy_mae_eV'] * 1000:.4g} meV; "
                f"step 0: energy MAE {s0['energy_mae_eV']:.4g} eV with re-estimated references, "
                f"{s0['without_references']['energy_mae_eV']:.4g} eV without")
    else:
        errs = (f"test {rec['target']} MAE {fin['mae']:.4g} {m.get('unit') or ''}".rstrip()
                + f"; step 0: {s0['mae']:.4g} with references, {s0['mae_without_references']:.4g} without")
    g = rec.get("graph")
    if g:
        errs += (f"; graph {g['cutoff']:g} Å, k {g['max_neighbors']}"
                 + (f" (raised from {g['raised_from']})" if "raised_from" in g else "")
                 + (": no nearest-k cap active, energy continuous" if g["smooth"]
                    else f": nearest-k caps active ({g['most_neighbours']} neighbours), energy jumps where neighbours swap order"))
    return (f"finetune --data: {rec['task']} on {Path(rec['data']).name} ({split} train/val/test), {errs}; "
            f"{m['epochs_run']} epochs, {m['wall_time_s']:.1f} s -> {rec['out']}/model.pt")
