"""Time every mini-universe generator at its embedded default size (run by hand).

    python bench/generate.py --out /tmp/mini-bench [--workers 2] [--only oc20-mini,oc22-mini]

Each generator runs as its own ``atomsift generate`` process (so start-up is included, as in the
DAG). Reported per generator: wall seconds, CPU seconds of the process tree (user + system of the
process and its reaped workers; on a busy machine wall time overstates what an idle 2-core
machine needs, CPU time does not), structures, atoms, and the force RMS over free atoms.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", help="comma-separated generator names")
    ap.add_argument("--qm9", help="QM9 store for ani1x-mini / transition1x-mini (default: qm9pack)")
    args = ap.parse_args()

    import numpy as np

    from atomsift.data.mini import DEFAULT_SIZES
    from atomsift.data.store import Store

    names = args.only.split(",") if args.only else list(DEFAULT_SIZES)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        cmd = [sys.executable, "-m", "atomsift", "generate", name, "--out", str(out / name), "--workers", str(args.workers)]
        if args.qm9 and name in ("ani1x-mini", "transition1x-mini"):
            cmd += ["--qm9", args.qm9]
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        st = Store(out / name)
        f = np.asarray(st.array("forces"))
        free = ~np.asarray(st.array("fixed"))
        row = {"generator": name, "n": len(st), "atoms": int(st.natoms.sum()), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
               "force_rms_eV_A": round(float(np.sqrt(np.mean(f[free] ** 2))), 3),
               "redrawn": st.manifest["provenance"]["skips"]["redrawn_total"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    tot_wall = sum(r["wall_s"] for r in rows)
    tot_cpu = sum(r["cpu_s"] for r in rows)
    print(f"total: wall {tot_wall:.1f} s, CPU {tot_cpu:.1f} s (CPU / {args.workers} = {tot_cpu / args.workers:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
