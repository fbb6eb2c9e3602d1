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
        """The moments of the union of both sample sets (Chan et al. pairwise update)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge moments of dimension {self.dim} and {other.dim}")
        if other.n == 0:
            return Moments(self.n, self.mean.copy(), self.m2.copy())
        if self.n == 0:
            return Moments(other.n, other.mean.copy(), other.m2.copy())
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.n / n)
        m2 = self.m2 + other.m2 + np.outer(delta, delta) * (self.n * other.n / n)
        return Moments(n, mean, m2)

    def update(self, x: np.ndarray) -> "Moments":
        """Add the rows of ``x`` in place; returns self."""
        merged = self.merge(Moments.of(x))
        self.n, self.mean, self.m2 = merged.n, merged.mean, merged.m2
        return self


class Accumulator:
    """Streaming moments: feed feature blocks of any size with :meth:`add`.

    Rows are copied (and cast) into one preallocated float64 block of ``block_rows`` rows; each
    full block is centred in place and folded in with one ``syrk`` and a pairwise merge, so the
    memory is O(block_rows * d + d^2) whatever the number of samples.
    """

    def __init__(self, block_rows: int = 4096):
        self.block_rows = int(block_rows)
        self._moments: Moments | None = None
        self._block: np.ndarray | None = None
        self._fill = 0

    def add(self, x) -> None:
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"expected features of shape (samples, d), got {x.shape}")
        if self._block is None:
            self._block = np.empty((self.block_rows, x.shape[1]), dtype=np.float64)
        elif x.shape[1] != self._block.shape[1]:
            raise ValueError(f"feature dimension changed from {self._block.shape[1]} to {x.shape[1]}")
        start = 0
        while start < x.shape[0]:
            take = min(self.block_rows - self._fill, x.shape[0] - start)
            self._block[self._fill:self._fill + take] = x[start:start + take]
            self._fill += take
            start += take
            if self._fill == self.block_rows:
                self._flush()

    def _flush(self) -> None:
        if not self._fill:
            return
        block = self._block[:self._fill]
        mean = block.mean(axis=0)
        block -= mean  # in place: the block is ours
        m = Moments(self._fill, mean, block.T @ block)  # X.T @ X of one buffer -> syrk
        self._fill = 0
        self._moments = m if self._moments is None else self._moments.merge(m)

    def result(self) -> Moments:
        self._flush()
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


def accumulate_batches(batches: Iterable, extractor: Callable, agg: str = "flat", *, edge_dropout: float = 0.0) -> Moments:
    """Run ``extractor`` (batch -> (N_atoms, d) tensor) over ``batches`` and stream the moments."""
    import torch

    if agg not in AGGREGATIONS:
        raise InputError(f"unknown aggregation '{agg}' (expected one of {', '.join(AGGREGATIONS)})", field="agg")
    if not 0.0 <= edge_dropout < 1.0:
        raise InputError(f"edge dropout must be in [0, 1), got {edge_dropout}", field="edge_dropout")
    acc = Accumulator()
    keep = getattr(extractor, "keep", None)  # structures an extractor cannot describe (EquiformerV2: Z >= 90)
    with torch.inference_mode():
        for batch in batches:
            if keep is not None:
                mask = keep(batch)
                if not bool(mask.all()):
                    if not bool(mask.any()):
                        continue
                    from atomsift.data.batch import select

                    batch = select(batch, mask)
            feats = _call(extractor, batch, edge_dropout)
            if feats.ndim != 2 or feats.shape[0] != batch.numbers.shape[0]:
                raise RuntimeError(f"extractor returned shape {tuple(feats.shape)} for a batch of {batch.numbers.shape[0]} atoms")
            samples = aggregate(feats, batch.batch.to(feats.device), batch.num_graphs, agg)
            samples = samples.detach().to("cpu")
            if samples.dtype not in (torch.float32, torch.float64):  # half / bfloat16 have no numpy view
                samples = samples.float()
            acc.add(samples.numpy())  # cast to float64 while copied into the accumulator's block
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


def compute_moments(store, extractor: Callable, indices, agg: str = "flat", batch_size: int = 32, edge_dropout: float = 0.0) -> Moments:
    """Moments of ``extractor`` features over the structures ``indices`` of ``store``."""
    if batch_size <= 0:
        raise InputError(f"batch size must be positive, got {batch_size}", field="batch_size")
    return accumulate_batches(store_batches(store, indices, batch_size), extractor, agg, edge_dropout=edge_dropout)


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
        with open(tmp, "wb") as fh:
            np.savez(fh, n=np.int64(moments.n), mean=moments.mean.astype(np.float64), cov=moments.cov.astype(np.float64))
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
    return Moments.from_cov(n, mean.astype(np.float64), cov.astype(np.float64)), load_sidecar(p)
