# atomsift: every table and figure of Ghunaim et al. 2025 from one DAG.
#
#   snakemake --cores all                                            embedded mini-universe
#   snakemake results/table2.csv                                     one artefact
#   snakemake --configfile workflow/configs/paper.yaml --profile slurm   the paper's grid
#   snakemake --report results/report.html                          the results as one HTML page
#
# The grid (config.yaml, or the files given with --configfile) is validated against
# workflow/schemas/config.schema.yaml before anything runs. Rules are thin: each calls one
# `atomsift` verb; docs/workflow.md describes the targets and the layout of results/.

from snakemake.utils import min_version

min_version("9.0")


# `snakemake --report results/report.html`: one self-contained page with every table, figure and
# the report (outputs tagged with report() in the rule files; captions in workflow/report/)
report: "workflow/report/workflow.rst"


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
