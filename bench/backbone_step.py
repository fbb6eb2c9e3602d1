"""Training-step throughput: GemNet-OC (tiny, small) vs torch-geometric's DimeNet++ on QM9.

Every model runs forward + backward with forces on the same batches of 32 QM9 molecules; forces
are -dE/dx by autograd (create_graph, as in training) unless the row says "direct" (GemNet-OC's
direct-force head, JMP's pretraining mode). Graph construction (radius graph + every interaction
index) is timed separately from the step; the step time excludes it (graphs are rebuilt inside the
step, so its time is subtracted from the step time in the "model only" column).

Each model runs in its own child process, so the peak resident memory (CPU) is per model; on a
GPU the peak allocated memory is reported. DimeNet++ gets the same pure-torch radius graph
(monkeypatched, torch_cluster / torch_sparse are not installed) at the same cutoff.

    python bench/backbone_step.py                      # CPU, 1 thread, DimeNet++ h64, tiny (grad / direct)
    python bench/backbone_step.py --device cuda --models tiny,small,large,dimenet
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path


def _qm9_store(path: str):
    from atomsift.data.store import Store

    p = Path(path)
    if not (p / "manifest.json").exists():
        from atomsift.data.readers import qm9

        qm9.convert(None, p)
    return Store(p)


def _batches(args):
    import numpy as np

    from atomsift.data.batch import collate

    st = _qm9_store(args.qm9)
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(st), size=args.batch_size * (args.steps + args.warmup), replace=False)
    out = []
    for i in range(args.steps + args.warmup):
        recs = [st[int(j)] for j in idx[i * args.batch_size : (i + 1) * args.batch_size]]
        out.append(collate(recs, dataset="qm9"))
    return out


def _dimenet_patch():
    """Pure-torch radius graph and triplets for torch_geometric's DimeNet++."""
    import torch
    import torch_geometric.nn.models.dimenet as dn

    from atomsift.data.graphs import Graph, mixed_triplets, radius_graph

    def radius(pos, r, batch=None, max_num_neighbors=32, **_):
        B = int(batch.max()) + 1 if batch is not None and batch.numel() else 1
        natoms = torch.bincount(batch, minlength=B) if batch is not None else torch.tensor([pos.shape[0]])
        cell = torch.zeros(B, 3, 3, dtype=pos.dtype, device=pos.device)
        pbc = torch.zeros(B, 3, dtype=torch.bool, device=pos.device)
        return radius_graph(pos, cell, pbc, natoms.to(pos.device), float(r), int(max_num_neighbors)).edge_index

    def triplets(edge_index, num_nodes):
        row, col = edge_index  # j -> i
        E = row.numel()
        g = Graph(edge_index, torch.zeros(E, 3, dtype=torch.long, device=row.device), torch.zeros(E), torch.zeros(1))
        t = mixed_triplets(g, g, num_nodes, to_outedge=True)  # in: k->j, out: j->i, k != i
        idx_i, idx_j, idx_k = col[t.out], row[t.out], row[t.in_]
        return col, row, idx_i, idx_j, idx_k, t.in_, t.out

    dn.radius_graph = radius
    dn.triplets = triplets


