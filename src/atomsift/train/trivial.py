"""The trivial predictor's test MAE: the floor a finetuned model must beat to have learned anything.

For a forces task the trivial predictor says zero force on every atom (its MAE is the mean
absolute force component, the unit the finetuning MAE is reported in); for a scalar task it says
the training split's mean of the target. Both are computed on exactly the test structures the
finetuning run tests on, so ``test_mae / trivial_test_mae`` is the run's learning ratio (the
report prints it per finetuning column: near 1 = nothing learned).
"""

from __future__ import annotations

import numpy as np

from atomsift.train.linref import atom_index


def trivial_mae(store, splits: dict, kind: str, target: str | None = None) -> tuple[float, str]:
    """(MAE in the store's unit, what the predictor is) on ``splits["test"]`` of ``store``."""
    test = np.asarray(splits["test"], dtype=np.int64)
    if kind == "forces":
        f = np.asarray(store.array("forces")[atom_index(np.asarray(store.offsets), test)], dtype=np.float64)
        return float(np.abs(f).mean()), "zero force"
    col = store.target_names.index(target)
    y = np.asarray(store.array("targets"), dtype=np.float64)[:, col]
    mean = float(y[np.asarray(splits["train"], dtype=np.int64)].mean())
    return float(np.abs(y[test] - mean).mean()), "training mean"
