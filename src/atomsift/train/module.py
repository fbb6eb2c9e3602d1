"""LightningModules of the two stages: what one step is, the loss, EMA, LR schedule, budget.

The trainer owns devices, precision, checkpoints and logging; the modules here own the model, an
EMA copy of it (``ema_model``, what validation, testing and ``model.pt`` use), the per-dataset
label normalisation, the count of structures actually trained on, and the LR schedule (a pure
function of the optimizer step plus, when finetuning, the reduce-on-plateau state), so that a run
resumed from ``last.ckpt`` continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import re
import time
from typing import Callable, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor

from atomsift.train.data import Batch
from atomsift.train.linref import DatasetNorm

# ------------------------------------------------------------------------------------ schedules


class WarmupCosine:
    """LR factor of one parameter group at optimizer step k (a LambdaLR lambda; state is saved).

    Linear warmup from ``start`` to 1 over ``warmup`` steps, cosine from 1 to ``floor`` over the
    remaining ``total - warmup`` steps, then ``floor``; times ``plateau``, the product of the
    reduce-on-plateau decays applied so far (finetuning only).
    """

    def __init__(self, warmup: int, total: int, start: float, floor: float):
        self.warmup = int(warmup)
        self.total = int(total)
        self.start = float(start)
        self.floor = float(floor)
        self.plateau = 1.0

    def base(self, k: int) -> float:
        if self.warmup > 0 and k < self.warmup:
            return self.start + (1.0 - self.start) * k / self.warmup
        span = self.total - self.warmup
        if span <= 0 or k >= self.total:
            return self.floor
        t = (k - self.warmup) / span
        return self.floor + 0.5 * (1.0 - self.floor) * (1.0 + math.cos(math.pi * t))

    def __call__(self, k: int) -> float:
        return self.base(k) * self.plateau


class Plateau:
    """ReduceLROnPlateau on the primary validation metric (min), active after the cosine phase.

    Relative threshold 1e-4 as torch's default; multiplies every group's ``plateau`` factor.
    """

    def __init__(self, factor: float, patience: int, threshold: float = 1e-4):
        self.factor = float(factor)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.best = math.inf
        self.bad = 0

    def step(self, value: float, lambdas: Sequence[WarmupCosine]) -> bool:
        if value < self.best * (1.0 - self.threshold):
            self.best = value
            self.bad = 0
            return False
        self.bad += 1
        if self.bad > self.patience:
            for lam in lambdas:
                lam.plateau *= self.factor
            self.bad = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, s: dict) -> None:
        self.best, self.bad = float(s["best"]), int(s["bad"])


# ----------------------------------------------------------------------------------------- losses


def segment_sum(values: Tensor, index: Tensor, n: int) -> Tensor:
    out = torch.zeros((n,) + values.shape[1:], dtype=values.dtype, device=values.device)
    return out.index_add_(0, index, values)


def per_atom_l2(pred: Tensor, target: Tensor) -> Tensor:
    """||pred - target||_2 per atom, with a zero (not NaN) gradient where they coincide."""
    sq = ((pred - target) ** 2).sum(-1)
    safe = torch.where(sq > 0, sq, torch.ones_like(sq))
    return torch.where(sq > 0, safe.sqrt(), torch.zeros_like(sq))


def reference_energy(coeff: Tensor, numbers: Tensor, batch: Tensor, n: int) -> Tensor:
    """sum_i coeff[Z_i] per structure (the linear reference, eV)."""
    return segment_sum(coeff[numbers], batch, n)


# -------------------------------------------------------------------------------------- base


def _reduce_sum(module: pl.LightningModule, t: Tensor) -> Tensor:
    trainer = module._trainer
    if trainer is not None and trainer.world_size > 1:
        return trainer.strategy.reduce(t, reduce_op="sum")
    return t


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the global torch RNG at optimizer step ``step`` on ``rank`` (edge dropout)."""
    return int(np.random.SeedSequence([int(seed), int(step), int(rank), 77]).generate_state(1)[0])


