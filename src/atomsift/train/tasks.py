"""Per-task finetuning recipes (PAPER.md §4.2, JMP.md §5.2).

A recipe fixes what a task learns (forces or one scalar target), how the head reads out
(gradient or direct forces; sum, mean or max over atoms), the loss weights, the paper's batch
size and epochs, the reduce-on-plateau patience and the unit the paper reports its test MAE in.
Any of these can be overridden per run by the finetune YAML (``atomsift.train.config``).
"""

from __future__ import annotations

from dataclasses import dataclass

# JMP's QM9 atom references for U_0 (eV; tasks/finetune/dataset_config.py:qm9_config, as listed in
# JMP.md §4), subtracted as y - sum_i ref[Z_i] before normalisation. Only H and C..F occur in QM9.
QM9_ATOM_REFS_JMP = {
    "U0": {1: -16.430, 6: -1036.0, 7: -1489.8, 8: -2047.0, 9: -2717.5},
    "U": {1: -16.419, 6: -1036.0, 7: -1489.8, 8: -2047.0, 9: -2717.5},
    "H": {1: -16.419, 6: -1036.0, 7: -1489.8, 8: -2047.0, 9: -2717.5},
    "G": {1: -16.443, 6: -1036.1, 7: -1489.9, 8: -2047.1, 9: -2717.6},
}


@dataclass(frozen=True)
class TaskRecipe:
    """What one downstream task trains and reports."""

    name: str
    kind: str  # "forces": energy + forces of the store, metric force MAE; "scalar": one target
    default_target: str | None  # scalar tasks: the store target name (None: the store's only target)
    forces: str | None  # "gradient" (F = -dE/dx) or "direct"; None for scalar tasks
    readout: str  # reduction over atoms of the energy/scalar head: sum, mean, max
    energy_loss_scale: float
    force_loss_scale: float
    batch_size: int
    epochs: int
    plateau_patience: int
    unit: str  # unit of the reported test MAE
    unit_factor: float  # multiply an MAE in the store's unit (eV, eV/A, ...) by this to get `unit`
    atom_refs: str = "none"  # scalar tasks: "jmp" (QM9 U0 table), "fit" (least squares), "none"

RECIPES: dict[str, TaskRecipe] = {
    # rMD17 aspirin: force-only loss (energy coefficient 0), gradient forces, batch 4, 600 epochs,
    # reduce-on-plateau patience 25 (configs/finetune/rmd17.py).
    "rmd17": TaskRecipe("rmd17", "forces", None, "gradient", "sum", 0.0, 10.0, 4, 600, 25, "meV/Å", 1000.0),
    # MD22 Ac-Ala3-NHMe: direct forces as the paper's released all-configs (efficient-atom / JMP
    # all-jmp-l-configs.py), force coefficient 100, batch 2, 100 epochs.
    "md22": TaskRecipe("md22", "forces", None, "direct", "sum", 0.0, 100.0, 2, 100, 3, "meV/Å", 1000.0),
    # SPICE solvated amino acids: gradient forces, coefficient 100, batch 1, 250 epochs.
    "spice": TaskRecipe("spice", "forces", None, "gradient", "sum", 0.0, 100.0, 1, 250, 3, "meV/Å", 1000.0),
    # QM9: one scalar per run (U0 or the HOMO-LUMO gap), sum readout, L1, batch 48, 200 epochs.
    "qm9": TaskRecipe("qm9", "scalar", "U0", None, "sum", 1.0, 0.0, 48, 200, 3, "meV", 1000.0, atom_refs="jmp"),
    # QMOF: PBE band gap (eV), mean readout, batch 4, 40 epochs.
    "qmof": TaskRecipe("qmof", "scalar", None, None, "mean", 1.0, 0.0, 4, 40, 3, "eV", 1.0),
    # MatBench phonons: last phDOS peak (cm^-1), max readout, batch 8, 120 epochs, per fold.
    "matbench": TaskRecipe("matbench", "scalar", None, None, "max", 1.0, 0.0, 8, 120, 3, "cm^-1", 1.0),
    # Your own data (``atomsift finetune --data``), not a paper task: energies and forces with
    # gradient forces (conservative, for MD) and both losses (an energy-only head offset would make
    # the calculator's energies meaningless: the paper's force tasks train forces alone), JMP's
    # pretraining ratio 1 : 10.
    "energy-forces": TaskRecipe("energy-forces", "forces", None, "gradient", "sum", 1.0, 10.0, 8, 100, 5, "meV/Å", 1000.0),
    # ... or one named scalar (sum readout unless the run file says otherwise), in the store's unit.
    "scalar": TaskRecipe("scalar", "scalar", None, None, "sum", 1.0, 0.0, 16, 100, 5, "", 1.0),
}

# Scalar targets whose store unit is eV and that the paper reports in meV (QM9).
_EV_TO_MEV_TARGETS = {"U0", "U", "H", "G", "gap", "homo", "lumo", "zpve"}


def recipe(task: str) -> TaskRecipe:
    return RECIPES[task]


def report_unit(rec: TaskRecipe, target: str | None, store_unit: str | None) -> tuple[str, float]:
    """The unit of the reported MAE and the factor from the store's unit to it."""
    if rec.kind == "forces":
        return rec.unit, rec.unit_factor
    if rec.name == "qm9":
        if target in _EV_TO_MEV_TARGETS or store_unit == "eV":
            return "meV", 1000.0
        return store_unit or "", 1.0
    if rec.name == "qmof":
        return "eV", 1.0
    if rec.name in ("matbench", "scalar"):
        return store_unit or rec.unit, 1.0
    return rec.unit, rec.unit_factor


def default_block_lr_scales(n_blocks: int) -> list[float]:
    """Layer-wise LR scales of the interaction blocks (PAPER.md §4.1).

    4 blocks (S): 0.35, 0.40, 0.55, 0.625 (efficient-atom); 6 blocks (L): 0.55, 0.40, 0.30, 0.40,
    0.55, 0.625 (JMP). Any other count interpolates the S profile linearly over block depth.
    """
    s = [0.35, 0.40, 0.55, 0.625]
    if n_blocks == 4:
        return list(s)
    if n_blocks == 6:
        return [0.55, 0.40, 0.30, 0.40, 0.55, 0.625]
    if n_blocks == 1:
        return [s[-1]]
    out = []
    for i in range(n_blocks):
        x = 3.0 * i / (n_blocks - 1)
        j = min(int(x), 2)
        t = x - j
        out.append(s[j] * (1 - t) + s[j + 1] * t)
    return out
