# The paper's tables, Figs. 1, 4 and 9, and results/report.md.


localrules:
    report_spec,


rule report_spec:
    input:
        TEMPLATE,
    output:
        f"{G.RESULTS}/runs/report/{{name}}.yaml",
    params:
        run=lambda w: report_job_spec(w.name),
    wildcard_constraints:
        name=alternatives([*config["tables"], *G.figures(config), "report"]),
    log:
        f"{LOGS}/report_spec/{{name}}.log",
    template_engine:
        "yte"


rule table:
    input:
        spec=f"{G.RESULTS}/runs/report/{{table}}.yaml",
        metrics=lambda w: G.table_inputs(config, w.table),
    output:
        csv=report(
            f"{G.RESULTS}/{{table}}.csv",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}", "view": "data (CSV)"},
        ),
        md=f"{G.RESULTS}/{{table}}.md",
        html=report(
            f"{G.RESULTS}/html/{{table}}.html",
            caption="../report/table.rst",
            category="Tables",
            labels={"table": "{table}", "view": "HTML"},
        ),
    wildcard_constraints:
        table=alternatives(config["tables"]),
    log:
        f"{LOGS}/table/{{table}}.log",
    conda:
        ENV
    shell:
        "atomsift table --config {input.spec} --out {output.csv} --html {output.html} > {log} 2>&1"


rule figure:
    input:
        spec=f"{G.RESULTS}/runs/report/{{fig}}.yaml",
        data=lambda w: G.figure_inputs(config, w.fig),
    output:
        report(
            f"{G.RESULTS}/figures/{{fig}}.png",
            caption="../report/figure.rst",
            category="Figures",
            labels={"figure": "{fig}"},
        ),
    wildcard_constraints:
        fig="fig1|fig4",
    log:
        f"{LOGS}/figure/{{fig}}.log",
    conda:
        ENV
    shell:
        "atomsift figure --config {input.spec} --out {output} > {log} 2>&1"


rule report:
    input:
        spec=f"{G.RESULTS}/runs/report/report.yaml",
        data=G.report_inputs(config),
    output:
        md=report(
            f"{G.RESULTS}/report.md",
            caption="../report/report.rst",
            category="Report",
            labels={"document": "report", "view": "source (Markdown)"},
        ),
        html=report(
            f"{G.RESULTS}/html/report.html",
            caption="../report/report.rst",
            category="Report",
            labels={"document": "report", "view": "HTML"},
        ),
    log:
        f"{LOGS}/report/report.log",
    conda:
        ENV
    shell:
        "atomsift report --config {input.spec} --out {output.md} --html {output.html} > {log} 2>&1"