class AtomsModule(pl.LightningModule):
    """What both stages share: model + EMA, AdamW with per-group LR scales, budget counting."""

    def __init__(self, model: torch.nn.Module, *, seed: int, n_parts: int, ema_decay: float, lr: float,
                 weight_decay: float, betas, warmup: int, total_steps: int, start_factor: float,
                 min_lr_factor: float, progress: dict, record_seen: bool = False):
        super().__init__()
        self.model = model
        self.ema_decay = float(ema_decay)
        self.ema_model = None
        if self.ema_decay > 0:
            self.ema_model = copy.deepcopy(model)
            for p in self.ema_model.parameters():
                p.requires_grad_(False)
        self.seed = int(seed)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.betas = tuple(betas)
        self.warmup = int(warmup)
        self.total_steps = int(total_steps)
        self.start_factor = float(start_factor)
        self.min_lr_factor = float(min_lr_factor)
        self.progress = progress
        self.register_buffer("seen", torch.zeros(n_parts, dtype=torch.long))
        self.val_curve: list[dict] = []
        self.record_seen = record_seen
        self.seen_ids: dict[int, list] = {}
        self._val_acc: dict[str, Tensor] = {}
        self.lambdas: list[WarmupCosine] = []
        self._t0 = time.time()
        self.prior_elapsed = 0.0  # training wall time of earlier (killed) segments of this run

    def elapsed(self) -> float:
        """Wall time of this run since its first start, summed over resumed segments."""
        return self.prior_elapsed + time.time() - self._t0

    # -- what evaluation uses
    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema_model if self.ema_model is not None else self.model

    # -- optimiser
    def param_groups(self) -> list[dict]:
        """[{params, scale}] — override for layer-wise scales."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "scale": 1.0}]

    def configure_optimizers(self):
        groups = [g for g in self.param_groups() if g["params"]]
        opt = torch.optim.AdamW(
            [{"params": g["params"], "lr": self.lr * g["scale"], "scale": g["scale"]} for g in groups],
            lr=self.lr, betas=self.betas, weight_decay=self.weight_decay, eps=1e-8)
        # every group anneals to the same absolute floor min_lr_factor x lr (JMP's per-group rescale)
        self.lambdas = [
            WarmupCosine(self.warmup, self.total_steps, self.start_factor,
                         min(max(self.min_lr_factor / g["scale"], 0.01), 0.99) if g["scale"] != 1.0 else self.min_lr_factor)
            for g in groups]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lambdas)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step()

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self._ema_update()

    @torch.no_grad()
    def _ema_update(self) -> None:
        if self.ema_model is None:
            return
        d = self.ema_decay
        for pe, p in zip(self.ema_model.parameters(), self.model.parameters()):
            pe.mul_(d).add_(p.detach().to(pe.dtype), alpha=1.0 - d)
        for be, b in zip(self.ema_model.buffers(), self.model.buffers()):
            be.copy_(b)

    # -- bookkeeping
    def on_train_epoch_start(self) -> None:
        # Lightning sets the epoch only on ``loader.sampler``; ours is the batch sampler
        loader = self.trainer.train_dataloader
        bs = getattr(loader, "batch_sampler", None)
        if hasattr(bs, "set_epoch"):
            bs.set_epoch(self.current_epoch)
        if self.progress.get("epoch") != self.current_epoch:
            self.progress.update(epoch=self.current_epoch, batches=0)

    def _should_log(self) -> bool:
        # self.log costs ~1 ms; skip it on steps the logger would not write anyway
        t = self._trainer
        return t is None or t.log_every_n_steps <= 1 or (t.global_step + 1) % t.log_every_n_steps == 0 or t.progress_bar_callback is not None

    def _before_step(self) -> None:
        torch.manual_seed(step_seed(self.seed, self.global_step, self.global_rank))

    def _count(self, batch: Batch) -> None:
        n = _reduce_sum(self, batch.n_real.to(self.seen.device))
        self.seen += n.to(self.seen.dtype)
        self.progress["batches"] = self.progress.get("batches", 0) + 1
        if self.record_seen:
            self.seen_ids.setdefault(self.current_epoch, []).extend([list(map(int, x)) for x in batch.ids])

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device) if isinstance(batch, Batch) else super().transfer_batch_to_device(batch, device, dataloader_idx)

    # -- validation accumulation (sums, reduced over ranks at epoch end)
    def _accumulate(self, sums: dict[str, Tensor]) -> None:
        for k, v in sums.items():
            v = v.detach().to(torch.float64)
            self._val_acc[k] = self._val_acc[k] + v if k in self._val_acc else v

    def _reduced_val(self) -> dict[str, float]:
        out = {}
        for k in sorted(self._val_acc):
            out[k] = float(_reduce_sum(self, self._val_acc[k].to(self.device)))
        self._val_acc = {}
        return out

    # -- checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["atomsift"] = {"val_curve": self.val_curve, "seen_ids": self.seen_ids if self.record_seen else {},
                                  "elapsed": self.elapsed()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get("atomsift", {})
        self.val_curve = list(extra.get("val_curve", []))
        self.seen_ids = {int(k): v for k, v in extra.get("seen_ids", {}).items()}
        self.prior_elapsed = float(extra.get("elapsed", 0.0))
        self._t0 = time.time()


# -------------------------------------------------------------------------------------- pretrain


class PretrainModule(AtomsModule):
    """Per-dataset energy + direct-force heads; L1 energy + structure-wise L2 force loss (§3.5)."""

    def __init__(self, model, *, names: Sequence[str], graphs: Sequence, norms: Sequence[DatasetNorm],
                 energy_loss_scale: float, force_loss_scale: float, edge_dropout: float, **kw):
        super().__init__(model, n_parts=len(names), **kw)
        self.names = list(names)
        self.graphs = list(graphs)
        self.energy_loss_scale = float(energy_loss_scale)
        self.force_loss_scale = float(force_loss_scale)
        self.edge_dropout = float(edge_dropout)
        self.register_buffer("coeff", torch.tensor(np.array([n.coeff for n in norms]), dtype=torch.float64), persistent=False)
        self.register_buffer("e_mean", torch.tensor([n.energy_mean for n in norms], dtype=torch.float64), persistent=False)
        self.register_buffer("e_std", torch.tensor([n.energy_std for n in norms], dtype=torch.float64), persistent=False)
        self.register_buffer("f_std", torch.tensor([n.force_std for n in norms], dtype=torch.float64), persistent=False)
        self.train_loader_fn: Callable | None = None
        self.val_loader_fn: Callable | None = None

    def train_dataloader(self):
        return self.train_loader_fn(self.global_rank, self.trainer.world_size)

    def val_dataloader(self):
        return self.val_loader_fn(self.global_rank, self.trainer.world_size)

    def losses(self, model, batch: Batch, edge_dropout: float) -> dict[str, Tensor]:
        """Sums over the batch's real structures: loss terms, counts and MAEs (eV, eV/A) per part."""
        dev = self.seen.device
        e_sum = torch.zeros((), device=dev)
        f_sum = torch.zeros((), device=dev)
        w_total = torch.zeros((), device=dev)
        stats: dict[str, Tensor] = {}
        for k, b in batch.sub.items():
            w = batch.weight[k].to(dev)
            out = model(b, head=self.names[k], graph=self.graphs[k], edge_dropout=edge_dropout)
            B = b.num_graphs
            ref = reference_energy(self.coeff[k], b.numbers, b.batch, B)
            e_t = ((b.energy.double() - ref - self.e_mean[k]) / self.e_std[k]).to(out["energy"].dtype)
            e_err = (out["energy"] - e_t).abs()
            f_t = (b.forces.double() / self.f_std[k]).to(out["forces"].dtype)
            f_atom = per_atom_l2(out["forces"], f_t)
            f_struct = segment_sum(f_atom, b.batch, B) / b.natoms.to(f_atom.dtype)
            e_sum = e_sum + (w * e_err.float()).sum()
            f_sum = f_sum + (w * f_struct.float()).sum()
            w_total = w_total + w.sum()
            nm = self.names[k]
            w_atom = w[b.batch]
            free = (~b.fixed).float() * w_atom
            stats[f"{nm}/n"] = w.sum()
            stats[f"{nm}/energy_abs"] = (w * e_err.detach().double() * self.e_std[k]).sum()
            stats[f"{nm}/force_abs"] = (free[:, None] * (out["forces"].detach().double() - f_t.detach().double()).abs() * self.f_std[k]).sum()
            stats[f"{nm}/force_n"] = 3 * free.sum()
        denom = torch.clamp(w_total, min=1.0)
        loss_e = self.energy_loss_scale * e_sum / denom
        loss_f = self.force_loss_scale * f_sum / denom
        stats.update(loss=loss_e + loss_f, loss_energy=loss_e.detach(), loss_force=loss_f.detach(), n=w_total.detach(),
                     loss_sum=(loss_e + loss_f).detach() * w_total.detach())
        return stats

    def training_step(self, batch: Batch, batch_idx: int):
        self._before_step()
        s = self.losses(self.model, batch, self.edge_dropout)
        self._count(batch)
        if self._should_log():
            self.log_dict({"train/loss": s["loss"].detach(), "train/loss_energy": s["loss_energy"],
                           "train/loss_force": s["loss_force"]}, on_step=True, on_epoch=False, prog_bar=True,
                          batch_size=int(batch.size))
        return s["loss"]

    def validation_step(self, batch: Batch, batch_idx: int):
        with torch.no_grad():
            s = self.losses(self.eval_model, batch, 0.0)
        s.pop("loss")
        for k in ("loss_energy", "loss_force"):
            s.pop(k)
        self._accumulate(s)

    def on_validation_epoch_end(self) -> None:
        v = self._reduced_val()
        if not v:
            return
        n = max(v["n"], 1.0)
        row = {"epoch": int(self.current_epoch), "step": int(self.global_step), "loss": v["loss_sum"] / n}
        for nm in self.names:
            if v.get(f"{nm}/n", 0) > 0:
                row[f"{nm}/energy_mae"] = v[f"{nm}/energy_abs"] / v[f"{nm}/n"]
                row[f"{nm}/force_mae"] = v[f"{nm}/force_abs"] / max(v[f"{nm}/force_n"], 1.0)
        self.val_curve.append(row)
        self.log("val/loss", row["loss"], prog_bar=True, sync_dist=False)
        for k, val in row.items():
            if "/" in k:
                self.log(f"val/{k}", val, sync_dist=False)


