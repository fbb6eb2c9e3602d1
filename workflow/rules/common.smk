# Configuration validation and input functions shared by every rule file.
# The grid expansion and the results/ layout live in atomsift.workflow.grid (tested there and
# shared with the report builders); this file only binds them to the loaded config.

import os
import re
import shlex
import shutil
import sys


from atomsift.errors import InputError
from atomsift.workflow import grid as G

# Jobs call `atomsift` by name. Run by `.venv/bin/snakemake` without an activated environment,
# they find the atomsift installed beside this interpreter (an atomsift already on PATH, or a
# conda env activated for a job, comes first).
_BIN = os.path.dirname(sys.executable)
if shutil.which("atomsift") is None and os.path.exists(os.path.join(_BIN, "atomsift")):
    os.environ.update(PATH=os.pathsep.join([_BIN, os.environ.get("PATH", "")]))

CONFIG_FILES = [os.path.relpath(f) for f in workflow.overwrite_configfiles] or ["config.yaml"]
CONFIG_SOURCE = ", ".join(CONFIG_FILES)

# validate() with a one-line message naming the field (snakemake.utils.validate dumps the
# whole schema); the code reads optional keys with their schema defaults.
# the options blocks refer to run-options.schema.json, generated from the run files' definition
SCHEMAS = {name: workflow.source_path(f"../schemas/{name}") for name in ("config.schema.yaml", "run-options.schema.json")}
try:
    G.validate_config(config, SCHEMAS["config.schema.yaml"], CONFIG_SOURCE, refs=SCHEMAS)
except InputError as err:
    # one line, no traceback: the message names the file and the field
    print(f"invalid configuration: {err}", file=sys.stderr)
    sys.exit(1)

GENERATED = [d for d, s in config["datasets"].items() if "generate" in s]
PREPARED = [d for d, s in config["datasets"].items() if "prepare" in s]
DOWNLOADED = [
    d for d, s in config["datasets"].items() if "prepare" in s and not s.get("source") and s.get("download")
]
MODELS = G.models_downloaded(config)  # public checkpoints the extractors need
TEMPLATE = "workflow/templates/run.yaml"
ENV = "../../envs/atomsift.yaml"
LOGS = f"{G.RESULTS}/logs"
SEEDS = [int(s) for s in config["finetune"]["seeds"]]  # every finetuning job runs them all
BENCH = f"{G.RESULTS}/benchmarks"


def alternatives(names):
    """A wildcard constraint matching exactly these names ('$^' matches nothing)."""
    return "|".join(re.escape(n) for n in names) or "$^"


wildcard_constraints:
    dataset=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    upstream=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    task=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    backbone=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    extractor=r"[A-Za-z0-9][A-Za-z0-9.-]*",
    budget=r"[0-9][0-9]*x[0-9][0-9]*|none",
    seed=r"[0-9][0-9]*",
    sampling=r"balanced|random",
    agg=r"flat|mean|sum|max",
    kind=r"id|ood",
    model=r"[A-Za-z0-9][A-Za-z0-9.-]*",


# ---- input functions ------------------------------------------------------------------------


def dataset_source(wildcards):
    """The release a prepared dataset is read from: the user's path, or the download rule's dir."""
    spec = config["datasets"][wildcards.dataset]
    if spec.get("source"):
        return []
    if spec.get("download"):
        return [G.raw_dir(wildcards.dataset)]
    return []


def prepare_args(wildcards, input):
    spec = config["datasets"][wildcards.dataset]
    args = []
    source = spec.get("source") or (input[0] if len(input) else None)
    if source:
        args += ["--source", str(source)]
    for key, value in spec.get("options", {}).items():
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            args.append(flag)
        elif value is not False:
            args += [flag, str(value)]
    return " ".join(shlex.quote(a) for a in args)


def pretrain_stores(wildcards):
    return [G.store_dir(d) for d in config["upstreams"][wildcards.upstream]["mix"]]


def pretrained_checkpoint(wildcards):
    if wildcards.upstream == G.NONE:
        return []
    return [f"{G.pretrain_dir(wildcards.upstream, wildcards.budget, wildcards.backbone)}/model.pt"]


def task_store(wildcards):
    return G.store_dir(config["tasks"][wildcards.task]["dataset"])


def extractor_checkpoint(wildcards):
    spec = config["csi"]["extractors"][wildcards.extractor]
    if "download" in spec:
        return [G.model_dir(spec["download"])]
    return [G.extractor_spec(config, wildcards.extractor)] if "pretrained" in spec else []


def csi_part_inputs(wildcards):
    files = G.part_inputs(config, wildcards.extractor, wildcards.sampling, wildcards.agg, wildcards.kind)
    return sorted(set(files["upstream"].values()) | set(files["downstream"].values()))


def csi_part_args(wildcards):
    files = G.part_inputs(config, wildcards.extractor, wildcards.sampling, wildcards.agg, wildcards.kind)
    args = [f"--upstream {u}={p}" for u, p in files["upstream"].items()]
    args += [f"--downstream {t}={p}" for t, p in files["downstream"].items()]
    return " ".join(args)


def csi_parts_of(wildcards):
    return [G.csi_part(*p) for p in G.csi_parts(config) if p[0] == wildcards.extractor]


def csi_figure_part(wildcards):
    spec = config["csi_figures"][wildcards.fig]
    return G.csi_part(spec["extractor"], spec["sampling"], spec["agg"], spec["tasks"])


def final_outputs():
    """Everything `snakemake` with no target builds."""
    out = [f"{G.RESULTS}/{t}.{ext}" for t in config["tables"] for ext in ("csv", "md")]
    # the rendered tables and report: Snakemake's report page (`snakemake --report`) shows them
    out += [f"{G.RESULTS}/html/{t}.html" for t in [*config["tables"], "report"]]
    out += [G.csi_table(e) for e in G.extractors_used(config)]
    out += [f"{G.RESULTS}/figures/{f}.png" for f in G.figures(config)]
    out.append(f"{G.RESULTS}/report.md")
    return out


def reproduce_command():
    files = "".join(f" --configfile {os.path.relpath(f)}" for f in workflow.overwrite_configfiles)
    return f"snakemake --cores all{files}"


def report_job_spec(name):
    if name in config["tables"]:
        return G.table_spec(config, name)
    if name == "report":
        return G.report_spec(config, reproduce_command(), CONFIG_SOURCE)
    return G.figure_spec(config, name)
