"""The DAG through snakemake-executor-plugin-slurm on a real cluster (skipped without one).

CI starts a single-node cluster (.ci/slurm-ci.sh up --fake-gpus 2) before running the reduced
grid; these tests run whenever `sinfo` answers, with stand-in compute verbs so they take seconds
per job, and check that jobs really went through sbatch (SLURM_JOB_ID) and that GPU rules got a
GPU (CUDA_VISIBLE_DEVICES) while CPU rules did not.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from test_workflow import ROOT, SNAKEMAKE, fake_env, workdir


def _cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%T %G"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0 and "gpu" in res.stdout and any(s in res.stdout for s in ("idle", "mixed", "alloc"))


pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(SNAKEMAKE is None or not _cluster_up(),
                                 reason="no SLURM cluster with GPUs (start one: .ci/slurm-ci.sh up --fake-gpus 2)")]

ENV_DUMP = r'''
import json, os
from pathlib import Path
Path(os.environ["FAKE_ATOMSIFT_LOG"] + ".env").open("a").write(json.dumps({
    "verb": verb, "job": os.environ.get("SLURM_JOB_ID"), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}) + "\n")
'''


def test_jobs_run_under_slurm_and_gpu_rules_get_a_gpu(tmp_path):
    (tmp_path / "wd").mkdir()
    wd = workdir(tmp_path / "wd")
    (wd / ".ci").symlink_to(ROOT / ".ci")
    env = fake_env(tmp_path)
    fake = tmp_path / "fakebin/atomsift"
    text = fake.read_text()
    fake.write_text(text.replace('with open(os.environ["FAKE_ATOMSIFT_LOG"], "a") as fh:', ENV_DUMP + '\nwith open(os.environ["FAKE_ATOMSIFT_LOG"], "a") as fh:', 1))
    target = "results/finetune/rmd17/ani1x/40x1/tiny/s0/metrics.json"
    cmd = ["timeout", "-k", "15", "400", SNAKEMAKE, target, "--profile", "profiles/slurm",
           "--workflow-profile", ".ci/slurm-profile", "--configfile", "workflow/configs/ci.yaml"]
    res = subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True, timeout=430)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    calls = [json.loads(ln) for ln in (tmp_path / "calls.txt.env").read_text().splitlines()]
    by_verb = {c["verb"]: c for c in calls}
    assert set(by_verb) == {"generate", "pretrain", "finetune"}
    assert all(c["job"] for c in calls), calls          # every job was a SLURM job
    assert by_verb["pretrain"]["gpus"] is not None and by_verb["finetune"]["gpus"] is not None
    assert by_verb["generate"]["gpus"] is None           # CPU rules ask for no GPU
    assert (wd / target).exists()
