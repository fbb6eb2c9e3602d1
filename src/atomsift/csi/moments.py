"""Streaming first and second moments of per-atom (or per-structure) features.

Instead of writing every feature vector to disk (the official scripts dump ~10 GB per dataset
and reload it for each of the 24 pairs), CSI keeps only the count, the mean and the covariance
of the features, accumulated in float64 batch by batch. Batches and shards are combined with the
pairwise update of Chan, Golub and LeVeque (1979), which is exact in exact arithmetic and
numerically stable (no sum-of-squares cancellation)::

    n = na + nb,  delta = mean_b - mean_a,
    mean = mean_a + delta * nb / n,
    M2 = M2_a + M2_b + outer(delta, delta) * na * nb / n,

with M2 the centred sum of outer products; the covariance is M2 / (n - 1) as ``np.cov``.

``moments.npz`` holds ``n`` (int), ``mean`` (d,) and ``cov`` (d, d) float64; the JSON sidecar
``moments.npz.json`` says where they come from (extractor and its sha256, dataset, sampling,
aggregation, sample size, seed, store).

**Blocks.** For error bars, the sample's structures are dealt at random into K blocks
(:func:`assign_blocks`; a structure drawn twice stays in one block) and the moments of each block
are kept as well (``block_n`` (K,), ``block_mean`` (K, d), ``block_m2`` (K, d, d)): sufficient
statistics from which the moments of any union of blocks follow exactly, so the CSI estimator
(:mod:`atomsift.csi.estimate`) can leave one block out at a time without touching the features
again. The total is the merge of the blocks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from atomsift.csi.frechet import check_covariance
from atomsift.errors import InputError

AGGREGATIONS = ("flat", "mean", "sum", "max")


@dataclass
class Moments:
    """Count, mean and centred sum of outer products (M2) of d-dimensional samples, float64."""

    n: int
    mean: np.ndarray
    m2: np.ndarray
    blocks: "BlockMoments | None" = None  # per-block sufficient statistics, when kept (error bars)

    @classmethod
    def empty(cls, dim: int) -> "Moments":
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def of(cls, x: np.ndarray) -> "Moments":
        """The moments of the rows of ``x`` (m, d), computed directly."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"expected a 2-D array of samples, got shape {x.shape}")
        m = x.shape[0]
        if m == 0:
            return cls.empty(x.shape[1])
        mean = x.mean(axis=0)
        xc = x - mean
        m2 = xc.T @ xc  # numpy recognises X.T @ X and calls syrk (half the flops of gemm)
        return cls(m, mean, m2)

    @classmethod
    def from_cov(cls, n: int, mean: np.ndarray, cov: np.ndarray) -> "Moments":
        return cls(int(n), np.asarray(mean, dtype=np.float64), np.asarray(cov, dtype=np.float64) * max(int(n) - 1, 0))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (N - 1), as ``np.cov(x, rowvar=False)``; symmetrised."""
        if self.n < 2:
            raise ValueError("a covariance needs at least 2 samples")
        c = self.m2 / (self.n - 1)
        return 0.5 * (c + c.T)

    def merge(self, other: "Moments") -> "Moments":
        """The moments of the union of both sample sets (Chan et al. pairwise update). Blocks are
        merged block by block when both sides have the same number of them (shards of one sample)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of dimension {self.dim} and {other.dim}")
        blocks = None
        if self.blocks is not None and other.blocks is not None and self.blocks.k == other.blocks.k:
            blocks = self.blocks.merge(other.blocks)
        if other.n == 0:
            return Moments(self.n, self.mean.copy(), self.m2.copy(), blocks)
        if self.n == 0:
            return Moments(other.n, other.mean.copy(), other.m2.copy(), blocks)
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, m2, blocks)

    def update(self, x: np.ndarray) -> "Moments":
        """Add the rows of ``x`` in place; returns self."""
        merged = self.merge(Moments.of(x))
        self.n, self.mean, self.m2 = merged.n, merged.mean, merged.m2
        return self


