"""``results/report.md``: our numbers beside the paper's, and what they say about CSI.

Sections: provenance (config hash, package versions, the command that reproduces the run);
per task, whether the lowest-CSI upstream gave the lowest finetuned MAE, called only where both
orderings are resolved by their 95% intervals (CSI: the jackknife intervals of
``atomsift.csi.estimate``; MAE: paired t intervals over finetuning seeds), with each upstream's CSI
and interval; the learning ratio of every finetuning column (no-pretraining MAE over the trivial
predictor's MAE on the same test structures); each table with our mean ± sd, the paired
difference to no pretraining with its 95% interval and verdict, and the paper's published value
of the matching row; CSI against simple baselines (element-composition overlap, an untrained
extractor's CSI) as Spearman correlations with bootstrap intervals; columns left out; and the
compute spent per cell. The statistics are in :mod:`atomsift.report.stats`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from importlib import metadata
from pathlib import Path

from atomsift.errors import InputError
from atomsift.safeio import read_text
from atomsift.fsio import write_text

from . import published
from . import stats as S
from .figures import read_csi_estimates
from atomsift.workflow.grid import NONE, budget_label, parse_budget
from .published import UPSTREAM_LABELS
from .tables import build, collect, mean_sd

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
    """Spearman rank correlation (``scipy.stats.spearmanr``, average ranks for ties); nan when undefined."""
    return S.spearman(x, y)


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


def _fmt_ci(low, high, nd: int = 3) -> str:
    return "–" if low is None or high is None else f"[{_fmt(low, nd)}, {_fmt(high, nd)}]"


def _rho(v: float | None) -> str:
    """A correlation (or a difference of two) with two decimals."""
    return "undefined" if v is None or not math.isfinite(v) else f"{v:.2f}"


def _rho_ci(low, high) -> str:
    return "–" if low is None or high is None else f"[{_rho(low)}, {_rho(high)}]"


def _signed(v: float | None, nd: int = 3) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    return ("+" if v > 0 else "") + _fmt(v, nd) if v != 0 else "0"


def _csi_text(e) -> str:
    """``corrected [low, high]`` or the plug-in value when the table has no interval."""
    if e.has_interval:
        return f"{_fmt(e.corrected)} [{_fmt(e.low)}, {_fmt(e.high)}]"
    return f"{_fmt(e.value)} (no interval)"


def _task_columns(spec: dict):
    """(task info, table name, first budget, first backbone, cell data) for each finetuning column,
    from the first table that has it, over that table's first pretrained budget and backbone."""
    seen = set()
    for name, table in spec["tables"].items():
        tspec = table["spec"]
        first = next((r for r in tspec["rows"] if r["upstream"] != NONE), None)
        if first is None:
            continue
        data = collect(tspec["cells"])
        for t in tspec["tasks"]:
            if t["name"] in seen:
                continue
            seen.add(t["name"])
            yield t, name, first["budget"], first["backbone"], data


