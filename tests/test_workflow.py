"""The Snakemake grid: dry runs (job counts per rule), schema errors, the DAG's wiring end to end.

Every workflow run happens in a scratch directory that links the Snakefile, workflow/ and the
configs, so results/ of the checkout is never touched.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from atomsift.errors import InputError
from atomsift.workflow import grid as G
from atomsift.workflow.profiles import install

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"

pytestmark = pytest.mark.skipif(SNAKEMAKE is None, reason="snakemake is not installed")


def workdir(tmp: Path, config: dict | None = None) -> Path:
    """A scratch working directory with the workflow linked in (and config.yaml, or ``config``)."""
    for name in ("Snakefile", "workflow", "envs", "profiles"):
        (tmp / name).symlink_to(ROOT / name)
    if config is None:
        (tmp / "config.yaml").symlink_to(ROOT / "config.yaml")
    else:
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return tmp


def snakemake(cwd: Path, *args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def job_counts(stdout: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run."""
    block = stdout.split("Job stats:", 1)[1]
    counts = {}
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------
# dry runs


def test_paper_grid_dry_run_lists_the_paper_jobs(tmp_path):
    """Counts derived by hand from workflow/configs/paper.yaml (see the comments)."""
    wd = workdir(tmp_path)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = snakemake(wd, "-n", "--configfile", "workflow/configs/paper.yaml")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    # pretraining: Table 1 (6 upstreams at 2Mx5, S) + Table 2 (4 singles at 1M, 3M: +8)
    # + Table 3 (4 singles, L: +4) + Table 5 (4 singles at 1Mx10: +4) + Fig. 1's JMP-budget
    # Mixed (Temp) (+1) + Fig. 4's ANI-1x + OC22 at 3Mx5 (+1); Table 4 reuses Table 1's runs.
    assert counts["pretrain"] == 24
    assert counts["pretrain_run"] == 24
    # finetuning cells, one job each running its 3 seeds: T1 7 rows x 4 tasks (28) + T2 8 new rows x 4 (32)
    # + T3 5 rows (with the L baseline) x 4 (20) + T4 7 rows x 3 OOD tasks (21)
    # + T5 4 new rows x 4 (16) + Fig. 1 baseline x 4 (4) + Fig. 4 mixture x 4 (4) = 125
    assert counts["finetune"] == 125
    # run files: (task, backbone): 4 ID tasks x {S, L} + 3 OOD tasks x S
    assert counts["finetune_run"] == 4 * 2 + 3
    # 10 datasets prepared; all but QM9 (from its wheel) downloaded first
    assert counts["prepare"] == 10 and counts["download"] == 9
    assert "generate" not in counts
    # moments: eqv2-oc20 (selection, Figs. 3, 5-7): 4 upstreams x (balanced flat, balanced mean,
    # random flat) = 12, downstream random sampling: 6 datasets flat + 4 ID datasets mean = 10;
    # jmp-s (Fig. 8): 4 upstreams + 4 ID datasets, balanced/random flat = 8
    assert counts["moments"] == 12 + 10 + 8
    # both extractors' checkpoints come from the download rule, none placed by hand
    assert counts["download_model"] == 2
    assert counts["csi_part"] == 5 and counts["csi_table"] == 2 and counts["csi_figure"] == 5
    assert counts["coverage"] == 4 and counts["coverage_figure"] == 1
    assert counts["table"] == 5 and counts["figure"] == 2 and counts["report"] == 1
    assert counts["report_spec"] == 5 + 2 + 1
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert cpu < 5.0, f"paper dry run used {cpu:.1f} s of CPU"