@dataclass
class BlockMoments:
    """Count, mean and M2 of each of K blocks of one sample: ``n`` (K,), ``mean`` (K, d), ``m2`` (K, d, d).

    The moments of any multiset of blocks (:meth:`merged`, ``counts[k]`` copies of block k) follow
    exactly from these, by the same pairwise algebra as :meth:`Moments.merge` written for K parts::

        w_k = c_k n_k,  n = sum w_k,  mean = sum w_k mean_k / n,
        M2 = sum c_k M2_k + sum w_k (mean_k - mean)(mean_k - mean)^T
    """

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, k: int, dim: int) -> "BlockMoments":
        return cls(np.zeros(k, dtype=np.int64), np.zeros((k, dim)), np.zeros((k, dim, dim)))

    @property
    def k(self) -> int:
        return int(self.n.shape[0])

    @property
    def dim(self) -> int:
        return int(self.mean.shape[1])

    def merged(self, counts=None) -> Moments:
        """Moments of the union of ``counts[k]`` copies of block k (all blocks once by default)."""
        c = np.ones(self.k) if counts is None else np.asarray(counts, dtype=np.float64)
        w = c * self.n
        n = float(w.sum())
        if n <= 0:
            return Moments.empty(self.dim)
        mean = (w @ self.mean) / n
        dev = self.mean - mean
        m2 = np.tensordot(c, self.m2, axes=1) + (dev.T * w) @ dev
        return Moments(int(round(n)), mean, 0.5 * (m2 + m2.T))

    def total(self) -> Moments:
        m = self.merged()
        m.blocks = self
        return m

    def leave_one_out(self, k: int) -> Moments:
        """Moments of every block but block ``k`` (the delete-a-group jackknife replicate)."""
        c = np.ones(self.k)
        c[k] = 0.0
        return self.merged(c)

    def nonempty(self) -> "BlockMoments":
        keep = self.n > 0
        return BlockMoments(self.n[keep], self.mean[keep], self.m2[keep])

    def merge(self, other: "BlockMoments") -> "BlockMoments":
        """Block k of the result holds the samples of block k of both (shards of one sample)."""
        if other.k != self.k or other.dim != self.dim:
            raise ValueError(f"cannot merge {self.k} blocks of dimension {self.dim} with {other.k} of {other.dim}")
        parts = [Moments(int(a), ma, m2a).merge(Moments(int(b), mb, m2b))
                 for a, ma, m2a, b, mb, m2b in zip(self.n, self.mean, self.m2, other.n, other.mean, other.m2)]
        return BlockMoments(np.array([p.n for p in parts], dtype=np.int64), np.stack([p.mean for p in parts]),
                            np.stack([p.m2 for p in parts]))


def assign_blocks(indices, k: int, seed: int) -> np.ndarray:
    """Block (0..k-1) of each entry of ``indices`` (store rows of a sample, in sample order).

    Distinct structures are dealt round-robin in a seeded random order, so blocks are random,
    equal-sized groups of structures; a structure drawn twice (class-balanced sampling repeats
    rows of small classes) is in one block, as resampling "over structures" requires. Computed
    from the whole sample, so the shards of ``--shard`` agree on it."""
    idx = np.asarray(indices, dtype=np.int64)
    uniq, inverse = np.unique(idx, return_inverse=True)
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 0xB10C])).permutation(uniq.size)
    block_of_uniq = np.empty(uniq.size, dtype=np.int64)
    block_of_uniq[order] = np.arange(uniq.size) % max(int(k), 1)
    return block_of_uniq[inverse]