def csi_verdicts(spec: dict) -> list[dict]:
    """Per task: the lowest-CSI upstream(s) (a tie where 95% intervals overlap), the lowest-MAE
    upstream(s) (a tie where paired intervals contain 0), the verdict (yes / no / unresolved) and
    Spearman(CSI, MAE) with its bootstrap interval.

    Uses, for each task, the first table that has it as a column, at that table's first budget
    and backbone, over the single-dataset upstreams the CSI ranks.
    """
    from atomsift.csi.estimate import lowest

    sel = spec["csi"]["selection"]
    csi = read_csi_estimates(sel["table"], None, sel["sampling"], sel["agg"])
    candidates = list(spec["csi"]["upstreams"])
    out = []
    for t, name, b, bb, data in _task_columns(spec):
        task = t["name"]
        ups = [u for u in candidates if (task, u, b, bb) in data and (u, task) in csi]
        if len(ups) < 2:
            continue
        maes = {u: data[(task, u, b, bb)] for u in ups}
        means = {u: mean_sd(maes[u].values())[0] for u in ups}
        csis = {u: csi[(u, task)] for u in ups}
        low_csi, csi_tied = lowest(csis)
        low_mae, mae_tied = S.resolved_best(maes)
        if len(csi_tied) == 1 and len(mae_tied) == 1:
            verdict = "yes" if low_csi == low_mae else "no"
        elif not set(csi_tied) & set(mae_tied):
            verdict = "no"  # every CSI choice is resolved worse than the best MAE
        elif len(csi_tied) == 1 and low_csi not in mae_tied:
            verdict = "no"
        else:
            verdict = "unresolved"
        base = data.get((task, NONE, NONE, bb))
        rho = S.spearman_intervals(maes, {"CSI": {u: (csis[u].best, _se(csis[u])) for u in ups}})["rho"]["CSI"]
        out.append({
            "task": task, "label": t["label"], "unit": t["unit"], "table": name, "budget": b, "backbone": bb,
            "upstreams": ups, "csi": csis, "mae": means, "maes": maes, "lowest_csi": low_csi, "csi_tied": csi_tied,
            "lowest_mae": low_mae, "mae_tied": mae_tied, "verdict": verdict, "won": verdict == "yes",
            "spearman": spearman([csis[u].best for u in ups], [means[u] for u in ups]), "spearman_ci": (rho["low"], rho["high"]),
            "csi_order": sorted(ups, key=lambda u: csis[u].best), "mae_order": sorted(ups, key=lambda u: means[u]),
            "vs_baseline": S.paired_difference(maes[low_csi], base) if base else None,
        })
    return out


def _se(e) -> float:
    return e.se if math.isfinite(e.se) else 0.0


def _names(us) -> str:
    return ", ".join(_label(u) for u in us)


