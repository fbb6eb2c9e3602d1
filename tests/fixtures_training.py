"""Small synthetic stores with exact labels and a cheap stand-in model, for the tests and
benchmarks of the training loop (bench/ puts this folder on sys.path).

Molecules of a few H/C/N/O atoms at random non-overlapping positions; energy = sum_i c[Z_i] +
a Morse pair energy, forces = its exact negative gradient. The per-element constants ``coeff``
are known, so the linear reference fit can be checked against them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atomsift.data.store import StoreWriter

DEFAULT_COEFF = {1: -13.6, 6: -1029.0, 7: -1485.0, 8: -2042.0}


def morse(pos: np.ndarray, D: float = 0.5, a: float = 1.2, r0: float = 1.4) -> tuple[float, np.ndarray]:
    """Pair Morse energy (eV) and forces (eV/A) of one structure."""
    d = pos[:, None, :] - pos[None, :, :]
    r = np.linalg.norm(d, axis=-1)
    iu = np.triu_indices(len(pos), 1)
    x = np.exp(-a * (r[iu] - r0))
    e = float(np.sum(D * (x * x - 2 * x)))
    dvdr = np.zeros_like(r)
    dvdr[iu] = D * (-2 * a * x * x + 2 * a * x)
    dvdr = dvdr + dvdr.T
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = np.where(r[..., None] > 0, d / np.where(r > 0, r, 1.0)[..., None], 0.0)
    forces = -np.sum(dvdr[..., None] * unit, axis=1)
    return e, forces


def random_molecule(rng: np.random.Generator, n_min: int = 3, n_max: int = 7, elements=(1, 6, 7, 8)):
    n = int(rng.integers(n_min, n_max + 1))
    z = rng.choice(np.asarray(elements), size=n)
    pos = [np.zeros(3)]
    while len(pos) < n:
        cand = pos[int(rng.integers(len(pos)))] + rng.normal(size=3) * 0.9
        if min(np.linalg.norm(cand - p) for p in pos) > 0.9:
            pos.append(cand)
    return z, np.array(pos)


def make_toy_store(out: str | Path, n: int, *, dataset: str = "ani1x", seed: int = 0, coeff: dict | None = None,
                   noise: float = 0.0, n_val: int | None = None, n_test: int = 0, elements=(1, 6, 7, 8),
                   targets: bool = False, n_atoms: tuple[int, int] = (3, 7)) -> Path:
    """Write a store of ``n`` toy molecules with train/val(/test) splits; return its path."""
    coeff = dict(DEFAULT_COEFF if coeff is None else coeff)
    rng = np.random.default_rng(seed)
    n_val = max(n // 10, 1) if n_val is None else n_val
    kw = dict(target_names=["gap"], target_units={"gap": "eV"}) if targets else {}
    with StoreWriter(out, dataset=dataset, reader="toy", has_energy=True, has_forces=True, energy_kind="total", **kw) as w:
        for i in range(n):
            z, pos = random_molecule(rng, n_atoms[0], n_atoms[1], elements=elements)
            e, f = morse(pos)
            e += sum(coeff[int(x)] for x in z) + (rng.normal() * noise if noise else 0.0)
            t = {"targets": [float(e - sum(coeff[int(x)] for x in z))]} if targets else {}
            w.add(z, pos, energy=e, forces=f, cls="".join(map(str, sorted(z))), **t)
        perm = np.random.default_rng(seed + 1).permutation(n)
        w.set_split("val", np.sort(perm[:n_val]))
        if n_test:
            w.set_split("test", np.sort(perm[n_val:n_val + n_test]))
        w.set_split("train", np.sort(perm[n_val + n_test:]))
    return Path(out)


# ------------------------------------------------------------------------------- stand-in model


def _toy_model_classes():
    import torch
    from torch import nn

    class ToyBlock(nn.Module):
        def __init__(self, h: int, n_rbf: int):
            super().__init__()
            self.filter = nn.Sequential(nn.Linear(n_rbf, h), nn.SiLU(), nn.Linear(h, h))
            self.update = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, h))

        def forward(self, x, rbf, src, dst):
            msg = x[src] * self.filter(rbf)
            agg = torch.zeros_like(x).index_add_(0, dst, msg)
            return x + self.update(agg)

    class ToyHead(nn.Module):
        def __init__(self, kind: str, reduction: str, h: int, n_rbf: int):
            super().__init__()
            self.kind, self.reduction = kind, reduction
            self.atom = nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1))
            if kind == "energy_direct_forces":
                self.edge = nn.Sequential(nn.Linear(2 * h + n_rbf, h), nn.SiLU(), nn.Linear(h, 1))

    class ToyModel(nn.Module):
        """A SchNet-like model with GemNetModel's call signature and parameter names
        (``embedding``, ``backbone.int_blocks.i``, ``heads``), cheap enough for loop tests."""

        def __init__(self, heads: dict, h: int = 32, n_blocks: int = 2, n_rbf: int = 16, cutoff: float = 5.0, seed: int = 0):
            super().__init__()
            g = torch.random.fork_rng(devices=[])
            with g:
                torch.manual_seed(seed)
                self.embedding = nn.Embedding(120, h)
                self.backbone = nn.Module()
                self.backbone.int_blocks = nn.ModuleList([ToyBlock(h, n_rbf) for _ in range(n_blocks)])
                self.heads = nn.ModuleDict({k: ToyHead(v.kind, v.reduction, h, n_rbf) for k, v in heads.items()})
            self.register_buffer("centers", torch.linspace(0.0, cutoff, n_rbf))
            self.cutoff = cutoff
            self.size = "toy"

        def _edges(self, batch, pos, edge_dropout, generator):
            same = batch.batch[:, None] == batch.batch[None, :]
            d = pos[:, None, :] - pos[None, :, :]
            r = d.detach().norm(dim=-1)
            mask = same & (r < self.cutoff) & ~torch.eye(len(pos), dtype=torch.bool, device=pos.device)
            src, dst = mask.nonzero(as_tuple=True)
            if edge_dropout > 0 and self.training:
                keep = torch.rand(src.shape[0], generator=generator, device=pos.device) >= edge_dropout
                src, dst = src[keep], dst[keep]
            vec = pos[dst] - pos[src]
            dist = torch.sqrt((vec ** 2).sum(-1) + 1e-12)
            rbf = torch.exp(-4.0 * (dist[:, None] - self.centers) ** 2)
            return src, dst, vec / dist[:, None], rbf

        def forward(self, batch, head: str, graph=None, edge_dropout: float = 0.0, generator=None) -> dict:
            hd = self.heads[head]
            B = batch.num_graphs
            grad = hd.kind == "energy_grad_forces"
            with torch.enable_grad() if grad else _null():
                pos = batch.pos.detach().requires_grad_(True) if grad else batch.pos
                src, dst, unit, rbf = self._edges(batch, pos, edge_dropout, generator)
                x = self.embedding(batch.numbers)
                for blk in self.backbone.int_blocks:
                    x = blk(x, rbf, src, dst)
                a = hd.atom(x).squeeze(-1)
                if hd.kind == "scalar" and hd.reduction == "max":
                    y = torch.full((B,), -torch.inf, dtype=a.dtype, device=a.device).scatter_reduce(0, batch.batch, a, "amax")
                else:
                    y = torch.zeros(B, dtype=a.dtype, device=a.device).index_add_(0, batch.batch, a)
                    if hd.reduction == "mean":
                        y = y / batch.natoms.to(a.dtype)
                if hd.kind == "scalar":
                    return {"y": y}
                out = {"energy": y}
                if hd.kind == "energy_direct_forces":
                    f = hd.edge(torch.cat([x[src], x[dst], rbf], -1))
                    out["forces"] = torch.zeros_like(batch.pos).index_add_(0, dst, f * unit)
                elif grad:
                    (g,) = torch.autograd.grad(y.sum(), pos, create_graph=self.training)
                    out["forces"] = -g
                return out

        def model_config(self) -> dict:
            return {"size": "toy", "backbone": None, "heads": {k: h.kind for k, h in self.heads.items()}}

        def block_index(self, name: str) -> int | None:
            """GemNetModel's layer-wise LR groups: -1 embedding, i for backbone.int_blocks.i."""
            if name.startswith("embedding."):
                return -1
            if name.startswith("backbone.int_blocks."):
                return int(name.split(".")[2])
            return None

        def parameter_groups(self):
            return {"embedding": list(self.embedding.parameters()), "backbone": list(self.backbone.parameters()),
                    "heads": list(self.heads.parameters())}

    import contextlib

    def _null():
        return contextlib.nullcontext()

    return ToyModel


def toy_model_factory(size: str, heads: dict, direct_forces_backbone: bool, seed: int):
    """``model_factory`` for :func:`atomsift.train.pretrain.run_pretrain` / finetune: a ToyModel."""
    return _toy_model_classes()(heads, seed=seed)
