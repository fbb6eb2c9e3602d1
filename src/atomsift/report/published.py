"""The paper's published numbers (Ghunaim et al. 2025, arXiv 2502.11085 v1), as data.

Transcribed from the v1 tables and figure sources (see the reference specification, PAPER.md
§5). Values are test MAE in the paper's units: meV/Å for rMD17 (aspirin), MD22
(Ac-Ala3-NHMe) and SPICE (solvated amino acids) forces, meV for QM9 U0 and the HOMO-LUMO gap,
eV for the QMOF band gap, cm⁻¹ for MatBench phonons (fold 0 / mean over the five folds).

Upstream keys are the names used by the workflow configs (``ani1x``, ``transition1x``, ``oc20``,
``oc22``, ``mixed-balanced``, ``mixed-temp``); ``jmp-s``/``jmp-l`` are JMP's published
checkpoints (240 x 10^6 budget) and ``jmp-s*``/``jmp-l*`` the paper's reproductions of them.
"""

from __future__ import annotations

UPSTREAM_LABELS = {
    "ani1x": "ANI-1x",
    "transition1x": "Transition-1x",
    "oc20": "OC20",
    "oc22": "OC22",
    "mixed-balanced": "Mixed (Balanced)",
    "mixed-temp": "Mixed (Temp)",
    "ani1x-oc22": "ANI-1x + OC22",
    "jmp-s": "JMP-S",
    "jmp-l": "JMP-L",
    "jmp-s*": "JMP-S* (reproduced)",
    "jmp-l*": "JMP-L* (reproduced)",
    "none": "no pretraining",
}

# column key -> (paper column label, unit)
TASKS = {
    "rmd17": ("rMD17", "meV/Å"),
    "md22": ("MD22", "meV/Å"),
    "spice": ("SPICE", "meV/Å"),
    "qm9": ("QM9", "meV"),
    "qm9-gap": ("QM9 Δε", "meV"),
    "qmof": ("QMOF", "eV"),
    "matbench": ("MatBench fold0", "cm⁻¹"),
    "matbench-mean": ("MatBench mean", "cm⁻¹"),
}

ID_TASKS = ("rmd17", "md22", "spice", "qm9")
OOD_TASKS = ("qm9-gap", "qmof", "matbench", "matbench-mean")


def _row(values, tasks=ID_TASKS) -> dict[str, float]:
    return dict(zip(tasks, values, strict=True))


# Table 1 — in-distribution tasks; budget C = N x E (structures seen).
TABLE1 = [
    {"budget": 240_000_000, "upstream": "jmp-l", "backbone": "large", **_row([5.1, 1.92, 4.75, 2.9])},
    {"budget": 240_000_000, "upstream": "jmp-s", "backbone": "small", **_row([6.7, 2.64, 5.71, 3.3])},
    {"budget": 240_000_000, "upstream": "jmp-s*", "backbone": "small", **_row([6.8, 3.21, 5.60, 3.4])},
    {"budget": 10_000_000, "upstream": "ani1x", "backbone": "small", **_row([5.4, 2.90, 5.13, 2.9])},
    {"budget": 10_000_000, "upstream": "transition1x", "backbone": "small", **_row([10.1, 3.73, 7.55, 3.2])},
    {"budget": 10_000_000, "upstream": "oc20", "backbone": "small", **_row([14.6, 4.53, 8.74, 4.8])},
    {"budget": 10_000_000, "upstream": "oc22", "backbone": "small", **_row([16.0, 5.20, 10.73, 5.7])},
    {"budget": 10_000_000, "upstream": "mixed-balanced", "backbone": "small", **_row([9.4, 3.62, 7.02, 3.2])},
    {"budget": 10_000_000, "upstream": "mixed-temp", "backbone": "small", **_row([11.0, 4.03, 7.98, 3.6])},
]

