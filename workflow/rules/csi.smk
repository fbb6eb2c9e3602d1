# CSI: feature moments per (extractor, dataset, sampling, aggregation), Frechet distances
# between upstream and downstream moments, the CSI bar charts (Figs. 3, 5-8) and class
# coverage (Fig. 9).


localrules:
    selection,


# `snakemake --cores all selection`: the upstream statistics `atomsift select FILE` ranks your
# data against (README, "From your file to a model")
rule selection:
    input:
        G.selection_moments(config),


rule moments:
    input:
        store=lambda w: G.store_dir(w.dataset),
        extractor=extractor_checkpoint,
    output:
        G.moments_file("{extractor}", "{dataset}", "{sampling}", "{agg}"),
    params:
        spec=lambda w: G.extractor_spec(config, w.extractor),
        n=config["csi"]["n"],
        seed=config["csi"].get("seed", 0),
        blocks=config["csi"].get("blocks", 20),
    log:
        f"{LOGS}/moments/{{extractor}}/{{dataset}}/{{sampling}}-{{agg}}.log",
    benchmark:
        f"{BENCH}/moments/{{extractor}}/{{dataset}}/{{sampling}}-{{agg}}.tsv"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} atomsift moments --store {input.store} --extractor {params.spec} "
        "--sampling {wildcards.sampling} --n {params.n} --seed {params.seed} --agg {wildcards.agg} "
        "--blocks {params.blocks} --out {output} > {log} 2>&1"


rule csi_part:
    input:
        csi_part_inputs,
    output:
        G.csi_part("{extractor}", "{sampling}", "{agg}", "{kind}"),
    params:
        pairs=csi_part_args,
    log:
        f"{LOGS}/csi_part/{{extractor}}/{{sampling}}-{{agg}}-{{kind}}.log",
    conda:
        ENV
    shell:
        "atomsift csi-table {params.pairs} --out {output} > {log} 2>&1"


rule csi_table:
    input:
        csi_parts_of,
    output:
        report(
            G.csi_table("{extractor}"),
            caption="../report/csi_table.rst",
            category="CSI",
            labels={"extractor": "{extractor}"},
        ),
    log:
        f"{LOGS}/csi_table/{{extractor}}.log",
    conda:
        ENV
    shell:
        "atomsift table --merge-csi {input} --out {output} > {log} 2>&1"


rule csi_figure:
    input:
        csi_figure_part,
    output:
        report(
            f"{G.RESULTS}/figures/{{fig}}.png",
            caption="../report/csi_figure.rst",
            category="Figures",
            labels={"figure": "{fig}"},
        ),
    params:
        title=lambda w: G.csi_figure_title(config, w.fig),
    wildcard_constraints:
        fig=alternatives(config.get("csi_figures", {})),
    log:
        f"{LOGS}/csi_figure/{{fig}}.log",
    conda:
        ENV
    shell:
        "atomsift csi-figure --table {input} --kind bars --title {params.title:q} --out {output} > {log} 2>&1"


rule coverage:
    input:
        lambda w: G.store_dir(w.dataset),
    output:
        G.coverage_file("{dataset}"),
    params:
        n=config["csi"].get("coverage_n", 0),
        seed=config["csi"].get("seed", 0),
    log:
        f"{LOGS}/coverage/{{dataset}}.log",
    conda:
        ENV
    shell:
        "atomsift coverage --store {input} --n {params.n} --seed {params.seed} --out {output} > {log} 2>&1"


rule coverage_figure:
    input:
        [G.coverage_file(d) for d in G.coverage_datasets(config)],
    output:
        report(f"{G.RESULTS}/figures/fig9.png", caption="../report/coverage.rst", category="Figures", labels={"figure": "fig9"}),
    log:
        f"{LOGS}/coverage_figure/fig9.log",
    conda:
        ENV
    shell:
        "atomsift csi-figure --table {input} --kind coverage --out {output} > {log} 2>&1"
