# Budgeted pretraining: N structures from an upstream (or a mixture) for E epochs.


localrules:
    pretrain_run,


rule pretrain_run:
    input:
        TEMPLATE,
    output:
        f"{G.RESULTS}/runs/pretrain/{{upstream}}/{{budget}}/{{backbone}}.yaml",
    params:
        run=lambda w: G.pretrain_run(config, w.upstream, w.budget, w.backbone),
    log:
        f"{LOGS}/pretrain_run/{{upstream}}/{{budget}}/{{backbone}}.log",
    template_engine:
        "yte"


rule pretrain:
    input:
        run=f"{G.RESULTS}/runs/pretrain/{{upstream}}/{{budget}}/{{backbone}}.yaml",
        stores=pretrain_stores,
    output:
        model=f"{G.pretrain_dir('{upstream}', '{budget}', '{backbone}')}/model.pt",
        metrics=f"{G.pretrain_dir('{upstream}', '{budget}', '{backbone}')}/metrics.json",
    params:
        out=lambda w: G.pretrain_dir(w.upstream, w.budget, w.backbone),
    log:
        f"{LOGS}/pretrain/{{upstream}}/{{budget}}/{{backbone}}.log",
    benchmark:
        G.benchmark_file("pretrain", "{upstream}", "{budget}", "{backbone}")
    # before the (many, short) finetuning jobs, so the long ones (OC20, mixtures) do not end the run alone
    priority: 10
    threads: 1
    resources:
        mem_mb=8000,
        runtime=2880,
    conda:
        ENV
    # a rerun (changed run file or stores) over a run directory starts over; a hand-run command refuses
    shell:
        "OMP_NUM_THREADS={threads} atomsift pretrain --config {input.run} --out {params.out} "
        "--on-changed-inputs restart > {log} 2>&1"
