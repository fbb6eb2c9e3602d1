"""The Snakemake workflow's Python side: grid expansion, the layout of ``results/``, the run files
and report specs the DAG writes (:mod:`atomsift.workflow.grid`), and the project's Snakemake
profiles (:mod:`atomsift.workflow.profiles`, ``atomsift profile install``).

The Snakefile and ``workflow/rules/*.smk`` import this package; ``atomsift.report`` keeps the
tables, figures and the report those specs describe.
"""
