"""Random-access reads of QM9 structures: the atomsift store vs an ASE SQLite db vs a JMP LMDB.

One run, same structures, same shuffled order, full records, warm page cache (each database is
read right after it is written):

(a) the store: ``Store(dir)[i]`` -> ``Record`` (numbers, positions, cell, pbc, tags, fixed, energy,
    the 12 targets, class, sid);
(b) an ASE SQLite db (``ase.db.connect``): ``db.get(id=k)`` then ``row.toatoms()``, the row's
    key-value pairs (energy U0, class, sid) and its ``data`` (the 12 targets);
(c) an LMDB in the OCP/JMP layout: keys ``b"0"..``, values ``pickle.dumps(torch_geometric Data)``
    with ``pos`` (N,3) float32, ``atomic_numbers`` (N,) float32, ``cell`` (1,3,3), ``natoms``,
    ``tags`` (=2, as JMP's fine-tuning writer), ``fixed``, ``y`` (U0, eV), ``sid`` and the 12
    targets packed in one (1,12) tensor (one tensor per target, as JMP's QM9 rows, is ~2x slower to
    unpickle; the packed form favours the LMDB). Opened as OCP's ``LmdbDataset`` does
    (``subdir=False, readonly, lock=False, readahead=False, meminit=False``), one ``begin()`` per read.

It also times ``atomsift prepare qm9`` (a fresh process, qm9pack CSV -> store; skipped with
``--store``) and the ``StoreWriter`` alone on the chosen structures (``add`` one by one and
``add_many`` in blocks of 8192). By default the three hold the same ``--n`` randomly chosen
structures and each is read once in one shuffled order. Building the LMDB and the ASE db is what
takes time (~1 ms per row each), so ``--rows M`` puts only M chosen structures in all three and
reads ``--n`` times in shuffled passes over them (the same sequence for every path). The reads run in ``--rounds`` interleaved segments (each path
on segment 1, then each on segment 2, ...), so a change of machine load during the run hits every
path alike; wall and CPU time are both reported.

    python bench/store_read.py                   # 100,000 reads, ~5 min on a quiet 2-core machine
    python bench/store_read.py --rows 20000      # 100,000 reads over 20,000 structures, ~2 min
    python bench/store_read.py --n 10000         # ~30 s
    python bench/store_read.py --store /tmp/qm9 --json results/bench_store_read.json

Goals (issue 2): store >= 5x the LMDB path and >= 20x the ASE db; prepare qm9 < 15 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _prepare(workdir: Path) -> tuple[Path, float, float]:
    """``atomsift prepare qm9`` in a fresh process: (store, wall s, CPU s of the child)."""
    out = workdir / "qm9"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "atomsift", "prepare", "qm9", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, wall, cpu


def _time(fn, label: str) -> float:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    print(f"  {label}: {dt:.2f} s", flush=True)
    return dt


def _write_ase_db(path: Path, recs) -> None:
    import ase.db
    from ase import Atoms

    db = ase.db.connect(str(path), type="db")
    with db:  # one transaction
        for r in recs:
            atoms = Atoms(numbers=r.numbers, positions=r.positions, cell=r.cell, pbc=r.pbc, tags=r.tags)
            db.write(atoms, key_value_pairs={"energy_u0": r.energy, "cls": r.cls, "sid": r.sid},
                     data={"targets": np.fromiter(r.targets.values(), dtype=np.float64)})


def _jmp_data(r):
    import torch
    from torch_geometric.data import Data

    n = r.natoms
    return Data(
        pos=torch.from_numpy(r.positions.astype(np.float32)),
        atomic_numbers=torch.from_numpy(r.numbers.astype(np.float32)),
        cell=torch.from_numpy(r.cell.astype(np.float32)).view(1, 3, 3),
        natoms=n,
        tags=torch.full((n,), 2, dtype=torch.long),
        fixed=torch.zeros(n, dtype=torch.bool),
        y=r.energy,
        sid=r.sid,
        targets=torch.tensor([list(r.targets.values())], dtype=torch.float32),  # (1, 12)
    )


def _write_lmdb(path: Path, recs) -> None:
    import lmdb

    env = lmdb.open(str(path), subdir=False, map_size=1 << 36, meminit=False, map_async=True)
    with env.begin(write=True) as txn:
        for k, r in enumerate(recs):
            txn.put(str(k).encode("ascii"), pickle.dumps(_jmp_data(r), protocol=-1))
        txn.put(b"length", pickle.dumps(len(recs), protocol=-1))
    env.sync()
    env.close()


def _read_store(store, idx):
    for i in idx.tolist():
        store[i]


def _read_ase_db(db, ids):
    for k in ids.tolist():
        row = db.get(id=k)
        row.toatoms()
        row.key_value_pairs
        row.data["targets"]


def _read_lmdb(env, keys):
    for k in keys.tolist():
        data = pickle.loads(env.begin().get(str(k).encode("ascii")))
        data.pos, data.atomic_numbers, data.y


def _timed_reads(paths: dict, order: np.ndarray, rounds: int) -> dict:
    """Wall and CPU seconds of each path over ``order``, read in ``rounds`` interleaved segments
    (path A, B, C on segment 1, then on segment 2, ...) so that a change in machine load during
    the run hits every path alike."""
    wall = {k: 0.0 for k in paths}
    cpu = {k: 0.0 for k in paths}
    for seg in np.array_split(order, rounds):
        for name, fn in paths.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn(seg)
            wall[name] += time.perf_counter() - t0
            cpu[name] += time.process_time() - c0
    for name in paths:
        print(f"  {name}: {wall[name]:.2f} s wall, {cpu[name]:.2f} s CPU", flush=True)
    return {"wall": wall, "cpu": cpu}


def _writer_throughput(workdir: Path, recs) -> dict:
    from atomsift.data.store import StoreWriter

    names = list(recs[0].targets)
    kw = dict(dataset="qm9", reader="bench", target_names=names, has_energy=True, has_sid=True)
    targets = np.array([list(r.targets.values()) for r in recs])
    t0 = time.perf_counter()
    with StoreWriter(workdir / "w_add", **kw) as w:
        for r, t in zip(recs, targets):
            w.add(r.numbers, r.positions, energy=r.energy, targets=t, cls=r.cls, sid=r.sid)
    t_add = time.perf_counter() - t0
    numbers = np.concatenate([r.numbers for r in recs])
    pos = np.concatenate([r.positions for r in recs])
    natoms = np.array([r.natoms for r in recs])
    off = np.concatenate([[0], np.cumsum(natoms)])
    energy = np.array([r.energy for r in recs])
    cls = [r.cls for r in recs]
    sid = np.array([r.sid for r in recs])
    t0 = time.perf_counter()
    with StoreWriter(workdir / "w_many", **kw) as w:
        for s in range(0, len(recs), 8192):
            e = min(s + 8192, len(recs))
            w.add_many(numbers[off[s]:off[e]], pos[off[s]:off[e]], natoms=natoms[s:e], energy=energy[s:e],
                       targets=targets[s:e], cls=cls[s:e], sid=sid[s:e])
    t_many = time.perf_counter() - t0
    return {"add_per_s": len(recs) / t_add, "add_many_per_s": len(recs) / t_many}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="structures read (default 100,000; at most 130,831)")
    ap.add_argument("--rows", type=int, default=None, help="structures in each database (default --n; reads cycle over them)")
    ap.add_argument("--store", type=Path, help="an existing QM9 store (skips timing prepare)")
    ap.add_argument("--rounds", type=int, default=10, help="interleaved segments of the read sequence (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, help="where the databases go (default: a temporary dir, removed)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)

    from atomsift.data.store import Store

    workdir = Path(tempfile.mkdtemp(prefix="store_read_", dir=args.workdir))
    res: dict = {"n": args.n, "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
    try:
        if args.store is None:
            print("atomsift prepare qm9 (fresh process) ...", flush=True)
            store_dir, wall, cpu = _prepare(workdir)
            res["prepare_qm9_wall_s"], res["prepare_qm9_cpu_s"] = wall, cpu
            print(f"  prepare qm9: {wall:.2f} s wall, {cpu:.2f} s CPU", flush=True)
        else:
            store_dir = args.store
        store = Store(store_dir)
        n = args.n
        rows = min(args.rows or n, n, len(store))
        rng = np.random.default_rng(args.seed)
        chosen = np.sort(rng.choice(len(store), rows, replace=False))  # row k of each database = chosen[k]
        order = np.concatenate([rng.permutation(rows) for _ in range(-(-n // rows))])[:n]  # reads, as rows
        recs = [store[int(i)] for i in chosen]
        res["rows"] = rows

        print(f"StoreWriter on {rows} structures ...", flush=True)
        res.update(_writer_throughput(workdir, recs))
        print(f"  add: {res['add_per_s']:,.0f}/s   add_many: {res['add_many_per_s']:,.0f}/s", flush=True)
        shutil.rmtree(workdir / "w_add"), shutil.rmtree(workdir / "w_many")

        print("writing the databases ...", flush=True)
        res["ase_db_write_s"] = _time(lambda: _write_ase_db(workdir / "qm9.db", recs), f"ASE db ({rows} rows)")
        res["lmdb_write_s"] = _time(lambda: _write_lmdb(workdir / "qm9.lmdb", recs), f"LMDB ({rows} rows)")
        del recs

        print(f"{n:,} shuffled random reads of {rows:,} structures ...", flush=True)
        import ase.db
        import lmdb

        db = ase.db.connect(str(workdir / "qm9.db"), type="db")
        env = lmdb.open(str(workdir / "qm9.lmdb"), subdir=False, readonly=True, lock=False, readahead=False,
                        meminit=False, max_readers=1)
        t = _timed_reads({
            "store": lambda seg: _read_store(store, chosen[seg]),
            "LMDB (pickled PyG Data)": lambda seg: _read_lmdb(env, seg),
            "ASE SQLite db": lambda seg: _read_ase_db(db, seg + 1),
        }, order, args.rounds)
        env.close()
        t_store, t_lmdb, t_ase = (t["wall"][k] for k in ("store", "LMDB (pickled PyG Data)", "ASE SQLite db"))
        c_store, c_lmdb, c_ase = (t["cpu"][k] for k in ("store", "LMDB (pickled PyG Data)", "ASE SQLite db"))
        res.update({
            "store_per_s": n / t_store, "lmdb_per_s": n / t_lmdb, "ase_db_per_s": n / t_ase,
            "store_over_lmdb": t_lmdb / t_store, "store_over_ase_db": t_ase / t_store,
            "cpu_store_per_s": n / c_store, "cpu_lmdb_per_s": n / c_lmdb, "cpu_ase_db_per_s": n / c_ase,
            "cpu_store_over_lmdb": c_lmdb / c_store, "cpu_store_over_ase_db": c_ase / c_store,
            "store_dir_mb": sum(p.stat().st_size for p in Path(store_dir).rglob("*") if p.is_file()) / 1e6,
            "lmdb_mb": (workdir / "qm9.lmdb").stat().st_size / 1e6,
            "ase_db_mb": (workdir / "qm9.db").stat().st_size / 1e6,
            "loadavg_end": os.getloadavg()[0],
        })
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(f"{'path':<28}{'structures/s':>14}{'store is':>10}{'per CPU s':>14}{'store is':>10}")
    print(f"{'atomsift store':<28}{res['store_per_s']:>14,.0f}{'':>10}{res['cpu_store_per_s']:>14,.0f}")
    print(f"{'LMDB of pickled PyG Data':<28}{res['lmdb_per_s']:>14,.0f}{res['store_over_lmdb']:>9.1f}x"
          f"{res['cpu_lmdb_per_s']:>14,.0f}{res['cpu_store_over_lmdb']:>9.1f}x   (goal >= 5x)")
    print(f"{'ASE SQLite db':<28}{res['ase_db_per_s']:>14,.0f}{res['store_over_ase_db']:>9.1f}x"
          f"{res['cpu_ase_db_per_s']:>14,.0f}{res['cpu_store_over_ase_db']:>9.1f}x   (goal >= 20x)")
    if "prepare_qm9_wall_s" in res:
        print(f"atomsift prepare qm9: {res['prepare_qm9_wall_s']:.1f} s wall, {res['prepare_qm9_cpu_s']:.1f} s CPU (goal < 15 s)")
    print(f"StoreWriter: add {res['add_per_s']:,.0f} structures/s, add_many {res['add_many_per_s']:,.0f} structures/s")
    print(f"sizes: store {res['store_dir_mb']:.0f} MB (all 130,831), LMDB {res['lmdb_mb']:.0f} MB, ASE db {res['ase_db_mb']:.0f} MB; "
          f"load average {res['loadavg_start']:.1f} -> {res['loadavg_end']:.1f} on {res['cpu_count']} cores")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
