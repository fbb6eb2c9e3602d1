"""Refit the shipped scale factors of the ``tiny`` GemNet-OC (``models/scaling.py`` ``_TINY_INT`` /
``_TINY_OUT``), by the recipe docs/model.md gives: seed-0 weights with the direct-force branch,
``fit_scale_factors`` on 4 random batches of 32 real QM9 molecules (numpy seed 0, QM9's graph
settings), values rounded to 4 decimals. JMP ships its own fitted files the same way.

    python tools/fit_tiny_scales.py        # prints the two tables to paste into scaling.py
"""

from __future__ import annotations

import numpy as np
import torch

from atomsift.data.batch import collate
from atomsift.data.readers.qm9 import qm9pack_arrays, qm9pack_dir
from atomsift.data.store import Record
from atomsift.models.heads import HeadSpec
from atomsift.models.model import build_model
from atomsift.models.scaling import INT_BLOCK_FACTORS, fit_scale_factors


def qm9_batches(n_batches: int = 4, batch_size: int = 32, seed: int = 0):
    _, numbers, pos, natoms, _ = qm9pack_arrays(qm9pack_dir())
    offsets = np.concatenate([[0], np.cumsum(natoms)])
    pick = np.random.default_rng(seed).choice(len(natoms), n_batches * batch_size, replace=False)
    batches = []
    for b in range(n_batches):
        recs = []
        for i in pick[b * batch_size : (b + 1) * batch_size]:
            a, e = offsets[i], offsets[i + 1]
            recs.append(Record(index=int(i), numbers=numbers[a:e], positions=pos[a:e], cell=np.zeros((3, 3)), pbc=np.zeros(3, bool),
                               tags=np.zeros(e - a, np.int64), fixed=np.zeros(e - a, bool)))
        batches.append(collate(recs, dtype=torch.float32, dataset="qm9"))
    return batches


def main() -> int:
    model = build_model("tiny", {"e": HeadSpec("energy_direct_forces")}, seed=0)
    fitted = fit_scale_factors(model, qm9_batches())
    nb = model.config.num_blocks
    rows = [[round(fitted[f"int_blocks.{i}.{n}"], 4) for n in INT_BLOCK_FACTORS] for i in range(nb)]
    outs = [(round(fitted[f"out_blocks.{k}.scale_sum"], 4), round(fitted[f"out_blocks.{k}.scale_rbf_F"], 4)) for k in range(nb + 1)]
    print(f"_TINY_INT = {rows}")
    print(f"_TINY_OUT = {outs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