def _verdict_section(verdicts: list[dict]) -> list[str]:
    lines = ["## Did the lowest-CSI upstream win?", ""]
    if not verdicts:
        return lines + ["No task has CSI values and finetuning results for two or more upstreams.", ""]
    counts = {k: sum(v["verdict"] == k for v in verdicts) for k in ("yes", "no", "unresolved")}
    lines.append(f"**The lowest-CSI upstream gave the lowest finetuned MAE on {counts['yes']} of {len(verdicts)} task(s); "
                 f"it did not on {counts['no']}; on {counts['unresolved']} the intervals do not decide.** "
                 "A CSI value is the jackknife-corrected Fréchet distance with its 95% interval (docs/csi.md); upstreams "
                 "whose intervals overlap the lowest one's are tied for the lowest CSI. The lowest MAE is tied with every "
                 "upstream whose paired difference to it (t interval over the shared finetuning seeds) contains 0. "
                 "*yes* / *no* need both orderings resolved; otherwise *unresolved*.")
    lines.append("")
    lines.append("| task | lowest CSI | lowest MAE | won? | Spearman(CSI, MAE) [95% CI] | lowest-CSI vs no pretraining: Δ [95% CI] | CSI order | MAE order |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for v in verdicts:
        vs = v["vs_baseline"]
        vs_text = (f"{_signed(vs['mean'])} {_fmt_ci(vs['low'], vs['high'])} {v['unit']} ({vs['verdict']}, "
                   f"{vs['wins']}/{vs['n']} seeds)" if vs else "–")
        low_csi = _label(v["lowest_csi"]) + (f" (tie: {_names(v['csi_tied'])})" if len(v["csi_tied"]) > 1 else "")
        low_mae = _label(v["lowest_mae"]) + (f" (tie: {_names(v['mae_tied'])})" if len(v["mae_tied"]) > 1 else "")
        lines.append(f"| {v['label']} | {low_csi} | {low_mae} | {v['verdict']} | {_rho(v['spearman'])} {_rho_ci(*v['spearman_ci'])} | "
                     f"{vs_text} | {' < '.join(_label(u) for u in v['csi_order'])} | "
                     f"{' < '.join(_label(u) for u in v['mae_order'])} |")
    lines.append("")
    lines.append("Spearman over the single-dataset upstreams of the task's first table and budget (n = "
                 f"{len(verdicts[0]['upstreams'])}); +1 means CSI orders the upstreams exactly as their finetuned MAE. "
                 "Its interval: 2,000 bootstrap draws resampling the finetuning seeds (paired across upstreams) and "
                 "redrawing each CSI from its interval.")
    lines.append("")
    lines.append("CSI (corrected, 95% interval) and finetuned MAE (mean ± sd over seeds) per upstream:")
    lines.append("")
    lines.append("| task | upstream | CSI (plug-in) | CSI corrected [95% CI] | MAE | MAE vs lowest: Δ [95% CI] |")
    lines.append("|---|---|---|---|---|---|")
    for v in verdicts:
        for u in v["csi_order"]:
            e = v["csi"][u]
            m, sd = mean_sd(v["maes"][u].values())
            d = S.paired_difference(v["maes"][u], v["maes"][v["lowest_mae"]]) if u != v["lowest_mae"] else None
            dtext = "lowest" if u == v["lowest_mae"] else (f"{_signed(d['mean'])} {_fmt_ci(d['low'], d['high'])}" if d else "–")
            lines.append(f"| {v['label']} | {_label(u)} | {_fmt(e.value)} | {_csi_text(e)} | {_fmt(m)} ± {_fmt(sd)} {v['unit']} | {dtext} |")
    mismatched = [v for v in verdicts if v["csi_order"] != v["mae_order"]]
    if mismatched:
        lines.append("")
        lines.append("Where the orders differ, CSI (a distance between feature distributions, blind to the labels' "
                     "regime; the paper's MatBench case) and the finetuned MAE disagree, or the differences are within "
                     "their intervals: " + "; ".join(
                         f"{v['label']}: CSI {' < '.join(_label(u) for u in v['csi_order'])}, "
                         f"MAE {' < '.join(_label(u) for u in v['mae_order'])}" for v in mismatched) + ".")
    lines.append("")
    lines.append("The paper (PAPER.md §5): ANI-1x has the lowest CSI to every in-distribution task and gives the lowest MAE "
                 "on all of them at every budget; CSI mispredicts MatBench. It gives neither intervals nor seeds.")
    return lines + [""]


def _read_trivial(path: str | Path) -> float | None:
    try:
        m = json.loads(read_text(path))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    v = m.get("trivial_test_mae") if isinstance(m, dict) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 else None


GOAL_RATIO = 0.5  # issue 14: a model that learned reaches half the trivial predictor's MAE or better


def learning_ratios(spec: dict) -> list[dict]:
    """Per finetuning column and backbone: the no-pretraining MAE over the trivial predictor's MAE
    (zero force / training mean) on the same test structures, per seed (metrics.json's
    ``trivial_test_mae``)."""
    out, seen = [], set()
    for name, table in spec["tables"].items():
        tspec = table["spec"]
        for t in tspec["tasks"]:
            for c in tspec["cells"]:
                if c["task"] != t["name"] or c["upstream"] != NONE:
                    continue
                key = (t["name"], c["backbone"])
                if key in seen:
                    continue
                seen.add(key)
                cells = [x for x in tspec["cells"] if x["task"] == t["name"] and x["upstream"] == NONE and x["backbone"] == c["backbone"]]
                ratios, trivial, model = {}, {}, {}
                for x in cells:
                    from .tables import read_mae

                    mae, triv = read_mae(x["metrics"]), _read_trivial(x["metrics"])
                    model[int(x["seed"])] = mae
                    if triv is not None:
                        trivial[int(x["seed"])] = triv
                        ratios[int(x["seed"])] = mae / triv
                out.append({"task": t["name"], "label": t["label"], "unit": t["unit"], "backbone": c["backbone"],
                            "mae": model, "trivial": trivial, "ratio": ratios})
    return out


def _learning_section(spec: dict) -> list[str]:
    rows = learning_ratios(spec)
    lines = ["## Did the models learn? (learning ratio per finetuning column)", "",
             "No-pretraining test MAE divided by the trivial predictor's MAE on the same test structures (zero force for "
             "force tasks, the training split's mean for scalar tasks; `trivial_test_mae` in each metrics.json), per seed. "
             f"Near 1: the model learned nothing; the goal is <= {GOAL_RATIO:.2f}.", ""]
    if not rows:
        return lines + ["No table has a no-pretraining row.", ""]
    lines.append("| task | backbone | no-pretraining MAE | trivial MAE | ratio (mean ± sd) | <= goal? |")
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        m, sd = mean_sd(r["mae"].values())
        if r["ratio"]:
            rm, rsd = mean_sd(r["ratio"].values())
            tm = mean_sd(r["trivial"].values())[0]
            lines.append(f"| {r['label']} | {r['backbone']} | {_fmt(m)} ± {_fmt(sd)} {r['unit']} | {_fmt(tm)} {r['unit']} | "
                         f"{rm:.2f} ± {rsd:.2f} | {'yes' if rm <= GOAL_RATIO else 'no'} |")
        else:
            lines.append(f"| {r['label']} | {r['backbone']} | {_fmt(m)} ± {_fmt(sd)} {r['unit']} | – (metrics.json without "
                         "`trivial_test_mae`: rerun the finetuning) | – | – |")
    return lines + [""]


FLAT_SHARE = 0.05  # "flattened": the last validation interval gained < 5% of the whole run's improvement


def extractor_curve(metrics_path: str | Path) -> dict | None:
    """The validation curve of a pretrained extractor (its pretraining metrics.json) and whether it
    has flattened: the drop over the last interval as a share of the drop from the first point."""
    import json

    try:
        m = json.loads(read_text(metrics_path))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        raise InputError("not JSON", path=metrics_path, field="val_curve") from None
    curve = [r for r in m.get("val_curve") or [] if isinstance(r, dict) and isinstance(r.get("loss"), (int, float))]
    if not curve:
        return None
    losses = [float(r["loss"]) for r in curve]
    total = losses[0] - min(losses)
    last = losses[-2] - losses[-1] if len(losses) > 1 else None
    share = None if last is None or total <= 0 else last / total
    return {"curve": curve, "share_last": share, "flat": share is not None and share < FLAT_SHARE,
            "seen": m.get("structures_seen_total"), "steps": m.get("steps")}


def _extractor_section(spec: dict) -> list[str]:
    sel = spec["csi"]["selection"]
    path = sel.get("pretrained_metrics")
    if not path:
        return []
    lines = [f"## The selection extractor's pretraining (`{sel['extractor']}`)", "",
             "The CSI that ranks upstreams uses this backbone's features, pretrained by this DAG on the mixture "
             "(the analog of JMP-S's features in the paper). Validation loss (the pretraining loss on held-out "
             "structures of every upstream) after each epoch:", ""]
    c = extractor_curve(path)
    if c is None:
        return lines + [f"No validation curve in `{path}`.", ""]
    lines.append("| epoch | step | validation loss |")
    lines.append("|---|---|---|")
    lines += [f"| {int(r.get('epoch', i)) + 1} | {r.get('step', '–')} | {float(r['loss']):.4g} |" for i, r in enumerate(c["curve"])]
    if c["share_last"] is None:
        verdict = "too few points to say whether it has flattened."
    else:
        verdict = (f"the last epoch gained {100 * c['share_last']:.1f}% of the run's total improvement: "
                   + ("flattened" if c["flat"] else "**not flattened** (pretrain it longer: `csi.extractors`)")
                   + f" (criterion < {100 * FLAT_SHARE:.0f}%).")
    seen = f"{c['seen']:,} structures seen in {c['steps']} steps; " if c.get("seen") and c.get("steps") else ""
    return lines + ["", seen + verdict, ""]


def _table_section(name: str, table: dict) -> list[str]:
    tspec = table["spec"]
    header, rows, stats = build(tspec)
    data = collect(tspec["cells"])
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
        cols += [f"{t['label']} ours ({t['unit']})", "Δ vs none [95% CI] (%)", "vs none", "paper"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for r in tspec["rows"]:
        u, b, bb = r["upstream"], r["budget"], r["backbone"]
        block = budgets.index(b) if b in budgets else -1
        cells = [_label(u), budget_label(b), bb]
        for t in tspec["tasks"]:
            s = stats[(t["name"], u, b, bb)]
            cells.append(f"{_fmt(s['mean'])} ± {_fmt(s['sd'])}" if s["n"] > 1 else _fmt(s["mean"]))
            base = data.get((t["name"], NONE, NONE, bb))
            d = S.paired_difference(data[(t["name"], u, b, bb)], base) if (base and u != NONE) else None
            if d:
                rel = f" ({_signed(d['rel_mean'], 2)} %)" if d["rel_mean"] is not None else ""
                cells.append(f"{_signed(d['mean'])} {_fmt_ci(d['low'], d['high'])}{rel}")
                cells.append(f"{d['verdict']} ({d['wins']}/{d['n']} seeds lower)")
            else:
                cells += ["–", "–"]
            pv = published.value(name, u, _paper_task(t["name"], t), block) if block >= 0 else None
            cells.append(_fmt(pv) if pv is not None else "–")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for col, why in (tspec.get("omitted") or {}).items():
        lines.append(f"- Column **{col}** left out: {why}.")
    if tspec.get("omitted"):
        lines.append("")
    return lines


def csi_baselines(spec: dict, verdicts: list[dict]) -> list[dict]:
    """Per task of the verdicts (>= 3 upstreams): Spearman of CSI, of element-composition
    distance (1 - weighted Jaccard of element fractions, upstream vs task) and of an untrained
    extractor's CSI against the finetuned MAE, with bootstrap intervals, and whether CSI orders
    the MAEs better than each baseline (interval of the difference excluding 0)."""
    comp = spec.get("composition") or {}
    untrained = spec["csi"].get("untrained")
    sel = spec["csi"]["selection"]
    raw = read_csi_estimates(untrained["table"], None, sel["sampling"], sel["agg"]) if untrained else {}
    cache: dict[str, dict] = {}

    def comp_of(path):
        if path not in cache:
            try:
                cache[path] = S.composition(path)
            except InputError:  # not a store (yet): the baseline is left out with a note
                cache[path] = None
        return cache[path]

    out = []
    for v in verdicts:
        ups = v["upstreams"]
        if len(ups) < 3:
            continue
        preds = {"CSI": {u: (v["csi"][u].best, _se(v["csi"][u])) for u in ups}}
        notes = []
        task_store = (comp.get("tasks") or {}).get(v["task"])
        up_stores = comp.get("upstreams") or {}
        if task_store and all(u in up_stores for u in ups) and comp_of(task_store) is not None and \
                all(comp_of(up_stores[u]) is not None for u in ups):
            q = comp_of(task_store)
            preds["composition"] = {u: (1.0 - S.composition_overlap(comp_of(up_stores[u]), q), 0.0) for u in ups}
        else:
            notes.append("composition: stores not available")
        if untrained and all((u, v["task"]) in raw for u in ups):
            preds["untrained CSI"] = {u: (raw[(u, v["task"])].best, _se(raw[(u, v["task"])])) for u in ups}
        elif untrained:
            notes.append(f"untrained CSI: no values in {untrained['table']}")
        res = S.spearman_intervals(v["maes"], preds, reference="CSI")
        out.append({"task": v["task"], "label": v["label"], "predictors": preds, "result": res, "notes": notes,
                    "untrained": (untrained or {}).get("extractor")})
    return out


def _baselines_section(spec: dict, verdicts: list[dict]) -> list[str]:
    lines = ["## CSI against simple baselines", "",
             "Does CSI order the finetuned MAEs better than something simpler? *composition*: the distance "
             "1 − J between the element fractions of upstream and task (J = Σ_Z min / Σ_Z max, the weighted "
             "Jaccard similarity of their atoms' elements; 0 = the same element mix). *untrained CSI*: CSI from the "
             "untrained extractor " + (f"`{spec['csi']['untrained']['extractor']}`" if spec["csi"].get("untrained") else
                                     "(not configured: `csi.untrained`)") + ". Spearman(predictor, mean MAE) over the "
             "upstreams, 95% bootstrap intervals (2,000 draws: finetuning seeds resampled, paired across upstreams; CSI "
             "values redrawn from their intervals); *CSI − baseline*: the interval of the difference of the two "
             "correlations on the same draws, and CSI is called better only when it excludes 0.", ""]
    rows = csi_baselines(spec, verdicts)
    if not rows:
        return lines + ["No task has three or more upstreams with CSI values and finetuning results.", ""]
    lines.append("| task | predictor | ordering (low → high) | Spearman [95% CI] | CSI − baseline [95% CI] | CSI orders the MAEs |")
    lines.append("|---|---|---|---|---|---|")
    for r in rows:
        res = r["result"]
        for name, pred in r["predictors"].items():
            rho = res["rho"][name]
            order = " < ".join(_label(u) for u in sorted(pred, key=lambda u: pred[u][0]))
            rtext = _rho(rho["rho"]) + " " + _rho_ci(rho["low"], rho["high"])
            if name == "CSI":
                lines.append(f"| {r['label']} | CSI | {order} | {rtext} | – | – |")
                continue
            d = res["difference"][name]
            word = {"better": f"better than {name}", "worse": f"worse than {name}",
                    "unresolved": f"unresolved against {name}"}[d["verdict"]]
            dtext = ("+" if d["diff"] > 0 else "") + _rho(d["diff"]) + " " + _rho_ci(d["low"], d["high"])
            lines.append(f"| {r['label']} | {name} | {order} | {rtext} | {dtext} | {word} |")
        for n in r["notes"]:
            lines.append(f"| {r['label']} | ({n}) | | | | |")
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
    lines += ["", "### Finetuning (one job per cell runs every seed; wall time of the job)", ""]
    lines.append("| Task | Upstream | Budget | Backbone | seeds | wall time (s) |")
    lines.append("|---|---|---|---|---|---|")
    groups: dict[tuple, dict] = {}  # cell -> {"seeds": n, "benchmarks": distinct files}
    for c in spec["cells"]:
        g = groups.setdefault((c["task"], c["upstream"], c["budget"], c["backbone"]), {"seeds": 0, "benchmarks": []})
        g["seeds"] += 1
        if c["benchmark"] not in g["benchmarks"]:  # a job per cell (one file), or per seed (older grids)
            g["benchmarks"].append(c["benchmark"])
    total_ft = 0.0
    for (t, u, b, bb), g in sorted(groups.items()):
        known = [w for w in map(_read_benchmark, g["benchmarks"]) if w is not None]
        total_ft += sum(known)
        lines.append(f"| {t} | {_label(u)} | {budget_label(b)} | {bb} | {g['seeds']} | "
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
    verdicts = csi_verdicts(spec)
    lines += _verdict_section(verdicts)
    lines += _learning_section(spec)
    lines += _extractor_section(spec)
    lines += ["## Tables: ours beside the paper's", "",
              "Ours: mean ± sd over finetuning seeds. *Δ vs none*: the mean paired difference to the no-pretraining "
              "baseline on the same seeds (cell − none; negative = lower MAE) with its 95% t interval over seeds and, in "
              "brackets, relative to the baseline's mean; *vs none*: *better* or *worse* only when the interval excludes "
              "0, else *unresolved* (seed noise), with the seeds on which the cell's MAE was lower. *paper*: the published "
              "value of the same upstream in the matching budget block of the paper's table (our budgets, backbones and "
              "datasets may be scaled down: compare orderings, not magnitudes).", ""]
    for name, table in spec["tables"].items():
        lines += _table_section(name, table)
    lines += _baselines_section(spec, verdicts)
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
    write_text(out, text)
    if html is not None:
        from atomsift.report.html import markdown_to_html

        write_text(html, markdown_to_html(text, "atomsift report"))
    return out
