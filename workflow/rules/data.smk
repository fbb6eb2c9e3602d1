# Datasets: mini-universe analogs (generate), releases converted to the canonical store
# (prepare), fetched first when no local path is given (download).


rule generate:
    output:
        directory(G.store_dir("{dataset}")),
    params:
        name=lambda w: config["datasets"][w.dataset]["generate"],
        n=lambda w: config["datasets"][w.dataset]["n"],
        seed=lambda w: config["datasets"][w.dataset].get("seed", 0),
    wildcard_constraints:
        dataset=alternatives(GENERATED),
    log:
        f"{LOGS}/generate/{{dataset}}.log",
    benchmark:
        f"{BENCH}/generate/{{dataset}}.tsv"
    # data first: every later rule waits on a store, and a late one leaves cores idle at the end
    priority: 20
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        ENV
    shell:
        "atomsift generate {params.name} --out {output} --n {params.n} --seed {params.seed} "
        "--workers {threads} > {log} 2>&1"


rule download:
    output:
        directory(G.raw_dir("{dataset}")),
    params:
        name=lambda w: config["datasets"][w.dataset]["download"],
    wildcard_constraints:
        dataset=alternatives(DOWNLOADED),
    log:
        f"{LOGS}/download/{{dataset}}.log",
    benchmark:
        f"{BENCH}/download/{{dataset}}.tsv"
    resources:
        runtime=720,
    conda:
        ENV
    shell:
        "atomsift download {params.name} --dest {output} > {log} 2>&1"


rule download_model:
    output:
        directory(G.model_dir("{model}")),
    wildcard_constraints:
        model=alternatives(MODELS),
    log:
        f"{LOGS}/download_model/{{model}}.log",
    benchmark:
        f"{BENCH}/download_model/{{model}}.tsv"
    resources:
        runtime=120,
    conda:
        ENV
    shell:
        "atomsift download {wildcards.model} --dest {output} > {log} 2>&1"


rule prepare:
    input:
        dataset_source,
    output:
        directory(G.store_dir("{dataset}")),
    params:
        reader=lambda w: config["datasets"][w.dataset]["prepare"],
        args=prepare_args,
    wildcard_constraints:
        dataset=alternatives(PREPARED),
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    benchmark:
        f"{BENCH}/prepare/{{dataset}}.tsv"
    priority: 20
    threads: 1
    resources:
        mem_mb=8000,
        runtime=720,
    conda:
        ENV
    shell:
        "OMP_NUM_THREADS={threads} atomsift prepare {params.reader} {params.args} --out {output} > {log} 2>&1"
