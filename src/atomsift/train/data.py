"""Training data: budgeted sampling from one store or a mixture, validation slices, loaders.

- :func:`mixture_counts` splits the budget N over the stores (single, balanced, temperature T,
  explicit proportions), exactly summing to N.
- :func:`sample_indices` draws each store's share uniformly without replacement, seeded.
- :class:`MixedDataset` addresses the sampled structures of several stores by one position.
- :class:`EpochBatchSampler` yields per-rank batches so that, over all ranks, each sampled
  structure is seen exactly once per epoch; it can skip the batches of a resumed epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from atomsift.data.batch import AtomsBatch, collate
from atomsift.data.store import Store
from atomsift.errors import InputError


# ------------------------------------------------------------------------------------ mixtures


def temperature_proportions(sizes: Sequence[float], temperature: float) -> np.ndarray:
    """p_i proportional to n_i^(1/T) (PAPER.md §3.3: T = 2 gives sqrt(n_i) / sum_j sqrt(n_j))."""
    n = np.asarray(sizes, dtype=np.float64)
    w = n ** (1.0 / temperature)
    return w / w.sum()


def counts_from_proportions(n_total: int, p: Sequence[float]) -> list[int]:
    """floor(N p_i), with the remainder added to the first entry (the paper's choice for 2M)."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    c = np.floor(n_total * p + 1e-9).astype(np.int64)
    c[0] += n_total - int(c.sum())
    return [int(x) for x in c]


def mixture_counts(
    names: Sequence[str],
    n_total: int,
    mixture: str,
    *,
    proportions: dict[str, float] | None = None,
    temperature: float = 2.0,
    sizes: dict[str, float] | None = None,
) -> dict[str, int]:
    """How many structures each store contributes; the values sum to ``n_total``."""
    names = list(names)
    k = len(names)
    if mixture == "single":
        if k != 1:
            raise ValueError("mixture 'single' takes exactly one store")
        return {names[0]: int(n_total)}
    if mixture == "balanced":
        base, rem = divmod(int(n_total), k)
        return {nm: base + (1 if i < rem else 0) for i, nm in enumerate(names)}
    if mixture == "temperature":
        if sizes is None:
            raise ValueError("temperature mixture needs dataset sizes")
        p = temperature_proportions([sizes[nm] for nm in names], temperature)
        return dict(zip(names, counts_from_proportions(n_total, p)))
    if mixture == "proportions":
        if proportions is None:
            raise ValueError("proportions mixture needs proportions")
        return dict(zip(names, counts_from_proportions(n_total, [proportions[nm] for nm in names])))
    raise ValueError(f"unknown mixture {mixture!r}")


def _seed_for(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(p) for p in parts]]))


def sample_indices(pool: np.ndarray, count: int, seed: int, stream: int = 0) -> np.ndarray:
    """``count`` distinct entries of ``pool``, uniformly without replacement, sorted; seeded."""
    pool = np.asarray(pool, dtype=np.int64)
    if count > pool.size:
        raise ValueError(f"asked for {count} structures from a pool of {pool.size}")
    rng = _seed_for(seed, 1000 + stream)
    return np.sort(rng.choice(pool, size=count, replace=False))


def split_or_all(store: Store, split: str) -> np.ndarray:
    """The store's split ``split``, or all its indices when it has no splits at all."""
    if split in store.split_names():
        return store.split(split)
    if not store.split_names():
        return np.arange(len(store))
    raise InputError(f"store has no split '{split}' (has: {', '.join(store.split_names())})", path=store.path, field="splits")


# ------------------------------------------------------------------------------------ datasets


@dataclass
class Part:
    """One store's share of a dataset: global store indices, in a fixed order."""

    name: str
    store: Store
    indices: np.ndarray


