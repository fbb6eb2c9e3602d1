"""Benchmark: bias, variance and interval coverage of CSI estimators (docs/csi.md, "Error bars").

Synthetic part (``--synthetic``): per-atom features of "structures" (3-28 atoms, a shared
structure-level latent plus per-atom noise, d = 64 as the tiny extractor) from two populations
whose Fréchet distance is known exactly; repeated samples of N_U and N_D structures, dealt into K
blocks as ``atomsift moments`` does. Estimators compared on the same samples:

* ``plain``: the plug-in Fréchet distance of the full samples (the paper's number);
* ``jackknife``: atomsift's estimator (``atomsift.csi.estimate``), delete-a-block jackknife bias
  correction, t interval from the jackknife variance;
* ``fid_inf``: FID-infinity (Chong and Forsyth 2020): the distance of random subsets of 1/2, 5/8,
  3/4, 7/8 and all of the blocks (8 subsets each), a linear fit in 1/N, the intercept;
* ``bootstrap``: blocks resampled with replacement (B = 200), bias-corrected value 2 x plain -
  mean, basic interval [2 x plain - q97.5, 2 x plain - q2.5].

Real part (``--real``): features of the untrained tiny GemNet-OC (``random-tiny-0``) on stores
(e.g. the mini-universe's ani1x, transition1x and rmd17 analogs), every train structure
extracted once; the reference is the corrected CSI of all of them; repeated random subsamples of
``--sizes`` structures per side give the estimators' bias against it and the coverage of their
intervals.

Cost (``--cost``): one ``estimate`` at d = 256, 1024 (and 3200 with ``--big``), K = 10 and 20.

    OMP_NUM_THREADS=1 python bench/csi_error.py --synthetic --reps 200
    OMP_NUM_THREADS=1 python bench/csi_error.py --real --upstream ani1x=results/data/ani1x \\
        --upstream transition1x=results/data/transition1x --downstream rmd17=results/data/rmd17
    OMP_NUM_THREADS=1 python bench/csi_error.py --cost
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
from scipy import stats

from atomsift.csi.estimate import estimate
from atomsift.csi.frechet import frechet_distance
from atomsift.csi.moments import Accumulator, Moments, assign_blocks


# ------------------------------------------------------------------------------- other estimators


def _fd(a: Moments, b: Moments) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def fid_infinity(u: Moments, d: Moments, rng, fractions=(0.5, 0.625, 0.75, 0.875, 1.0), repeats: int = 8) -> float:
    """FID-infinity from block subsets: the intercept of a linear fit of the distance against 1/f."""
    ub, db = u.blocks.nonempty(), d.blocks.nonempty()
    xs, ys = [], []
    for f in fractions:
        for _ in range(1 if f == 1.0 else repeats):
            cu, cd = np.zeros(ub.k), np.zeros(db.k)
            cu[rng.choice(ub.k, max(2, round(f * ub.k)), replace=False)] = 1
            cd[rng.choice(db.k, max(2, round(f * db.k)), replace=False)] = 1
            xs.append(1.0 / f)
            ys.append(_fd(ub.merged(cu), db.merged(cd)))
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(intercept)


def bootstrap(u: Moments, d: Moments, rng, b: int = 200, level: float = 0.95) -> tuple[float, float, float]:
    """Block bootstrap: bias-corrected value and basic interval."""
    ub, db = u.blocks.nonempty(), d.blocks.nonempty()
    plain = _fd(ub.merged(), db.merged())
    reps = np.empty(b)
    for i in range(b):
        cu = np.bincount(rng.integers(0, ub.k, ub.k), minlength=ub.k).astype(float)
        cd = np.bincount(rng.integers(0, db.k, db.k), minlength=db.k).astype(float)
        reps[i] = _fd(ub.merged(cu), db.merged(cd))
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return 2 * plain - reps.mean(), 2 * plain - hi, 2 * plain - lo


# ------------------------------------------------------------------------------------- synthetic


def population(d: int, rng, shift: float, eps: float, base=None):
    if base is None:
        a = rng.normal(size=(d, d // 4)) * 0.5
        b = np.diag(np.exp(-np.arange(d) / 16))
        mu = rng.normal(size=d) * shift
        return mu, a, b
    mu, a, b = base
    return mu + eps * 0.3 * rng.normal(size=d), a + eps * 0.5 * rng.normal(size=a.shape), b * (1 + eps)


def sample(pop, n_struct: int, k: int, rng) -> Moments:
    mu, a, b = pop
    ids = assign_blocks(np.arange(n_struct), k, int(rng.integers(1 << 30)))
    acc = Accumulator(blocks=k)
    for s in range(n_struct):
        m = int(rng.integers(3, 29))
        acc.add(mu + a @ rng.normal(size=a.shape[1]) + rng.normal(size=(m, mu.size)) @ b.T, np.full(m, ids[s]))
    return acc.result()


def summarise(truth: float, rows: list[dict]) -> dict:
    out = {"truth": truth}
    for key in ("plain", "jackknife", "fid_inf", "bootstrap"):
        v = np.array([r[key] for r in rows if key in r])
        if v.size:
            out[key] = {"bias": float(v.mean() - truth), "rel_bias_pct": float(100 * (v.mean() - truth) / truth),
                        "sd": float(v.std(ddof=1)), "rmse": float(np.sqrt(((v - truth) ** 2).mean()))}
    for key in ("jackknife_ci", "bootstrap_ci"):
        iv = [r[key] for r in rows if key in r]
        if iv:
            out[key] = {"coverage": float(np.mean([lo <= truth <= hi for lo, hi in iv])),
                        "mean_width": float(np.mean([hi - lo for lo, hi in iv]))}
    out["reps"] = len(rows)
    return out


def synthetic(args) -> list[dict]:
    results = []
    for n_up, n_down, k, eps in ((200, 200, 20, 0.05), (200, 200, 20, 0.3), (200, 200, 20, 1.0), (200, 50, 20, 0.3),
                                 (200, 50, 20, 1.0), (200, 200, 10, 0.3)):
        rng0 = np.random.default_rng(0)
        pu = population(args.dim, rng0, 0.1, 0.0)
        pd = population(args.dim, rng0, 0.1, eps, base=pu)
        cov = lambda p: p[1] @ p[1].T + p[2] @ p[2].T  # noqa: E731
        truth = frechet_distance(pu[0], cov(pu), pd[0], cov(pd))
        rows = []
        t0 = time.process_time()
        for rep in range(args.reps):
            rng = np.random.default_rng(10_000 + rep)
            u, d = sample(pu, n_up, k, rng), sample(pd, n_down, k, rng)
            e = estimate(u, d)
            row = {"plain": e.value, "jackknife": e.corrected, "jackknife_ci": (e.low, e.high)}
            if rep < args.costly_reps:
                row["fid_inf"] = fid_infinity(u, d, rng)
                bc, lo, hi = bootstrap(u, d, rng)
                row["bootstrap"], row["bootstrap_ci"] = bc, (lo, hi)
            rows.append(row)
        res = {"n_up": n_up, "n_down": n_down, "blocks": k, "eps": eps, "dim": args.dim, **summarise(truth, rows),
               "cpu_s": round(time.process_time() - t0, 1)}
        print(json.dumps(res), flush=True)
        results.append(res)
    return results


# ------------------------------------------------------------------------------------------ real


def structure_features(store_dir: str, spec: str, limit: int) -> list[np.ndarray]:
    import torch

    from atomsift.csi.moments import store_batches
    from atomsift.data.store import Store
    from atomsift.models import load_extractor

    store = Store(store_dir)
    idx = store.split("train") if "train" in store.split_names() else np.arange(len(store))
    idx = idx[:limit]
    ex = load_extractor(spec)
    out = []
    with torch.inference_mode():
        for batch in store_batches(store, idx, 32):
            f = ex(batch).double().numpy()
            b = batch.batch.numpy()
            out += [f[b == i] for i in range(batch.num_graphs)]
    return out


def moments_of(feats: list[np.ndarray], pick: np.ndarray, k: int, seed: int) -> Moments:
    ids = assign_blocks(pick, k, seed)
    acc = Accumulator(blocks=k)
    for s, blk in zip(pick, ids):
        acc.add(feats[s], np.full(feats[s].shape[0], blk))
    return acc.result()


def real(args) -> list[dict]:
    named = lambda items: [tuple(x.split("=", 1)) for x in items]  # noqa: E731
    feats = {name: structure_features(path, args.extractor, args.limit) for name, path in named(args.upstream + args.downstream)}
    results = []
    for dname, _ in named(args.downstream):
        for uname, _ in named(args.upstream):
            fu, fd = feats[uname], feats[dname]
            ref = estimate(moments_of(fu, np.arange(len(fu)), 20, 0), moments_of(fd, np.arange(len(fd)), 20, 0))
            for n in args.sizes:
                rows = []
                for rep in range(args.reps):
                    rng = np.random.default_rng(20_000 + rep)
                    pu = rng.choice(len(fu), min(n, len(fu)), replace=False)
                    pdn = rng.choice(len(fd), min(n, len(fd)), replace=False)
                    u, d = moments_of(fu, pu, 20, rep), moments_of(fd, pdn, 20, rep)
                    e = estimate(u, d)
                    rows.append({"plain": e.value, "jackknife": e.corrected, "jackknife_ci": (e.low, e.high)})
                res = {"upstream": uname, "downstream": dname, "n": n, "all_up": len(fu), "all_down": len(fd),
                       "reference": {"plain": ref.value, "corrected": ref.corrected, "interval": [ref.low, ref.high]},
                       **summarise(ref.corrected, rows)}
                print(json.dumps(res), flush=True)
                results.append(res)
    return results


# ------------------------------------------------------------------------------------------ cost


def cost(args) -> list[dict]:
    out = []
    dims = [256, 1024] + ([3200] if args.big else [])
    for dim in dims:
        for k in (10, 20):
            rng = np.random.default_rng(0)
            n = max(4 * dim, 2000)

            def blocks():
                x = rng.normal(size=(n, dim)) @ (rng.normal(size=(dim, dim)) / math.sqrt(dim))
                acc = Accumulator(blocks=k)
                acc.add(x, np.arange(n) % k)
                return acc.result()

            u, d = blocks(), blocks()
            t0 = time.process_time()
            estimate(u, d)
            cpu = time.process_time() - t0
            t0 = time.process_time()
            frechet_distance(u.mean, u.cov, d.mean, d.cov)
            one = time.process_time() - t0
            res = {"dim": dim, "blocks": k, "estimate_cpu_s": round(cpu, 3), "one_distance_cpu_s": round(one, 3),
                   "ratio": round(cpu / max(one, 1e-9), 1)}
            print(json.dumps(res), flush=True)
            out.append(res)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--synthetic", action="store_true")
    p.add_argument("--real", action="store_true")
    p.add_argument("--cost", action="store_true")
    p.add_argument("--big", action="store_true", help="--cost also at d = 3200 (minutes)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--costly-reps", type=int, default=100, help="repetitions that also run FID-infinity and the bootstrap")
    p.add_argument("--upstream", action="append", default=[], metavar="NAME=STORE")
    p.add_argument("--downstream", action="append", default=[], metavar="NAME=STORE")
    p.add_argument("--extractor", default="random-tiny-0")
    p.add_argument("--limit", type=int, default=2000, help="structures per store extracted for --real")
    p.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200])
    p.add_argument("--out", help="write all results as JSON here")
    args = p.parse_args()
    res = {}
    if args.synthetic:
        res["synthetic"] = synthetic(args)
    if args.real:
        res["real"] = real(args)
    if args.cost:
        res["cost"] = cost(args)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
