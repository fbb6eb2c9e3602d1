"""The experiment grid: which jobs a configuration asks for, and where their files live.

The Snakemake DAG (``workflow/rules/common.smk``) and the report builders share this module, so
the path of a finetuning result is written down once. A configuration is first validated
against ``workflow/schemas/config.schema.yaml``; :func:`check_grid` then checks what a schema
cannot: that every name a table, figure or mixture uses is defined.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from itertools import product

from atomsift.errors import InputError, dotted_path, unknown_key

RESULTS = "results"
NONE = "none"  # upstream and budget of the no-pretraining baseline
TABLES = ("table1", "table2", "table3", "table4", "table5")
CSI_FIGURES = ("fig3", "fig5", "fig6", "fig7", "fig8")
DOWNSTREAM_SAMPLING = "random"  # the paper samples downstream sets at random (PAPER.md §2.8)


# ---------------------------------------------------------------------------------------------
# paths (relative to the working directory of the DAG)


def store_dir(dataset: str) -> str:
    return f"{RESULTS}/data/{dataset}"


def raw_dir(dataset: str) -> str:
    return f"{RESULTS}/raw/{dataset}"


def model_dir(model: str) -> str:
    """Where the download rule puts a public model checkpoint (``atomsift download MODEL``)."""
    return f"{RESULTS}/checkpoints/{model}"


def pretrain_dir(upstream: str, budget: str, backbone: str) -> str:
    return f"{RESULTS}/pretrain/{upstream}/{budget}/{backbone}"


def finetune_cell_dir(task: str, upstream: str, budget: str, backbone: str) -> str:
    """One job finetunes every seed of a cell, each into ``s<seed>/`` below this directory."""
    return f"{RESULTS}/finetune/{task}/{upstream}/{budget}/{backbone}"


def finetune_dir(task: str, upstream: str, budget: str, backbone: str, seed: int | str) -> str:
    return f"{finetune_cell_dir(task, upstream, budget, backbone)}/s{seed}"


def finetune_metrics(task: str, upstream: str, budget: str, backbone: str, seed: int | str) -> str:
    return f"{finetune_dir(task, upstream, budget, backbone, seed)}/metrics.json"


def moments_file(extractor: str, dataset: str, sampling: str, agg: str) -> str:
    return f"{RESULTS}/moments/{extractor}/{dataset}/{sampling}-{agg}.npz"


def csi_part(extractor: str, sampling: str, agg: str, kind: str) -> str:
    return f"{RESULTS}/csi/{extractor}/{sampling}-{agg}-{kind}.csv"


def csi_table(extractor: str) -> str:
    return f"{RESULTS}/csi/{extractor}.csv"


def coverage_file(dataset: str) -> str:
    return f"{RESULTS}/coverage/{dataset}.json"


def benchmark_file(rule: str, *parts) -> str:
    return f"{RESULTS}/benchmarks/{rule}/{'/'.join(str(p) for p in parts)}.tsv"


# ---------------------------------------------------------------------------------------------
# budgets


def parse_budget(budget: str) -> tuple[int, int]:
    """``"2000x5"`` -> ``(2000, 5)`` (structures N, epochs E)."""
    n, e = budget.split("x")
    return int(n), int(e)


def budget_label(budget: str) -> str:
    """A human label of a budget: ``2000000x5`` -> ``N=2M, E=5``."""
    if budget == NONE:
        return "-"
    n, e = parse_budget(budget)
    return f"N={_short(n)}, E={e}"


def _short(n: int) -> str:
    for div, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= div and n % (div // 10) == 0:
            v = n / div
            return f"{v:g}{suffix}"
    return str(n)


# ---------------------------------------------------------------------------------------------
# cross-reference checks


def _bad(field: str, message: str, source: str) -> InputError:
    return InputError(message, path=source, field=field)


def check_grid(config: dict, source: str = "config") -> None:
    """Raise :class:`InputError` (naming the field) when a name is used but not defined."""
    datasets = config["datasets"]
    upstreams = config["upstreams"]
    backbones = config["backbones"]
    tasks = config["tasks"]
    extractors = config["csi"]["extractors"]

    def need(kind: str, name: str, known, field: str) -> None:
        if name not in known:
            choices = ", ".join(sorted(known)) or "none defined"
            raise _bad(field, f"unknown {kind} '{name}' (defined: {choices})", source)

    for u, spec in upstreams.items():
        if u == NONE:
            raise _bad(f"upstreams.{u}", f"'{NONE}' is reserved for the no-pretraining baseline", source)
        for d in spec["mix"]:
            need("dataset", d, datasets, f"upstreams.{u}.mix")
        total = sum(spec["mix"].values())
        if abs(total - 1.0) > 1e-6:
            raise _bad(f"upstreams.{u}.mix", f"fractions sum to {total:g}, not 1", source)
    for t, spec in tasks.items():
        need("dataset", spec["dataset"], datasets, f"tasks.{t}.dataset")
    for name, spec in config["tables"].items():
        for u in spec["upstreams"]:
            need("upstream", u, upstreams, f"tables.{name}.upstreams")
        for b in spec["backbones"]:
            need("backbone", b, backbones, f"tables.{name}.backbones")
        for t in spec["tasks"]:
            need("task", t, tasks, f"tables.{name}.tasks")
    for name, spec in extractors.items():
        if "download" in spec:
            need("model checkpoint", spec["download"], downloadable_models(), f"csi.extractors.{name}.download")
        if "pretrained" in spec:
            p = spec["pretrained"]
            need("upstream", p["upstream"], upstreams, f"csi.extractors.{name}.pretrained.upstream")
            need("backbone", p["backbone"], backbones, f"csi.extractors.{name}.pretrained.backbone")
    sel = config["csi"]["selection"]
    need("extractor", sel["extractor"], extractors, "csi.selection.extractor")
    if config["csi"].get("untrained"):
        need("extractor", config["csi"]["untrained"], extractors, "csi.untrained")
    for name, spec in config.get("csi_figures", {}).items():
        need("extractor", spec["extractor"], extractors, f"csi_figures.{name}.extractor")
    if not csi_upstreams(config):
        raise _bad("upstreams", "no single-dataset upstream to compute CSI for", source)
    if "fig1" in config:
        f = config["fig1"]
        for u in f["candidates"]:
            need("upstream", u, upstreams, "fig1.candidates")
        need("upstream", f["baseline"]["upstream"], upstreams, "fig1.baseline.upstream")
        need("backbone", f["backbone"], backbones, "fig1.backbone")
        for t in f["tasks"]:
            need("task", t, tasks, "fig1.tasks")
    if "fig4" in config:
        f = config["fig4"]
        need("upstream", f["base"]["upstream"], upstreams, "fig4.base.upstream")
        need("upstream", f["added"]["upstream"], upstreams, "fig4.added.upstream")
        need("backbone", f["backbone"], backbones, "fig4.backbone")
        for t in f["tasks"]:
            need("task", t, tasks, "fig4.tasks")


def config_hash(config: dict) -> str:
    """SHA-256 (first 12 hex digits) of the configuration as canonical JSON."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# grid expansion


