"""Benchmark: streaming moments + symmetric-eigen Fréchet distance vs the official CSI path.

Both paths see the same features: two datasets (an "upstream" and a "downstream") of S structures
x A atoms x d float32 per-atom features, generated structure by structure from a seed (element
embeddings + a low-rank latent + noise, the downstream shifted), standing in for extractor output.

* official: keep every structure's feature matrix (the extraction's list of ``node_features``),
  dump it to disk and load it back (compute_csi.py reloads the .pt feature files), concatenate,
  ``np.cov(rowvar=False)``, ``scipy.linalg.sqrtm(S1 @ S2)`` (PAPER.md §2.7).
* ours: stream the same structures in batches into float64 moments (atomsift.csi.moments), save
  and reload the small moments files, ``atomsift.csi.frechet.frechet_distance``.

Each path runs in a fresh subprocess; reported: wall time, peak traced memory (tracemalloc: numpy
buffers) and the increase of peak RSS over the interpreter with numpy/scipy loaded. Feature
generation is identical in both and timed separately (``gen_s``), so ``stats_s = wall_s - gen_s``.
Then the distance alone at d = 3200 (EquiformerV2's width), ours and (optionally) scipy's.

    python bench/csi.py                    # 10,000 x 20 x 256, plus the d = 3200 distance
    python bench/csi.py --structures 2000 --no-big
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np


CHUNK = 32  # structures generated per call (an extractor batch)
_CONST: dict = {}


def features(dataset: int, c: int, atoms: int, dim: int, chunk: int = CHUNK) -> np.ndarray:
    """Per-atom float32 features of structures c*chunk ... (c+1)*chunk-1 of a dataset, stacked
    (chunk*atoms, dim): element embeddings + a rank-32 latent + noise; deterministic per chunk."""
    key = (dim,)
    if key not in _CONST:
        g = np.random.default_rng(1234)
        _CONST[key] = (g.normal(size=(6, dim)).astype(np.float32), (g.normal(size=(32, dim)) / np.sqrt(32)).astype(np.float32))
    emb, basis = _CONST[key]
    r = np.random.default_rng((dataset, c))
    m = chunk * atoms
    p = [0.4, 0.3, 0.1, 0.1, 0.05, 0.05] if dataset == 0 else [0.5, 0.35, 0.08, 0.05, 0.01, 0.01]
    el = r.choice(6, size=m, p=p)
    z = r.standard_normal((m, 32), dtype=np.float32) * np.float32(1.0 + 0.3 * dataset)
    return emb[el] + z @ basis + np.float32(0.1) * r.standard_normal((m, dim), dtype=np.float32)


def _chunks(args):
    n_chunks = -(-args.structures // CHUNK)
    for c in range(n_chunks):
        yield c, min(CHUNK, args.structures - c * CHUNK)


def run_official(args, tmp: str) -> dict:
    from atomsift.csi.frechet import official_csi

    gen = 0.0
    stats = []
    for ds in (0, 1):
        feats = []
        for c, k in _chunks(args):
            t = time.perf_counter()
            f = features(ds, c, args.atoms, args.dim)[: k * args.atoms]
            gen += time.perf_counter() - t
            # one dict per structure with its own node-feature matrix, as the extraction writes
            feats += [{"node_features": a.copy()} for a in np.split(f, k)]
        path = os.path.join(tmp, f"feat{ds}.pkl")
        with open(path, "wb") as fh:
            pickle.dump(feats, fh, protocol=4)
        del feats
        with open(path, "rb") as fh:
            feats = pickle.load(fh)
        x = np.concatenate([f["node_features"] for f in feats], axis=0)
        del feats
        stats.append((np.mean(x, axis=0), np.cov(x, rowvar=False)))
        del x
    value = official_csi(stats[0][0], stats[0][1], stats[1][0], stats[1][1])  # scipy.linalg.sqrtm(S1 @ S2)
    return {"csi": value, "gen_s": gen}


def run_ours(args, tmp: str) -> dict:
    from atomsift.csi.frechet import frechet_distance
    from atomsift.csi.moments import Accumulator, load_moments, save_moments

    gen = 0.0
    paths = []
    for ds in (0, 1):
        acc = Accumulator()
        for c, k in _chunks(args):
            t = time.perf_counter()
            f = features(ds, c, args.atoms, args.dim)[: k * args.atoms]
            gen += time.perf_counter() - t
            acc.add(f)
        paths.append(save_moments(os.path.join(tmp, f"m{ds}.npz"), acc.result(), {"dataset": str(ds)}))
    (a, _), (b, _) = load_moments(paths[0]), load_moments(paths[1])
    value = frechet_distance(a.mean, a.cov, b.mean, b.cov)
    return {"csi": value, "gen_s": gen}


def child(args) -> None:
    import scipy.linalg  # noqa: F401  (loaded before the RSS baseline)

    import atomsift.csi.frechet  # noqa: F401
    import atomsift.csi.moments  # noqa: F401

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        tracemalloc.start()
        t0 = time.perf_counter()
        res = (run_official if args.path == "official" else run_ours)(args, tmp)
        res["wall_s"] = time.perf_counter() - t0
        res["peak_traced_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    res["peak_rss_increase_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    res["stats_s"] = res["wall_s"] - res["gen_s"]
    print(json.dumps(res))


def big_distance(d: int, official: bool) -> dict:
    from atomsift.csi.frechet import frechet_distance, official_csi

    g = np.random.default_rng(0)
    n = d + d // 2
    x = g.standard_normal((n, d)) @ (np.eye(d) + 0.2 * g.standard_normal((d, d)) / np.sqrt(d))
    s1 = np.cov(x, rowvar=False)
    s2 = np.cov(x[:, ::-1] * 1.1 + 0.05 * g.standard_normal((n, d)), rowvar=False)
    mu1, mu2 = np.zeros(d), np.full(d, 0.01)
    t, c = time.perf_counter(), time.process_time()
    ours = frechet_distance(mu1, s1, mu2, s2)
    # CPU seconds too: on a shared machine they show what the wall time would be without contention
    out = {"d": d, "ours_s": time.perf_counter() - t, "ours_cpu_s": time.process_time() - c, "ours_csi": ours}
    if official:
        t, c = time.perf_counter(), time.process_time()
        out["official_csi"] = official_csi(mu1, s1, mu2, s2)
        out["official_s"] = time.perf_counter() - t
        out["official_cpu_s"] = time.process_time() - c
        out["rel_diff"] = abs(ours - out["official_csi"]) / abs(out["official_csi"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--structures", type=int, default=10_000)
    ap.add_argument("--atoms", type=int, default=20)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--big-dim", type=int, default=3200)
    ap.add_argument("--no-big", action="store_true", help="skip the d = 3200 distance timing")
    ap.add_argument("--no-big-official", action="store_true", help="time only our distance at --big-dim")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each path (the fastest is reported)")
    ap.add_argument("--path", choices=("official", "ours"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.path:
        child(args)
        return
    common = ["--structures", str(args.structures), "--atoms", str(args.atoms), "--dim", str(args.dim)]
    res = {}
    for rep in range(args.repeat):  # alternate the paths; keep each one's fastest run
        for path in ("official", "ours"):
            out = subprocess.run([sys.executable, __file__, "--path", path, *common], check=True, capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if path not in res or r["wall_s"] < res[path]["wall_s"]:
                res[path] = r
    o, u = res["official"], res["ours"]
    print(f"features: 2 datasets x {args.structures} structures x {args.atoms} atoms x {args.dim}-D float32 "
          f"({2 * args.structures * args.atoms * args.dim * 4 / 2**20:.0f} MiB), threads={os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'':10}{'wall s':>10}{'stats s':>10}{'gen s':>8}{'traced MiB':>12}{'RSS+ MiB':>10}{'CSI':>16}")
    for name, r in (("official", o), ("ours", u)):
        print(f"{name:10}{r['wall_s']:10.2f}{r['stats_s']:10.2f}{r['gen_s']:8.2f}{r['peak_traced_mb']:12.1f}"
              f"{r['peak_rss_increase_mb']:10.1f}{r['csi']:16.8f}")
    print(f"ratio     wall {o['wall_s'] / u['wall_s']:.2f}x   stats {o['stats_s'] / u['stats_s']:.2f}x   "
          f"traced memory {o['peak_traced_mb'] / u['peak_traced_mb']:.1f}x   "
          f"RSS increase {o['peak_rss_increase_mb'] / max(u['peak_rss_increase_mb'], 1e-9):.1f}x   "
          f"|CSI diff|/CSI {abs(o['csi'] - u['csi']) / abs(o['csi']):.1e}")
    summary = {"config": vars(args), "official": o, "ours": u}
    if not args.no_big:
        big = big_distance(args.big_dim, not args.no_big_official)
        line = f"distance at d={big['d']}: ours {big['ours_s']:.2f} s wall ({big['ours_cpu_s']:.2f} s CPU)"
        if "official_s" in big:
            line += (f", scipy sqrtm {big['official_s']:.2f} s wall ({big['official_cpu_s']:.2f} s CPU; "
                     f"{big['official_s'] / big['ours_s']:.1f}x), rel diff {big['rel_diff']:.1e}")
        print(line)
        summary["big"] = big
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
