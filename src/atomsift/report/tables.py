"""The paper's tables (1-5) from finetuning metrics files.

A table spec (written by the DAG, see :func:`atomsift.workflow.grid.table_spec`) lists the rows
(upstream, budget, backbone; the no-pretraining baseline last), the task columns and one
metrics file per (task, row, seed). Each value is the test MAE in the paper's units averaged
over seeds; the CSV holds the means, the Markdown table mean ± sd with the best pretrained row
of each budget block in bold, as the paper prints it.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from atomsift.errors import InputError
from atomsift.fsio import write_text
from atomsift.safeio import read_text

from atomsift.workflow.grid import NONE, budget_label, parse_budget
from .published import UPSTREAM_LABELS

MAE_KEYS = ("test_mae", "mae")


def read_mae(path: str | Path) -> float:
    """The test MAE (paper units) recorded in a finetuning ``metrics.json``.

    Accepted layouts: ``{"test_mae": v}``, ``{"test": {"mae": v}}``, ``{"mae": v}``.
    """
    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except FileNotFoundError:
        raise InputError("metrics file does not exist", path=path) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc.msg}, line {exc.lineno})", path=path) from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", path=path)
    value = None
    for key in MAE_KEYS:
        if key in data:
            value, field = data[key], key
            break
    else:
        test = data.get("test")
        if isinstance(test, dict) and "mae" in test:
            value, field = test["mae"], "test.mae"
        else:
            raise InputError("no test MAE (expected 'test_mae' or 'test.mae')", path=path, field="test_mae")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"not a finite number: {value!r}", path=path, field=field)
    return float(value)


def load_spec(path: str | Path) -> dict:
    """A spec the DAG wrote (table, figure, report), read as every YAML input is (UTF-8, valid YAML,
    a mapping; one line naming the file otherwise)."""
    from atomsift.safeio import read_yaml_mapping

    return read_yaml_mapping(path, what="spec file", max_bytes=64 << 20)


def collect(cells: list[dict]) -> dict[tuple, dict[int, float]]:
    """{(task, upstream, budget, backbone): {seed: mae}} from the spec's cell list."""
    out: dict[tuple, dict[int, float]] = {}
    for c in cells:
        key = (c["task"], c["upstream"], c["budget"], c["backbone"])
        out.setdefault(key, {})[int(c["seed"])] = read_mae(c["metrics"])
    return out


def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def paired(cell: dict[int, float], base: dict[int, float]) -> dict | None:
    """Paired comparison against the baseline on the seeds both share.

    Returns wins (seeds where the cell's MAE is lower), n, and the mean ± sd of the relative
    difference (cell - baseline) / baseline in percent; None without shared seeds.
    """
    seeds = sorted(set(cell) & set(base))
    if not seeds:
        return None
    rel = [100.0 * (cell[s] - base[s]) / base[s] for s in seeds]
    m, sd = mean_sd(rel)
    return {"wins": sum(cell[s] < base[s] for s in seeds), "n": len(seeds), "rel_mean": m, "rel_sd": sd}


def build(spec: dict) -> tuple[list[str], list[list], dict]:
    """Header, rows (means) and the per-cell statistics of one table."""
    tasks = [t["name"] for t in spec["tasks"]]
    data = collect(spec["cells"])
    header = ["budget", "N", "E", "C", "upstream", "backbone", *tasks]
    rows, stats = [], {}
    for r in spec["rows"]:
        u, b, bb = r["upstream"], r["budget"], r["backbone"]
        if b == NONE:
            n = e = c = ""
        else:
            n, e = parse_budget(b)
            c = n * e
        line = [b, n, e, c, u, bb]
        for t in tasks:
            seeds = data.get((t, u, b, bb))
            if not seeds:
                raise InputError(f"no metrics for task {t}, upstream {u}, budget {b}, backbone {bb}", field="cells")
            m, sd = mean_sd(seeds.values())
            base = data.get((t, NONE, NONE, bb))
            stats[(t, u, b, bb)] = {
                "mean": m, "sd": sd, "n": len(seeds), "seeds": seeds,
                "vs_baseline": paired(seeds, base) if (base and u != NONE) else None,
            }
            line.append(m)
        rows.append(line)
    return header, rows, stats


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    digits = max(0, 3 - int(math.floor(math.log10(abs(v)))) - 1)
    return f"{v:.{min(digits, 4)}f}"


def to_csv(header, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in r])
    return buf.getvalue()


def to_markdown(spec: dict, header, rows, stats) -> str:
    """The table as the paper prints it: blocks per budget, best pretrained value in bold."""
    tasks = spec["tasks"]
    title = spec["table"].replace("table", "Table ")
    lines = [f"## {title}", ""]
    cols = ["Budget", "Upstream", "Backbone", *[f"{t['label']} ({t['unit']})" for t in tasks]]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    # best (lowest mean) pretrained row per (budget, backbone) block and task
    best: dict[tuple, float] = {}
    for (t, u, b, bb), s in stats.items():
        if u == NONE:
            continue
        k = (t, b, bb)
        best[k] = min(best.get(k, math.inf), s["mean"])
    for r in rows:
        b, u, bb = r[0], r[4], r[5]
        cells = []
        for t in tasks:
            s = stats[(t["name"], u, b, bb)]
            text = _fmt(s["mean"]) + (f" ± {_fmt(s['sd'])}" if s["n"] > 1 else "")
            if u != NONE and math.isclose(s["mean"], best[(t["name"], b, bb)]):
                text = f"**{text}**"
            cells.append(text)
        label = UPSTREAM_LABELS.get(u, u)
        budget = budget_label(b)
        if b != NONE:
            n, e = parse_budget(b)
            budget += f" (C={n * e:,})"
        lines.append("| " + " | ".join([budget, label, bb, *cells]) + " |")
    seeds = spec.get("seeds", [])
    lines += ["", f"Test MAE, mean ± sd over {len(seeds)} finetuning seed(s) {seeds}; bold = best pretrained row of its budget block."]
    for name, why in (spec.get("omitted") or {}).items():
        lines.append(f"Column {name} left out: {why}.")
    return "\n".join(lines) + "\n"


def write_table(spec: dict, out_csv: str | Path, html: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``out_csv``, the Markdown twin (same name, ``.md``) and, if asked, its HTML
    rendering ``html`` (for Snakemake's report page)."""
    out_csv = Path(out_csv)
    header, rows, stats = build(spec)
    md = out_csv.with_suffix(".md")
    text = to_markdown(spec, header, rows, stats)
    write_text(out_csv, to_csv(header, rows))
    write_text(md, text)
    if html is not None:
        from atomsift.report.html import markdown_to_html

        write_text(html, markdown_to_html(text, spec["table"].replace("table", "Table ")))
    return out_csv, md


def merge_csi(parts: list[str | Path], out: str | Path) -> int:
    """Concatenate CSI tables (same columns) into one CSV; returns the number of rows."""
    header, rows = None, []
    for p in parts:
        p = Path(p)
        try:
            with io.StringIO(read_text(p), newline="") as fh:
                reader = csv.reader(fh)
                h = next(reader, None)
                if h is None:
                    raise InputError("empty CSV", path=p)
                if header is None:
                    header = h
                elif h != header:
                    raise InputError(f"columns {h} differ from {header}", path=p, field="header")
                rows += list(reader)
        except FileNotFoundError:
            raise InputError("CSI table does not exist", path=p) from None
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header or [])
    w.writerows(rows)
    write_text(out, buf.getvalue())
    return len(rows)
