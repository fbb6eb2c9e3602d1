"""Verbs of atomsift.report: table, figure, report."""

from __future__ import annotations


def register(sub) -> None:
    """Add this package's verbs to the atomsift parser."""
    p = sub.add_parser("table", help="a paper table (1-5) from finetuning metrics, as CSV + Markdown",
                       description="Build results/tableN.csv and .md from a table spec written by the DAG "
                                   "(--config), or merge CSI tables (--merge-csi).")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", help="table spec YAML (rows, tasks, one metrics file per cell)")
    g.add_argument("--merge-csi", nargs="+", metavar="CSV", help="CSI tables with the same columns to concatenate")
    p.add_argument("--out", required=True, help="CSV to write (the Markdown twin goes beside it as .md)")
    p.add_argument("--html", help="--config: also write the table as an HTML page here (for snakemake --report)")
    p.set_defaults(func=_table)

    p = sub.add_parser("figure", help="Fig. 1 (lowest-CSI upstream vs mixed baseline) or Fig. 4 (adding worst-CSI data)")
    p.add_argument("--config", required=True, help="figure spec YAML written by the DAG")
    p.add_argument("--out", required=True, help="PNG file")
    p.add_argument("--json", action="store_true", help="print the plotted numbers as JSON")
    p.set_defaults(func=_figure)

    p = sub.add_parser("report", help="results/report.md: ours beside the paper, CSI verdicts, compute spent")
    p.add_argument("--config", required=True, help="report spec YAML written by the DAG")
    p.add_argument("--out", required=True, help="Markdown file")
    p.add_argument("--html", help="also write the report as an HTML page here (for snakemake --report)")
    p.set_defaults(func=_report)


def _table(args) -> int:
    from atomsift.report import tables

    if args.merge_csi:
        n = tables.merge_csi(args.merge_csi, args.out)
        print(f"{n} CSI rows -> {args.out}")
        return 0
    spec = tables.load_spec(args.config)
    csv_path, md_path = tables.write_table(spec, args.out, args.html)
    outs = ", ".join(str(p) for p in (csv_path, md_path, args.html) if p)
    print(f"{spec.get('table', 'table')}: {len(spec.get('rows', []))} rows x {len(spec.get('tasks', []))} tasks "
          f"({len(spec.get('cells', []))} finetuning runs) -> {outs}")
    return 0


def _figure(args) -> int:
    from atomsift.errors import InputError
    from atomsift.report import figures
    from atomsift.report.tables import load_spec

    spec = load_spec(args.config)
    kind = spec.get("figure")
    makers = {"fig1": figures.fig1, "fig4": figures.fig4}
    if kind not in makers:
        raise InputError(f"unknown figure {kind!r} (this verb makes {', '.join(makers)}; "
                         "CSI figures: atomsift csi-figure)", path=args.config, field="figure")
    data = makers[kind](spec, args.out)
    if args.json:
        from atomsift.fsio import print_json

        print_json(data)
    else:
        print(args.out)
    return 0


def _report(args) -> int:
    from atomsift.report.report import write_report
    from atomsift.report.tables import load_spec

    out = write_report(load_spec(args.config), args.out, args.html)
    print(", ".join(str(p) for p in (out, args.html) if p))
    return 0
