"""LightningModules of the two stages: what one step is, the loss, the LR schedule, the budget.

The trainer owns devices, precision, checkpoints, logging and the EMA of the weights (Lightning's
weight averaging, see :mod:`atomsift.train.runtime`: validation and testing see the averaged
weights); the modules here own the model, the per-dataset label normalisation, the count of
structures actually trained on (a torchmetrics sum over ranks), the validation metrics
(torchmetrics means, reduced over ranks) and the LR schedule (a pure function of the optimizer
step plus, when finetuning, the reduce-on-plateau state), so that a run resumed from
``last.ckpt`` continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
import torchmetrics
from torch import Tensor, nn
from torch_geometric.utils import scatter

from atomsift.train.data import TrainBatch
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


def per_atom_l2(pred: Tensor, target: Tensor) -> Tensor:
    """||pred - target||_2 per atom, with a zero (not NaN) gradient where they coincide."""
    sq = ((pred - target) ** 2).sum(-1)
    safe = torch.where(sq > 0, sq, torch.ones_like(sq))
    return torch.where(sq > 0, safe.sqrt(), torch.zeros_like(sq))


def reference_energy(coeff: Tensor, numbers: Tensor, batch: Tensor, n: int) -> Tensor:
    """sum_i coeff[Z_i] per structure (the linear reference, eV)."""
    return scatter(coeff[numbers], batch, 0, n, reduce="sum")


# -------------------------------------------------------------------------------------- metrics


class Seen(torchmetrics.Metric):
    """Structures trained on per part (padding excluded), summed over ranks by :meth:`total`.

    Each rank counts its own batches; a checkpoint stores the total, and a resumed run gives it
    to rank 0 (the others restart from 0), so the sum over ranks continues where it stopped."""

    full_state_update = False

    def __init__(self, n_parts: int):
        super().__init__()
        self.add_state("count", default=torch.zeros(n_parts, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, batch: TrainBatch) -> None:
        for k, b in batch.items():
            self.count[k] += (b.weight > 0).sum()

    def compute(self) -> Tensor:
        return self.count

    def total(self) -> Tensor:
        """The count summed over ranks (a collective: every rank calls it)."""
        with self.sync_context():
            return self.count.clone()

    def resume(self, total, rank: int) -> None:
        self.count.copy_(torch.as_tensor(total, dtype=torch.long) if rank == 0 else torch.zeros_like(self.count))


def means(names: Sequence[str]) -> nn.ModuleDict:
    """Weighted means (float64, reduced over ranks when computed), one per validation quantity."""
    return nn.ModuleDict({k: torchmetrics.MeanMetric(nan_strategy="disable").set_dtype(torch.float64) for k in names})


def computed(metrics: nn.ModuleDict) -> dict[str, float]:
    """Every metric's value (a collective under DDP), then reset for the next evaluation."""
    out = {k: float(m.compute()) for k, m in metrics.items()}
    for m in metrics.values():
        m.reset()
    return out