# ------------------------------------------------------------------------------------- finetune


_INT_BLOCK = re.compile(r"(?:^|\.)int_blocks\.(\d+)\.")
_OUT_BLOCK = re.compile(r"(?:^|\.)out_blocks\.(\d+)\.")


def layerwise_groups(model: torch.nn.Module, embedding_scale: float, block_scales: Sequence[float] | None,
                     default_scales: Callable[[int], list[float]]) -> list[dict]:
    """Parameter groups with JMP's layer-wise LR scales (PAPER.md §4.1).

    embedding: ``embedding_scale``; block i = int_blocks.i + out_blocks.(i+1) (+ out_blocks.0 for
    i = 0): ``block_scales[i]``; everything else (bases, output MLPs, heads): 1.0.
    """
    emb_ids = set()
    if hasattr(model, "parameter_groups"):
        emb_ids = {id(p) for p in model.parameter_groups().get("embedding", [])}
    head_ids = set()
    if hasattr(model, "parameter_groups"):
        head_ids = {id(p) for p in model.parameter_groups().get("heads", [])}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    n_blocks = len({int(m.group(1)) for n, _ in named if (m := _INT_BLOCK.search(n))})
    scales = list(block_scales) if block_scales is not None else default_scales(n_blocks)
    if n_blocks and len(scales) != n_blocks:
        raise ValueError(f"block_lr_scales has {len(scales)} entries, the backbone has {n_blocks} blocks")
    buckets: dict[float, list] = {}
    for n, p in named:
        scale = 1.0
        if id(p) in head_ids:
            scale = 1.0
        elif id(p) in emb_ids:
            scale = embedding_scale
        elif (m := _INT_BLOCK.search(n)):
            scale = scales[int(m.group(1))]
        elif (m := _OUT_BLOCK.search(n)):
            scale = scales[max(int(m.group(1)) - 1, 0)] if n_blocks else 1.0
        buckets.setdefault(scale, []).append(p)
    return [{"params": ps, "scale": s} for s, ps in sorted(buckets.items(), key=lambda kv: -kv[0])]