@dataclass(frozen=True, order=True)
class Cell:
    """One finetuning run: a task finetuned from (upstream, budget, backbone) with a seed."""

    task: str
    upstream: str
    budget: str
    backbone: str
    seed: int

    @property
    def metrics(self) -> str:
        return finetune_metrics(self.task, self.upstream, self.budget, self.backbone, self.seed)

    @property
    def pretrained(self) -> tuple[str, str, str] | None:
        if self.upstream == NONE:
            return None
        return (self.upstream, self.budget, self.backbone)


def csi_upstreams(config: dict) -> dict[str, str]:
    """Upstreams made of one dataset (the rows of a CSI table): upstream name -> dataset."""
    return {u: next(iter(s["mix"])) for u, s in config["upstreams"].items() if len(s["mix"]) == 1}


def table_rows(config: dict, table: str) -> list[tuple[str, str, str]]:
    """Rows of a table, in order: (upstream, budget, backbone); the baseline row(s) last."""
    spec = config["tables"][table]
    rows = [(u, b, bb) for bb, b, u in product(spec["backbones"], spec["budgets"], spec["upstreams"])]
    if spec.get("baseline", True):
        rows += [(NONE, NONE, bb) for bb in spec["backbones"]]
    return rows


def table_cells(config: dict, table: str) -> list[Cell]:
    spec = config["tables"][table]
    seeds = config["finetune"]["seeds"]
    return [
        Cell(t, u, b, bb, s)
        for (u, b, bb) in table_rows(config, table)
        for t in spec["tasks"]
        for s in seeds
    ]


