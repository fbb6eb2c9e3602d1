"""Figs. 1 and 4 of the paper from finetuning metrics (the CSI figures are ``atomsift csi-figure``).

Fig. 1: per task, the lowest-CSI single upstream against the mixed baseline, with the relative
MAE change and the compute ratio C_baseline / C_best in the title.
Fig. 4: the best upstream against the best plus the worst-CSI data (ANI-1x 2/3 + OC22 1/3).
Bars are means over finetuning seeds with the seeds' sample sd as error bars.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from atomsift.errors import InputError
from atomsift.fsio import save_figure
from atomsift.safeio import read_text

from atomsift.workflow.grid import parse_budget
from .published import UPSTREAM_LABELS
from .tables import collect, mean_sd


def read_csi(path: str | Path, extractor: str | None, sampling: str, agg: str) -> dict[tuple[str, str], float]:
    """{(upstream, downstream): csi} for one (sampling, agg) of a CSI table.

    ``results/csi/<extractor>.csv`` holds one extractor; its ``extractor`` column records what
    ``atomsift moments`` was given (a name, or a checkpoint's), so ``extractor=None`` (what the
    DAG passes) does not filter on it.
    """
    path = Path(path)
    out: dict[tuple[str, str], list[float]] = {}
    try:
        with io.StringIO(read_text(path), newline="") as fh:
            for i, row in enumerate(csv.DictReader(fh), start=2):
                if (row.get("sampling"), row.get("agg")) != (sampling, agg):
                    continue
                if extractor is not None and row.get("extractor") != extractor:
                    continue
                try:
                    v = float(row["csi"])
                except (KeyError, TypeError, ValueError):
                    raise InputError(f"line {i}: bad CSI value {row.get('csi')!r}", path=path, field="csi") from None
                out.setdefault((row["upstream"], row["downstream"]), []).append(v)
    except FileNotFoundError:
        raise InputError("CSI table does not exist", path=path) from None
    # several seeds of one pair: their mean (as the paper's bar heights)
    return {k: sum(v) / len(v) for k, v in out.items()}


def read_csi_estimates(path: str | Path, extractor: str | None, sampling: str, agg: str) -> dict:
    """{(upstream, downstream): CSIEstimate} for one (sampling, agg) of a CSI table: the plug-in
    value, and the corrected value and interval where the table has them (docs/csi.md). Several
    rows of one pair (seeds) are not combined: the first is kept."""
    from atomsift.csi.estimate import CSIEstimate
    from atomsift.csi.select import read_table

    out = {}
    for r in read_table(path):
        if (r.get("sampling"), r.get("agg")) != (sampling, agg):
            continue
        if extractor is not None and r.get("extractor") != extractor:
            continue
        out.setdefault((r["upstream"], r["downstream"]), CSIEstimate(
            r["csi"], corrected=r["csi_corrected"], low=r["csi_low"], high=r["csi_high"], se=r["csi_se"]))
    return out


def lowest_csi(csi: dict, candidates, task: str) -> str:
    """The candidate upstream with the lowest CSI to ``task`` (the corrected value where there is
    one; ``csi`` maps (upstream, task) to a number or a CSIEstimate)."""
    have = [(getattr(csi[(u, task)], "best", csi[(u, task)]), u) for u in candidates if (u, task) in csi]
    if not have:
        raise InputError(f"no CSI value for task {task} and upstreams {', '.join(candidates)}", field="csi")
    return min(have)[1]


def fig1_data(spec: dict) -> dict:
    """Per task: the chosen upstream, both MAEs (mean, sd) and the relative change."""
    sel = spec["csi"]
    csi = read_csi_estimates(sel["table"], None, sel["sampling"], sel["agg"])
    data = collect(spec["cells"])
    bb = spec["backbone"]
    base_u, base_b = spec["baseline"]["upstream"], spec["baseline"]["budget"]
    out = {"tasks": [], "compute_ratio": _budget_c(base_b) / _budget_c(spec["budget"])}
    for t in spec["tasks"]:
        name = t["name"]
        best = lowest_csi(csi, spec["candidates"], name)
        b_mean, b_sd = mean_sd(data[(name, base_u, base_b, bb)].values())
        o_mean, o_sd = mean_sd(data[(name, best, spec["budget"], bb)].values())
        out["tasks"].append({
            "task": name, "label": t["label"], "unit": t["unit"], "best": best,
            "baseline": (b_mean, b_sd), "ours": (o_mean, o_sd),
            "improvement_pct": 100.0 * (b_mean - o_mean) / b_mean,
        })
    return out


def fig4_data(spec: dict) -> dict:
    data = collect(spec["cells"])
    bb = spec["backbone"]
    out = {"tasks": []}
    for t in spec["tasks"]:
        name = t["name"]
        base = mean_sd(data[(name, spec["base"]["upstream"], spec["base"]["budget"], bb)].values())
        added = mean_sd(data[(name, spec["added"]["upstream"], spec["added"]["budget"], bb)].values())
        out["tasks"].append({"task": name, "label": t["label"], "unit": t["unit"], "base": base, "added": added,
                             "change_pct": 100.0 * (added[0] - base[0]) / base[0]})
    return out


def _budget_c(budget: str) -> int:
    n, e = parse_budget(budget)
    return n * e


def _paired_bars(tasks: list[dict], left: str, right: str, left_label: str, right_label: str,
                 note, title: str, out: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(tasks)
    fig, axes = plt.subplots(1, n, figsize=(max(2.6 * n + 0.6, 6.0), 3.8), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        means = [t[left][0], t[right][0]]
        sds = [t[left][1], t[right][1]]
        ax.bar([0, 1], means, yerr=sds, capsize=4, color=["#9e9e9e", "#1f77b4"], width=0.6)
        ax.set_xticks([0, 1], [left_label, right_label(t)], fontsize=8)
        ax.set_title(f"{t['label']}\n{note(t)}", fontsize=9)
        ax.set_ylabel(f"test MAE ({t['unit']})", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        top = max(m + s for m, s in zip(means, sds))
        ax.set_ylim(0, top * 1.15 if top > 0 else 1)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, out, dpi=120, bbox_inches="tight")


def fig1(spec: dict, out: str | Path) -> dict:
    d = fig1_data(spec)
    base_label = UPSTREAM_LABELS.get(spec["baseline"]["upstream"], spec["baseline"]["upstream"])
    ratio = d["compute_ratio"]
    title = (f"Fig. 1: lowest-CSI upstream (N x E = {spec['budget']}) vs {base_label} ({spec['baseline']['budget']})\n"
             f"the baseline used {ratio:g}x our compute")
    _paired_bars(d["tasks"], "baseline", "ours", base_label,
                 lambda t: UPSTREAM_LABELS.get(t["best"], t["best"]),
                 lambda t: f"MAE {-t['improvement_pct']:+.0f}% vs baseline" if math.isfinite(t["improvement_pct"]) else "",
                 title, out)
    return d


def fig4(spec: dict, out: str | Path) -> dict:
    d = fig4_data(spec)
    base = spec["base"]["upstream"]
    added = spec["added"]["upstream"]
    title = (f"Fig. 4: {UPSTREAM_LABELS.get(base, base)} ({spec['base']['budget']}) vs\n"
             f"{UPSTREAM_LABELS.get(added, added)} ({spec['added']['budget']})")
    _paired_bars(d["tasks"], "base", "added", UPSTREAM_LABELS.get(base, base),
                 lambda t: UPSTREAM_LABELS.get(added, added),
                 lambda t: f"{t['change_pct']:+.0f}% MAE from added data", title, out)
    return d
