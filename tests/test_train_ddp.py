"""A 2-process DDP pretraining run on CPU (gloo): each structure once per epoch in total, and
identical weights on both ranks at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from fixtures_training import make_toy_store

SCRIPT = textwrap.dedent("""
    import sys
    from atomsift.train.config import pretrain_config_from_dict
    from atomsift.train.pretrain import run_pretrain
    from fixtures_training import toy_model_factory

    a, b, out = sys.argv[1:4]
    cfg = pretrain_config_from_dict({
        "size": "tiny", "seed": 3, "n_structures": 37, "epochs": 2, "batch_size": 4, "val_size": 5,
        "upstream": {"stores": {"a": a, "b": b}, "mixture": "balanced"},
        "threads": 1, "lr": 1e-3, "record_seen": True, "devices": 2, "accelerator": "cpu",
        "scale_fit_batches": 0, "progress_bar": False,
    })
    run_pretrain(cfg, out, model_factory=toy_model_factory)
""")


def test_ddp_two_ranks_each_structure_once_identical_weights(tmp_path):
    a = make_toy_store(tmp_path / "a", 40, dataset="ani1x", seed=0)
    b = make_toy_store(tmp_path / "b", 30, dataset="transition1x", seed=1)
    script = tmp_path / "run_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    tests = str(Path(__file__).resolve().parent)  # fixtures_training
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
    env.pop("SLURM_JOB_ID", None)
    env.pop("SLURM_NTASKS", None)
    proc = subprocess.run([sys.executable, str(script), str(a), str(b), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((out / "seen_rank0.json").read_text())
    r1 = json.loads((out / "seen_rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    planned = {"a": 19, "b": 18}  # balanced 37: remainder to the first store
    from atomsift.data.store import Store
    from atomsift.train.data import sample_indices, split_or_all

    expected = set()
    for k, (name, path) in enumerate((("a", a), ("b", b))):
        st = Store(path)
        expected |= {(k, int(g)) for g in sample_indices(split_or_all(st, "train"), planned[name], 3, stream=k)}
    for epoch in ("0", "1"):
        ids = [tuple(x) for x in r0["seen"][epoch] + r1["seen"][epoch]]
        assert len(ids) == 37 and set(ids) == expected  # each sampled structure exactly once, over both ranks
        assert r0["seen"][epoch] and r1["seen"][epoch]
        assert not set(map(tuple, r0["seen"][epoch])) & set(map(tuple, r1["seen"][epoch]))
    assert r0["weights_sha256"] == r1["weights_sha256"]
    assert r0["ema_sha256"] == r1["ema_sha256"]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["structures_seen"] == {"a": 38, "b": 36}
    assert m["steps"] == 2 * 5  # ceil(37 / (4 x 2)) steps per epoch