def fig1_cells(config: dict) -> list[Cell]:
    f = config.get("fig1")
    if not f:
        return []
    seeds = config["finetune"]["seeds"]
    rows = [(u, f["budget"]) for u in f["candidates"]] + [(f["baseline"]["upstream"], f["baseline"]["budget"])]
    return [Cell(t, u, b, f["backbone"], s) for (u, b) in rows for t in f["tasks"] for s in seeds]


def fig4_cells(config: dict) -> list[Cell]:
    f = config.get("fig4")
    if not f:
        return []
    seeds = config["finetune"]["seeds"]
    rows = [(f["base"]["upstream"], f["base"]["budget"]), (f["added"]["upstream"], f["added"]["budget"])]
    return [Cell(t, u, b, f["backbone"], s) for (u, b) in rows for t in f["tasks"] for s in seeds]


def all_cells(config: dict) -> list[Cell]:
    cells = set()
    for table in config["tables"]:
        cells.update(table_cells(config, table))
    cells.update(fig1_cells(config))
    cells.update(fig4_cells(config))
    return sorted(cells)


def pretrain_runs(config: dict) -> list[tuple[str, str, str]]:
    """Every (upstream, budget, backbone) the grid pretrains (finetuning cells and extractors)."""
    runs = {c.pretrained for c in all_cells(config) if c.pretrained}
    for spec in config["csi"]["extractors"].values():
        if "pretrained" in spec:
            p = spec["pretrained"]
            runs.add((p["upstream"], p["budget"], p["backbone"]))
    return sorted(runs)


def csi_parts(config: dict) -> list[tuple[str, str, str, str]]:
    """Every (extractor, sampling, agg, task kind) CSI table the figures and the selection need."""
    kinds = {spec["kind"] for spec in config["tasks"].values()}
    sel = config["csi"]["selection"]
    parts = {(sel["extractor"], sel["sampling"], sel["agg"], k) for k in kinds}
    if config["csi"].get("untrained"):  # the report's baseline: the same CSI from an untrained extractor
        parts |= {(config["csi"]["untrained"], sel["sampling"], sel["agg"], k) for k in kinds}
    for spec in config.get("csi_figures", {}).values():
        parts.add((spec["extractor"], spec["sampling"], spec["agg"], spec["tasks"]))
    return sorted(parts)


def part_tasks(config: dict, kind: str) -> list[str]:
    return [t for t, spec in config["tasks"].items() if spec["kind"] == kind]


def part_inputs(config: dict, extractor: str, sampling: str, agg: str, kind: str) -> dict[str, dict[str, str]]:
    """Moments files of one CSI table: {"upstream": {name: npz}, "downstream": {task: npz}}."""
    ups = {u: moments_file(extractor, d, sampling, agg) for u, d in csi_upstreams(config).items()}
    downs = {
        t: moments_file(extractor, config["tasks"][t]["dataset"], DOWNSTREAM_SAMPLING, agg)
        for t in part_tasks(config, kind)
    }
    return {"upstream": ups, "downstream": downs}


def extractors_used(config: dict) -> list[str]:
    return sorted({p[0] for p in csi_parts(config)})


def moments_needed(config: dict) -> list[tuple[str, str, str, str]]:
    out = set()
    for part in csi_parts(config):
        files = part_inputs(config, *part)
        for kind in ("upstream", "downstream"):
            for path in files[kind].values():
                out.add(path)
    return sorted(out)


def selection_moments(config: dict) -> list[str]:
    """The upstream statistics ``atomsift select FILE`` ranks by: the selection extractor's
    class-balanced, flat moments of every single-dataset upstream (``snakemake selection``)."""
    ex = config["csi"]["selection"]["extractor"]
    return [moments_file(ex, d, "balanced", "flat") for d in sorted(set(csi_upstreams(config).values()))]


def downloadable_models() -> dict:
    """The model checkpoints ``atomsift download`` knows: name -> release."""
    from atomsift.data.download import DATASETS

    return {k: r for k, r in DATASETS.items() if r.kind != "dataset"}


def models_downloaded(config: dict) -> list[str]:
    """Public checkpoints the grid's extractors are built from."""
    return sorted({s["download"] for s in config["csi"]["extractors"].values() if "download" in s})


