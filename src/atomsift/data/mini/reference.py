"""What the real datasets look like, and how an analog store compares (docs/mini-universe.md).

Three statistics per dataset: the force RMS over free atoms (for the real datasets: JMP's force
normalisation std, the RMS of force components about their zero mean), the mean number of atoms
per structure, and the element mix (fraction of atoms of each element). Every real value carries
its source; ``derived`` values are computed here from published numbers (the derivation is in the
note), ``None`` means no value was available to us, and such a statistic is not compared.

:func:`statistics` measures a store, :func:`compare` puts it beside the real values with the
ratio and whether it is within :data:`TOLERANCE` (+-30%).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOLERANCE = 0.30

# per-atom reference energies (eV) at wB97x/6-31G(d), the level of ANI-1x (wb97x_dz) and
# Transition-1x, from the Transition-1x release (../shared/realdata/README.md §5)
_E_ATOM = {1: -13.62222753701504, 6: -1029.4130839658328, 7: -1484.8710358098756, 8: -2041.8396277138045}


@dataclass(frozen=True)
class Value:
    value: float | dict | None
    source: str


def _atoms_from_energy(mean_energy: float, fractions: dict[int, float]) -> float:
    """Atoms per structure implied by a dataset's mean total energy and an element mix: the mean
    energy over the mean isolated-atom energy per atom (molecular binding, ~0.5% of the total, is
    neglected)."""
    per_atom = sum(f * _E_ATOM[z] for z, f in fractions.items())
    return mean_energy / per_atom


# QM9's element mix (CHNO part), the pool ani1x-mini and transition1x-mini draw from; used only to
# turn JMP's mean total energies into atom counts (the result moves by < 3% between QM9's mix and
# the analogs' own)
_QM9_CHNO = {1: 0.516, 6: 0.352, 7: 0.0557, 8: 0.0783}

REAL: dict[str, dict[str, Value]] = {
    "ani1x": {
        "force_rms": Value(2.131422996520996, "JMP force std of ANI-1x (PAPER.md §3.1, JMP.md task settings)"),
        "atoms": Value(round(_atoms_from_energy(-10700.8, _QM9_CHNO), 1),
                       "derived: JMP's raw ANI-1x energy mean -10700.8 eV (JMP.md Appendix B) over the wB97x/6-31G(d) "
                       "atomic energies at QM9's CHNO mix"),
        "elements": Value(None, "CHNO (Smith et al. 2020, ANI-1x); per-element fractions not published in our sources"),
    },
    "transition1x": {
        "force_rms": Value(0.3591422140598297, "JMP force std of Transition-1x (PAPER.md §3.1)"),
        "atoms": Value(round(_atoms_from_energy(-8254.2, _QM9_CHNO), 1),
                       "derived: JMP's raw Transition-1x energy mean -8254.2 eV (JMP.md Appendix B) over the "
                       "wB97x/6-31G(d) atomic energies at QM9's CHNO mix; reactants are GDB7 molecules, <= 7 heavy "
                       "atoms C, N, O (Schreiner et al. 2022)"),
        "elements": Value(None, "CHNO (Schreiner et al. 2022); per-element fractions not published in our sources"),
    },
    "oc20": {
        "force_rms": Value(0.5111534595489502, "JMP force std of OC20 S2EF 2M (PAPER.md §3.1)"),
        "atoms": Value(73.0, "OC20 S2EF, mean ~73 atoms, 7-225 (Chanussot et al. 2021, as summarised at "
                             "emergentmind.com/topics/open-catalyst-2020-oc20-dataset); PAPER.md §2.6 estimates "
                             "~70-80 from the feature files' size"),
        "elements": Value(None, "55 elements, adsorbates of C, H, O, N (Chanussot et al. 2021); fractions not published "
                                "in our sources"),
    },
    "oc22": {
        "force_rms": Value(0.25678861141204834, "JMP force std of OC22 S2EF-total (PAPER.md §3.1)"),
        "atoms": Value(None, "not published in our sources; JMP's raw OC22 energy mean -495.6 eV (JMP.md Appendix B) at "
                             "~-6 to -8 eV per atom (PBE+U oxides) suggests ~60-80 atoms"),
        "elements": Value(None, "oxides of ~50 elements (Tran et al. 2023); fractions not published in our sources"),
    },
    "rmd17": {
        "force_rms": Value(1.2733, "JMP force std of rMD17 aspirin (PAPER.md §4, configs/finetune/rmd17.py)"),
        "atoms": Value(21.0, "aspirin C9H8O4 (Christensen and von Lilienfeld 2020)"),
        "elements": Value({1: 8 / 21, 6: 9 / 21, 8: 4 / 21}, "aspirin C9H8O4"),
    },
    "md22": {
        "force_rms": Value(1.1292, "JMP force std of MD22 Ac-Ala3-NHMe (PAPER.md §4)"),
        "atoms": Value(42.0, "Ac-Ala3-NHMe C12H22N4O4 (Chmiela et al. 2023)"),
        "elements": Value({1: 22 / 42, 6: 12 / 42, 7: 4 / 42, 8: 4 / 42}, "Ac-Ala3-NHMe C12H22N4O4"),
    },
    "spice": {
        "force_rms": Value(0.81945, "JMP force std of SPICE solvated amino acids (JMP.md finetuning table)"),
        "atoms": Value(79.0, "derived: an amino acid (26 forms, ~19 atoms on average) with 20 waters (Eastman et al. "
                             "2023, SPICE); JMP's energy mean -60673.7 eV (PAPER.md §4) implies ~22 waters"),
        "elements": Value({1: 0.635, 6: 0.064, 7: 0.018, 8: 0.283},
                          "derived: the mean amino acid (~C5 H10 N1.4 O2.3) + 20 H2O"),
    },
}


def statistics(store_path: str | Path, split: str | None = None) -> dict:
    """Force RMS over free atoms (eV/A), mean atoms per structure and element fractions of a store."""
    from atomsift.data.store import Store
    from atomsift.train.linref import atom_index

    st = Store(store_path)
    off = np.asarray(st.offsets)
    idx = np.asarray(st.split(split), dtype=np.int64) if split else np.arange(len(st))
    atoms = atom_index(off, idx)
    z = np.asarray(st.array("numbers"))[atoms]
    f = np.asarray(st.array("forces"))[atoms]
    fixed = np.asarray(st.array("fixed"))[atoms].astype(bool) if st.has("fixed") else np.zeros(z.size, bool)
    els, counts = np.unique(z, return_counts=True)
    out = {"dataset": st.dataset, "structures": int(idx.size), "force_rms": float(np.sqrt(np.mean(f[~fixed] ** 2))),
           "atoms": float(z.size / idx.size), "elements": {int(e): float(c / z.size) for e, c in zip(els, counts)}}
    return out


def compare(stats: dict, tolerance: float = TOLERANCE) -> list[dict]:
    """Rows (statistic, analog, real, ratio, within, source) for the store's dataset family;
    element mix per element of the real formula (ratio of fractions)."""
    real = REAL[stats["dataset"]]
    rows = []
    for key in ("force_rms", "atoms"):
        ref = real[key]
        ratio = stats[key] / ref.value if ref.value else None
        rows.append({"statistic": key, "analog": stats[key], "real": ref.value, "ratio": ratio,
                     "within": None if ratio is None else abs(ratio - 1) <= tolerance, "source": ref.source})
    ref = real["elements"]
    if isinstance(ref.value, dict):
        for z, frac in sorted(ref.value.items()):
            mine = stats["elements"].get(z, 0.0)
            ratio = mine / frac
            rows.append({"statistic": f"fraction Z={z}", "analog": mine, "real": frac, "ratio": ratio,
                         "within": abs(ratio - 1) <= tolerance, "source": ref.source})
    else:
        rows.append({"statistic": "elements", "analog": stats["elements"], "real": None, "ratio": None, "within": None,
                     "source": ref.source})
    return rows
