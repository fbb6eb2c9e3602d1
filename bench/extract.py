"""Feature extraction for CSI: EquiformerV2 (31M, the paper's extractor) vs our GemNet-OC-S.

Both extractors run in eval mode without gradients on the same batches (weights are seeded: speed
does not depend on them): QM9 molecules (real, from the qm9pack wheel; JMP's QM9 graphs for
GemNet-OC, 12 A / 20 neighbours for EquiformerV2) and OC20-sized slabs (Pt(111) 4x4x4 + an
adsorbate, 66-68 atoms, periodic; OC20's S2EF structures have 73 atoms on average). Each
(extractor, data) cell runs in its own child process: peak resident memory (ru_maxrss) is per
cell; on a GPU the peak allocated memory is reported. Graph construction is included (it is part
of extraction). Then the time to stream the flat moments of 10,000 QM9-sized structures
(18 atoms each: 180,000 feature rows) at 3200-D (EquiformerV2) and at 256-D (GemNet-OC-S), from
random features (extraction excluded). Ratios are EquiformerV2 over GemNet-OC-S, same run.

    python bench/extract.py                          # CPU, 1 thread
    python bench/extract.py --device cuda --qm9-batches 20 --slab-batches 20
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time
from pathlib import Path

EXTRACTORS = {"eqv2-31m": "eqv2:random-31m-0", "gemnet-oc-s": "random-small-0"}


def _qm9_batches(args):
    import numpy as np

    from atomsift.data.batch import collate
    from atomsift.data.store import Store

    p = Path(args.qm9)
    if not (p / "manifest.json").exists():
        from atomsift.data.readers import qm9

        qm9.convert(None, p, limit=5000)
    st = Store(p)
    rng = np.random.default_rng(args.seed)
    n = args.qm9_batch_size * (args.qm9_batches + 1)
    idx = rng.choice(len(st), size=n, replace=False)
    return [collate([st.record(int(j)) for j in idx[i : i + args.qm9_batch_size]], dataset="qm9")
            for i in range(0, n, args.qm9_batch_size)]


def _slab_batches(args):
    import numpy as np
    from ase.build import add_adsorbate, fcc111, molecule

    from atomsift.data.batch import from_atoms

    rng = np.random.default_rng(args.seed)
    ads = ["CO", "OH", "CH3", "NH2", "H2O"]
    out = []
    for b in range(args.slab_batches + 1):
        atoms = []
        for i in range(args.slab_batch_size):
            slab = fcc111("Pt", size=(4, 4, 4), vacuum=7.0, periodic=True)
            slab.set_tags([1 if z > slab.positions[:, 2].max() - 3 else 0 for z in slab.positions[:, 2]])
            add_adsorbate(slab, molecule(ads[(b + i) % len(ads)]), 2.0, "fcc")
            slab.positions += rng.normal(scale=0.05, size=slab.positions.shape)
            atoms.append(slab)
        batch = from_atoms(atoms)
        batch.dataset = "oc20"
        out.append(batch)
    return out


def _run(cell: tuple[str, str], args, q) -> None:
    import torch

    from atomsift.models import load_extractor

    torch.set_num_threads(args.threads)
    name, data = cell
    dev = torch.device(args.device)
    batches = _qm9_batches(args) if data == "qm9" else _slab_batches(args)
    ex = load_extractor(EXTRACTORS[name])
    model = getattr(ex, "model")
    model.to(dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times, cpu, atoms, n_struct = [], [], 0, 0
    with torch.inference_mode():
        for i, b in enumerate(batches):
            b = b.to(dev)
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            f = ex(b)
            sync()
            if i == 0:  # warm-up
                continue
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            atoms += int(b.natoms.sum())
            n_struct += b.num_graphs
    mem = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put({"extractor": name, "data": data, "dim": int(f.shape[1]), "structures_per_s": n_struct / sum(times),
           "structures_per_cpu_s": n_struct / max(sum(cpu), 1e-9),
           "atoms_per_batch": atoms / len(times), "batch_s": sum(times) / len(times), "peak_mem_mib": mem,
           "parameters": sum(p.numel() for p in model.parameters())})


def _moments_time(dim: int, structures: int, atoms: int, seed: int) -> tuple[float, float]:
    """Seconds to stream ``structures`` x ``atoms`` rows of ``dim``-D float32 features (batches of
    32 structures) into float64 moments; feature generation excluded."""
    import numpy as np

    from atomsift.csi.moments import Accumulator

    rng = np.random.default_rng(seed)
    block = rng.standard_normal((32 * atoms, dim), dtype=np.float32)
    acc = Accumulator()
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(0, structures, 32):
        acc.add(block[: min(32, structures - s) * atoms])
    m = acc.result()
    assert m.n == structures * atoms
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qm9", default="/tmp/qm9-bench", help="QM9 store (5000 molecules from qm9pack if absent)")
    ap.add_argument("--qm9-batch-size", type=int, default=32)
    ap.add_argument("--qm9-batches", type=int, default=3)
    ap.add_argument("--slab-batch-size", type=int, default=4)
    ap.add_argument("--slab-batches", type=int, default=2)
    ap.add_argument("--moments-structures", type=int, default=10_000)
    ap.add_argument("--moments-atoms", type=int, default=18, help="atoms per structure (QM9: 18 on average)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    ctx = mp.get_context("spawn")
    rows = []
    for data in ("qm9", "slab"):
        for name in EXTRACTORS:
            q = ctx.Queue()
            p = ctx.Process(target=_run, args=((name, data), args, q))
            p.start()
            rows.append(q.get())
            p.join()
    moments = {d: _moments_time(d, args.moments_structures, args.moments_atoms, args.seed) for d in (3200, 256)}
    ratios = {}
    for data in ("qm9", "slab"):
        e, g = (next(r for r in rows if r["extractor"] == n and r["data"] == data) for n in EXTRACTORS)
        ratios[data] = {"throughput": e["structures_per_s"] / g["structures_per_s"],
                        "throughput_per_cpu_s": e["structures_per_cpu_s"] / g["structures_per_cpu_s"],
                        "peak_mem": e["peak_mem_mib"] / g["peak_mem_mib"]}
    result = {"device": args.device, "threads": args.threads, "cells": rows, "moments_s": moments,
              "moments_rows": args.moments_structures * args.moments_atoms, "ratios_eqv2_over_gemnet": ratios}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"device {args.device}, {args.threads} thread(s); batches: QM9 {args.qm9_batch_size} molecules, slabs {args.slab_batch_size}")
    print(f"{'extractor':<13} {'data':<5} {'dim':>5} {'struct/s':>9} {'per CPU-s':>9} {'atoms/batch':>11} {'s/batch':>8} {'peak MiB':>9}")
    for r in rows:
        print(f"{r['extractor']:<13} {r['data']:<5} {r['dim']:>5} {r['structures_per_s']:>9.2f} {r['structures_per_cpu_s']:>9.2f} "
              f"{r['atoms_per_batch']:>11.0f} {r['batch_s']:>8.2f} {r['peak_mem_mib']:>9.0f}")
    for data, r in ratios.items():
        print(f"EquiformerV2 / GemNet-OC-S on {data}: throughput x{r['throughput']:.3f} (per CPU-s x{r['throughput_per_cpu_s']:.3f}), "
              f"peak memory x{r['peak_mem']:.2f}")
    (w32, c32), (w2, c2) = moments[3200], moments[256]
    print(f"moments of {args.moments_structures} structures x {args.moments_atoms} atoms: 3200-D {w32:.1f} s ({c32:.1f} CPU-s), "
          f"256-D {w2:.2f} s ({c2:.2f} CPU-s); x{c32 / c2:.0f} in CPU time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