def extractor_spec(config: dict, extractor: str) -> str:
    """What ``atomsift moments --extractor`` gets: a name such as random-tiny-0, a checkpoint this
    DAG pretrained, or a downloaded one (``eqv2:``-prefixed for EquiformerV2)."""
    spec = config["csi"]["extractors"][extractor]
    if "spec" in spec:
        return spec["spec"]
    if "download" in spec:
        release = downloadable_models()[spec["download"]]
        filename = next(iter(release.files.values()))[0].filename
        prefix = "eqv2:" if release.kind == "eqv2" else ""
        return f"{prefix}{model_dir(spec['download'])}/{filename}"
    p = spec["pretrained"]
    return f"{pretrain_dir(p['upstream'], p['budget'], p['backbone'])}/model.pt"


def coverage_datasets(config: dict) -> list[str]:
    return sorted(set(csi_upstreams(config).values()))


# ---------------------------------------------------------------------------------------------
# run files (one small YAML per training job)


def pretrain_run(config: dict, upstream: str, budget: str, backbone: str) -> dict:
    """The run file of one pretraining job (keys of docs/training.md)."""
    n, e = parse_budget(budget)
    mix = config["upstreams"][upstream]["mix"]
    up = {"stores": {d: store_dir(d) for d in mix}}
    if len(mix) == 1:
        up["mixture"] = "single"
    else:
        up["mixture"] = "proportions"
        up["proportions"] = {d: float(f) for d, f in mix.items()}
    run = {
        "size": config["backbones"][backbone]["size"],
        "seed": int(config["pretrain"].get("seed", 0)),
        "upstream": up,
        "n_structures": n,
        "epochs": e,
    }
    run.update(config["pretrain"].get("options", {}))
    return run


def finetune_run(config: dict, task: str, backbone: str, seed: int) -> dict:
    """The run file of one finetuning job (keys of docs/training.md)."""
    spec = config["tasks"][task]
    run = {
        "task": spec.get("recipe", task),
        "store": store_dir(spec["dataset"]),
        "size": config["backbones"][backbone]["size"],
        "seed": int(seed),
    }
    if spec.get("target"):
        run["target"] = spec["target"]
    run.update(config["finetune"].get("options", {}))
    run.update(spec.get("options", {}))
    return run


# ---------------------------------------------------------------------------------------------
# validation


def validate_config(config: dict, schema_path: str, source: str = "config", refs: dict[str, str] | None = None) -> None:
    """Check ``config`` before any job: its ``options`` blocks with the run files' own typed
    definition, the whole against the JSON schema, the cross-references, then every run file the
    grid expands to (checks across keys, e.g. a target for a forces task).

    Raises one :class:`InputError` naming the config file and the offending field, e.g.
    ``config.yaml: field 'finetune.options.epohcs': unknown key 'epohcs', did you mean 'epochs'? ...``,
    the same message ``atomsift finetune`` gives for that key in a run file. ``refs`` maps the
    names of schema files the schema refers to (``run-options.schema.json``) to their paths
    (default: beside ``schema_path``).
    """
    import jsonschema

    checked = _checked_options(config, source)
    validator = jsonschema.Draft202012Validator(_load_schema(schema_path), registry=_schema_registry(schema_path, refs))
    errors = list(validator.iter_errors(checked))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        field = dotted_path(err.absolute_path) or "(top level)"
        raise InputError(_explain(err), path=source, field=field)
    check_grid(config, source)
    check_run_files(config, source)


def _load_schema(path) -> dict:
    import json

    import yaml

    with open(path) as fh:
        return json.load(fh) if str(path).endswith(".json") else yaml.safe_load(fh)


def _schema_registry(schema_path: str, refs: dict[str, str] | None = None):
    """References such as ``run-options.schema.json#/$defs/pretrain`` resolve to ``refs[name]``,
    else to the file of that name beside the schema."""
    from pathlib import Path

    from referencing import Registry, Resource

    root = Path(schema_path).parent

    def retrieve(uri: str):
        return Resource.from_contents(_load_schema((refs or {}).get(uri) or root / uri))

    return Registry(retrieve=retrieve)


def _options_blocks(config: dict):
    """(verb, dotted place, holder dict) of every ``options`` block of the configuration."""
    for verb in ("pretrain", "finetune"):
        if isinstance(config.get(verb), dict) and "options" in config[verb]:
            yield verb, f"{verb}.options", config[verb]
    if isinstance(config.get("tasks"), dict):
        for t, spec in config["tasks"].items():
            if isinstance(spec, dict) and "options" in spec:
                yield "finetune", f"tasks.{t}.options", spec


