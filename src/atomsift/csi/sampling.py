"""Which structures feed CSI: the paper's class-balanced sampler, random sampling, coverage.

The class-balanced sampler reproduces the official ``apply_class_balanced_sampling`` with
``allow_repetition=True`` (PAPER.md §2.4) draw for draw: the same pandas ``group.sample`` calls
with the same ``random_state`` for every class, groups visited in pandas' sorted-key order, the
same top-up loop and the same final ``RandomState(seed).shuffle``. Given the same class labels
(as strings, so that groups sort as the official ``Molecule`` column does) and the same seed, it
returns the same row indices.
"""

from __future__ import annotations

import math

import numpy as np

from atomsift.errors import InputError

UNKNOWN_CLASS = "Unknown"  # label of rows without a class, as the official structure mapping writes
# Largest sample: 1000x the paper's 10,000. The balanced sampler draws with repetition, so n is not
# bounded by the store; this bound is what keeps `--n 10^12` from allocating terabytes of indices.
MAX_SAMPLE = 10_000_000


def check_sample_size(n, field: str = "n") -> int:
    """``n`` as a sample size in 1..MAX_SAMPLE, or an InputError naming ``field``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_SAMPLE:
        raise InputError(f"sample size must be an integer in 1..{MAX_SAMPLE:,}, got {n}", field=field)
    return int(n)


def class_labels(class_index: np.ndarray, classes: list[str] | None) -> np.ndarray:
    """String labels of rows (``classes[class_index]``; ``Unknown`` for -1), for official group order.

    Without ``classes`` the integer indices themselves are the labels (groups then sort numerically).
    """
    ci = np.asarray(class_index)
    if not classes:
        return ci
    names = np.array(list(classes) + [UNKNOWN_CLASS], dtype=object)
    return names[np.where(ci < 0, len(classes), ci)]


def _one_per_class(df, seed: int) -> list[int]:
    """One row per class, classes in sorted order (official ``sample_class(group, 1, seed)``)."""
    out: list[int] = []
    for _, group in df.groupby("Molecule", sort=True):
        out.extend(int(i) for i in group.sample(n=1, replace=False, random_state=seed).index)
    return out


def _additional(df, needed: int, seed: int) -> list[int]:
    """Official ``get_balanced_additional_samples``: one per class, then ``needed`` of them at random."""
    extra = _one_per_class(df, seed)
    if len(extra) >= needed:
        extra = np.random.RandomState(seed).choice(extra, size=needed, replace=False).tolist()
    return [int(i) for i in extra]


def balanced_sample(class_index, n: int, seed: int) -> np.ndarray:
    """The paper's class-balanced sample ("balanced", with repetition) of ``n`` rows.

    ``class_index``: one class label per row (ints, or strings such as formulas). K classes,
    t = floor(n / K). If t = 0, one random row per class, then n of those. Otherwise t rows per
    class, with replacement only for classes with fewer than t rows (``random_state=seed`` for
    every class); then, while fewer than n, one not-yet-selected row per class, and a random
    choice of the remainder among them; finally a seeded shuffle. Returns row positions (int64),
    possibly repeated.
    """
    import pandas as pd

    labels = np.asarray(class_index)
    if labels.ndim != 1 or labels.size == 0:
        raise InputError("balanced sampling needs a non-empty 1-D array of class labels", field="class_index")
    n = check_sample_size(n)
    df = pd.DataFrame({"Molecule": labels})
    k = int(df["Molecule"].nunique())
    t = n // k
    if t == 0:
        indices = _additional(df, n, seed)
    else:
        indices = []
        for _, group in df.groupby("Molecule", sort=True):
            indices.extend(int(i) for i in group.sample(n=t, replace=len(group) < t, random_state=seed).index)
        remaining = n - len(indices)
        while remaining > 0:
            # the official code asserts one extra row per class is always enough
            if math.ceil(remaining / k) != 1:
                raise InputError(f"cannot top up {remaining} rows over {k} classes", field="n")
            rest = df[~df.index.isin(indices)]
            if len(rest) == 0:
                raise InputError(f"cannot draw {n} class-balanced rows: every one of the {len(df)} rows is already selected", field="n")
            indices += _additional(rest, remaining, seed)
            remaining = n - len(indices)
    if len(indices) != n:  # the official assertion
        raise RuntimeError(f"balanced sampling produced {len(indices)} rows instead of {n}")
    np.random.RandomState(seed).shuffle(indices)
    return np.asarray(indices, dtype=np.int64)


def random_sample(n_total: int, n: int, seed: int) -> np.ndarray:
    """``RandomState(seed).choice(range(n_total), n, replace=False)``; all rows if n >= n_total."""
    if n_total <= 0:
        raise InputError("cannot sample from an empty set of structures", field="n")
    n = min(check_sample_size(n), n_total)
    return np.random.RandomState(seed).choice(n_total, n, replace=False).astype(np.int64)


def coverage(class_index, idx) -> int:
    """Number of distinct classes among rows ``idx`` (Figure 9)."""
    ci = np.asarray(class_index)
    return int(np.unique(ci[np.asarray(idx, dtype=np.int64)]).size)


def sample_store(store, sampling: str, n: int, seed: int, *, split: str | None = "train", min_atoms: int = 0) -> np.ndarray:
    """Global structure indices of ``store`` to feed CSI.

    Rows are the structures of ``split`` (the whole store when the split is None or the store has
    no splits at all). ``balanced`` applies :func:`balanced_sample` to the class labels (sorted by
    name, as the official code's groups); ``random`` a seeded random subset of at most n.
    ``min_atoms`` drops smaller structures *before* sampling (the official downstream extraction
    skips structures with fewer than 4 atoms while reading; see docs/csi.md).
    """
    rows = _split_rows(store, split)
    if min_atoms > 1:
        rows = rows[np.diff(store.offsets)[rows] >= min_atoms]
        if rows.size == 0:
            raise InputError(f"no structure of split '{split}' has at least {min_atoms} atoms", path=store.path, field="natoms")
    if sampling == "random":
        return rows[random_sample(rows.size, n, seed)]
    if sampling == "balanced":
        if not store.classes:
            raise InputError("balanced sampling needs class labels, and this store has none (use --sampling random)", path=store.path, field="class_index")
        ci = np.asarray(store.array("class_index"))[rows]
        return rows[balanced_sample(class_labels(ci, store.classes), n, seed)]
    raise InputError(f"unknown sampling '{sampling}' (expected balanced or random)", field="sampling")


def _split_rows(store, split: str | None) -> np.ndarray:
    if split is None or (not store.split_names() and split == "train"):
        return np.arange(len(store), dtype=np.int64)
    return np.asarray(store.split(split), dtype=np.int64)


def store_coverage(store, n: int, seed: int, *, split: str | None = "train") -> dict:
    """Classes covered by a random and by a balanced sample of n structures of ``split``."""
    rows = _split_rows(store, split)
    if not store.classes:
        raise InputError("coverage needs class labels, and this store has none", path=store.path, field="class_index")
    ci = np.asarray(store.array("class_index"))[rows]
    labels = class_labels(ci, store.classes)
    rnd = random_sample(rows.size, n, seed)
    bal = balanced_sample(labels, n, seed)
    return {
        "dataset": store.dataset,
        "n": int(n),
        "seed": int(seed),
        "total_classes": int(np.unique(ci).size),
        "random": coverage(ci, rnd),
        "balanced": coverage(ci, bal),
    }
