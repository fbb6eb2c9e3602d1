"""Pretraining throughput (structures/s) under Lightning, the data-loading and collate shares of a
step, the overhead of Lightning against a plain torch loop doing the same steps, and, with
``--reference``, the ratio against another checkout of atomsift measured in the same run.

One process, ``--threads`` torch threads (default 2 = this machine's cores). The model is the
tiny GemNet-OC by default (``--model toy`` for the SchNet-like stand-in of the tests). Data: an
existing store with energies and forces (``--store``, e.g. an ``atomsift generate ani1x-mini``
store) or, by default, a synthetic store of QM9-sized toy molecules (``tests/fixtures_training.py``).

Timing: a callback records the wall time at the start and the end of every training batch;
"step" = end(k) - start(k) (forward, backward, clip, optimizer, EMA), "loading" = start(k) -
end(k-1) (fetching + collating the next batch and Lightning's bookkeeping between batches). The
first ``--warmup`` steps are excluded. "collate" times the training batches again outside
Lightning: records -> PyG ``Data`` (``MixedDataset``) and ``Batch.from_data_list`` per store
(``collate_parts``); its share is collate / (step + loading). The naive loop runs the same
module's loss on the same batches with the same AdamW, clipping and EMA, without Lightning.

``--reference DIR`` runs ``DIR/bench/train_throughput.py`` with ``PYTHONPATH=DIR/src`` (e.g. a
``git archive`` of main) alternately with this checkout, ``--rounds`` times each, same arguments,
and prints the ratio of the medians (ours / reference; > 1 = faster).

    python bench/train_throughput.py --json
    python bench/train_throughput.py --model toy --steps 60 --reference /tmp/atomsift-main --rounds 3
    python bench/train_throughput.py --store /tmp/ani1x-mini --batch-size 16 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # fixtures_training


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", help="store with energy + forces (default: synthetic toy molecules)")
    ap.add_argument("--model", choices=("tiny", "small", "toy"), default="tiny")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--no-naive", action="store_true", help="skip the plain-torch comparison loop")
    ap.add_argument("--reference", help="another checkout of atomsift to compare with (its bench/ and src/)")
    ap.add_argument("--rounds", type=int, default=2, help="with --reference: runs of each, alternating")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    result = compare(args, argv) if args.reference else measure(args)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        for k, v in result.items():
            print(f"{k:32s} {v}")
    return 0


def measure(args) -> dict:
    import lightning.pytorch as pl
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.set_num_threads(args.threads)
    from fixtures_training import make_toy_store, toy_model_factory

    from atomsift.models.heads import HeadSpec
    from atomsift.train.config import pretrain_config_from_dict
    from atomsift.train.data import collate_parts
    from atomsift.train.pretrain import default_model_factory, run_pretrain

    tmp = Path(tempfile.mkdtemp(prefix="atomsift-bench-train-"))
    n = args.batch_size * (args.steps + args.warmup)
    if args.store:
        store = args.store
    else:
        store = str(make_toy_store(tmp / "store", n + 40, dataset="ani1x", seed=0, n_val=20, n_atoms=(9, 27)))
    factory = toy_model_factory if args.model == "toy" else default_model_factory
    cfg = pretrain_config_from_dict({
        "size": "tiny" if args.model == "toy" else args.model, "seed": 0, "n_structures": n, "epochs": 1,
        "batch_size": args.batch_size, "val_size": 1, "upstream": {"stores": {"up": store}},
        "threads": args.threads, "num_workers": args.num_workers, "scale_fit_batches": 0, "progress_bar": False,
        "checkpoint_every_n_steps": 10**9})

    class Timer(pl.Callback):
        def __init__(self):
            self.starts, self.ends, self.sizes = [], [], []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.starts.append(time.perf_counter())
            self.sizes.append(sum(b.num_graphs for b in batch.values()))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())

    timer = Timer()
    captured = {}

    class Grab(pl.Callback):
        def on_train_end(self, trainer, module):
            captured["module"], captured["dm"] = module, trainer.datamodule

    run_pretrain(cfg, tmp / "run", model_factory=factory, callbacks=[timer, Grab()], fit_scales=False)
    w = args.warmup
    steps = [e - s for s, e in zip(timer.starts[w:], timer.ends[w:])]
    loads = [timer.starts[k] - timer.ends[k - 1] for k in range(max(w, 1), len(timer.starts))]
    structs = sum(timer.sizes[w:])
    total = timer.ends[-1] - timer.ends[w - 1] if w >= 1 else timer.ends[-1] - timer.starts[0]
    module, dm = captured["module"], captured["dm"]
    ds = dm.splits["train"]
    from atomsift.train.data import EpochSampler

    batches = EpochSampler(len(ds), args.batch_size, seed=0).batches(0)[w:]
    items_s, batch_s = [], []
    for idx in batches:  # the same batches again: records -> Data, then PyG's Batch per store
        t0 = time.perf_counter()
        items = [ds[i] for i in idx]
        t1 = time.perf_counter()
        collate_parts(items)
        items_s.append(t1 - t0)
        batch_s.append(time.perf_counter() - t1)
    from atomsift.data.store import Store

    result = {
        "model": args.model, "threads": args.threads, "batch_size": args.batch_size, "steps_timed": len(steps),
        "store": store, "mean_atoms": float(Store(store).natoms.mean()),
        "lightning_structures_per_s": structs / total,
        "step_s_median": statistics.median(steps),
        "loading_s_median": statistics.median(loads),
        "loading_share": sum(loads) / total,
        "collate_records_to_data_s_median": statistics.median(items_s),
        "collate_pyg_batch_s_median": statistics.median(batch_s),
        "collate_share": (sum(items_s) + sum(batch_s)) / total,
    }
    t = time.perf_counter()
    nb = sum(1 for _ in dm.train_dataloader())  # pure data loading: the same loader without the model
    result["loader_only_s_per_batch"] = (time.perf_counter() - t) / max(nb, 1)

    if not args.no_naive:
        # the same steps in a plain loop: loss, backward, clip 1.0, AdamW + LambdaLR, EMA
        model = factory(cfg.size, {"up": HeadSpec("energy_direct_forces")}, True, 0)
        module.model.load_state_dict(model.state_dict())
        module.model.train()
        opt_cfg = module.configure_optimizers()
        opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
        ema = AveragedModel(module.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=False)
        t_start = None
        n_timed = 0
        for k, b in enumerate(dm.train_dataloader()):  # loading included, as under Lightning
            if k == w:
                t_start = time.perf_counter()
            if k >= w:
                n_timed += sum(x.num_graphs for x in b.values())
            s = module.losses(b, cfg.edge_dropout)
            opt.zero_grad()
            s["loss"].backward()
            torch.nn.utils.clip_grad_norm_(module.model.parameters(), 1.0)
            opt.step()
            sched.step()
            ema.update_parameters(module.model)
        naive_total = time.perf_counter() - t_start
        result["naive_structures_per_s"] = n_timed / naive_total
        result["lightning_overhead"] = result["naive_structures_per_s"] / result["lightning_structures_per_s"] - 1.0
    return result


def compare(args, argv) -> dict:
    """This checkout and ``--reference`` alternately, ``--rounds`` times each; ratio of medians."""
    ref = Path(args.reference).resolve()
    strip = {"--reference": 1, "--rounds": 1, "--json": 0}
    own, rest = [], list(argv if argv is not None else sys.argv[1:])
    while rest:
        a = rest.pop(0)
        if a in strip:
            del rest[:strip[a]]
        else:
            own.append(a)
    runs: dict[str, list[dict]] = {"ours": [], "reference": []}
    here = Path(__file__).resolve().parents[1]
    for _ in range(args.rounds):
        for name, root in (("reference", ref), ("ours", here)):
            env = {**os.environ, "PYTHONPATH": str(root / "src"), "PYTHONDONTWRITEBYTECODE": "1",
                   "OMP_NUM_THREADS": str(args.threads)}
            p = subprocess.run([sys.executable, str(root / "bench" / "train_throughput.py"), *own, "--json", "--no-naive"],
                               env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
            if p.returncode != 0:
                raise SystemExit(f"{name} bench failed:\n{p.stderr[-3000:]}")
            runs[name].append(json.loads(p.stdout[p.stdout.index("{"):]))

    def med(name, key):
        return statistics.median(r[key] for r in runs[name])

    out = {"reference": str(ref), "rounds": args.rounds, "model": args.model, "threads": args.threads,
           "batch_size": args.batch_size, "steps_timed": runs["ours"][0]["steps_timed"]}
    for key in ("lightning_structures_per_s", "step_s_median", "loading_s_median"):
        out[f"ours_{key}"], out[f"reference_{key}"] = med("ours", key), med("reference", key)
    out["throughput_ratio_ours_over_reference"] = out["ours_lightning_structures_per_s"] / out["reference_lightning_structures_per_s"]
    out["step_time_ratio_ours_over_reference"] = out["ours_step_s_median"] / out["reference_step_s_median"]
    out["ours_collate_share"] = med("ours", "collate_share")
    out["all_runs"] = runs
    return out


if __name__ == "__main__":
    raise SystemExit(main())