# -------------------------------------------------------------------------------------- base


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the global torch RNG at optimizer step ``step`` on ``rank`` (edge dropout)."""
    return int(np.random.SeedSequence([int(seed), int(step), int(rank), 77]).generate_state(1)[0])


class AtomsModule(pl.LightningModule):
    """What both stages share: the model, AdamW with per-group LR scales, budget counting,
    validation metrics and curve."""

    def __init__(self, model: torch.nn.Module, *, seed: int, n_parts: int, metrics: Sequence[str], lr: float,
                 weight_decay: float, betas, warmup: int, total_steps: int, start_factor: float,
                 min_lr_factor: float, record_seen: bool = False):
        super().__init__()
        self.model = model
        self.seed = int(seed)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.betas = tuple(betas)
        self.warmup = int(warmup)
        self.total_steps = int(total_steps)
        self.start_factor = float(start_factor)
        self.min_lr_factor = float(min_lr_factor)
        self.seen = Seen(n_parts)
        self.seen_total: list[int] | None = None  # over all ranks: from the checkpoint, then when training ends
        self.metrics = means(metrics)
        self.val_curve: list[dict] = []
        self.record_seen = record_seen
        self.seen_ids: dict[int, list] = {}
        self.lambdas: list[WarmupCosine] = []

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

    # -- bookkeeping
    def _should_log(self) -> bool:
        # self.log costs ~1 ms; skip it on steps the logger would not write anyway
        t = self._trainer
        return t is None or t.log_every_n_steps <= 1 or (t.global_step + 1) % t.log_every_n_steps == 0 or t.progress_bar_callback is not None

    def _before_step(self) -> None:
        torch.manual_seed(step_seed(self.seed, self.global_step, self.global_rank))

    def _count(self, batch: TrainBatch) -> None:
        self.seen.update(batch)
        if self.record_seen:
            ids = self.seen_ids.setdefault(self.current_epoch, [])
            for k, b in batch.items():
                ids.extend([k, int(i)] for i, w in zip(b.idx.tolist(), b.weight.tolist()) if w > 0)

    def on_train_end(self) -> None:  # not called when a resumed run has no step left: seen_total is the checkpoint's
        self.seen_total = self.seen.total().tolist()

    # -- checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["atomsift"] = {"val_curve": self.val_curve, "seen": self.seen.total().tolist(),
                                  "seen_ids": self.seen_ids if self.record_seen else {}}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        extra = checkpoint.get("atomsift", {})
        self.val_curve = list(extra.get("val_curve", []))
        self.seen_ids = {int(k): v for k, v in extra.get("seen_ids", {}).items()}
        self.seen_total = list(extra.get("seen", [0] * len(self.seen.count)))
        self.seen.resume(self.seen_total, self.global_rank)


def _size(batch: TrainBatch) -> int:
    return sum(b.num_graphs for b in batch.values())


# -------------------------------------------------------------------------------------- pretrain


class PretrainModule(AtomsModule):
    """Per-dataset energy + direct-force heads; L1 energy + structure-wise L2 force loss (§3.5)."""

    def __init__(self, model, *, names: Sequence[str], graphs: Sequence, norms: Sequence[DatasetNorm],
                 energy_loss_scale: float, force_loss_scale: float, edge_dropout: float, **kw):
        metrics = ["loss"] + [f"{nm}/{q}" for nm in names for q in ("energy_mae", "force_mae")]
        super().__init__(model, n_parts=len(names), metrics=metrics, **kw)
        self.names = list(names)
        self.graphs = list(graphs)
        self.energy_loss_scale = float(energy_loss_scale)
        self.force_loss_scale = float(force_loss_scale)
        self.edge_dropout = float(edge_dropout)
        self.register_buffer("coeff", torch.tensor(np.array([n.coeff for n in norms]), dtype=torch.float64), persistent=False)
        self.register_buffer("e_mean", torch.tensor([n.energy_mean for n in norms], dtype=torch.float64), persistent=False)
        self.register_buffer("e_std", torch.tensor([n.energy_std for n in norms], dtype=torch.float64), persistent=False)
        self.register_buffer("f_std", torch.tensor([n.force_std for n in norms], dtype=torch.float64), persistent=False)

    def losses(self, batch: TrainBatch, edge_dropout: float, track: bool = False) -> dict[str, Tensor]:
        """Loss of the batch's real structures (mean over structures of every part); ``track``
        adds them and each part's energy / force MAE (eV, eV/A) to the validation metrics."""
        e_sum = f_sum = w_total = 0.0
        for k, b in batch.items():
            w = b.weight
            out = self.model(b, head=self.names[k], graph=self.graphs[k], edge_dropout=edge_dropout)
            ref = reference_energy(self.coeff[k], b.numbers, b.batch, b.num_graphs)
            e_t = ((b.energy.double() - ref - self.e_mean[k]) / self.e_std[k]).to(out["energy"].dtype)
            e_err = (out["energy"] - e_t).abs()
            f_t = (b.forces.double() / self.f_std[k]).to(out["forces"].dtype)
            f_struct = scatter(per_atom_l2(out["forces"], f_t), b.batch, 0, b.num_graphs, reduce="mean")
            e_sum = e_sum + (w * e_err.float()).sum()
            f_sum = f_sum + (w * f_struct.float()).sum()
            w_total = w_total + w.sum()
            if track:
                nm = self.names[k]
                free = ((~b.fixed).float() * w[b.batch])[:, None]
                self.metrics[f"{nm}/energy_mae"].update(e_err.detach().double() * self.e_std[k], w)
                self.metrics[f"{nm}/force_mae"].update((out["forces"].detach().double() - f_t.double()).abs() * self.f_std[k], free)
        denom = torch.clamp(w_total, min=1.0)
        loss_e = self.energy_loss_scale * e_sum / denom
        loss_f = self.force_loss_scale * f_sum / denom
        if track:
            self.metrics["loss"].update((loss_e + loss_f).detach(), w_total)
        return {"loss": loss_e + loss_f, "loss_energy": loss_e.detach(), "loss_force": loss_f.detach()}

    def training_step(self, batch: TrainBatch, batch_idx: int):
        self._before_step()
        s = self.losses(batch, self.edge_dropout)
        self._count(batch)
        if self._should_log():
            self.log_dict({"train/loss": s["loss"].detach(), "train/loss_energy": s["loss_energy"],
                           "train/loss_force": s["loss_force"]}, on_step=True, on_epoch=False, prog_bar=True,
                          batch_size=_size(batch))
        return s["loss"]

    def validation_step(self, batch: TrainBatch, batch_idx: int):
        with torch.no_grad():
            self.losses(batch, 0.0, track=True)

    def on_validation_epoch_end(self) -> None:
        v = computed(self.metrics)
        row = {"epoch": int(self.current_epoch), "step": int(self.global_step), "loss": v["loss"]}
        row.update({k: x for k, x in v.items() if "/" in k and not math.isnan(x)})  # NaN: no such structure here
        self.val_curve.append(row)
        self.log("val/loss", row["loss"], prog_bar=True, sync_dist=True)
        for k, x in row.items():
            if "/" in k:
                self.log(f"val/{k}", x, sync_dist=True)