class FinetuneModule(AtomsModule):
    """One downstream task: forces (gradient or direct) or one scalar target (PAPER.md §4)."""

    def __init__(self, model, *, head: str, kind: str, graph, norm: DatasetNorm, scalar_std: float, scalar_mean: float,
                 target: str | None, energy_loss_scale: float, force_loss_scale: float, gradient_forces: bool,
                 edge_dropout: float, embedding_lr_scale: float, block_lr_scales, default_scales, plateau: Plateau,
                 cosine_steps: int, train_loader_fn=None, val_loader_fn=None, test_loader_fn=None, **kw):
        super().__init__(model, n_parts=1, **kw)
        self.head = head
        self.kind = kind
        self.graph = graph
        self.target = target
        self.energy_loss_scale = float(energy_loss_scale)
        self.force_loss_scale = float(force_loss_scale)
        self.gradient_forces = bool(gradient_forces)
        self.edge_dropout = float(edge_dropout)
        self.embedding_lr_scale = float(embedding_lr_scale)
        self.block_lr_scales = block_lr_scales
        self.default_scales = default_scales
        self.plateau = plateau
        self.cosine_steps = int(cosine_steps)
        self.register_buffer("coeff", torch.tensor(np.asarray(norm.coeff), dtype=torch.float64), persistent=False)
        # forces tasks: energy in units of e_scale, forces in units of f_scale; gradient forces
        # differentiate the scaled energy, so both use the force std there
        self.e_mean = float(norm.energy_mean if kind == "forces" else scalar_mean)
        if kind == "forces":
            self.f_scale = float(norm.force_std)
            self.e_scale = float(norm.force_std if gradient_forces else norm.energy_std)
        else:
            self.f_scale = 1.0
            self.e_scale = float(scalar_std)
        self.train_loader_fn = train_loader_fn
        self.val_loader_fn = val_loader_fn
        self.test_loader_fn = test_loader_fn
        self.test_model: torch.nn.Module | None = None
        self.test_result: dict[str, float] = {}

    def param_groups(self) -> list[dict]:
        return layerwise_groups(self.model, self.embedding_lr_scale, self.block_lr_scales, self.default_scales)

    def train_dataloader(self):
        return self.train_loader_fn(self.global_rank, self.trainer.world_size)

    def val_dataloader(self):
        return self.val_loader_fn(self.global_rank, self.trainer.world_size)

    def test_dataloader(self):
        return self.test_loader_fn(self.global_rank, self.trainer.world_size)

    def losses(self, model, batch: Batch, edge_dropout: float, train: bool) -> dict[str, Tensor]:
        dev = self.seen.device
        ((k, b),) = batch.sub.items()
        w = batch.weight[k].to(dev)
        B = b.num_graphs
        if self.kind == "forces" and self.gradient_forces and not train:
            with torch.enable_grad():
                out = model(b, head=self.head, graph=self.graph, edge_dropout=edge_dropout)
            out = {kk: v.detach() for kk, v in out.items()}
        else:
            out = model(b, head=self.head, graph=self.graph, edge_dropout=edge_dropout)
        ref = reference_energy(self.coeff, b.numbers, b.batch, B)
        stats: dict[str, Tensor] = {}
        n = w.sum()
        if self.kind == "forces":
            f_t = (b.forces.double() / self.f_scale).to(out["forces"].dtype)
            w_atom = w[b.batch]
            f_atom = per_atom_l2(out["forces"], f_t)
            loss_f = (w_atom * f_atom).sum() / torch.clamp(w_atom.sum(), min=1.0)
            e_t = ((b.energy.double() - ref - self.e_mean) / self.e_scale).to(out["energy"].dtype)
            e_err = (out["energy"] - e_t).abs()
            loss_e = (w * e_err).sum() / torch.clamp(n, min=1.0)
            loss = self.force_loss_scale * loss_f + self.energy_loss_scale * loss_e
            stats["abs"] = (w_atom[:, None] * (out["forces"].detach().double() - f_t.detach().double()).abs()).sum() * self.f_scale
            stats["count"] = 3 * w_atom.sum()
            stats["energy_abs"] = (w * e_err.detach().double()).sum() * self.e_scale
        else:
            y = b.targets[self.target].double()
            y_t = ((y - ref - self.e_mean) / self.e_scale).to(out["y"].dtype)
            err = (out["y"] - y_t).abs()
            loss = self.energy_loss_scale * (w * err).sum() / torch.clamp(n, min=1.0)
            stats["abs"] = (w * err.detach().double()).sum() * self.e_scale
            stats["count"] = n.detach()
        stats["loss"] = loss
        stats["n"] = n.detach()
        stats["loss_sum"] = loss.detach() * n.detach()
        return stats

    def training_step(self, batch: Batch, batch_idx: int):
        self._before_step()
        s = self.losses(self.model, batch, self.edge_dropout, train=True)
        self._count(batch)
        if self._should_log():
            self.log("train/loss", s["loss"].detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=int(batch.size))
        return s["loss"]

    def validation_step(self, batch: Batch, batch_idx: int):
        with torch.no_grad():
            s = self.losses(self.eval_model, batch, 0.0, train=False)
        s.pop("loss")
        self._accumulate(s)

    def on_validation_epoch_end(self) -> None:
        v = self._reduced_val()
        if not v:
            return
        mae = v["abs"] / max(v["count"], 1.0)
        row = {"epoch": int(self.current_epoch), "step": int(self.global_step), "mae": mae, "loss": v["loss_sum"] / max(v["n"], 1.0),
               "lr": self._base_lr()}
        self.val_curve.append(row)
        self.log("val/mae", mae, prog_bar=True, sync_dist=False)
        self.log("val/loss", row["loss"], sync_dist=False)
        # reduce-on-plateau once the cosine phase is over (validation runs at epoch ends)
        if not self.trainer.sanity_checking and self.global_step >= self.cosine_steps:
            self.plateau.step(mae, self.lambdas)

    def _base_lr(self) -> float | None:
        """Current LR of the groups at scale 1.0 (heads, bases), i.e. lr x schedule."""
        if not self.trainer.optimizers:
            return None
        groups = self.trainer.optimizers[0].param_groups
        g = next((g for g in groups if g.get("scale", 1.0) == 1.0), groups[0])
        return float(g["lr"])

    def test_step(self, batch: Batch, batch_idx: int):
        model = self.test_model if self.test_model is not None else self.eval_model
        with torch.no_grad():
            s = self.losses(model, batch, 0.0, train=False)
        s.pop("loss")
        self._accumulate(s)

    def on_test_epoch_end(self) -> None:
        v = self._reduced_val()
        self.test_result = {"mae": v["abs"] / max(v["count"], 1.0), "n": v["n"]}
        if "energy_abs" in v:
            self.test_result["energy_mae"] = v["energy_abs"] / max(v["n"], 1.0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["atomsift"]["plateau"] = self.plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "plateau" in checkpoint.get("atomsift", {}):
            self.plateau.load_state_dict(checkpoint["atomsift"]["plateau"])
