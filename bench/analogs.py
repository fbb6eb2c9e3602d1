"""Benchmark: the mini-universe analogs beside the real datasets (docs/mini-universe.md).

Generates every analog at the embedded grid's sizes (config.yaml ``datasets``; ``--sizes`` to
override), one generator at a time with ``--workers`` processes, and prints per analog the CPU
seconds of the process tree and each statistic of ``atomsift.data.mini.reference`` beside the real
dataset's value (force RMS over free atoms, atoms per structure, element fractions), with the
ratio and whether it is within +-30%. ``--stores DIR`` measures existing stores instead
(DIR/<dataset>, e.g. results/data after a DAG run).

    OMP_NUM_THREADS=1 python bench/analogs.py --out /tmp/analogs --workers 1
    python bench/analogs.py --stores results/data
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import yaml

from atomsift.data.mini.reference import compare, statistics

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="directory for the generated stores")
    p.add_argument("--stores", help="measure existing stores DIR/<dataset> instead of generating")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sizes", type=json.loads, help='JSON {"oc22-mini": 100, ...} (default: config.yaml)')
    args = p.parse_args()
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    analogs = {d: s for d, s in config["datasets"].items() if "generate" in s}
    sizes = {s["generate"]: int(s["n"]) for s in analogs.values()} | (args.sizes or {})
    total = 0.0
    for dataset, spec in analogs.items():
        name = spec["generate"]
        if args.stores:
            path, cpu = Path(args.stores) / dataset, None
        else:
            from atomsift.data.mini import generate

            path = Path(args.out) / dataset
            t0 = cpu_seconds()
            generate(name, path, n=sizes[name], seed=args.seed, workers=args.workers)
            cpu = cpu_seconds() - t0
            total += cpu
        stats = statistics(path)
        print(json.dumps({"analog": name, "n": stats["structures"], "cpu_s": None if cpu is None else round(cpu, 1),
                          "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "source"}
                                   for r in compare(stats)]}), flush=True)
    if not args.stores:
        print(json.dumps({"total_cpu_s": round(total, 1), "workers": args.workers, "time": time.strftime("%Y-%m-%d %H:%M")}))


if __name__ == "__main__":
    main()
