"""The paper's CSI figures as PNG files (matplotlib, Agg backend).

* :func:`csi_bars` — grouped bars, x = downstream task, one bar per upstream dataset, height = the
  bias-corrected CSI with its 95% interval as whiskers (the estimator's columns of `csi-table`);
  for tables without them, the mean CSI over the rows of a pair (min-max whiskers, e.g. seeds).
  Figures 3 (ID tasks), 5 (OOD tasks), 6 (mean aggregation), 7 (random upstream sampling) and 8
  (another extractor) are this layout on different tables or filters.
* :func:`coverage_bars` — classes covered by a random and by a class-balanced sample per upstream,
  with the total number of classes as a dashed line (Figure 9).
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np

from atomsift.errors import InputError
from atomsift.fsio import save_figure
from atomsift.safeio import read_text

# Display names and the paper's order (upstream bars: ANI-1x, Transition-1x, OC20, OC22).
LABELS = {
    "ani1x": "ANI-1x", "transition1x": "Transition-1x", "t1x": "Transition-1x", "oc20": "OC20", "oc22": "OC22",
    "rmd17": "rMD17", "md22": "MD22", "spice": "SPICE", "qm9": "QM9", "qmof": "QMOF", "matbench": "MatBench",
    "matbench_fold0": "MatBench", "omat24": "OMat24",
}
PAPER_ORDER = ["ani1x", "ani-like", "ani1x-like", "transition1x", "t1x", "t1x-like", "transition1x-like",
               "oc20", "oc20-like", "oc22", "oc22-like",
               "rmd17", "md22", "spice", "qm9", "qmof", "matbench", "matbench_fold0", "omat24"]
COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]


def label(name: str) -> str:
    return LABELS.get(name.lower(), name)


def _order(names) -> list[str]:
    """Names in the paper's order where known, then in order of first appearance."""
    uniq = list(OrderedDict.fromkeys(names))
    rank = {n: i for i, n in enumerate(PAPER_ORDER)}
    known = sorted([n for n in uniq if n.lower() in rank], key=lambda n: rank[n.lower()])
    return known + [n for n in uniq if n.lower() not in rank]


def _savefig(fig, out: str | Path) -> Path:
    return save_figure(fig, out, dpi=150, bbox_inches="tight")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def filter_rows(rows: list[dict], **equal) -> list[dict]:
    """Rows whose columns equal the given values (None = no filter); InputError when none remain."""
    out = rows
    for col, val in equal.items():
        if val is None:
            continue
        out = [r for r in out if str(r.get(col, "")) == str(val)]
        if not out:
            have = sorted({str(r.get(col, "")) for r in rows})
            raise InputError(f"no row with {col} = {val!r} (table has: {', '.join(have)})", field=col)
    return out