# Table 2 — effect of the budget: E = 5, N in {1M, 2M, 3M}; GemNet-OC-S.
TABLE2 = [
    {"n": 1_000_000, "epochs": 5, "upstream": "ani1x", **_row([5.7, 2.91, 5.34, 2.8])},
    {"n": 1_000_000, "epochs": 5, "upstream": "transition1x", **_row([11.7, 3.92, 7.85, 3.3])},
    {"n": 1_000_000, "epochs": 5, "upstream": "oc20", **_row([14.8, 4.67, 8.92, 4.7])},
    {"n": 1_000_000, "epochs": 5, "upstream": "oc22", **_row([18.1, 5.44, 11.22, 5.5])},
    {"n": 2_000_000, "epochs": 5, "upstream": "ani1x", **_row([5.4, 2.90, 5.13, 2.9])},
    {"n": 2_000_000, "epochs": 5, "upstream": "transition1x", **_row([10.1, 3.73, 7.55, 3.2])},
    {"n": 2_000_000, "epochs": 5, "upstream": "oc20", **_row([14.6, 4.53, 8.74, 4.8])},
    {"n": 2_000_000, "epochs": 5, "upstream": "oc22", **_row([16.0, 5.20, 10.73, 5.7])},
    {"n": 3_000_000, "epochs": 5, "upstream": "ani1x", **_row([5.6, 2.85, 5.37, 2.8])},
    {"n": 3_000_000, "epochs": 5, "upstream": "transition1x", **_row([10.2, 3.64, 7.65, 3.2])},
    {"n": 3_000_000, "epochs": 5, "upstream": "oc20", **_row([16.1, 4.61, 10.44, 5.3])},
    {"n": 3_000_000, "epochs": 5, "upstream": "oc22", **_row([17.4, 5.15, 11.00, 5.8])},
]

# Table 3 — effect of the backbone size (GemNet-OC-L).
TABLE3 = [
    {"budget": 240_000_000, "upstream": "jmp-l", "backbone": "large", **_row([5.1, 1.92, 4.75, 2.9])},
    {"budget": 240_000_000, "upstream": "jmp-l*", "backbone": "large", **_row([5.3, 2.59, 4.91, 3.0])},
    {"budget": 10_000_000, "upstream": "ani1x", "backbone": "large", **_row([4.8, 2.54, 5.24, 2.6])},
    {"budget": 10_000_000, "upstream": "transition1x", "backbone": "large", **_row([9.7, 3.56, 7.42, 3.0])},
    {"budget": 10_000_000, "upstream": "oc20", "backbone": "large", **_row([13.8, 3.90, 9.24, 4.6])},
    {"budget": 10_000_000, "upstream": "oc22", "backbone": "large", **_row([12.0, 4.14, 10.43, 4.0])},
]

# Table 4 — out-of-distribution tasks.
TABLE4 = [
    {"budget": 240_000_000, "upstream": "jmp-s", "backbone": "small", **_row([23.1, 0.18, 26.60, 22.77], OOD_TASKS)},
    {"budget": 240_000_000, "upstream": "jmp-s*", "backbone": "small", **_row([24.0, 0.19, 24.77, 21.48], OOD_TASKS)},
    {"budget": 10_000_000, "upstream": "ani1x", "backbone": "small", **_row([24.5, 0.22, 30.09, 29.60], OOD_TASKS)},
    {"budget": 10_000_000, "upstream": "transition1x", "backbone": "small", **_row([25.3, 0.22, 52.22, 38.56], OOD_TASKS)},
    {"budget": 10_000_000, "upstream": "oc20", "backbone": "small", **_row([30.8, 0.22, 37.52, 30.88], OOD_TASKS)},
    {"budget": 10_000_000, "upstream": "oc22", "backbone": "small", **_row([35.6, 0.22, 32.78, 27.55], OOD_TASKS)},
    {"budget": 10_000_000, "upstream": "mixed-balanced", "backbone": "small", **_row([27.3, 0.21, 26.11, 24.87], OOD_TASKS)},
    {"budget": 10_000_000, "upstream": "mixed-temp", "backbone": "small", **_row([27.9, 0.21, 26.63, 25.61], OOD_TASKS)},
]

