# Finetuning: a downstream task from a pretrained backbone (or from scratch: upstream "none").


localrules:
    finetune_run,


rule finetune_run:
    input:
        TEMPLATE,
    output:
        f"{G.RESULTS}/runs/finetune/{{task}}/{{backbone}}.yaml",
    params:
        # the first seed; the job's --seeds sets each run's own
        run=lambda w: G.finetune_run(config, w.task, w.backbone, SEEDS[0]),
    log:
        f"{LOGS}/finetune_run/{{task}}/{{backbone}}.log",
    template_engine:
        "yte"


# One job per cell finetunes every seed in one process (`--seeds`): the imports and the store are
# paid once per cell, not once per seed (docs/workflow.md, "Where the time goes"). Asking for one
# seed's metrics.json builds the cell.
rule finetune:
    input:
        run=f"{G.RESULTS}/runs/finetune/{{task}}/{{backbone}}.yaml",
        store=task_store,
        checkpoint=pretrained_checkpoint,
    output:
        [G.finetune_metrics("{task}", "{upstream}", "{budget}", "{backbone}", s) for s in SEEDS],
    params:
        out=lambda w: G.finetune_cell_dir(w.task, w.upstream, w.budget, w.backbone),
        seeds=",".join(str(s) for s in SEEDS),
        pretrained=lambda w, input: input.checkpoint or G.NONE,
    log:
        f"{LOGS}/finetune/{{task}}/{{upstream}}/{{budget}}/{{backbone}}.log",
    benchmark:
        G.benchmark_file("finetune", "{task}", "{upstream}", "{budget}", "{backbone}")
    threads: 1
    resources:
        mem_mb=8000,
        runtime=1440,
    conda:
        ENV
    # a rerun (changed run file, store or checkpoint) over a run directory starts over; a hand-run command refuses
    shell:
        "OMP_NUM_THREADS={threads} atomsift finetune --config {input.run} "
        "--pretrained {params.pretrained} --seeds {params.seeds} --out {params.out} --on-changed-inputs restart > {log} 2>&1"