def _checked_options(config: dict, source: str) -> dict:
    """A copy of ``config`` whose options blocks passed the run files' validation, normalised (a
    number written as text becomes a number) so that the JSON schema sees what the verbs will."""
    import copy

    from atomsift.train.config import check_options

    out = copy.deepcopy(config)
    for verb, where, holder in _options_blocks(out):
        holder["options"] = check_options(verb, holder["options"], source, where)
    return out


def check_run_files(config: dict, source: str = "config") -> None:
    """Validate the run file of every pretraining job and of every (task, backbone) finetuning job
    the grid asks for, naming the configuration key each run-file key came from."""
    from atomsift.train.config import check_run_file

    for u, b, bb in pretrain_runs(config):
        opts = config["pretrain"].get("options", {})
        grid = {"size": f"backbones.{bb}.size", "seed": "pretrain.seed", "upstream": f"upstreams.{u}.mix",
                "n_structures": f"budget {b} (N)", "epochs": f"budget {b} (E)"}
        check_run_file("pretrain", pretrain_run(config, u, b, bb), source,
                       lambda key: f"pretrain.options.{key}" if key in opts else grid.get(key, key))
    for t, bb in sorted({(c.task, c.backbone) for c in all_cells(config)}):
        spec = config["tasks"][t]
        opts, task_opts = config["finetune"].get("options", {}), spec.get("options", {})
        grid = {"task": f"tasks.{t}.recipe" if "recipe" in spec else f"tasks.{t}", "store": f"tasks.{t}.dataset",
                "target": f"tasks.{t}.target", "size": f"backbones.{bb}.size", "seed": "finetune.seeds"}

        def origin(key, t=t, opts=opts, task_opts=task_opts, grid=grid):
            if key in task_opts:
                return f"tasks.{t}.options.{key}"
            return f"finetune.options.{key}" if key in opts else grid.get(key, key)

        check_run_file("finetune", finetune_run(config, t, bb, config["finetune"]["seeds"][0]), source, origin)


def _explain(err) -> str:
    """A short sentence for a jsonschema error (its own message can dump whole objects), in the
    phrases of the run files' errors (:mod:`atomsift.train.config`)."""
    v = err.validator
    inst = err.instance
    if v == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(inst) - set(allowed)) if isinstance(inst, dict) else []
        if extra:
            return unknown_key(extra[0], allowed)
        return "unknown key"
    if v == "required":
        return err.message
    if v == "pattern":
        desc = err.schema.get("description")
        return f"{inst!r} is not valid" + (f": {desc}" if desc else f" (must match {err.validator_value})")
    if v == "enum":
        return f"{inst!r} is not one of {', '.join(map(str, err.validator_value))}"
    if v == "oneOf":
        opts = [s.get("description", "") for s in err.validator_value]
        return "matches none of the allowed forms: " + "; ".join(o for o in opts if o)
    if v == "type":
        return f"{inst!r} should be of type {err.validator_value}"
    msg = err.message
    return msg if len(msg) < 200 else msg[:200] + "..."


# ---------------------------------------------------------------------------------------------
# specs of the report jobs (tables, figures, report): one YAML each, rendered by the DAG


def figures(config: dict) -> list[str]:
    """Every figure the configuration asks for, in paper order."""
    figs = []
    if config.get("fig1"):
        figs.append("fig1")
    figs += [f for f in CSI_FIGURES if f in config.get("csi_figures", {})]
    if config.get("fig4"):
        figs.append("fig4")
    if config["csi"].get("coverage_n"):
        figs.append("fig9")
    return sorted(figs, key=lambda f: int(f[3:]))


def _task_info(config: dict, tasks) -> list[dict]:
    out = []
    for t in tasks:
        spec = config["tasks"][t]
        out.append({"name": t, "label": spec.get("label", t), "unit": spec["unit"], "kind": spec["kind"]})
    return out


def _cell_dicts(cells) -> list[dict]:
    return [
        {"task": c.task, "upstream": c.upstream, "budget": c.budget, "backbone": c.backbone,
         "seed": c.seed, "metrics": c.metrics}
        for c in cells
    ]


def table_spec(config: dict, table: str) -> dict:
    spec = config["tables"][table]
    return {
        "table": table,
        "tasks": _task_info(config, spec["tasks"]),
        "rows": [{"upstream": u, "budget": b, "backbone": bb} for u, b, bb in table_rows(config, table)],
        "seeds": list(config["finetune"]["seeds"]),
        "omitted": dict(spec.get("omitted", {})),
        "cells": _cell_dicts(table_cells(config, table)),
    }