class MixedDataset(torch.utils.data.Dataset):
    """Positions 0..len-1 over the concatenated parts; item = (part id, Record).

    A negative position -(p+1) returns the same structure marked as padding (weight 0): the
    sampler uses it to give every DDP rank a non-empty batch without counting a structure twice.
    """

    def __init__(self, parts: Sequence[Part]):
        self.parts = list(parts)
        self.offsets = np.concatenate([[0], np.cumsum([p.indices.size for p in self.parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, pos: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.offsets, pos, side="right") - 1)
        return k, int(self.parts[k].indices[pos - self.offsets[k]])

    def __getitem__(self, pos: int):
        pad = pos < 0
        if pad:
            pos = -pos - 1
        k, g = self.locate(pos)
        return k, self.parts[k].store.record(g), pad

    def part_of(self, positions: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, positions, side="right") - 1


@dataclass
class Batch:
    """What the training step receives: one AtomsBatch per part present, plus bookkeeping."""

    sub: dict[int, AtomsBatch]  # part id -> batch of that part's structures
    weight: dict[int, torch.Tensor]  # part id -> (B_k,) 1 for real structures, 0 for padding
    n_real: torch.Tensor  # (n_parts,) real structures of each part in this batch
    ids: list[tuple[int, int]]  # (part id, store index) of the real structures

    def to(self, device) -> "Batch":
        return Batch({k: b.to(device) for k, b in self.sub.items()}, {k: w.to(device) for k, w in self.weight.items()}, self.n_real.to(device), self.ids)

    @property
    def size(self) -> int:
        return sum(b.num_graphs for b in self.sub.values())


class Collate:
    """Group a list of dataset items by part and collate each group into an AtomsBatch."""

    def __init__(self, part_datasets: Sequence[str], n_parts: int, dtype: torch.dtype = torch.float32):
        self.part_datasets = list(part_datasets)
        self.n_parts = n_parts
        self.dtype = dtype

    def __call__(self, items) -> Batch:
        groups: dict[int, list] = {}
        for k, rec, pad in items:
            groups.setdefault(k, []).append((rec, pad))
        sub, weight = {}, {}
        n_real = torch.zeros(self.n_parts, dtype=torch.long)
        ids = []
        for k in sorted(groups):
            recs = [r for r, _ in groups[k]]
            sub[k] = collate(recs, dtype=self.dtype, dataset=self.part_datasets[k])
            w = torch.tensor([0.0 if pad else 1.0 for _, pad in groups[k]])
            weight[k] = w
            n_real[k] = int(w.sum())
            ids.extend((k, r.index) for r, pad in groups[k] if not pad)
        return Batch(sub, weight, n_real, ids)


# ------------------------------------------------------------------------------------- sampler


class EpochBatchSampler(torch.utils.data.Sampler):
    """Per-rank batches; all ranks together see every position exactly once per epoch.

    Epoch e shuffles positions with a generator seeded by (seed, e) (identical on all ranks).
    Step s takes the global chunk perm[s B W : (s+1) B W] (B per-rank batch, W world size) and
    rank r takes chunk[r::W]. Every rank runs the same number of steps, ceil(n / (B W)); a rank
    whose share of the last chunk is empty gets one padding item (weight 0, never counted).
    ``skip(k)`` makes the next epoch iteration start at step k (resume mid-epoch).
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip(self, steps: int) -> None:
        self._skip = int(steps)

    def __len__(self) -> int:
        return math.ceil(self.n / (self.batch_size * self.world_size))

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return _seed_for(self.seed, 7, epoch).permutation(self.n)

    def batches(self, epoch: int, rank: int) -> list[list[int]]:
        perm = self.order(epoch)
        g = self.batch_size * self.world_size
        out = []
        for s in range(len(self)):
            chunk = perm[s * g:(s + 1) * g]
            mine = chunk[rank::self.world_size]
            if mine.size == 0:
                out.append([-int(chunk[0]) - 1])
            else:
                out.append([int(x) for x in mine])
        return out

    def __iter__(self):
        start, self._skip = self._skip, 0
        yield from self.batches(self.epoch, self.rank)[start:]


class ResumableLoader(torch.utils.data.DataLoader):
    """A DataLoader whose state (epoch, batches done) Lightning saves in checkpoints.

    ``progress`` is shared with the LightningModule, which counts the batches it has trained on;
    on load, the sampler skips those batches of the interrupted epoch.
    """

    def __init__(self, *args, progress: dict, **kwargs):
        super().__init__(*args, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict:
        return {"epoch": int(self.progress.get("epoch", 0)), "batches": int(self.progress.get("batches", 0))}

    def load_state_dict(self, state: dict) -> None:
        bs = self.batch_sampler
        epoch, done = int(state.get("epoch", 0)), int(state.get("batches", 0))
        if isinstance(bs, EpochBatchSampler):
            if done >= len(bs):  # saved after an epoch's last batch: the next one starts afresh
                epoch, done = epoch + 1, 0
            bs.set_epoch(epoch)
            bs.skip(done)
        self.progress.update(epoch=epoch, batches=done)


def make_loader(dataset: MixedDataset, sampler: EpochBatchSampler, collate_fn: Collate, num_workers: int, progress: dict | None = None):
    kw = dict(batch_sampler=sampler, collate_fn=collate_fn, num_workers=num_workers, persistent_workers=num_workers > 0)
    if progress is not None:
        return ResumableLoader(dataset, progress=progress, **kw)
    return torch.utils.data.DataLoader(dataset, **kw)


# ----------------------------------------------------------------------------------- pretraining


@dataclass
class PretrainData:
    names: list[str]
    stores: dict[str, Store]
    counts: dict[str, int]
    train: MixedDataset
    val: MixedDataset


def open_upstream(stores: dict[str, str], config_path: str | Path | None = None) -> dict[str, Store]:
    out = {}
    for name, path in stores.items():
        p = Path(path)
        if not p.exists():
            raise InputError("store does not exist", path=config_path or p, field=f"upstream.stores.{name}")
        st = Store(p)
        if not (st.has("energy") and st.has("forces")):
            raise InputError("pretraining needs a store with energy and forces", path=p, field="fields")
        out[name] = st
    return out


def build_pretrain_data(cfg, config_path: str | Path | None = None) -> PretrainData:
    """Sample the budget from the upstream stores and slice their validation splits."""
    u = cfg.upstream
    stores = open_upstream(u.stores, config_path)
    names = list(stores)
    pools = {nm: split_or_all(st, u.train_split) for nm, st in stores.items()}
    sizes = u.sizes if u.sizes is not None else {nm: float(pools[nm].size) for nm in names}
    counts = mixture_counts(names, cfg.n_structures, u.mixture, proportions=u.proportions, temperature=u.temperature, sizes=sizes)
    parts, vparts = [], []
    for i, nm in enumerate(names):
        if counts[nm] > pools[nm].size:
            raise InputError(
                f"budget asks for {counts[nm]} structures but the '{u.train_split}' split holds {pools[nm].size}",
                path=stores[nm].path, field="n_structures")
        parts.append(Part(nm, stores[nm], sample_indices(pools[nm], counts[nm], cfg.seed, stream=i)))
        st = stores[nm]
        if u.val_split in st.split_names():
            vidx = st.split(u.val_split)[: cfg.val_size]
        else:
            raise InputError(f"store has no '{u.val_split}' split for validation (has: {', '.join(st.split_names()) or 'none'})", path=st.path, field="splits")
        vparts.append(Part(nm, st, np.asarray(vidx, dtype=np.int64)))
    return PretrainData(names, stores, counts, MixedDataset(parts), MixedDataset(vparts))
