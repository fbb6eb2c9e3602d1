"""Conversion throughput of the dataset readers: structures/s of ``atomsift prepare``.

Each benchmark writes a synthetic source of ``--n`` structures (default 100,000) in the dataset's
real release layout (writing is not timed), then times the reader's ``convert`` into a store in
the same temporary directory (the source checksum in the manifest included) and reports
structures/s (wall clock, and per CPU-second of this process, which is steadier on a shared
machine) and the peak RSS. The issue's goal is >= 20,000 structures/s for HDF5/npz sources on 2
cores. The conversion is single-threaded.

    python bench/prepare.py                 # every registered reader, 100k structures
    python bench/prepare.py ani1x spice --n 20000 --json

To add a reader: write ``def make_<name>(dest: Path, n: int, rng) -> (source, options)`` and
decorate it with ``@bench("<dataset>")``; ``source`` is what ``--source`` would be and
``options`` the keyword options of ``atomsift prepare`` (e.g. ``{"subset": "ethanol"}``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the layout writers

BENCHES: dict[str, Callable] = {}


def bench(dataset: str):
    """Register ``fn(dest, n, rng) -> (source, options)`` as the benchmark of ``dataset``."""

    def deco(fn):
        BENCHES[dataset] = fn
        return fn

    return deco


# ------------------------------------------------------------------------------ molecular sources


@bench("ani1x")
def make_ani1x(dest: Path, n: int, rng):
    """Formula groups of 10-25 atoms with 100 conformers each (ANI-1x averages ~1,600 per formula
    over 3,114 formulas; smaller groups make the benchmark harder, not easier)."""
    import fixtures_molecules as F

    per = 100
    spec = {}
    for g in range(max(1, n // per)):
        nc, nh = 1 + g % 7, 4 + g % 13
        spec[f"C{nc}H{nh}N{g % 3}O{g // 3 % 4}_{g}"] = ({6: nc, 1: nh, 7: 1 + g % 3, 8: 1 + g // 3 % 4}, per)
    return F.write_ani1x(dest / "ani1x-release.h5", seed=1, spec=spec, nan_ccsd={}), {}


@bench("transition1x")
def make_transition1x(dest: Path, n: int, rng):
    """Reactions of 7-13 atoms with 50 path frames each; formulas split 80/10/10."""
    import fixtures_molecules as F

    per, rxn_per_formula = 50, 10
    n_formulas = max(3, n // (per * rxn_per_formula))
    spec, formulas = {"train": {}, "val": {}, "test": {}}, {}
    for g in range(n_formulas):
        name = f"C{2 + g % 4}H{2 + g % 6}O{1 + g % 2}_{g}"
        formulas[name] = {6: 2 + g % 4, 1: 2 + g % 6, 8: 1 + g % 2}
        split = "val" if g % 10 == 8 else "test" if g % 10 == 9 else "train"
        spec[split][name] = {r: per for r in range(g * rxn_per_formula, (g + 1) * rxn_per_formula)}
    return F.write_t1x(dest / "transition1x-release.h5", seed=1, spec=spec, formulas=formulas), {}


@bench("rmd17")
def make_rmd17(dest: Path, n: int, rng):
    """One molecule of n frames (aspirin, 21 atoms; the release has 100,000 per molecule)."""
    import fixtures_molecules as F

    aspirin = np.array([6] * 9 + [8] * 4 + [1] * 8)
    path = F.write_npz(dest / "rmd17_aspirin.npz", F.rmd17_arrays(seed=1, m=n, numbers=aspirin))
    return path, {}


@bench("md22")
def make_md22(dest: Path, n: int, rng):
    """Ac-Ala3-NHMe (42 atoms; the release has 85,109 frames) with n frames."""
    import fixtures_molecules as F

    z = np.array([6] * 12 + [7] * 4 + [8] * 4 + [1] * 22)
    return F.write_npz(dest / "md22_Ac-Ala3-NHMe.npz", F.sgdml_arrays(seed=1, m=n, numbers=z)), {}


@bench("spice")
def make_spice(dest: Path, n: int, rng):
    """Molecules of 15-45 atoms with 50 conformers each (SPICE 1.1.4: ~1.1M over ~19k molecules)."""
    import fixtures_molecules as F

    per = 50
    spec = {}
    for g in range(max(1, n // per)):
        spec[f"mol{g}"] = ({6: 3 + g % 10, 1: 8 + g % 15, 7: 1 + g % 3, 8: 1 + g % 4}, per,
                           b"SPICE PubChem Set 6 Single Points Dataset v1.2")
    return F.write_spice(dest / "SPICE-1.1.4.hdf5", seed=1, spec=spec), {}


# ------------------------------------------------------------------------------ materials sources


def _oc_data(rng, na: int, names=("y", "force")):
    """One OC20-layout torch_geometric Data (float32 tensors as in the released LMDBs)."""
    import torch
    from torch_geometric.data import Data

    e, f = names
    return Data(**{
        "pos": torch.from_numpy(rng.uniform(0, 12, (na, 3)).astype(np.float32)),
        "cell": torch.tensor([[[11.0, 0, 0], [0.5, 11.5, 0], [0, 0, 35.0]]]),
        "atomic_numbers": torch.from_numpy(rng.choice([1, 6, 7, 8, 13, 29, 34, 78], na).astype(np.float32)),
        "natoms": na, "tags": torch.from_numpy(np.r_[np.full(na - 4, 1), np.full(4, 2)]),
        "fixed": torch.from_numpy((np.arange(na) < na // 2).astype(np.float32)),
        e: float(rng.normal()), f: torch.from_numpy(rng.normal(size=(na, 3)).astype(np.float32)),
        "sid": int(rng.integers(0, 2_000_000)), "fid": int(rng.integers(0, 300)),
    })


@bench("oc20")
def make_oc20(dest: Path, n: int, rng):
    """An S2EF LMDB of n entries of 50-100 atoms (OC20 averages ~73), PyG 2 pickles with the released
    names y / force and float32 tensors. 1,000 distinct pickles are written round-robin under
    distinct keys (decoding cost per entry is what is measured), plus the b"length" key."""
    import pickle

    import lmdb

    blobs = [pickle.dumps(_oc_data(rng, int(rng.integers(50, 101))), protocol=pickle.HIGHEST_PROTOCOL) for _ in range(1000)]
    path = dest / "data.0000.lmdb"
    env = lmdb.open(str(path), subdir=False, map_size=1 << 40, meminit=False)
    for start in range(0, n, 50_000):
        with env.begin(write=True) as txn:
            for i in range(start, min(n, start + 50_000)):
                txn.put(str(i).encode(), blobs[i % len(blobs)])
    with env.begin(write=True) as txn:
        txn.put(b"length", pickle.dumps(n))
    env.close()
    return path, {}


def _pmg_structure(rng, na: int):
    els = ["Zn", "Cu", "O", "C", "H", "N"]
    cell = np.diag(rng.uniform(8, 14, 3)) + np.triu(rng.uniform(0, 1, (3, 3)), 1)
    frac = rng.uniform(0, 1, (na, 3))
    xyz = frac @ cell
    return {"@module": "pymatgen.core.structure", "@class": "Structure", "charge": 0,
            "lattice": {"matrix": cell.round(8).tolist(), "pbc": [True, True, True]},
            "sites": [{"species": [{"element": el, "occu": 1}], "abc": a.round(8).tolist(), "xyz": x.round(8).tolist(),
                       "label": el, "properties": {}}
                      for el, a, x in zip(rng.choice(els, na), frac, xyz)]}


@bench("qmof")
def make_qmof(dest: Path, n: int, rng):
    """qmof.json + qmof_structure_data.json with min(n, 20,373) MOFs (the release size) of 40-160 atoms."""
    import json

    n = min(n, 20_373)
    d = dest / "qmof_database"
    d.mkdir()
    ids = [f"qmof-{i:07x}" for i in range(n)]
    with open(d / "qmof.json", "w") as fh:
        json.dump([{"qmof_id": q, "name": q, "info": {}, "outputs": {"pbe": {"bandgap": float(rng.uniform(0, 5))}}}
                   for q in ids], fh)
    with open(d / "qmof_structure_data.json", "w") as fh:
        json.dump([{"qmof_id": q, "name": q, "structure": _pmg_structure(rng, int(rng.integers(40, 161)))} for q in ids], fh)
    return d, {}


@bench("matbench")
def make_matbench(dest: Path, n: int, rng):
    """matbench_mp_e_form.json.gz (pandas split orient) with min(n, 132,752) structures of 2-40 atoms."""
    import gzip
    import json

    n = min(n, 132_752)
    path = dest / "matbench_mp_e_form.json.gz"
    with gzip.open(path, "wt", compresslevel=1) as fh:
        json.dump({"index": [f"mb-mp-e-form-{i + 1:06d}" for i in range(n)], "columns": ["structure", "e_form"],
                   "data": [[_pmg_structure(rng, int(rng.integers(2, 41))), float(rng.normal())] for i in range(n)]}, fh)
    return path, {}


# ------------------------------------------------------------------------------------------ runner


def run_one(dataset: str, n: int, workdir: Path) -> dict:
    from atomsift.data.readers import prepare
    from atomsift.data.store import Store

    d = workdir / dataset
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    source, opts = BENCHES[dataset](d, n, rng)
    t_write = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in (source.rglob("*") if source.is_dir() else [source]))
    t0, c0 = time.perf_counter(), time.process_time()
    out = prepare(dataset, source, d / "store", **opts)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    store = Store(out)
    res = {
        "dataset": dataset, "structures": len(store), "atoms": int(store.manifest["counts"]["n_atoms"]),
        "seconds": round(dt, 3), "structures_per_s": round(len(store) / dt), "cpu_seconds": round(cpu, 3),
        "structures_per_cpu_s": round(len(store) / cpu), "source_MB": round(size / 2**20, 1),
        "write_source_s": round(t_write, 1),
    }
    shutil.rmtree(d)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="*", help=f"default: all ({', '.join(BENCHES)})")
    ap.add_argument("--n", type=int, default=100_000, help="structures per synthetic source")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tmp", help="directory for the synthetic sources (default: a temporary one)")
    args = ap.parse_args(argv)
    names = args.datasets or list(BENCHES)
    unknown = [d for d in names if d not in BENCHES]
    if unknown:
        ap.error(f"no benchmark for {', '.join(unknown)} (have: {', '.join(BENCHES)})")
    results = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for name in names:
            r = run_one(name, args.n, Path(tmp))
            results.append(r)
            if not args.json:
                print(f"{r['dataset']:14s} {r['structures']:>8d} structures {r['atoms']:>10d} atoms "
                      f"{r['seconds']:7.2f} s  {r['structures_per_s']:>9d} structures/s  "
                      f"({r['structures_per_cpu_s']} per CPU-second; source {r['source_MB']} MB)",
                      flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.json:
        json.dump({"n": args.n, "cpus": os.cpu_count(), "peak_rss_MB": round(peak), "results": results}, sys.stdout, indent=2)
        print()
    else:
        print(f"peak RSS {peak:.0f} MB (source generation included), {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