def table_inputs(config: dict, table: str) -> list[str]:
    return [c.metrics for c in table_cells(config, table)]


def _selection(config: dict) -> dict:
    sel = config["csi"]["selection"]
    out = {"table": csi_table(sel["extractor"]), **sel}
    pre = config["csi"]["extractors"][sel["extractor"]].get("pretrained")
    if pre:  # a backbone this DAG pretrains: the report shows its validation curve
        out["pretrained_metrics"] = f"{pretrain_dir(pre['upstream'], pre['budget'], pre['backbone'])}/metrics.json"
    return out


def figure_spec(config: dict, figure: str) -> dict:
    if figure == "fig1":
        f = config["fig1"]
        return {
            "figure": "fig1",
            "candidates": list(f["candidates"]),
            "budget": f["budget"],
            "baseline": dict(f["baseline"]),
            "backbone": f["backbone"],
            "tasks": _task_info(config, f["tasks"]),
            "csi": _selection(config),
            "cells": _cell_dicts(fig1_cells(config)),
        }
    if figure == "fig4":
        f = config["fig4"]
        return {
            "figure": "fig4",
            "base": dict(f["base"]),
            "added": dict(f["added"]),
            "mix": dict(config["upstreams"][f["added"]["upstream"]]["mix"]),
            "backbone": f["backbone"],
            "tasks": _task_info(config, f["tasks"]),
            "cells": _cell_dicts(fig4_cells(config)),
        }
    raise InputError(f"no spec for figure {figure}", field="figure")


def figure_inputs(config: dict, figure: str) -> list[str]:
    spec = figure_spec(config, figure)
    files = [c["metrics"] for c in spec["cells"]]
    if figure == "fig1":
        files.append(spec["csi"]["table"])
    return files


def csi_figure_title(config: dict, figure: str) -> str:
    spec = config["csi_figures"][figure]
    kind = "in-distribution" if spec["tasks"] == "id" else "out-of-distribution"
    return f"Fig. {figure[3:]}: CSI, {kind} tasks ({spec['extractor']}, {spec['sampling']} sampling, {spec['agg']})"


def report_spec(config: dict, command: str, source: str) -> dict:
    runs = []
    for u, b, bb in pretrain_runs(config):
        d = pretrain_dir(u, b, bb)
        runs.append({
            "upstream": u, "budget": b, "backbone": bb, "metrics": f"{d}/metrics.json",
            "benchmark": benchmark_file("pretrain", u, b, bb),
        })
    cells = []
    for c in all_cells(config):
        item = _cell_dicts([c])[0]
        item["benchmark"] = benchmark_file("finetune", c.task, c.upstream, c.budget, c.backbone)  # one job per cell
        cells.append(item)
    return {
        "config_source": source,
        "config_hash": config_hash(config),
        "command": command,
        "tables": {t: {"csv": f"{RESULTS}/{t}.csv", "spec": table_spec(config, t)} for t in config["tables"]},
        "figures": {f: f"{RESULTS}/figures/{f}.png" for f in figures(config)},
        "csi": {"selection": _selection(config), "tables": {e: csi_table(e) for e in extractors_used(config)},
                "upstreams": csi_upstreams(config), **_untrained(config)},
        "composition": composition_stores(config),
        "tasks": _task_info(config, config["tasks"]),
        "pretrain": runs,
        "cells": cells,
        "seeds": list(config["finetune"]["seeds"]),
        "config": config,
    }


def _untrained(config: dict) -> dict:
    name = config["csi"].get("untrained")
    return {"untrained": {"extractor": name, "table": csi_table(name)}} if name else {}


def composition_stores(config: dict) -> dict:
    """Stores whose element composition the report compares (upstreams vs tasks)."""
    return {"upstreams": {u: store_dir(d) for u, d in csi_upstreams(config).items()},
            "tasks": {t: store_dir(s["dataset"]) for t, s in config["tasks"].items()}}


def report_inputs(config: dict) -> list[str]:
    files = [f"{RESULTS}/{t}.csv" for t in config["tables"]]
    comp = composition_stores(config)
    files += list(comp["upstreams"].values()) + list(comp["tasks"].values())
    files += [f"{RESULTS}/figures/{f}.png" for f in figures(config)]
    files += [csi_table(e) for e in extractors_used(config)]
    files += [f"{pretrain_dir(*r)}/metrics.json" for r in pretrain_runs(config)]
    files += [c.metrics for c in all_cells(config)]
    return sorted(set(files))
