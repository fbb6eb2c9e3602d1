"""``results/report.md``: our numbers beside the paper's, and what they say about CSI.

Sections: provenance (config hash, package versions, the command that reproduces the run);
per task, whether the lowest-CSI upstream gave the lowest finetuned MAE and the Spearman rank
correlation between CSI and MAE; each table with our mean ± sd, paired wins against the
no-pretraining baseline and the paper's published value of the matching row; columns left out;
and the compute spent per cell (structures seen and wall time of every job).
"""

from __future__ import annotations

import csv
import io
import math
from importlib import metadata
from pathlib import Path

from atomsift.errors import InputError
from atomsift.safeio import read_text

from . import published
from .figures import read_csi
from atomsift.workflow.grid import NONE, budget_label, parse_budget
from .published import UPSTREAM_LABELS
from .tables import build, collect, mean_sd, paired, write_atomic

PACKAGES = ("atomsift", "torch", "torch-geometric", "lightning", "numpy", "scipy", "pandas", "matplotlib",
            "h5py", "ase", "tblite", "snakemake", "snakemake-executor-plugin-slurm")


def package_versions() -> dict[str, str]:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "not installed"
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan when undefined."""
    if len(x) != len(y) or len(x) < 2:
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return math.nan
    return cov / math.sqrt(vx * vy)


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _fmt(v: float | None, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if v == 0:
        return "0"
    digits = max(0, nd - int(math.floor(math.log10(abs(v)))) - 1)
    return f"{v:.{min(digits, 4)}f}"


def _label(u: str) -> str:
    return UPSTREAM_LABELS.get(u, u)


# ---------------------------------------------------------------------------------------------


def csi_verdicts(spec: dict) -> list[dict]:
    """Per task: lowest-CSI upstream, lowest-MAE upstream, Spearman(CSI, MAE).

    Uses, for each task, the first table that has it as a column, at that table's first budget
    and backbone, over the single-dataset upstreams the CSI ranks.
    """
    sel = spec["csi"]["selection"]
    csi = read_csi(sel["table"], None, sel["sampling"], sel["agg"])
    candidates = list(spec["csi"]["upstreams"])
    out, seen = [], set()
    for name, table in spec["tables"].items():
        tspec = table["spec"]
        data = collect(tspec["cells"])
        first = next((r for r in tspec["rows"] if r["upstream"] != NONE), None)
        if first is None:
            continue
        b, bb = first["budget"], first["backbone"]
        for t in tspec["tasks"]:
            task = t["name"]
            if task in seen:
                continue
            ups = [u for u in candidates if (task, u, b, bb) in data and (u, task) in csi]
            if len(ups) < 2:
                continue
            seen.add(task)
            maes = {u: mean_sd(data[(task, u, b, bb)].values())[0] for u in ups}
            csis = {u: csi[(u, task)] for u in ups}
            low_csi = min(ups, key=lambda u: csis[u])
            low_mae = min(ups, key=lambda u: maes[u])
            base = data.get((task, NONE, NONE, bb))
            vs = paired(data[(task, low_csi, b, bb)], base) if base else None
            out.append({
                "task": task, "label": t["label"], "unit": t["unit"], "table": name, "budget": b, "backbone": bb,
                "upstreams": ups, "csi": csis, "mae": maes, "lowest_csi": low_csi, "lowest_mae": low_mae,
                "won": low_csi == low_mae, "spearman": spearman([csis[u] for u in ups], [maes[u] for u in ups]),
                "csi_order": sorted(ups, key=lambda u: csis[u]), "mae_order": sorted(ups, key=lambda u: maes[u]),
                "vs_baseline": vs,
            })
    return out


def _verdict_section(verdicts: list[dict]) -> list[str]:
    lines = ["## Did the lowest-CSI upstream win?", ""]
    if not verdicts:
        return lines + ["No task has CSI values and finetuning results for two or more upstreams.", ""]
    wins = sum(v["won"] for v in verdicts)
    lines.append(f"**The lowest-CSI upstream gave the lowest finetuned MAE on {wins} of {len(verdicts)} task(s).**")
    lines.append("")
    lines.append("| task | lowest CSI | lowest MAE | won? | Spearman(CSI, MAE) | lowest-CSI vs no pretraining (wins, ΔMAE) | CSI order | MAE order |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for v in verdicts:
        vs = v["vs_baseline"]
        vs_text = f"{vs['wins']}/{vs['n']}, {vs['rel_mean']:+.1f} ± {vs['rel_sd']:.1f} %" if vs else "–"
        lines.append(
            f"| {v['label']} | {_label(v['lowest_csi'])} | {_label(v['lowest_mae'])} | {'yes' if v['won'] else 'no'} | "
            f"{_fmt(v['spearman'], 2) if math.isfinite(v['spearman']) else 'undefined'} | {vs_text} | "
            f"{' < '.join(_label(u) for u in v['csi_order'])} | {' < '.join(_label(u) for u in v['mae_order'])} |"
        )
    lines.append("")
    lines.append("Spearman over the single-dataset upstreams of the task's first table and budget (n = "
                 f"{len(verdicts[0]['upstreams'])}); +1 means CSI orders the upstreams exactly as their finetuned MAE.")
    mismatched = [v for v in verdicts if v["csi_order"] != v["mae_order"]]
    if mismatched:
        lines.append("")
        lines.append("Where the orders differ, CSI (a distance between feature distributions, blind to the labels' "
                     "regime; the paper's MatBench case) and the finetuned MAE disagree, or the MAE differences are within "
                     "seed noise (see the paired wins below): " + "; ".join(
                         f"{v['label']}: CSI {' < '.join(_label(u) for u in v['csi_order'])}, "
                         f"MAE {' < '.join(_label(u) for u in v['mae_order'])}" for v in mismatched) + ".")
    lines.append("")
    lines.append("The paper (PAPER.md §5): ANI-1x has the lowest CSI to every in-distribution task and gives the lowest MAE "
                 "on all of them at every budget; CSI mispredicts MatBench.")
    return lines + [""]


def _table_section(name: str, table: dict) -> list[str]:
    tspec = table["spec"]
    header, rows, stats = build(tspec)
    budgets = []
    for r in tspec["rows"]:
        if r["budget"] != NONE and r["budget"] not in budgets:
            budgets.append(r["budget"])
    pub_blocks = published.limited_budget_rows(name) if name in published.TABLES else []
    lines = [f"### {name.replace('table', 'Table ')}", ""]
    if pub_blocks:
        pairs = []
        for i, b in enumerate(budgets):
            if i < len(pub_blocks):
                r0 = pub_blocks[i][0]
                paper = f"N={r0['n']:,}, E={r0['epochs']}" if "n" in r0 else f"C={r0['budget']:,}"
                pairs.append(f"our {budget_label(b)} ↔ paper {paper}")
        lines.append("Budget blocks matched in order: " + "; ".join(pairs) + ".")
        lines.append("")
    cols = ["Upstream", "Budget", "Backbone"]
    for t in tspec["tasks"]:
        cols += [f"{t['label']} ours ({t['unit']})", "wins vs none", "paper"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in tspec["rows"]:
        u, b, bb = r["upstream"], r["budget"], r["backbone"]
        block = budgets.index(b) if b in budgets else -1
        cells = [_label(u), budget_label(b), bb]
        for t in tspec["tasks"]:
            s = stats[(t["name"], u, b, bb)]
            cells.append(f"{_fmt(s['mean'])} ± {_fmt(s['sd'])}" if s["n"] > 1 else _fmt(s["mean"]))
            vs = s["vs_baseline"]
            cells.append(f"{vs['wins']}/{vs['n']} ({vs['rel_mean']:+.1f} ± {vs['rel_sd']:.1f} %)" if vs else "–")
            pv = published.value(name, u, _paper_task(t["name"], t), block) if block >= 0 else None
            cells.append(_fmt(pv) if pv is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for col, why in (tspec.get("omitted") or {}).items():
        lines.append(f"- Column **{col}** left out: {why}.")
    if tspec.get("omitted"):
        lines.append("")
    return lines


def _paper_task(name: str, task: dict) -> str:
    """Our task name -> the paper's column key (by name, else by the task's label)."""
    if name in published.TASKS:
        return name
    for key, (label, _unit) in published.TASKS.items():
        if label == task.get("label"):
            return key
    return name


def _read_benchmark(path: str | Path) -> float | None:
    """Wall seconds from a Snakemake benchmark TSV (first column ``s``), or None if absent."""
    try:
        with io.StringIO(read_text(path), newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except FileNotFoundError:
        return None
    try:
        return sum(float(r["s"]) for r in rows) / len(rows) if rows else None
    except (KeyError, ValueError):
        raise InputError("not a Snakemake benchmark file (no numeric 's' column)", path=path, field="s") from None


def _structures_seen(metrics_path: str | Path) -> int | None:
    import json

    try:
        m = json.loads(read_text(metrics_path))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    for key in ("structures_seen", "seen", "budget_seen"):
        v = m.get(key)
        if isinstance(v, dict):
            vals = [x for x in v.values() if isinstance(x, (int, float))]
            if vals:
                return int(sum(vals))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            return int(v)
    return None


def _compute_section(spec: dict) -> list[str]:
    lines = ["## Compute spent", "", "### Pretraining (one run per upstream x budget x backbone)", ""]
    lines.append("| Upstream | Budget | Backbone | planned C = N x E | structures seen | wall time (s) |")
    lines.append("|---|---|---|---|---|---|")
    total_pre = 0.0
    for r in spec["pretrain"]:
        n, e = parse_budget(r["budget"])
        seen = _structures_seen(r["metrics"])
        wall = _read_benchmark(r["benchmark"])
        total_pre += wall or 0.0
        lines.append(f"| {_label(r['upstream'])} | {budget_label(r['budget'])} | {r['backbone']} | {n * e:,} | "
                     f"{'–' if seen is None else f'{seen:,}'} | {_fmt(wall, 3) if wall is not None else '–'} |")
    lines += ["", "### Finetuning (wall time summed over seeds, per cell)", ""]
    lines.append("| Task | Upstream | Budget | Backbone | seeds | wall time (s) |")
    lines.append("|---|---|---|---|---|---|")
    groups: dict[tuple, list] = {}
    for c in spec["cells"]:
        groups.setdefault((c["task"], c["upstream"], c["budget"], c["backbone"]), []).append(_read_benchmark(c["benchmark"]))
    total_ft = 0.0
    for (t, u, b, bb), walls in sorted(groups.items()):
        known = [w for w in walls if w is not None]
        total_ft += sum(known)
        lines.append(f"| {t} | {_label(u)} | {budget_label(b)} | {bb} | {len(walls)} | "
                     f"{_fmt(sum(known), 3) if known else '–'} |")
    lines += ["", f"Total wall time: pretraining {total_pre:.0f} s, finetuning {total_ft:.0f} s "
              "(per job, from Snakemake's benchmark files; jobs ran in parallel).", ""]
    return lines


def build_report(spec: dict) -> str:
    lines = ["# atomsift report", ""]
    lines.append("Ghunaim et al. 2025, *Towards Data-Efficient Pretraining for Atomic Property Prediction* "
                 "(arXiv 2502.11085), reproduced by this run's grid. Published numbers: PAPER.md §5 "
                 "(`atomsift.report.published`). Test MAE in the paper's units; lower is better.")
    lines += ["", "## Provenance", ""]
    lines.append(f"- configuration: `{spec['config_source']}`, hash `{spec['config_hash']}` "
                 "(sha256 of the validated grid as canonical JSON, first 12 hex digits)")
    lines.append(f"- reproduce: `{spec['command']}`")
    lines.append(f"- finetuning seeds: {spec['seeds']}")
    versions = package_versions()
    lines.append("- packages: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines.append("")
    lines += _verdict_section(csi_verdicts(spec))
    lines += ["## Tables: ours beside the paper's", "",
              "Ours: mean ± sd over finetuning seeds; *wins vs none*: seeds (paired) where the cell beat the "
              "no-pretraining baseline, with the mean ± sd relative MAE change. *paper*: the published value of the "
              "same upstream in the matching budget block of the paper's table (our budgets, backbones and datasets "
              "may be scaled down: compare orderings, not magnitudes).", ""]
    for name, table in spec["tables"].items():
        lines += _table_section(name, table)
    if spec.get("figures"):
        lines += ["## Figures", ""]
        lines += [f"- {f}: `{p}`" for f, p in spec["figures"].items()]
        lines.append("")
    lines += _compute_section(spec)
    return "\n".join(lines)


def write_report(spec: dict, out: str | Path, html: str | Path | None = None) -> Path:
    """Write the report's Markdown to ``out`` and, if asked, its HTML rendering to ``html``."""
    out = Path(out)
    text = build_report(spec)
    write_atomic(out, text)
    if html is not None:
        from atomsift.report.html import markdown_to_html

        write_atomic(html, markdown_to_html(text, "atomsift report"))
    return out
