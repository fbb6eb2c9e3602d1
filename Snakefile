# atomsift: every table and figure of Ghunaim et al. 2025 from one DAG.
#
#   snakemake --cores all                                            embedded mini-universe
#   snakemake results/table2.csv                                     one artefact
#   snakemake --configfile workflow/configs/paper.yaml --profile slurm   the paper's grid
#
# The grid (config.yaml, or the files given with --configfile) is validated against
# workflow/schemas/config.schema.yaml before anything runs. Rules are thin: each calls one
# `atomsift` verb; docs/workflow.md describes the targets and the layout of results/.

from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the default; --configfile replaces it instead of being merged into it.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/csi.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