def _run(name: str, args, q) -> None:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    batches = [b.to(dev) for b in _batches(args)]
    from atomsift.data.graphs import batch_graphs, graph_settings
    from atomsift.models import build_model
    from atomsift.models.heads import HeadSpec

    settings = graph_settings("qm9")
    if args.cutoff:
        from dataclasses import replace

        settings = replace(settings, cutoff=args.cutoff)
    direct = name.endswith("-direct")
    size = name.split("-")[0]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if size == "dimenet":
        _dimenet_patch()
        from torch_geometric.nn.models import DimeNetPlusPlus

        h = args.dimenet_hidden
        model = DimeNetPlusPlus(
            hidden_channels=h, out_channels=1, num_blocks=4, int_emb_size=h // 2, basis_emb_size=8, out_emb_channels=2 * h,
            num_spherical=7, num_radial=6, cutoff=settings.cutoff, max_num_neighbors=settings.max_neighbors,
        ).to(dev)

        def step(b):
            pos = b.pos.detach().requires_grad_(True)
            e = model(b.numbers, pos, b.batch).squeeze(-1)
            (f,) = torch.autograd.grad(-e.sum(), pos, create_graph=True)
            return e, f

        def graph(b):
            from torch_geometric.nn.models import dimenet as dn

            ei = dn.radius_graph(b.pos, r=model.cutoff, batch=b.batch, max_num_neighbors=model.max_num_neighbors)
            dn.triplets(ei, b.pos.shape[0])
    else:
        head = HeadSpec("energy_direct_forces" if direct else "energy_grad_forces")
        model = build_model(size, {"h": head}, direct_forces_backbone=direct, seed=0).to(dev)

        def step(b):
            out = model(b, "h", settings)
            return out["energy"], out["forces"]

        def graph(b):
            batch_graphs(b, settings)

    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-9)
    n_params = sum(p.numel() for p in model.parameters())
    times, gtimes, ctimes = [], [], []
    for i, b in enumerate(batches):
        sync()
        c0 = time.process_time()
        t0 = time.perf_counter()
        graph(b)
        sync()
        t1 = time.perf_counter()
        e, f = step(b)
        loss = e.square().mean() + f.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        t2 = time.perf_counter()
        c2 = time.process_time()
        if i >= args.warmup:
            gtimes.append(t1 - t0)
            times.append(t2 - t1)
            ctimes.append(c2 - c0 - (t1 - t0))
    if dev.type == "cuda":
        mem = torch.cuda.max_memory_allocated() / 2**20
    else:
        mem = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_struct = args.batch_size * len(times)
    q.put(
        {
            "model": name if size != "dimenet" else f"dimenet++ h{args.dimenet_hidden}",
            "parameters": n_params,
            "samples_per_s": n_struct / sum(times),
            "samples_per_cpu_s": n_struct / max(sum(ctimes), 1e-9),
            "step_ms": 1000 * sum(times) / len(times),
            "graph_ms": 1000 * sum(gtimes) / len(gtimes),
            "graph_share_of_step": sum(gtimes) / sum(times),
            "peak_mem_mib": mem,
            "atoms_per_batch": float(sum(int(b.natoms.sum()) for b in batches[args.warmup :]) / len(times)),
        }
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qm9", default="/tmp/qm9", help="QM9 store (built from qm9pack if absent)")
    ap.add_argument(
        "--models",
        default="dimenet,tiny,tiny-direct",
        help="comma list of tiny / small / large [-direct] and dimenet. On CPU, small needs ~17 GB RSS "
        "(direct forces) and >21 GB (gradient forces) for batches of 32: run those on a GPU",
    )
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dimenet-hidden", type=int, default=64, help="DimeNet++ width (tiny GemNet-OC: 64)")
    ap.add_argument("--cutoff", type=float, default=None, help="graph cutoff of every model (default: JMP's QM9 graph, 8 A, k=30)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        q = ctx.Queue()
        p = ctx.Process(target=_run, args=(name, args, q))
        p.start()
        row = q.get()
        p.join()
        rows.append(row)
        if not args.json:
            print(
                f"{row['model']:16s} params {row['parameters']:>11,d}  {row['samples_per_s']:8.1f} samples/s "
                f"({row['samples_per_cpu_s']:.1f} per CPU-s)  "
                f"step {row['step_ms']:8.1f} ms  graph {row['graph_ms']:6.1f} ms ({100 * row['graph_share_of_step']:.0f}% of step)  "
                f"peak {row['peak_mem_mib']:7.0f} MiB",
                flush=True,
            )
    ref = next((r for r in rows if r["model"].startswith("dimenet")), None)
    if ref:
        for r in rows:
            r["throughput_vs_dimenet"] = r["samples_per_s"] / ref["samples_per_s"]
            r["cpu_throughput_vs_dimenet"] = r["samples_per_cpu_s"] / ref["samples_per_cpu_s"]
            r["memory_vs_dimenet"] = r["peak_mem_mib"] / ref["peak_mem_mib"]
        if not args.json:
            print("ratios vs " + ref["model"] + ": " + ", ".join(
                f"{r['model']} {r['throughput_vs_dimenet']:.2f}x speed ({r['cpu_throughput_vs_dimenet']:.2f}x per CPU-s) {r['memory_vs_dimenet']:.2f}x mem" for r in rows))
    if args.json:
        json.dump({"settings": vars(args), "rows": rows}, sys.stdout, indent=2)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