def test_paper_grid_uses_the_papers_extractors():
    """EquiformerV2-OC20 for the selection and Figs. 3, 5-7, JMP-S for Fig. 8 (PAPER.md §2.1, 2.8),
    both fetched by ``atomsift download``."""
    cfg = load(ROOT / "workflow/configs/paper.yaml")
    G.check_grid(cfg)
    sel = cfg["csi"]["selection"]["extractor"]
    assert G.extractor_spec(cfg, sel) == "eqv2:results/checkpoints/eqv2-31m/eq2_31M_ec4_allmd.pt"
    figs = {f: s["extractor"] for f, s in cfg["csi_figures"].items()}
    assert figs == {"fig3": sel, "fig5": sel, "fig6": sel, "fig7": sel, "fig8": "jmp-s"}
    assert G.extractor_spec(cfg, "jmp-s") == "results/checkpoints/jmp-s/jmp-s.pt"
    assert G.models_downloaded(cfg) == ["eqv2-31m", "jmp-s"]
    cfg["csi"]["extractors"]["jmp-s"] = {"download": "jmp-xl"}
    with pytest.raises(InputError, match=r"csi.extractors.jmp-s.download.*unknown model checkpoint 'jmp-xl'"):
        G.check_grid(cfg, "paper.yaml")


def test_embedded_dry_run_matches_the_grid_expansion(tmp_path):
    """Snakemake's DAG (built from file patterns) asks for exactly the jobs the grid expands to."""
    wd = workdir(tmp_path)
    res = snakemake(wd, "-n")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    config = load(ROOT / "config.yaml")
    assert counts["finetune"] == len({(c.task, c.upstream, c.budget, c.backbone) for c in G.all_cells(config)})
    assert counts["pretrain"] == len(G.pretrain_runs(config))
    assert counts["moments"] == len(G.moments_needed(config))
    assert counts["generate"] == 7 and counts["prepare"] == 1 and "download" not in counts
    assert counts["table"] == 5
    assert counts["csi_figure"] == 5 and counts["figure"] == 2 and counts["coverage_figure"] == 1
    # the no-pretraining baseline is a row of every table, for every finetuning seed
    seeds = config["finetune"]["seeds"]
    for table, spec in config["tables"].items():
        cells = G.table_cells(config, table)
        for task in spec["tasks"]:
            assert {c.seed for c in cells if c.upstream == "none" and c.task == task} == set(seeds)


