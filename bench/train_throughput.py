"""Pretraining throughput (structures/s) under Lightning, the data-loading share of a step, and
the overhead of Lightning against a plain torch loop doing the same steps.

One process, ``--threads`` torch threads (default 2 = this machine's cores). The model is the
tiny GemNet-OC by default (``--model toy`` for the SchNet-like stand-in of the tests). Data: an
existing store with energies and forces (``--store``, e.g. an ``atomsift generate ani1x-mini``
store) or, by default, a synthetic store of QM9-sized toy molecules (``atomsift.train.toy``).

Timing: a callback records the wall time at the start and the end of every training batch;
"step" = end(k) - start(k) (forward, backward, clip, optimizer, EMA), "loading" = start(k) -
end(k-1) (fetching + collating the next batch and Lightning's bookkeeping between batches). The
first ``--warmup`` steps are excluded. The naive loop runs the same module's loss on the same
batches with the same AdamW, clipping and EMA, without Lightning.

    python bench/train_throughput.py --json
    python bench/train_throughput.py --store /tmp/ani1x-mini --batch-size 16 --steps 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


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
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import lightning.pytorch as pl
    import torch

    torch.set_num_threads(args.threads)
    from atomsift.train import data as D
    from atomsift.train.config import pretrain_config_from_dict
    from atomsift.train.pretrain import default_model_factory, run_pretrain
    from atomsift.train.toy import make_toy_store, toy_model_factory

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
            self.sizes.append(batch.size)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())

    timer = Timer()
    captured = {}

    class Grab(pl.Callback):
        def on_train_end(self, trainer, module):
            captured["module"] = module

    run_pretrain(cfg, tmp / "run", model_factory=factory, callbacks=[timer, Grab()], fit_scales=False)
    w = args.warmup
    steps = [e - s for s, e in zip(timer.starts[w:], timer.ends[w:])]
    loads = [timer.starts[k] - timer.ends[k - 1] for k in range(max(w, 1), len(timer.starts))]
    structs = sum(timer.sizes[w:])
    total = timer.ends[-1] - timer.ends[w - 1] if w >= 1 else timer.ends[-1] - timer.starts[0]
    result = {
        "model": args.model, "threads": args.threads, "batch_size": args.batch_size, "steps_timed": len(steps),
        "store": store, "mean_atoms": None,
        "lightning_structures_per_s": structs / total,
        "step_s_median": statistics.median(steps),
        "loading_s_median": statistics.median(loads),
        "loading_share": sum(loads) / total,
    }
    # pure data loading: the same loader without the model
    module = captured["module"]
    loader = module.train_loader_fn(0, 1)
    t = time.perf_counter()
    nb = 0
    for b in loader:
        nb += 1
    result["loader_only_s_per_batch"] = (time.perf_counter() - t) / max(nb, 1)
    from atomsift.data.store import Store

    st = Store(store)
    result["mean_atoms"] = float(st.natoms.mean())

    if not args.no_naive:
        # the same steps in a plain loop: loss, backward, clip 1.0, AdamW + LambdaLR, EMA
        model = factory(cfg.size, {"up": __import__("atomsift.models.heads", fromlist=["HeadSpec"]).HeadSpec("energy_direct_forces")}, True, 0)
        module.model.load_state_dict(model.state_dict())
        module.model.train()
        opt_cfg = module.configure_optimizers()
        opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
        t_start = None
        n_timed = 0
        for k, b in enumerate(module.train_loader_fn(0, 1)):  # loading included, as under Lightning
            if k == w:
                t_start = time.perf_counter()
            if k >= w:
                n_timed += b.size
            s = module.losses(module.model, b, cfg.edge_dropout)
            opt.zero_grad()
            s["loss"].backward()
            torch.nn.utils.clip_grad_norm_(module.model.parameters(), 1.0)
            opt.step()
            sched.step()
            module._ema_update()
        naive_total = time.perf_counter() - t_start
        result["naive_structures_per_s"] = n_timed / naive_total
        result["lightning_overhead"] = result["naive_structures_per_s"] / result["lightning_structures_per_s"] - 1.0
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        for k, v in result.items():
            print(f"{k:32s} {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