# Table 5 (Appendix A) — samples vs epochs at fixed C = 10 x 10^6; GemNet-OC-S.
TABLE5 = [
    {"n": 2_000_000, "epochs": 5, "upstream": "ani1x", **_row([5.4, 2.90, 5.13, 2.9])},
    {"n": 2_000_000, "epochs": 5, "upstream": "transition1x", **_row([10.1, 3.73, 7.55, 3.2])},
    {"n": 2_000_000, "epochs": 5, "upstream": "oc20", **_row([14.6, 4.53, 8.74, 4.8])},
    {"n": 2_000_000, "epochs": 5, "upstream": "oc22", **_row([16.0, 5.20, 10.73, 5.7])},
    {"n": 1_000_000, "epochs": 10, "upstream": "ani1x", **_row([5.4, 2.88, 5.04, 2.9])},
    {"n": 1_000_000, "epochs": 10, "upstream": "transition1x", **_row([10.6, 3.79, 7.50, 3.1])},
    {"n": 1_000_000, "epochs": 10, "upstream": "oc20", **_row([14.8, 4.67, 10.16, 4.9])},
    {"n": 1_000_000, "epochs": 10, "upstream": "oc22", **_row([17.3, 5.24, 11.06, 5.4])},
]

TABLES = {"table1": TABLE1, "table2": TABLE2, "table3": TABLE3, "table4": TABLE4, "table5": TABLE5}

# Fig. 1 — JMP-S (240 x 10^6) vs ANI-1x (10 x 10^6, 24x less compute).
FIG1 = {
    "baseline": {"upstream": "jmp-s", "budget": 240_000_000, **_row([6.7, 2.64, 5.71, 3.3])},
    "best": {"upstream": "ani1x", "budget": 10_000_000, **_row([5.4, 2.90, 5.13, 2.9])},
    "compute_ratio": 24,
}

# Fig. 4 — ANI-1x (2M) vs ANI-1x (2M) + OC22 (1M), E = 5.
FIG4 = {
    "base": {"upstream": "ani1x", "n": 2_000_000, "epochs": 5, **_row([5.4, 2.90, 5.13, 2.9])},
    "added": {"upstream": "ani1x-oc22", "n": 3_000_000, "epochs": 5, **_row([7.8, 3.21, 6.00, 3.1])},
}

# Fig. 9 — classes covered by 10k random vs 10k class-balanced samples, and the total.
FIG9 = {
    "ani1x": {"random": 1032, "balanced": 2434, "total": 2434},
    "transition1x": {"random": 149, "balanced": 155, "total": 155},
    "oc20": {"random": 4676, "balanced": 8478, "total": 8478},
    "oc22": {"random": 2467, "balanced": 3519, "total": 3519},
}



def block_keys(table: str) -> list[tuple]:
    """The budget blocks of a published table in the order the paper prints them."""
    rows = TABLES[table]
    keys: list[tuple] = []
    for r in rows:
        k = (r["n"], r["epochs"]) if "n" in r else (r["budget"],)
        if k not in keys:
            keys.append(k)
    return keys


def limited_budget_rows(table: str) -> list[list[dict]]:
    """Rows of the paper's limited-budget blocks (not JMP's 240M rows), one list per block."""
    rows = [r for r in TABLES[table] if not r["upstream"].startswith("jmp")]
    blocks: dict[tuple, list[dict]] = {}
    for r in rows:
        k = (r["n"], r["epochs"]) if "n" in r else (r["budget"],)
        blocks.setdefault(k, []).append(r)
    return list(blocks.values())


def value(table: str, upstream: str, task: str, block: int = 0) -> float | None:
    """The paper's value for ``upstream`` in budget block ``block`` (0-based) of a table, or None.

    Block i of our table is matched with the i-th limited-budget block of the paper's
    (e.g. Table 2: our smallest N with the paper's 1M).
    """
    blocks = limited_budget_rows(table)
    if not 0 <= block < len(blocks):
        return None
    for r in blocks[block]:
        if r["upstream"] == upstream:
            return r.get(task)
    return None