# ------------------------------------------------------------------------------------- finetune


def layerwise_groups(model: torch.nn.Module, embedding_scale: float, block_scales: Sequence[float] | None,
                     default_scales: Callable[[int], list[float]]) -> list[dict]:
    """Parameter groups with JMP's layer-wise LR scales (PAPER.md §4.1), by the model's
    ``block_index``: the embedding (-1) x ``embedding_scale``; block i (int_blocks.i + out_blocks.(i+1),
    plus out_blocks.0 for i = 0) x ``block_scales[i]``; everything else (bases, output MLPs, heads) x 1.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    index = {n: model.block_index(n) for n, _ in named}
    n_blocks = len({i for i in index.values() if i is not None and i >= 0})
    scales = list(block_scales) if block_scales is not None else default_scales(n_blocks)
    if n_blocks and len(scales) != n_blocks:
        raise ValueError(f"block_lr_scales has {len(scales)} entries, the backbone has {n_blocks} blocks")
    buckets: dict[float, list] = {}
    for n, p in named:
        i = index[n]
        scale = 1.0 if i is None else embedding_scale if i < 0 else scales[i]
        buckets.setdefault(scale, []).append(p)
    return [{"params": ps, "scale": s} for s, ps in sorted(buckets.items(), key=lambda kv: -kv[0])]


class FinetuneModule(AtomsModule):
    """One downstream task: forces (gradient or direct) or one scalar target (PAPER.md §4)."""

    def __init__(self, model, *, head: str, kind: str, graph, norm: DatasetNorm, target: str | None,
                 energy_loss_scale: float, force_loss_scale: float, gradient_forces: bool, edge_dropout: float,
                 embedding_lr_scale: float, block_lr_scales, default_scales, plateau: Plateau, cosine_steps: int, **kw):
        metrics = ["loss", "mae"] + (["energy_mae"] if kind == "forces" else [])
        super().__init__(model, n_parts=1, metrics=metrics, **kw)
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
        self.e_mean = float(norm.energy_mean)
        if kind == "forces":
            self.f_scale = float(norm.force_std)
            self.e_scale = float(norm.force_std if gradient_forces else norm.energy_std)
        else:
            self.f_scale = 1.0
            self.e_scale = float(norm.energy_std)
        self.test_result: dict[str, float] = {}

    def param_groups(self) -> list[dict]:
        return layerwise_groups(self.model, self.embedding_lr_scale, self.block_lr_scales, self.default_scales)

    def losses(self, batch: TrainBatch, edge_dropout: float, track: bool = False) -> Tensor:
        """Loss of the batch's real structures; ``track`` adds it and the MAE in the store's unit
        (forces: per component; scalar: per structure) to the validation / test metrics."""
        ((_, b),) = batch.items()
        w = b.weight
        if self.kind == "forces" and self.gradient_forces and not self.training:
            with torch.enable_grad():
                out = {k: v.detach() for k, v in self.model(b, head=self.head, graph=self.graph).items()}
        else:
            out = self.model(b, head=self.head, graph=self.graph, edge_dropout=edge_dropout)
        ref = reference_energy(self.coeff, b.numbers, b.batch, b.num_graphs)
        n = torch.clamp(w.sum(), min=1.0)
        if self.kind == "forces":
            f_t = (b.forces.double() / self.f_scale).to(out["forces"].dtype)
            w_atom = w[b.batch]
            loss_f = (w_atom * per_atom_l2(out["forces"], f_t)).sum() / torch.clamp(w_atom.sum(), min=1.0)
            e_t = ((b.energy.double() - ref - self.e_mean) / self.e_scale).to(out["energy"].dtype)
            e_err = (out["energy"] - e_t).abs()
            loss = self.force_loss_scale * loss_f + self.energy_loss_scale * (w * e_err).sum() / n
            if track:
                self.metrics["mae"].update((out["forces"].detach().double() - f_t.double()).abs() * self.f_scale, w_atom[:, None])
                self.metrics["energy_mae"].update(e_err.detach().double() * self.e_scale, w)
        else:
            y_t = ((b.targets[self.target].double() - ref - self.e_mean) / self.e_scale).to(out["y"].dtype)
            err = (out["y"] - y_t).abs()
            loss = self.energy_loss_scale * (w * err).sum() / n
            if track:
                self.metrics["mae"].update(err.detach().double() * self.e_scale, w)
        if track:
            self.metrics["loss"].update(loss.detach(), w.sum())
        return loss

    def training_step(self, batch: TrainBatch, batch_idx: int):
        self._before_step()
        loss = self.losses(batch, self.edge_dropout)
        self._count(batch)
        if self._should_log():
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=_size(batch))
        return loss

    def validation_step(self, batch: TrainBatch, batch_idx: int):
        with torch.no_grad():
            self.losses(batch, 0.0, track=True)

    test_step = validation_step

    def on_validation_epoch_end(self) -> None:
        v = computed(self.metrics)
        row = {"epoch": int(self.current_epoch), "step": int(self.global_step), "mae": v["mae"], "loss": v["loss"],
               "lr": self._base_lr()}
        self.val_curve.append(row)
        self.log("val/mae", row["mae"], prog_bar=True, sync_dist=True)
        self.log("val/loss", row["loss"], sync_dist=True)
        # reduce-on-plateau once the cosine phase is over (validation runs at epoch ends)
        if not self.trainer.sanity_checking and self.global_step >= self.cosine_steps:
            self.plateau.step(row["mae"], self.lambdas)

    def on_test_epoch_end(self) -> None:
        self.test_result = computed(self.metrics)

    def _base_lr(self) -> float | None:
        """Current LR of the groups at scale 1.0 (heads, bases), i.e. lr x schedule."""
        if not self.trainer.optimizers:
            return None
        groups = self.trainer.optimizers[0].param_groups
        g = next((g for g in groups if g.get("scale", 1.0) == 1.0), groups[0])
        return float(g["lr"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["atomsift"]["plateau"] = self.plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "plateau" in checkpoint.get("atomsift", {}):
            self.plateau.load_state_dict(checkpoint["atomsift"]["plateau"])
