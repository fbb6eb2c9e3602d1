# Finetuning: a downstream task from a pretrained backbone (or from scratch: upstream "none").


localrules:
    finetune_run,


rule finetune_run:
    input:
        TEMPLATE,
    output:
        f"{G.RESULTS}/runs/finetune/{{task}}/{{backbone}}/s{{seed}}.yaml",
    params:
        run=lambda w: G.finetune_run(config, w.task, w.backbone, int(w.seed)),
    log:
        f"{LOGS}/finetune_run/{{task}}/{{backbone}}/s{{seed}}.log",
    template_engine:
        "yte"


rule finetune:
    input:
        run=f"{G.RESULTS}/runs/finetune/{{task}}/{{backbone}}/s{{seed}}.yaml",
        store=task_store,
        checkpoint=pretrained_checkpoint,
    output:
        G.finetune_metrics("{task}", "{upstream}", "{budget}", "{backbone}", "{seed}"),
    params:
        out=lambda w: G.finetune_dir(w.task, w.upstream, w.budget, w.backbone, w.seed),
        pretrained=lambda w, input: input.checkpoint or G.NONE,
    log:
        f"{LOGS}/finetune/{{task}}/{{upstream}}/{{budget}}/{{backbone}}/s{{seed}}.log",
    benchmark:
        G.benchmark_file("finetune", "{task}", "{upstream}", "{budget}", "{backbone}", "s{seed}")
    threads: 1
    resources:
        mem_mb=8000,
        runtime=1440,
    conda:
        ENV
    # a rerun (changed run file, store or checkpoint) over a run directory starts over; a hand-run command refuses
    shell:
        "OMP_NUM_THREADS={threads} atomsift finetune --config {input.run} "
        "--pretrained {params.pretrained} --out {params.out} --on-changed-inputs restart > {log} 2>&1"