def _finite(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if np.isfinite(x) else None


def bar_values(rows: list[dict], tasks: list[str], ups: list[str]) -> tuple[dict, bool]:
    """(upstream, task) -> (height, whisker below, whisker above), and whether they are intervals.

    Rows of a CSI table with the estimator's columns (one row per pair, `atomsift csi-table`):
    the bias-corrected CSI with its 95% interval (docs/csi.md). Otherwise (older tables, or several
    rows per pair such as seeds): the mean of the plug-in values with min-max whiskers."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["upstream"], r["downstream"]), []).append(r)
    est = {}
    for k, rs in groups.items():
        if len(rs) == 1:
            c, lo, hi = (_finite(rs[0].get(col)) for col in ("csi_corrected", "csi_low", "csi_high"))
            if None not in (c, lo, hi):
                est[k] = (c, max(c - max(lo, 0.0), 0.0), max(hi - c, 0.0))  # a CSI is >= 0
    if groups and len(est) == len(groups):
        return est, True
    out = {}
    for k, rs in groups.items():
        v = [float(r["csi"]) for r in rs]
        out[k] = (float(np.mean(v)), float(np.mean(v) - np.min(v)), float(np.max(v) - np.mean(v)))
    return out, False


def csi_bars(rows: list[dict], out: str | Path, *, tasks: list[str] | None = None, upstreams: list[str] | None = None,
             title: str | None = None, log: bool | None = None) -> Path:
    """Grouped CSI bars: one group per downstream task, one bar per upstream dataset.

    ``log=None`` chooses a logarithmic axis when the values span more than two decades (CSI of
    molecular vs surface upstreams routinely differ by 10^3, which hides the small bars)."""
    if tasks:
        missing = [t for t in tasks if t not in {r["downstream"] for r in rows}]
        if missing:
            raise InputError(f"no CSI rows for task(s) {', '.join(missing)}", field="downstream")
        rows = [r for r in rows if r["downstream"] in tasks]
    tasks = list(tasks) if tasks else _order(r["downstream"] for r in rows)
    ups = list(upstreams) if upstreams else _order(r["upstream"] for r in rows)
    bars, intervals = bar_values(rows, tasks, ups)
    vals = {k: [h] for k, (h, _, _) in bars.items()}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(tasks) * max(len(ups), 2) / 3 + 1.5), 3.6))
    width = 0.8 / max(len(ups), 1)
    x = np.arange(len(tasks))
    for j, u in enumerate(ups):
        h = [bars.get((u, t), (np.nan, 0.0, 0.0))[0] for t in tasks]
        lo = [bars.get((u, t), (np.nan, 0.0, 0.0))[1] for t in tasks]
        hi = [bars.get((u, t), (np.nan, 0.0, 0.0))[2] for t in tasks]
        pos = x - 0.4 + width * (j + 0.5)
        whiskers = any(lo) or any(hi)
        ax.bar(pos, h, width * 0.92, label=label(u), color=COLORS[j % len(COLORS)],
               yerr=[lo, hi] if whiskers else None, capsize=2 if whiskers else 0, edgecolor="black", linewidth=0.4)
    ax.set_xticks(x, [label(t) for t in tasks])
    ax.set_ylabel("CSI, bias-corrected, 95% interval\n(lower = more similar)" if intervals else "CSI (lower = more similar)")
    finite = [v for vs in vals.values() for v in vs if np.isfinite(v) and v > 0]
    if log is None:
        log = bool(finite) and max(finite) / min(finite) > 100
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("downstream task")
    ax.legend(title="upstream", frameon=False, fontsize=8, title_fontsize=8, ncol=min(len(ups), 4),
              loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title)
    try:
        return _savefig(fig, out)
    finally:
        plt.close(fig)


def read_coverage(paths) -> list[dict]:
    """Coverage rows (dataset, total_classes, random, balanced) from ``atomsift coverage --json``
    files, a JSON list of such objects, or a CSV with those columns."""
    import csv

    rows = []
    for path in paths:
        p = Path(path)
        if not p.is_file():
            raise InputError("coverage file does not exist", path=p)
        if p.suffix.lower() == ".csv":
            with io.StringIO(read_text(p), newline="") as fh:
                items = list(csv.DictReader(fh))
        else:
            try:
                obj = json.loads(read_text(p))
            except json.JSONDecodeError as exc:
                raise InputError(f"not valid JSON ({exc.msg} at line {exc.lineno})", path=p) from None
            items = obj if isinstance(obj, list) else [obj]
        for i, it in enumerate(items):
            row = {}
            for k in ("dataset", "total_classes", "random", "balanced"):
                if not isinstance(it, dict) or k not in it:
                    raise InputError(f"entry {i}: missing", path=p, field=k)
                if k == "dataset":
                    row[k] = str(it[k])
                    continue
                try:
                    row[k] = int(it[k])
                except (TypeError, ValueError):
                    raise InputError(f"entry {i}: not an integer: {it[k]!r}", path=p, field=k) from None
            rows.append(row)
    if not rows:
        raise InputError("no coverage entries", field="table")
    return rows


def coverage_bars(rows: list[dict], out: str | Path, *, title: str | None = None) -> Path:
    """Figure 9: classes covered by random vs class-balanced samples; dashed line = all classes."""
    names = _order(r["dataset"] for r in rows)
    by = {r["dataset"]: r for r in rows}
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.5 * len(names) + 1.0), 3.6))
    x = np.arange(len(names))
    w = 0.38
    for k, (key, color, lab) in enumerate((("random", COLORS[0], "random"), ("balanced", COLORS[1], "class-balanced"))):
        v = [by[n][key] for n in names]
        bars = ax.bar(x + (k - 0.5) * w, v, w * 0.95, color=color, label=lab, edgecolor="black", linewidth=0.4)
        ax.bar_label(bars, labels=[f"{int(b):,}" for b in v], fontsize=7, label_type="center", color="white", rotation=90)
    for i, n in enumerate(names):
        ax.hlines(by[n]["total_classes"], i - w - 0.05, i + w + 0.05, colors="black", linestyles="dashed", linewidth=1,
                  label="total classes" if i == 0 else None)
    ax.set_xticks(x, [label(n) for n in names])
    ax.set_ylabel("unique classes covered")
    lo = min(min(r["random"], r["balanced"]) for r in rows)
    hi = max(r["total_classes"] for r in rows)
    if lo > 0 and hi / lo > 100:  # the paper's counts span 149 .. 8,478: linear; more than two decades: log
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(lo / 5, 0.5), top=hi * 2.5)
    else:
        ax.set_ylim(0, hi * 1.15)
    ax.legend(frameon=False, fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.spines[["top", "right"]].set_visible(False)
    if title:
        ax.set_title(title)
    try:
        return _savefig(fig, out)
    finally:
        plt.close(fig)