class Accumulator:
    """Streaming moments: feed feature blocks of any size with :meth:`add`.

    Rows are copied (and cast) into one preallocated float64 buffer of ``block_rows`` rows; each
    full buffer is centred in place and folded in with one ``syrk`` and a pairwise merge, so the
    memory is O(block_rows * d + d^2) whatever the number of samples. With ``blocks=K`` every row
    carries a block id (:meth:`add` ``blocks=``) and the moments of each block are kept too
    (O(K d^2) more memory; the same flops, one ``syrk`` per block present in a buffer).
    """

    def __init__(self, block_rows: int = 4096, blocks: int = 1):
        self.block_rows = int(block_rows)
        self.k = int(blocks)
        self._moments: Moments | None = None
        self._blocks: BlockMoments | None = None
        self._block: np.ndarray | None = None
        self._ids = np.zeros(self.block_rows, dtype=np.int64)
        self._fill = 0

    def add(self, x, blocks=None) -> None:
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"expected features of shape (samples, d), got {x.shape}")
        if self._block is None:
            self._block = np.empty((self.block_rows, x.shape[1]), dtype=np.float64)
        elif x.shape[1] != self._block.shape[1]:
            raise ValueError(f"feature dimension changed from {self._block.shape[1]} to {x.shape[1]}")
        ids = np.zeros(x.shape[0], dtype=np.int64) if blocks is None else np.asarray(blocks, dtype=np.int64)
        if ids.shape != (x.shape[0],) or (ids.size and not (0 <= ids.min() and ids.max() < self.k)):
            raise ValueError(f"block ids must be {x.shape[0]} integers in 0..{self.k - 1}")
        start = 0
        while start < x.shape[0]:
            take = min(self.block_rows - self._fill, x.shape[0] - start)
            self._block[self._fill:self._fill + take] = x[start:start + take]
            self._ids[self._fill:self._fill + take] = ids[start:start + take]
            self._fill += take
            start += take
            if self._fill == self.block_rows:
                self._flush()

    def _flush(self) -> None:
        if not self._fill:
            return
        block = self._block[:self._fill]
        if self.k > 1:  # the total is the merge of the blocks (result()): no second syrk
            self._flush_blocks(block, self._ids[:self._fill])
            self._fill = 0
            return
        mean = block.mean(axis=0)
        block -= mean  # in place: the buffer is ours
        m = Moments(self._fill, mean, block.T @ block)  # X.T @ X of one buffer -> syrk
        self._fill = 0
        self._moments = m if self._moments is None else self._moments.merge(m)

    def _flush_blocks(self, rows: np.ndarray, ids: np.ndarray) -> None:
        if self._blocks is None:
            self._blocks = BlockMoments.empty(self.k, rows.shape[1])
        bm = self._blocks
        for b in np.unique(ids):
            part = Moments.of(rows[ids == b])
            merged = Moments(int(bm.n[b]), bm.mean[b], bm.m2[b]).merge(part)
            bm.n[b], bm.mean[b], bm.m2[b] = merged.n, merged.mean, merged.m2

    def result(self) -> Moments:
        """The moments of every row added; with blocks, the total is the merge of the blocks
        (so leaving blocks out is consistent with it to round-off) and ``.blocks`` holds them."""
        self._flush()
        if self._blocks is not None:
            return self._blocks.total()
        if self._moments is None:
            raise InputError("no features were extracted (empty sample)", field="n")
        return self._moments


# ------------------------------------------------------------------------------------- extraction


def aggregate(features, batch_index, num_graphs: int, agg: str):
    """Per-atom features (N, d) -> samples: ``flat`` keeps atoms; mean/sum/max pool per structure."""
    import torch

    if agg == "flat":
        return features
    d = features.shape[1]
    out = torch.zeros((num_graphs, d), dtype=features.dtype, device=features.device)
    idx = batch_index.view(-1, 1).expand(-1, d)
    if agg == "sum":
        return out.scatter_add_(0, idx, features)
    if agg == "mean":
        counts = torch.bincount(batch_index, minlength=num_graphs).clamp(min=1).to(features.dtype)
        return out.scatter_add_(0, idx, features) / counts[:, None]
    if agg == "max":
        return out.scatter_reduce_(0, idx, features, reduce="amax", include_self=False)
    raise InputError(f"unknown aggregation '{agg}' (expected one of {', '.join(AGGREGATIONS)})", field="agg")


def _call(extractor: Callable, batch, edge_dropout: float):
    if edge_dropout > 0:
        try:
            return extractor(batch, edge_dropout=edge_dropout)
        except TypeError as exc:
            if "edge_dropout" not in str(exc):
                raise
            raise InputError(f"extractor {getattr(extractor, 'name', extractor)!r} does not support edge dropout", field="edge_dropout") from None
    return extractor(batch)


def accumulate_batches(batches: Iterable, extractor: Callable, agg: str = "flat", *, edge_dropout: float = 0.0,
                       blocks=None, n_blocks: int | None = None) -> Moments:
    """Run ``extractor`` (batch -> (N_atoms, d) tensor) over ``batches`` and stream the moments.

    ``blocks``: the block id of every structure, in the order the batches deliver them
    (:func:`assign_blocks`); the moments of each of ``n_blocks`` blocks (default: the largest id
    + 1) are then kept as well (``.blocks``)."""
    import torch

    if agg not in AGGREGATIONS:
        raise InputError(f"unknown aggregation '{agg}' (expected one of {', '.join(AGGREGATIONS)})", field="agg")
    if not 0.0 <= edge_dropout < 1.0:
        raise InputError(f"edge dropout must be in [0, 1), got {edge_dropout}", field="edge_dropout")
    ids = None if blocks is None else np.asarray(blocks, dtype=np.int64)
    if ids is not None and n_blocks is None:
        n_blocks = int(ids.max()) + 1 if ids.size else 1
    acc = Accumulator(blocks=n_blocks if ids is not None else 1)
    keep = getattr(extractor, "keep", None)  # structures an extractor cannot describe (EquiformerV2: Z >= 90)
    pos = 0
    with torch.inference_mode():
        for batch in batches:
            struct_ids = None if ids is None else ids[pos:pos + batch.num_graphs]
            pos += batch.num_graphs
            if keep is not None:
                mask = keep(batch)
                if not bool(mask.all()):
                    if not bool(mask.any()):
                        continue
                    from atomsift.data.batch import select

                    batch = select(batch, mask)
                    if struct_ids is not None:
                        struct_ids = struct_ids[mask.cpu().numpy()]
            feats = _call(extractor, batch, edge_dropout)
            if feats.ndim != 2 or feats.shape[0] != batch.numbers.shape[0]:
                raise RuntimeError(f"extractor returned shape {tuple(feats.shape)} for a batch of {batch.numbers.shape[0]} atoms")
            samples = aggregate(feats, batch.batch.to(feats.device), batch.num_graphs, agg)
            samples = samples.detach().to("cpu")
            if samples.dtype not in (torch.float32, torch.float64):  # half / bfloat16 have no numpy view
                samples = samples.float()
            row_ids = None
            if struct_ids is not None:
                row_ids = struct_ids[batch.batch.cpu().numpy()] if agg == "flat" else struct_ids
            acc.add(samples.numpy(), row_ids)  # cast to float64 while copied into the accumulator's buffer
    if ids is not None and pos != ids.size:
        raise RuntimeError(f"{ids.size} block ids for {pos} structures")
    return acc.result()