def test_default_targets_cover_every_table_figure_and_the_report():
    config = load(ROOT / "config.yaml")
    assert G.figures(config) == ["fig1", "fig3", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9"]
    assert sorted(config["tables"]) == ["table1", "table2", "table3", "table4", "table5"]


def test_a_single_target_builds_only_its_inputs(tmp_path):
    wd = workdir(tmp_path)
    res = snakemake(wd, "-n", "results/table2.csv")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    config = load(ROOT / "config.yaml")
    assert counts["finetune"] == len({(c.task, c.upstream, c.budget, c.backbone) for c in G.table_cells(config, "table2")})
    assert "report" not in counts and "moments" not in counts


# ---------------------------------------------------------------------------------------------
# configuration errors


@pytest.mark.parametrize(
    "edit, field, words",
    [
        (lambda c: c["tables"]["table1"]["budgets"].__setitem__(0, "1000*5"), "tables.table1.budgets[0]", "budget N x E"),
        (lambda c: c.__setitem__("tabels", {}), "(top level)", "unknown key 'tabels'"),
        (lambda c: c["tables"]["table1"]["upstreams"].append("ani-1x"), "tables.table1.upstreams", "unknown upstream 'ani-1x'"),
        (lambda c: c["tasks"]["qm9"].__setitem__("kind", "in"), "tasks.qm9.kind", "'in' is not one of id, ood"),
        (lambda c: c["upstreams"]["mixed-balanced"]["mix"].__setitem__("oc22", 0.5), "upstreams.mixed-balanced.mix", "sum to 1.25"),
        (lambda c: c["finetune"].__setitem__("seeds", []), "finetune.seeds", "should be non-empty"),
    ],
)
def test_config_errors_name_the_file_and_field(edit, field, words):
    config = load(ROOT / "config.yaml")
    edit(config)
    with pytest.raises(InputError) as err:
        G.validate_config(config, str(SCHEMA), "my.yaml")
    msg = str(err.value)
    assert msg.startswith(f"my.yaml: field '{field}': "), msg
    assert words in msg
    assert "\n" not in msg


def test_both_shipped_configs_are_valid():
    for path in (ROOT / "config.yaml", ROOT / "workflow/configs/paper.yaml", ROOT / "workflow/configs/ci.yaml"):
        G.validate_config(load(path), str(SCHEMA), str(path))


def test_snakemake_stops_on_a_typo_with_one_clear_message(tmp_path):
    config = load(ROOT / "config.yaml")
    config["tables"]["table2"]["budgets"] = ["500x5", "1000 x 5"]
    wd = workdir(tmp_path, config)
    res = snakemake(wd, "-n")
    assert res.returncode != 0
    expected = ("invalid configuration: config.yaml: field 'tables.table2.budgets[1]': '1000 x 5' is not valid: "
                "a budget N x E such as 2000000x5 (structures x epochs)")
    assert res.stderr.strip() == expected
    assert "Traceback" not in res.stdout
    assert not (wd / "results").exists()


def test_configfile_replaces_the_embedded_config(tmp_path):
    """--configfile must not be merged into config.yaml (the paper grid has no generated data)."""
    wd = workdir(tmp_path)
    res = snakemake(wd, "-n", "--configfile", "workflow/configs/ci.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout)
    assert counts["generate"] == 3  # ci.yaml's three analogs, not config.yaml's seven


# ---------------------------------------------------------------------------------------------
# the DAG end to end with stand-in verbs (wiring, run files, report verbs; no training)

FAKE = r'''#!{python}
"""Stand-in for the compute verbs: writes outputs of the documented shapes, deterministically."""
import csv, json, os, sys, zlib
from pathlib import Path

args = sys.argv[1:]
verb = args[0]
with open(os.environ["FAKE_ATOMSIFT_LOG"], "a") as fh:
    fh.write(" ".join(args) + "\n")

def opt(name, default=None):
    return args[args.index(name) + 1] if name in args else default

def opts(name):
    return [args[i + 1] for i, a in enumerate(args) if a == name]

QUALITY = {{"ani1x": 0.6, "transition1x": 0.8, "oc20": 1.1, "oc22": 1.2, "mixed-balanced": 0.75,
            "mixed-temp": 0.9, "ani1x-oc22": 0.8, "none": 1.0}}
CSI = {{"ani1x": 1.0, "transition1x": 3.0, "oc20": 40.0, "oc22": 60.0}}

if verb in ("generate", "prepare"):
    out = Path(opt("--out")); out.mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps({{"dataset": args[1]}}))
elif verb == "pretrain":
    run = __import__("yaml").safe_load(open(opt("--config")))
    out = Path(opt("--out")); out.mkdir(parents=True, exist_ok=True)
    (out / "model.pt").write_text("fake")
    seen = {{k: int(run["n_structures"] * run["epochs"] / len(run["upstream"]["stores"])) for k in run["upstream"]["stores"]}}
    (out / "metrics.json").write_text(json.dumps({{"structures_seen": seen}}))
elif verb == "finetune":  # --seeds S,T: one run per seed into OUT/s<seed>/ (the cell's job)
    run = __import__("yaml").safe_load(open(opt("--config")))
    cell = Path(opt("--out"))
    upstream = cell.parts[-3]
    for seed in opt("--seeds").split(","):
        out = cell / f"s{{seed}}"; out.mkdir(parents=True, exist_ok=True)
        noise = (zlib.crc32(f"{{run['task']}}{{seed}}".encode()) % 100) / 1000
        (out / "metrics.json").write_text(json.dumps({{"test_mae": 10 * QUALITY[upstream] + noise, "pretrained": opt("--pretrained")}}))
elif verb == "moments":
    Path(opt("--out")).write_text(json.dumps({{"store": opt("--store"), "extractor": opt("--extractor")}}))
elif verb == "coverage":
    Path(opt("--out")).write_text(json.dumps({{"dataset": "x", "random": 1, "balanced": 2, "total_classes": 2}}))
elif verb == "csi-table":
    rows = []
    for u in opts("--upstream"):
        for d in opts("--downstream"):
            m = json.loads(Path(d.split("=", 1)[1]).read_text())
            parts = Path(u.split("=", 1)[1]).parts
            sampling, agg = parts[-1][:-4].split("-")
            v = CSI[u.split("=")[0]]
            rows.append([parts[-3], sampling, agg, u.split("=")[0], d.split("=")[0], v + 1, 0, v, 0.9 * v, 1.1 * v, 0.05 * v, 20, 20])
    with open(opt("--out"), "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["extractor", "sampling", "agg", "upstream", "downstream", "csi", "seed",
                    "csi_corrected", "csi_low", "csi_high", "csi_se", "blocks_up", "blocks_down"])
        w.writerows(rows)
elif verb == "csi-figure":
    Path(opt("--out")).write_bytes(b"\x89PNG fake")
else:
    from atomsift.cli import main
    sys.exit(main(args))
'''


def fake_env(tmp: Path) -> dict:
    bindir = tmp / "fakebin"
    bindir.mkdir()
    exe = bindir / "atomsift"
    exe.write_text(FAKE.format(python=sys.executable))
    exe.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FAKE_ATOMSIFT_LOG"] = str(tmp / "calls.txt")
    return env


@pytest.mark.slow
def test_dag_runs_end_to_end_with_stand_in_verbs(tmp_path):
    (tmp_path / "wd").mkdir()
    wd = workdir(tmp_path / "wd")
    env = fake_env(tmp_path)
    res = snakemake(wd, "--cores", "2", "--configfile", "workflow/configs/ci.yaml", env=env)
    assert res.returncode == 0, (res.stderr[-4000:], (wd / "results/logs").exists() and
                                 [p.read_text()[-800:] for p in (wd / "results/logs").rglob("*.log") if p.stat().st_size])
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    # pretraining run files follow docs/training.md
    run = load(wd / "results/runs/pretrain/mixed-balanced/40x1/tiny.yaml")
    assert run["upstream"] == {"stores": {"ani1x": "results/data/ani1x", "oc20": "results/data/oc20"},
                               "mixture": "proportions", "proportions": {"ani1x": 0.5, "oc20": 0.5}}
    assert (run["size"], run["n_structures"], run["epochs"]) == ("tiny", 40, 1)
    ft = load(wd / "results/runs/finetune/qm9/tiny.yaml")
    assert ft["task"] == "qm9" and ft["target"] == "U0" and ft["store"] == "results/data/qm9" and ft["epochs"] == 1
    # the baseline is finetuned from scratch, the others from their checkpoint
    assert any(c.startswith("finetune") and "--pretrained none --seeds 0 --out results/finetune/rmd17/none/none/tiny " in c for c in calls)
    assert any("--pretrained results/pretrain/oc20/40x1/tiny/model.pt --seeds 0 --out results/finetune/qm9/oc20/40x1/tiny "
               in c for c in calls)
    # one job per cell, every seed in it
    assert sum(c.startswith("finetune ") for c in calls) == len({(c.task, c.upstream, c.budget, c.backbone) for c in G.all_cells(load(ROOT / "workflow/configs/ci.yaml"))})
    # a rerun over a run directory whose inputs changed starts over instead of refusing (docs/workflow.md)
    training = [c for c in calls if c.startswith(("pretrain ", "finetune "))]
    assert training and all(c.endswith("--on-changed-inputs restart") for c in training)
    # the DAG-pretrained extractor is used by path
    assert any(c.startswith("moments") and "--extractor results/pretrain/mixed-balanced/40x1/tiny/model.pt" in c for c in calls)
    # every target exists, each rule logged
    for f in ("table1.csv", "table1.md", "csi/random-tiny-0.csv", "csi/mixed-tiny.csv", "figures/fig1.png",
              "figures/fig3.png", "figures/fig8.png", "figures/fig9.png", "report.md"):
        assert (wd / "results" / f).is_file(), f
    assert (wd / "results/logs/finetune/qm9/none/none/tiny.log").exists()
    assert (wd / "results/benchmarks/pretrain/ani1x/40x1/tiny.tsv").exists()
    # the table: rows in the paper's order, baseline last, the stand-in's MAE values
    lines = (wd / "results/table1.csv").read_text().splitlines()
    assert lines[0] == "budget,N,E,C,upstream,backbone,rmd17,qm9"
    assert [ln.split(",")[4] for ln in lines[1:]] == ["ani1x", "oc20", "mixed-balanced", "none"]
    report = (wd / "results/report.md").read_text()
    # one finetuning seed in ci.yaml: no paired interval, so the MAE order is not resolved
    assert "The lowest-CSI upstream gave the lowest finetuned MAE on 0 of 2 task(s); it did not on 0; on 2 the " \
           "intervals do not decide.**" in report
    assert "| rMD17 | ANI-1x | ANI-1x (tie: ANI-1x, OC20) | unresolved | 1.00 [1.00, 1.00] |" in report
    assert f"hash `{G.config_hash(load(ROOT / 'workflow/configs/ci.yaml'))}`" in report
    assert "reproduce: `snakemake --cores all --configfile workflow/configs/ci.yaml`" in report
    # nothing to do the second time
    again = snakemake(wd, "--cores", "2", "--configfile", "workflow/configs/ci.yaml", env=env)
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr


# ---------------------------------------------------------------------------------------------
# a real local run (needs every verb): a table and a figure


def _verbs_available() -> bool:
    from atomsift.cli import build_parser

    choices = build_parser()._subparsers._group_actions[0].choices
    return all(v in choices for v in ("generate", "pretrain", "finetune", "moments", "csi-table", "csi-figure"))


def small_real_grid() -> dict:
    """ci.yaml cut to one pretrained cell, its baseline and the CSI of two upstreams (~2 CPU-min)."""
    config = load(ROOT / "workflow/configs/ci.yaml")
    config["datasets"] = {d: config["datasets"][d] for d in ("ani1x", "oc20", "rmd17")}
    config["upstreams"] = {u: config["upstreams"][u] for u in ("ani1x", "oc20")}
    config["tasks"] = {"rmd17": config["tasks"]["rmd17"]}
    config["csi"]["extractors"] = {"random-tiny-0": {"spec": "random-tiny-0"}}
    config["csi"].pop("coverage_n")
    config["tables"] = {"table1": {"upstreams": ["ani1x"], "budgets": ["40x1"], "backbones": ["tiny"],
                                   "tasks": ["rmd17"], "baseline": True}}
    config["csi_figures"] = {"fig3": config["csi_figures"]["fig3"]}
    config.pop("fig1")
    return config


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The small real grid run once for the tests below: (working directory, environment)."""
    if not _verbs_available():
        pytest.skip("the training / data verbs are not installed")
    wd = workdir(tmp_path_factory.mktemp("local"), small_real_grid())
    env = dict(os.environ, OMP_NUM_THREADS="1", ATOMSIFT_CACHE=str(wd / "cache"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    res = snakemake(wd, "results/table1.csv", "results/figures/fig3.png", "--cores", "2", env=env, timeout=880)
    logs = sorted((wd / "results/logs").rglob("*.log")) if (wd / "results/logs").exists() else []
    assert res.returncode == 0, (res.stderr[-3000:], [(str(p), p.read_text()[-1500:]) for p in logs if "Error" in p.read_text()])
    return wd, env


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_local_end_to_end_run_makes_a_table_and_a_figure(local_run):
    wd, _ = local_run
    lines = (wd / "results/table1.csv").read_text().splitlines()
    assert lines[0] == "budget,N,E,C,upstream,backbone,rmd17"
    assert [ln.split(",")[4] for ln in lines[1:]] == ["ani1x", "none"]
    assert all(float(ln.split(",")[6]) > 0 for ln in lines[1:])
    assert "| N=40, E=1 (C=40) | ANI-1x | tiny |" in (wd / "results/table1.md").read_text()
    assert (wd / "results/figures/fig3.png").read_bytes()[:4] == b"\x89PNG"
    # the finetuning run really started from the pretrained checkpoint
    metrics = json.loads((wd / "results/finetune/rmd17/ani1x/40x1/tiny/s0/metrics.json").read_text())
    assert metrics["pretrained"].endswith("results/pretrain/ani1x/40x1/tiny/model.pt")


# third-party chatter that must not reach a job's log (Lightning's tips and info lines, warnings
# about our deliberate settings, deprecations inside torch / Lightning)
NOISE = ("Tip:", "litlogger", "litmodels", "GPU available", "TPU available", "PossibleUserWarning", "deprecated",
         "weights_only", "Warning", "`Trainer.fit` stopped", "exists and is not empty")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_job_logs_are_one_summary_line(local_run):
    wd, _ = local_run
    logs = sorted((wd / "results/logs").rglob("*.log"))
    rules = {p: p.relative_to(wd / "results/logs").parts[0] for p in logs}
    assert {"generate", "moments", "pretrain", "finetune", "table", "csi_part", "csi_figure"} <= set(rules.values())
    for p, rule in rules.items():
        if rule.endswith("_run") or rule == "report_spec":
            continue  # template rules (run files, report specs) run no verb
        text = p.read_text()
        runs = len(load(ROOT / "workflow/configs/ci.yaml")["finetune"]["seeds"]) if rule == "finetune" else 1
        assert len(text.splitlines()) == runs, (str(p), text[-2000:])  # a finetuning job: a line per seed
        assert not any(n in text for n in NOISE), (str(p), text)
    finetune = (wd / "results/logs/finetune/rmd17/ani1x/40x1/tiny.log").read_text()
    assert re.fullmatch(r"finetune: task=rmd17, target=forces, (seed=0, )?test_mae=[0-9.]+, unit=meV/Å, "
                        r"tested_weights=final_ema, wall_time_s=[0-9.]+\n", finetune), finetune


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_snakemake_report_is_one_page_with_the_tables_and_figures(local_run, tmp_path):
    """`snakemake --report` embeds the tagged outputs with their captions; in headless Chromium
    (when installed; CI installs it) the rendered page lists and shows them (.ci/check_report.py)."""
    wd, env = local_run
    res = snakemake(wd, "results/table1.csv", "results/figures/fig3.png", "--report", "results/report.html", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    page = (wd / "results/report.html").read_text()
    for name in ("results/table1.csv", "results/html/table1.html", "results/figures/fig3.png"):
        assert f'"{name}"' in page, name
    # embedded, not linked: the files travel in the page as data URIs
    assert "data:image/png;charset=utf8;filename=fig3.png;base64," in page
    assert "data:text/html;charset=utf8;filename=table1.html;base64," in page
    assert "Paper Table 1: test MAE of each finetuning cell" in page  # the table's caption, rendered
    assert "from one Snakemake DAG" in page  # the workflow description (workflow/report/workflow.rst)
    assert "<table>" in (wd / "results/html/table1.html").read_text()
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed here (.ci/run installs it and runs this check)")
    check = subprocess.run([sys.executable, str(ROOT / ".ci/check_report.py"), str(wd / "results/report.html"),
                            "--expect", "table1", "--expect", "fig3", "--shots", str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "fig3.png" in check.stdout and (tmp_path / "report-figure.png").read_bytes()[:4] == b"\x89PNG"


# the README's worked example at small sizes: each of these must occur in it
# the README's sizes -> the small grid's; its selection extractor (pretrained 1200x12) -> the small grid's only one
SMALL = {"--n 200": "--n 40", "300x4": "40x1", "--epochs 10": "--epochs 1", "dyn.run(200)": "dyn.run(20)",
         "results/pretrain/mixed-balanced/1200x12/tiny/model.pt": "random-tiny-0"}


def readme_example() -> tuple[str, str]:
    """The bash and the Python block of the README's "From your file to a model", at small sizes."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## From your file to a model", 1)[1].split("\n## ", 1)[0]
    bash = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for big, small in SMALL.items():
        assert big in bash + python, f"the README's example no longer has {big!r}: update SMALL"
        bash, python = bash.replace(big, small), python.replace(big, small)
    return bash, python


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_worked_example_runs_at_small_sizes(local_run):
    """File -> ranked upstream -> finetuned model -> MD trajectory, with the README's commands alone
    (the bash block as one script, as a user pastes it; then the Python block)."""
    wd, env = local_run
    bash, python = readme_example()
    verbs = [ln.split()[:2] for ln in bash.splitlines() if ln.strip() and not ln.startswith("#")]
    assert [v[0] for v in verbs] == ["snakemake", "atomsift", "UP=$(atomsift", "snakemake", "atomsift"]
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", bash], cwd=wd, env=env, capture_output=True, text=True,
                         timeout=800)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    # the ranking went to the terminal (stderr); the recommended upstream is the one finetuned from
    ranking = [ln.split()[0] for ln in res.stderr.splitlines() if re.match(r"^(ani1x|oc20)\s+[0-9.eE+-]+(\s|$)", ln)]
    assert set(ranking) == {"ani1x", "oc20"}, res.stderr[-2000:]
    rec = json.loads((wd / "ft-ethanol/data.json").read_text())
    assert rec["task"] == "energy-forces" and rec["pretrained"] == f"results/pretrain/{ranking[0]}/40x1/tiny/model.pt"
    assert "finetune --data: energy-forces on ethanol.extxyz" in res.stderr
    (wd / "md_example.py").write_text(python)
    res = subprocess.run([sys.executable, "md_example.py"], cwd=wd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    from ase.io import read

    traj = read(wd / "md.traj", index=":")
    assert len(traj) == 21
    etot = [a.get_total_energy() for a in traj]
    assert max(etot) - min(etot) < 1e-3 * len(traj[0])  # eV: within 1 meV/atom over the 10 fs


def test_lint_is_clean(tmp_path):
    """Every rule has a log and a conda env, no path composition with '+', ... (snakemake --lint)."""
    wd = workdir(tmp_path)
    for args in ((), ("--configfile", "workflow/configs/paper.yaml")):
        res = snakemake(wd, "--lint", *args)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


@pytest.mark.parametrize("name", ["config.yaml", "workflow/configs/paper.yaml", "workflow/configs/ci.yaml"])
def test_every_run_file_is_a_valid_training_config(name):
    """The run files the DAG writes pass the training verbs' own validation (docs/training.md)."""
    from atomsift.train import config as train

    config = load(ROOT / name)
    runs = G.pretrain_runs(config)
    assert runs
    for u, b, bb in runs:
        c = train.pretrain_config_from_dict(G.pretrain_run(config, u, b, bb), f"{u}.yaml")
        n, e = G.parse_budget(b)
        assert (c.n_structures, c.epochs) == (n, e)
    for cell in G.all_cells(config):
        c = train.finetune_config_from_dict(G.finetune_run(config, cell.task, cell.backbone, cell.seed), "ft.yaml")
        assert c.seed == cell.seed and c.store == G.store_dir(config["tasks"][cell.task]["dataset"])


def test_bare_profile_name_works_after_profile_install(tmp_path):
    """The design card's `snakemake --profile slurm` (a bare name) after `atomsift profile install slurm`."""
    (tmp_path / "wd").mkdir()
    wd = workdir(tmp_path / "wd")
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    res = subprocess.run([str(Path(sys.executable).parent / "atomsift"), "profile", "install", "slurm"],
                         cwd=wd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "xdg/snakemake/slurm").resolve() == (ROOT / "profiles/slurm").resolve()
    dry = snakemake(wd, "--profile", "slurm", "-n", "results/table1.csv", env=env)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-2000:]
    assert "Using profile slurm" in dry.stdout + dry.stderr


# ---------------------------------------------------------------------------------------------
# profiles


def test_profile_install_links_and_is_idempotent(tmp_path):
    link, target, changed = install("slurm", source=str(ROOT / "profiles"), dest=str(tmp_path))
    assert changed and link.is_symlink() and link.resolve() == (ROOT / "profiles/slurm").resolve()
    assert install("slurm", source=str(ROOT / "profiles"), dest=str(tmp_path))[2] is False
    other = tmp_path / "local"
    other.mkdir()
    (other / "config.yaml").write_text("cores: 1\n")
    with pytest.raises(InputError, match="is not a link to"):
        install("local", source=str(ROOT / "profiles"), dest=str(tmp_path))


def test_slurm_profile_settings():
    prof = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert prof["executor"] == "slurm"
    assert prof["slurm-status-command"] == "squeue"
    assert prof["slurm-init-seconds-before-status-checks"] == 8
    gpu_rules = {r for r, res in prof["set-resources"].items() if "gpu" in res}
    assert gpu_rules == {"pretrain", "finetune", "moments"}
    # CPU settings per task must not shadow --cpus-per-gpu (the plugin prefers cpus_per_task)
    assert "cpus_per_task" not in prof["default-resources"]
