"""Training data: budgeted sampling from one store or a mixture, the splits of a downstream task,
and the LightningDataModule that owns the loaders of both verbs.

- :func:`mixture_counts` splits the budget N over the stores (single, balanced, temperature T,
  explicit proportions), exactly summing to N.
- :func:`sample_indices` draws each store's share uniformly without replacement, seeded.
- :class:`MixedDataset` addresses the sampled structures of several stores by one position, as
  PyG ``Data``; :func:`collate_parts` batches them per store (each has its head and graph).
- :class:`EpochSampler` orders one epoch for one rank so that, over all ranks, each sampled
  structure is seen exactly once per epoch; it can skip the batches of a resumed epoch.
- :class:`AtomsDataModule` holds the datasets of a run (pretraining: the sampled budget and the
  validation slices; finetuning: the task's splits) and builds their loaders for the trainer's
  rank and world size; the training loader's position is what a checkpoint resumes from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader
from torch_geometric.data import Batch, Data

from atomsift.data.batch import to_data
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
    """Positions 0..len-1 over the concatenated parts; item = PyG ``Data`` of the structure with
    ``part`` (which store) and ``weight`` (1).

    A negative position -(p+1) returns the same structure marked as padding (weight 0): the
    sampler uses it to give every DDP rank a non-empty batch without counting a structure twice.
    """

    def __init__(self, parts: Sequence[Part], dtype: torch.dtype = torch.float32):
        self.parts = list(parts)
        self.dtype = dtype
        self.offsets = np.concatenate([[0], np.cumsum([p.indices.size for p in self.parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, pos: int) -> tuple[int, int]:
        k = int(np.searchsorted(self.offsets, pos, side="right") - 1)
        return k, int(self.parts[k].indices[pos - self.offsets[k]])

    def __getitem__(self, pos: int) -> Data:
        pad = pos < 0
        if pad:
            pos = -pos - 1
        k, g = self.locate(pos)
        store = self.parts[k].store
        d = to_data(store.record(g), self.dtype, store.dataset)
        d.part = k
        d.weight = torch.tensor([0.0 if pad else 1.0])
        return d


TrainBatch = dict[int, Batch]  # part id -> PyG Batch of its structures (``weight`` 0 marks padding)


def collate_parts(items: Sequence[Data]) -> TrainBatch:
    """Group dataset items by part and batch each group with PyG (heads and graphs are per part)."""
    groups: dict[int, list[Data]] = {}
    for d in items:
        groups.setdefault(int(d.part), []).append(d)
    return {k: Batch.from_data_list(groups[k]) for k in sorted(groups)}


# ------------------------------------------------------------------------------------- sampler


def steps_per_epoch(n: int, batch_size: int, world_size: int) -> int:
    """Steps of one epoch on every rank: ceil(n / (B W)); the last, partial step is kept."""
    return math.ceil(n / (batch_size * world_size))


class EpochSampler(torch.utils.data.Sampler):
    """One rank's positions of one epoch, B per step (torch's ``BatchSampler`` groups them); all
    ranks together see every position exactly once per epoch.

    Epoch e shuffles positions with a generator seeded by (seed, e) (identical on all ranks).
    Step s takes the global chunk perm[s B W : (s+1) B W] (B per-rank batch, W world size) and
    rank r takes chunk[r::W]: B positions at every step but the last. Every rank runs the same
    number of steps; a rank whose share of the last chunk is empty gets one padding item
    (weight 0, never counted). Lightning calls ``set_epoch``; ``skip(k)`` makes the next
    iteration start at step k (resume mid-epoch).
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

    @property
    def steps(self) -> int:
        return steps_per_epoch(self.n, self.batch_size, self.world_size)

    def __len__(self) -> int:
        if self.steps == 0:
            return 0
        last = self.n - (self.steps - 1) * self.batch_size * self.world_size  # size of the last global chunk
        return (self.steps - 1) * self.batch_size + max(len(range(self.rank, last, self.world_size)), 1)

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return _seed_for(self.seed, 7, epoch).permutation(self.n)

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of epoch ``epoch`` (negative entries: padding)."""
        perm = self.order(epoch)
        g = self.batch_size * self.world_size
        out = []
        for s in range(self.steps):
            chunk = perm[s * g:(s + 1) * g]
            mine = chunk[self.rank::self.world_size]
            out.append([int(x) for x in mine] if mine.size else [-int(chunk[0]) - 1])
        return out

    def __iter__(self):
        start, self._skip = self._skip, 0
        for b in self.batches(self.epoch)[start:]:
            yield from b


class ResumableLoader(DataLoader):
    """The training loader. Lightning saves its state (epoch, batches already trained on in it) in
    every checkpoint and hands it back on resume, where the sampler skips exactly those batches.
    ``position`` reads that count from Lightning's own loop progress."""

    def __init__(self, *args, position: Callable[[], tuple[int, int]], **kwargs):
        super().__init__(*args, **kwargs)
        self.position = position

    def state_dict(self) -> dict:
        epoch, batches = self.position()
        return {"epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state: dict) -> None:
        sampler = self.batch_sampler.sampler
        epoch, done = int(state.get("epoch", 0)), int(state.get("batches", 0))
        if done >= sampler.steps:  # saved after an epoch's last batch: the next one starts afresh
            epoch, done = epoch + 1, 0
        sampler.set_epoch(epoch)
        sampler.skip(done)


# -------------------------------------------------------------------------------- data module


class AtomsDataModule(pl.LightningDataModule):
    """The datasets of one run (``train``, ``val``, optionally ``test``) and their loaders for the
    trainer's rank: training in a per-epoch shuffled order (resumable), the others in store order.

    Built by :meth:`pretraining` (the budget sampled from the upstream stores) or
    :meth:`finetuning` (a task's splits). ``world_size`` is the run's (devices x nodes): the steps
    per epoch, and so the LR schedule, are known before the trainer starts.
    """

    def __init__(self, splits: dict[str, MixedDataset], *, batch_size: int, val_batch_size: int | None, seed: int,
                 num_workers: int, world_size: int):
        super().__init__()
        self.splits = splits
        self.batch_size = int(batch_size)
        self.val_batch_size = int(val_batch_size or batch_size)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.world_size = int(world_size)
        self.counts: dict[str, int] = {}  # pretraining: planned structures per upstream store
        self.stores: dict[str, Store] = {}

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.splits["train"]), self.batch_size, self.world_size)

    @property
    def full_steps_per_epoch(self) -> int:
        """Full batches of one epoch over all ranks, floor(n / (B W)) (pretraining's schedule)."""
        return len(self.splits["train"]) // (self.batch_size * self.world_size)

    def first_batches(self, k: int) -> list[Batch]:
        """The first ``k`` training batches of epoch 0 in one process, one PyG Batch per part
        (scale factors are fitted on them before training)."""
        ds = self.splits["train"]
        sampler = EpochSampler(len(ds), self.batch_size, seed=self.seed)
        return [b for idx in sampler.batches(0)[:k] for b in collate_parts([ds[i] for i in idx]).values()]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)

    def _position(self) -> tuple[int, int]:
        t = self.trainer
        return t.current_epoch, t.fit_loop.epoch_loop.batch_progress.current.processed

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        t = self.trainer
        if t.world_size != self.world_size:  # e.g. a SLURM allocation with more tasks than devices x num_nodes
            raise InputError(f"the job runs {t.world_size} processes but the run file asks for {self.world_size} "
                             "(devices x num_nodes); make them match", field="devices")
        ds = self.splits[split]
        sampler = EpochSampler(len(ds), batch_size, seed=self.seed, shuffle=shuffle, rank=t.global_rank, world_size=t.world_size)
        kw = dict(batch_sampler=BatchSampler(sampler, batch_size, drop_last=False), collate_fn=collate_parts,
                  num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        if split == "train":
            return ResumableLoader(ds, position=self._position, **kw)
        return DataLoader(ds, **kw)

    # ------------------------------------------------------------------------ constructors

    @classmethod
    def pretraining(cls, cfg, world_size: int, config_path: str | Path | None = None) -> "AtomsDataModule":
        """Sample the budget N from the upstream stores and slice their validation splits."""
        u = cfg.upstream
        stores = open_upstream(u.stores, config_path)
        names = list(stores)
        pools = {nm: split_or_all(st, u.train_split) for nm, st in stores.items()}
        sizes = u.sizes if u.sizes is not None else {nm: float(pools[nm].size) for nm in names}
        counts = mixture_counts(names, cfg.n_structures, u.mixture, proportions=u.proportions, temperature=u.temperature, sizes=sizes)
        parts, vparts = [], []
        for i, nm in enumerate(names):
            st = stores[nm]
            if counts[nm] > pools[nm].size:
                raise InputError(f"budget asks for {counts[nm]} structures but the '{u.train_split}' split holds "
                                 f"{pools[nm].size}", path=st.path, field="n_structures")
            parts.append(Part(nm, st, sample_indices(pools[nm], counts[nm], cfg.seed, stream=i)))
            if u.val_split not in st.split_names():
                raise InputError(f"store has no '{u.val_split}' split for validation (has: "
                                 f"{', '.join(st.split_names()) or 'none'})", path=st.path, field="splits")
            vparts.append(Part(nm, st, np.asarray(st.split(u.val_split)[: cfg.val_size], dtype=np.int64)))
        dm = cls({"train": MixedDataset(parts), "val": MixedDataset(vparts)}, batch_size=cfg.batch_size,
                 val_batch_size=cfg.val_batch_size, seed=cfg.seed, num_workers=cfg.num_workers, world_size=world_size)
        dm.counts, dm.stores = counts, stores
        return dm

    @classmethod
    def finetuning(cls, cfg, store: Store, world_size: int, config_path: str | Path | None = None) -> "AtomsDataModule":
        """The task's train/val/test splits of ``store`` (MatBench folds, seeded caps)."""
        splits = {k: MixedDataset([Part(cfg.task, store, v)]) for k, v in task_splits(store, cfg, config_path).items()}
        dm = cls(splits, batch_size=cfg.batch_size, val_batch_size=cfg.val_batch_size, seed=cfg.seed,
                 num_workers=cfg.num_workers, world_size=world_size)
        dm.stores = {cfg.task: store}
        return dm


# ----------------------------------------------------------------------------------- inputs


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


def task_splits(store: Store, cfg, config_path) -> dict[str, np.ndarray]:
    """train / val / test store indices of a finetuning run: the run file's split names (MatBench:
    ``fold{k}_*`` when the store has them), each capped to a seeded subset of ``max_*``."""
    names = dict(cfg.splits)
    if cfg.fold is not None:
        fold_names = {k: f"fold{cfg.fold}_{k}" for k in names}
        if all(v in store.split_names() for v in fold_names.values()):
            names = fold_names
    out = {}
    caps = {"train": cfg.max_train, "val": cfg.max_val, "test": cfg.max_test}
    for i, (k, split) in enumerate(names.items()):
        if split not in store.split_names():
            raise InputError(f"store has no split '{split}' (has: {', '.join(store.split_names()) or 'none'})",
                             path=config_path or store.path, field=f"splits.{k}")
        idx = store.split(split)
        if caps[k] is not None and caps[k] < idx.size:
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 31, i]))
            idx = np.sort(rng.permutation(idx)[: caps[k]])
        if idx.size == 0:
            raise InputError(f"split '{split}' is empty", path=store.path, field=f"splits.{k}")
        out[k] = idx
    return out