def store_batches(store, indices, batch_size: int = 32, dtype=None) -> Iterator:
    """PyG Batches of ``store`` structures ``indices`` (global), in order, tagged with the dataset."""
    import torch

    from atomsift.data.batch import collate

    dtype = dtype or torch.float32
    idx = np.asarray(indices, dtype=np.int64)
    for s in range(0, idx.size, batch_size):
        recs = [store.record(int(g)) for g in idx[s:s + batch_size]]
        yield collate(recs, dtype=dtype, dataset=store.dataset)


def compute_moments(store, extractor: Callable, indices, agg: str = "flat", batch_size: int = 32, edge_dropout: float = 0.0,
                    blocks=None, n_blocks: int | None = None) -> Moments:
    """Moments of ``extractor`` features over the structures ``indices`` of ``store`` (and of each
    block, given the block id of every entry of ``indices``)."""
    if batch_size <= 0:
        raise InputError(f"batch size must be positive, got {batch_size}", field="batch_size")
    return accumulate_batches(store_batches(store, indices, batch_size), extractor, agg, edge_dropout=edge_dropout,
                              blocks=blocks, n_blocks=n_blocks)


# ------------------------------------------------------------------------------------------- files


def sidecar_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".json")


def save_moments(path: str | Path, moments: Moments, meta: dict | None = None) -> Path:
    """Write ``path`` (npz: n, mean, cov) and its JSON sidecar, published together by rename
    (neither appears without the other)."""
    from atomsift.fsio import atomic_paths

    path = Path(path)
    side = dict(meta or {})
    side.setdefault("n", int(moments.n))
    side["dim"] = moments.dim
    with atomic_paths(path, sidecar_path(path)) as (tmp, stmp):
        arrays = {"n": np.int64(moments.n), "mean": moments.mean.astype(np.float64), "cov": moments.cov.astype(np.float64)}
        if moments.blocks is not None:
            b = moments.blocks
            side["blocks"] = b.k
            arrays.update(block_n=b.n.astype(np.int64), block_mean=b.mean.astype(np.float64), block_m2=b.m2.astype(np.float64))
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        stmp.write_text(json.dumps(side, indent=2))
    return path


def load_sidecar(path: str | Path, required: bool = False) -> dict:
    sp = sidecar_path(path)
    if not sp.exists():
        if required:
            raise InputError(f"no sidecar {sp.name} next to the moments file (it records the extractor)", path=path)
        return {}
    try:
        meta = json.loads(sp.read_bytes())
    except json.JSONDecodeError as exc:
        raise InputError(f"sidecar is not valid JSON ({exc.msg} at line {exc.lineno})", path=sp) from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise InputError(f"sidecar is not valid JSON ({type(exc).__name__})", path=sp) from None
    if not isinstance(meta, dict):
        raise InputError("sidecar must hold a JSON object", path=sp)
    return meta


