"""Wall time of the embedded grid (run by hand): cold, then warm, and the paper grid's dry run.

    python bench/workflow.py --cores 2 --out /tmp/grid-bench [--configfile workflow/configs/ci.yaml]

The workflow is linked into a scratch directory (``--out``; its results/ are deleted first), so
the checkout's results/ are untouched. Reported (JSON on stdout): wall seconds of the cold run
(data generation included) and of a second run with nothing changed, the number of jobs per rule,
the summed wall time per rule from Snakemake's benchmark files, and the paper dry run's wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, cwd) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t0, res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="scratch working directory")
    ap.add_argument("--cores", default="2")
    ap.add_argument("--configfile", help="another grid instead of config.yaml")
    ap.add_argument("--keep", action="store_true", help="keep results/ from a previous run (measure a resumed run)")
    args = ap.parse_args()
    snakemake = str(Path(sys.executable).parent / "snakemake")
    wd = Path(args.out)
    wd.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "envs", "profiles", "config.yaml"):
        if not (wd / name).exists():
            (wd / name).symlink_to(ROOT / name)
    if not args.keep:
        shutil.rmtree(wd / "results", ignore_errors=True)
        shutil.rmtree(wd / ".snakemake", ignore_errors=True)
    extra = ["--configfile", args.configfile] if args.configfile else []
    env_note = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "load": os.getloadavg()}
    cold, res = run([snakemake, "--cores", args.cores, *extra], wd)
    if res.returncode != 0:
        print(res.stdout[-4000:], res.stderr[-4000:], file=sys.stderr)
        return 1
    warm, res2 = run([snakemake, "--cores", args.cores, *extra], wd)
    per_rule: dict[str, list[float]] = defaultdict(list)
    for tsv in (wd / "results/benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(wd / "results/benchmarks").parts[0]
        with tsv.open() as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                per_rule[rule].append(float(row["s"]))
    dry, res3 = run([snakemake, "-n", "--configfile", "workflow/configs/paper.yaml"], wd)
    print(json.dumps({
        "cold_s": round(cold, 1),
        "warm_s": round(warm, 1),
        "warm_nothing_to_do": "Nothing to be done" in res2.stdout + res2.stderr,
        "paper_dry_run_s": round(dry, 2),
        "jobs_and_seconds_per_rule": {r: {"jobs": len(v), "sum_s": round(sum(v), 1), "max_s": round(max(v), 1)}
                                      for r, v in sorted(per_rule.items())},
        "environment": env_note,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
