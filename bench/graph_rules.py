"""What the invariant neighbour rule costs against JMP's (issue 13; docs/model.md "Neighbour rules").

On OC20-like cells (the oc20-mini analog: adsorbates on fcc(111)/(100) slabs, 12 Angstrom, k = 30,
periodic) and on rattled copies of the same slabs, prints per rule: edges of the main / a2ee2a /
qint graphs, the largest per-atom main degree, the GemNet-OC-tiny forward time (direct forces,
eval, one thread), and the ratio invariant / jmp, all measured in this run:

    python bench/graph_rules.py [--n 32] [--store DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32, help="structures (default 32)")
    ap.add_argument("--store", type=Path, help="an oc20-mini store (default: generate one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from atomsift.data.batch import collate
    from atomsift.data.graphs import GraphSettings, build_graphs
    from atomsift.data.store import Store
    from atomsift.models.heads import HeadSpec
    from atomsift.models.model import build_model

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            from atomsift.cli import main as cli

            store = Path(tmp) / "oc20-mini"
            cli(["generate", "oc20-mini", "--n", str(args.n), "--seed", "0", "--out", str(store)])
        st = Store(store)
        recs = [st[i] for i in range(min(args.n, len(st)))]
        model = build_model("tiny", {"e": HeadSpec("energy_direct_forces")}, seed=0).eval()
        rows = []
        for rule in ("jmp", "invariant"):
            s = GraphSettings(12.0, 30, True, rule=rule)
            n_main = n_ae = n_q = kmax = 0
            t = 0.0
            for r in recs:
                b = collate([r])
                g = build_graphs(b.pos, b.cell, b.pbc, b.natoms, b.tags, s)
                n_main += g.main.num_edges
                n_ae += g.a2ee2a.num_edges
                n_q += g.qint.num_edges
                kmax = max(kmax, int(torch.bincount(g.main.edge_index[1]).max()))
                t0 = time.process_time()
                with torch.no_grad():
                    model(b, "e", s)
                t += time.process_time() - t0
            rows.append((rule, n_main / len(recs), n_ae / len(recs), n_q / len(recs), kmax, t / len(recs)))
    print(f"{len(recs)} oc20-mini structures ({np.mean([r.natoms for r in recs]):.1f} atoms on average), 12 A, k = 30, periodic")
    print(f"{'rule':10s} {'main':>8s} {'a2ee2a':>8s} {'qint':>8s} {'max deg':>8s} {'CPU-s/fwd':>10s}")
    for rule, m, a, q, k, t in rows:
        print(f"{rule:10s} {m:8.1f} {a:8.1f} {q:8.1f} {k:8d} {t:10.4f}")
    (_, m0, a0, q0, _, t0), (_, m1, a1, q1, _, t1) = rows
    print(f"{'ratio':10s} {m1 / m0:8.3f} {a1 / a0:8.3f} {q1 / q0:8.3f} {'':8s} {t1 / t0:10.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