def load_moments(path: str | Path) -> tuple[Moments, dict]:
    """Read and check a moments file; returns (Moments, sidecar dict or {})."""
    p = Path(path)
    if not p.is_file():
        raise InputError("moments file does not exist", path=p)
    from atomsift.safeio import check_npz

    check_npz(p)  # member headers against member sizes before numpy allocates what they claim
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # zipfile.BadZipFile, ValueError, OSError ...
        raise InputError(f"not a readable .npz moments file ({type(exc).__name__})", path=p) from None
    for key in ("n", "mean", "cov"):
        if key not in data:
            raise InputError(f"missing key (has: {', '.join(sorted(data)) or 'none'})", path=p, field=key)
    n = data["n"]
    if n.shape != () or not np.issubdtype(n.dtype, np.integer):
        raise InputError(f"expected an integer scalar, got dtype {n.dtype} shape {n.shape}", path=p, field="n")
    n = int(n)
    if n < 2:
        raise InputError(f"need at least 2 samples for a covariance, got {n}", path=p, field="n")
    mean, cov = data["mean"], data["cov"]
    for key, a in (("mean", mean), ("cov", cov)):
        if not np.issubdtype(a.dtype, np.floating):
            raise InputError(f"expected floats, got dtype {a.dtype}", path=p, field=key)
    if mean.ndim != 1 or mean.size == 0:
        raise InputError(f"expected shape (d,), got {mean.shape}", path=p, field="mean")
    d = mean.shape[0]
    if cov.shape != (d, d):
        raise InputError(f"expected shape ({d}, {d}) to match mean, got {cov.shape}", path=p, field="cov")
    for key, a in (("mean", mean), ("cov", cov)):
        if not np.all(np.isfinite(a)):
            raise InputError("non-finite value", path=p, field=key)
    check_covariance(cov.astype(np.float64), p)
    m = Moments.from_cov(n, mean.astype(np.float64), cov.astype(np.float64))
    m.blocks = _load_blocks(data, m, p)
    return m, load_sidecar(p)


BLOCK_KEYS = ("block_n", "block_mean", "block_m2")


def _load_blocks(data: dict, total: Moments, p: Path) -> BlockMoments | None:
    """The per-block moments of a file, checked to be consistent with its total: shapes, counts
    that sum to ``n``, finite values, symmetric M2 with a non-negative diagonal, and blocks that
    merge to the file's mean and covariance (1e-6 relative). None for files without blocks."""
    have = [k for k in BLOCK_KEYS if k in data]
    if not have:
        return None
    if len(have) != len(BLOCK_KEYS):
        missing = next(k for k in BLOCK_KEYS if k not in data)
        raise InputError(f"missing key (block moments need {', '.join(BLOCK_KEYS)})", path=p, field=missing)
    bn, bmean, bm2 = data["block_n"], data["block_mean"], data["block_m2"]
    d = total.dim
    if bn.ndim != 1 or bn.size == 0 or not np.issubdtype(bn.dtype, np.integer):
        raise InputError(f"expected a non-empty 1-D integer array, got dtype {bn.dtype} shape {bn.shape}", path=p, field="block_n")
    k = bn.shape[0]
    if bmean.shape != (k, d):
        raise InputError(f"expected shape ({k}, {d}), got {bmean.shape}", path=p, field="block_mean")
    if bm2.shape != (k, d, d):
        raise InputError(f"expected shape ({k}, {d}, {d}), got {bm2.shape}", path=p, field="block_m2")
    for key, a in (("block_mean", bmean), ("block_m2", bm2)):
        if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)):
            raise InputError("expected finite floats", path=p, field=key)
    if bn.min() < 0 or int(bn.sum()) != total.n:
        raise InputError(f"block counts must be >= 0 and sum to n = {total.n}, got sum {int(bn.sum())}", path=p, field="block_n")
    bm2 = bm2.astype(np.float64)
    scale = max(float(np.trace(total.m2)), 1e-300)  # round-off of a scatter matrix scales with its trace
    if float(np.abs(bm2 - bm2.transpose(0, 2, 1)).max(initial=0.0)) > 1e-8 * scale or \
            float(np.diagonal(bm2, axis1=1, axis2=2).min(initial=0.0)) < -1e-8 * scale:
        raise InputError("block scatter matrices must be symmetric with a non-negative diagonal", path=p, field="block_m2")
    blocks = BlockMoments(bn.astype(np.int64), bmean.astype(np.float64), bm2)
    merged = blocks.merged()
    cov = total.cov
    cmax = float(np.abs(cov).max())
    mean_tol = 1e-6 * (np.sqrt(cmax) + float(np.abs(total.mean).max()))
    if float(np.abs(merged.mean - total.mean).max()) > mean_tol or float(np.abs(merged.cov - cov).max()) > 1e-6 * cmax:
        raise InputError("the blocks do not merge to the file's mean and covariance", path=p, field="block_m2")
    return blocks
