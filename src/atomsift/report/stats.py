"""The report's statistics: paired differences with intervals, learning ratios, composition
overlap, and Spearman correlations with bootstrap intervals.

**Paired differences** (:func:`paired_difference`). Every finetuning cell shares its seeds with the
no-pretraining baseline (same seed = same head initialisation, data order and test subset), so
the effect of pretraining is estimated on the per-seed differences d_s = MAE(cell, s) -
MAE(none, s), with a t interval, mean(d) +- t_{n-1} sd(d) / sqrt(n). With the handful of seeds a
laptop affords (2-10), a t interval is the standard choice: a bootstrap over 5 seeds has only 126
distinct resamples and its percentile interval is too narrow (it ignores the n-1 in the
variance and the t tails). A cell is called better or worse only when its interval excludes 0.

**Spearman intervals** (:func:`spearman_intervals`). Whether an ordering of upstreams (CSI, or a
simple baseline) predicts the order of their finetuned MAEs is a rank correlation over a handful
of upstreams; its uncertainty comes from the MAEs (seed noise) and from the CSI values (their
interval). Each bootstrap draw resamples the finetuning seeds with replacement, the same seeds
for every upstream (the cells are paired by seed), and redraws each CSI value from a normal with
its jackknife standard error (truncated at 0); ``scipy.stats.spearmanr`` of each draw gives a
percentile interval, and the same draws give the interval of the difference between two
predictors' correlations (CSI better than a baseline only when that interval excludes 0).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

LEVEL = 0.95


def t_interval(values, level: float = LEVEL) -> dict:
    """Mean, sd, n and the t interval of the mean (None bounds for n < 2)."""
    from scipy import stats

    v = np.asarray(list(values), dtype=np.float64)
    n = int(v.size)
    mean = float(v.mean()) if n else math.nan
    sd = float(v.std(ddof=1)) if n > 1 else 0.0
    if n < 2:
        return {"n": n, "mean": mean, "sd": sd, "low": None, "high": None}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "low": mean - half, "high": mean + half}


def verdict(low: float | None, high: float | None) -> str:
    """``better`` (interval below 0: lower MAE), ``worse`` (above 0) or ``unresolved``."""
    if low is None or high is None:
        return "unresolved"
    if high < 0:
        return "better"
    if low > 0:
        return "worse"
    return "unresolved"


def paired_difference(cell: dict[int, float], base: dict[int, float], level: float = LEVEL) -> dict | None:
    """The cell's MAE minus the baseline's on the seeds both have, with a ``level`` t interval.

    Returns n, the mean difference and its interval (in the MAE's unit), the same relative to the
    baseline's mean MAE on those seeds (percent), the wins (seeds where the cell is lower) and the
    verdict; None without shared seeds."""
    seeds = sorted(set(cell) & set(base))
    if not seeds:
        return None
    diffs = [cell[s] - base[s] for s in seeds]
    t = t_interval(diffs, level)
    base_mean = float(np.mean([base[s] for s in seeds]))
    rel = (lambda x: None if x is None else 100.0 * x / base_mean) if base_mean else (lambda x: None)
    return {"n": t["n"], "mean": t["mean"], "sd": t["sd"], "low": t["low"], "high": t["high"],
            "rel_mean": rel(t["mean"]), "rel_low": rel(t["low"]), "rel_high": rel(t["high"]),
            "wins": sum(cell[s] < base[s] for s in seeds), "verdict": verdict(t["low"], t["high"]), "level": level}


def resolved_best(maes: dict[str, dict[int, float]], level: float = LEVEL) -> tuple[str, list[str]]:
    """The upstream with the lowest mean MAE and every upstream not resolved from it (paired
    difference interval containing 0, or no shared seeds), itself first."""
    best = min(maes, key=lambda u: np.mean(list(maes[u].values())))
    tied = [best]
    for u in sorted(maes, key=lambda u: np.mean(list(maes[u].values()))):
        if u == best:
            continue
        d = paired_difference(maes[u], maes[best], level)
        if d is None or d["verdict"] != "worse":
            tied.append(u)
    return best, tied


# ------------------------------------------------------------------------------------ composition


def composition(store_path: str | Path, split: str | None = "train") -> dict[int, float]:
    """Fraction of atoms of each element in a store (its ``split`` where it has one)."""
    from atomsift.data.store import Store
    from atomsift.train.linref import atom_index

    store = Store(store_path)
    z = np.asarray(store.array("numbers"))
    if split and split in store.split_names():
        z = z[atom_index(np.asarray(store.offsets), np.asarray(store.split(split), dtype=np.int64))]
    counts = np.bincount(z.astype(np.int64), minlength=120).astype(np.float64)
    total = counts.sum()
    return {int(k): float(counts[k] / total) for k in np.flatnonzero(counts)} if total else {}


def composition_overlap(p: dict[int, float], q: dict[int, float]) -> float:
    """Weighted Jaccard (Ruzicka) similarity of two element-fraction vectors: sum_Z min / sum_Z max,
    1 for the same element mix, 0 for no element in common."""
    keys = set(p) | set(q)
    num = sum(min(p.get(k, 0.0), q.get(k, 0.0)) for k in keys)
    den = sum(max(p.get(k, 0.0), q.get(k, 0.0)) for k in keys)
    return num / den if den else math.nan


# -------------------------------------------------------------------------------------- spearman


def spearman(x, y) -> float:
    """``scipy.stats.spearmanr`` (average ranks for ties); nan when undefined (constant input)."""
    import warnings

    from scipy import stats

    if len(x) != len(y) or len(x) < 2:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: nan, which is what we return
        r = stats.spearmanr(x, y).statistic
    return float(r) if np.isfinite(r) else math.nan


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``x`` with the same row of ``y`` (draws, n): the
    Pearson correlation of ``scipy.stats.rankdata`` average ranks, as ``spearmanr`` computes it,
    for thousands of bootstrap draws at once; nan for a constant row."""
    from scipy.stats import rankdata

    rx = rankdata(x, axis=1)
    ry = rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_intervals(maes: dict[str, dict[int, float]], predictors: dict[str, dict[str, tuple[float, float]]],
                       *, draws: int = 2000, seed: int = 0, level: float = LEVEL, reference: str | None = None) -> dict:
    """Spearman(predictor, mean MAE) over the upstreams of ``maes`` ({upstream: {seed: mae}}), for
    each predictor ({name: {upstream: (value, se)}}, se = 0 for exact values), with ``level``
    bootstrap intervals; and for each other predictor the interval of
    rho(reference) - rho(other) on the same draws."""
    ups = sorted(maes)
    seeds = sorted(set.intersection(*(set(maes[u]) for u in ups)))
    if not seeds:
        raise ValueError("no finetuning seed shared by every upstream")
    mae = np.array([[maes[u][s] for s in seeds] for u in ups])  # (upstreams, seeds)
    rng = np.random.default_rng(seed)
    point = {name: spearman([p[u][0] for u in ups], mae.mean(axis=1)) for name, p in predictors.items()}
    picks = rng.integers(0, len(seeds), size=(draws, len(seeds)))
    m = mae[:, picks].mean(axis=2).T  # (draws, upstreams): mean MAE over each draw's seeds
    samples = {}
    for name, p in predictors.items():
        value = np.array([p[u][0] for u in ups])
        se = np.array([p[u][1] for u in ups])
        vals = np.maximum(value + se * rng.standard_normal((draws, len(ups))), 0.0)
        samples[name] = spearman_rows(vals, m)
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def interval(a: np.ndarray) -> tuple[float | None, float | None, int]:
        a = a[np.isfinite(a)]
        if not a.size:
            return None, None, 0
        return float(np.percentile(a, lo_q)), float(np.percentile(a, hi_q)), int(a.size)

    out = {"upstreams": ups, "seeds": seeds, "draws": draws, "level": level, "rho": {}, "difference": {}}
    for name in predictors:
        lo, hi, used = interval(samples[name])
        out["rho"][name] = {"rho": point[name], "low": lo, "high": hi, "draws_used": used}
    if reference is not None:
        for name in predictors:
            if name == reference:
                continue
            lo, hi, used = interval(samples[reference] - samples[name])
            diff = point[reference] - point[name]
            v = "unresolved"
            if lo is not None and lo > 0:
                v = "better"
            elif hi is not None and hi < 0:
                v = "worse"
            out["difference"][name] = {"diff": diff, "low": lo, "high": hi, "draws_used": used, "verdict": v}
    return out
