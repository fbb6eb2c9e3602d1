"""Starting geometries of the mini-universe: QM9 train-split molecules and hand-built molecules.

rdkit is not a dependency, so the molecules that QM9 and ``ase.build`` lack (aspirin, the amino
acids, Ac-Ala3-NHMe) are written here as Z-matrices (bond length, angle, dihedral to earlier
atoms, standard organic values) and turned into Cartesians by the natural-extension reference
frame construction. The generators relax them with GFN2-xTB before sampling, so the rough
Z-matrix values only need to be in the right basin (tests check that the amino acids come out as
the L enantiomers).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atomsift.errors import InputError

_Z = {"H": 1, "C": 6, "N": 7, "O": 8}


# ------------------------------------------------------------------------------------- Z-matrices


def _place(a, b, c, bond: float, angle: float, dihedral: float) -> np.ndarray:
    """Position of D with |CD| = bond, angle BCD = angle, dihedral ABCD = dihedral (degrees)."""
    th, ph = np.radians(angle), np.radians(dihedral)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d2 = np.array([-bond * np.cos(th), bond * np.sin(th) * np.cos(ph), bond * np.sin(th) * np.sin(ph)])
    return c + d2[0] * bc + d2[1] * m + d2[2] * n


def zmatrix(rows) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Build Cartesians from rows ``(name, element, [bond_ref, r, [angle_ref, theta, [dih_ref, phi]]])``."""
    names: dict[str, int] = {}
    pos, z = [], []
    for row in rows:
        name, el, rest = row[0], row[1], row[2:]
        if name in names:
            raise ValueError(f"duplicate atom name {name}")
        k = len(pos)
        if k == 0:
            p = np.zeros(3)
        elif k == 1:
            p = pos[names[rest[0]]] + np.array([0.0, 0.0, rest[1]])
        elif k == 2:
            c, b = pos[names[rest[0]]], pos[names[rest[2]]]
            # a pseudo-reference off the B-C axis fixes the plane of the first three atoms
            a = b + np.array([1.0, 0.0, 0.0]) if abs((c - b)[0]) < 0.9 * np.linalg.norm(c - b) else b + np.array([0.0, 1.0, 0.0])
            p = _place(a, b, c, rest[1], rest[3], 0.0)
        else:
            c, b, a = pos[names[rest[0]]], pos[names[rest[2]]], pos[names[rest[4]]]
            p = _place(a, b, c, rest[1], rest[3], rest[5])
        names[name] = k
        pos.append(p)
        z.append(_Z[el])
    return np.array(z, dtype=np.int64), np.array(pos), names


def _aspirin_rows():
    rows = [("C1", "C"), ("C2", "C", "C1", 1.40), ("C3", "C", "C2", 1.39, "C1", 120.0)]
    rows += [("C4", "C", "C3", 1.39, "C2", 120.0, "C1", 0.0), ("C5", "C", "C4", 1.39, "C3", 120.0, "C2", 0.0),
             ("C6", "C", "C5", 1.39, "C4", 120.0, "C3", 0.0)]
    # carboxylic acid on C1: C=O on the side of the acetoxy group, O-H away from it
    rows += [("C7", "C", "C1", 1.48, "C2", 121.0, "C3", 180.0), ("O8", "O", "C7", 1.22, "C1", 123.0, "C2", 0.0),
             ("O9", "O", "C7", 1.35, "C1", 114.0, "C2", 180.0), ("H9", "H", "O9", 0.97, "C7", 106.0, "C1", 180.0)]
    # acetoxy on C2, ester plane twisted out of the ring plane as in aspirin
    rows += [("O10", "O", "C2", 1.39, "C1", 121.0, "C7", 0.0), ("C11", "C", "O10", 1.36, "C2", 118.0, "C1", 80.0),
             ("O12", "O", "C11", 1.20, "O10", 123.0, "C2", 0.0), ("C13", "C", "C11", 1.50, "O10", 110.0, "C2", 180.0)]
    rows += [(f"H13{k}", "H", "C13", 1.09, "C11", 110.0, "O10", d) for k, d in zip("abc", (180.0, 60.0, -60.0))]
    rows += [(f"H{k}", "H", f"C{k}", 1.08, f"C{k - 1}", 120.0, f"C{k - 2}", 180.0) for k in (3, 4, 5, 6)]
    return rows


def _amino_acid_rows(side: str):
    """Neutral (non-zwitterionic) glycine, alanine or serine."""
    rows = [("N", "N"), ("CA", "C", "N", 1.46), ("C", "C", "CA", 1.52, "N", 111.0),
            ("O", "O", "C", 1.21, "CA", 125.0, "N", -20.0), ("OXT", "O", "C", 1.35, "CA", 112.0, "N", 160.0),
            ("HXT", "H", "OXT", 0.97, "C", 107.0, "CA", 180.0),
            ("H1", "H", "N", 1.01, "CA", 110.0, "C", 60.0), ("H2", "H", "N", 1.01, "CA", 110.0, "C", 180.0),
            ("HA", "H", "CA", 1.09, "N", 109.5, "C", 120.0)]
    if side == "glycine":
        rows.append(("HA3", "H", "CA", 1.09, "N", 109.5, "C", -120.0))
    else:
        rows.append(("CB", "C", "CA", 1.53, "N", 110.0, "C", -122.0))
        if side == "alanine":
            rows += [(f"HB{k}", "H", "CB", 1.09, "CA", 110.0, "N", d) for k, d in zip("123", (60.0, 180.0, -60.0))]
        elif side == "serine":
            rows += [("OG", "O", "CB", 1.42, "CA", 111.0, "N", 60.0), ("HG", "H", "OG", 0.97, "CB", 108.0, "CA", 180.0),
                     ("HB2", "H", "CB", 1.09, "CA", 110.0, "N", 180.0), ("HB3", "H", "CB", 1.09, "CA", 110.0, "N", -60.0)]
        else:
            raise ValueError(side)
    return rows


def _ace_ala3_nme_rows(phi: float = -75.0, psi: float = 145.0):
    """Ac-(Ala)3-NHMe, trans peptide bonds, all residues at (phi, psi) (polyproline-II by default)."""
    rows = [("CA0", "C"), ("C0", "C", "CA0", 1.51), ("N1", "N", "C0", 1.33, "CA0", 116.0),
            ("O0", "O", "C0", 1.23, "CA0", 121.0, "N1", 180.0)]
    rows += [(f"H0{k}", "H", "CA0", 1.09, "C0", 110.0, "N1", d) for k, d in zip("abc", (0.0, 120.0, -120.0))]
    for i in (1, 2, 3):
        p = i - 1
        rows += [
            (f"CA{i}", "C", f"N{i}", 1.46, f"C{p}", 122.0, f"CA{p}", 180.0),          # omega = 180
            (f"H{i}", "H", f"N{i}", 1.01, f"C{p}", 119.0, f"O{p}", 180.0),            # N-H anti to C=O
            (f"C{i}", "C", f"CA{i}", 1.52, f"N{i}", 111.0, f"C{p}", phi),             # phi
            (f"N{i + 1}", "N", f"C{i}", 1.33, f"CA{i}", 116.0, f"N{i}", psi),         # psi
            (f"O{i}", "O", f"C{i}", 1.23, f"CA{i}", 121.0, f"N{i}", psi + 180.0),
            (f"HA{i}", "H", f"CA{i}", 1.09, f"N{i}", 109.5, f"C{p}", phi + 120.0),
            (f"CB{i}", "C", f"CA{i}", 1.53, f"N{i}", 110.0, f"C{p}", phi - 120.0),  # L-alanine
        ]
        rows += [(f"HB{i}{k}", "H", f"CB{i}", 1.09, f"CA{i}", 110.0, f"N{i}", d) for k, d in zip("abc", (60.0, 180.0, -60.0))]
    rows += [("CA4", "C", "N4", 1.46, "C3", 122.0, "CA3", 180.0), ("H4", "H", "N4", 1.01, "C3", 119.0, "O3", 180.0)]
    rows += [(f"H4{k}", "H", "CA4", 1.09, "N4", 110.0, "C3", d) for k, d in zip("abc", (60.0, 180.0, -60.0))]
    return rows


HAND_BUILT = {
    "aspirin": _aspirin_rows,
    "glycine": lambda: _amino_acid_rows("glycine"),
    "alanine": lambda: _amino_acid_rows("alanine"),
    "serine": lambda: _amino_acid_rows("serine"),
    "ac-ala3-nhme": _ace_ala3_nme_rows,
}

# rMD17 molecules available from ase.build's g2 set (name -> ase name)
_ASE_G2 = {"ethanol": "CH3CH2OH", "benzene": "C6H6", "methane": "CH4"}


def build(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Unrelaxed (numbers, positions) of a hand-built or ase.build molecule."""
    if name in HAND_BUILT:
        z, pos, _ = zmatrix(HAND_BUILT[name]())
        return z, pos - pos.mean(0)
    if name in _ASE_G2:
        from ase.build import molecule

        a = molecule(_ASE_G2[name])
        return a.numbers.astype(np.int64), a.positions - a.positions.mean(0)
    raise KeyError(name)


def relax(numbers, positions, *, method: str = "GFN2-xTB", fmax: float = 0.03, steps: int = 300) -> np.ndarray:
    """GFN2-xTB-relaxed positions (BFGS); deterministic."""
    from ase import Atoms
    from ase.optimize import BFGS

    from atomsift.data.mini.common import xtb_calculator

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = xtb_calculator(method, numbers)
    BFGS(atoms, logfile=None).run(fmax=fmax, steps=steps)
    return np.array(atoms.positions)


def water(rng) -> tuple[np.ndarray, np.ndarray]:
    """One water molecule (O first) with a random orientation, O at the origin."""
    from atomsift.data.mini.common import random_rotation

    r, th = 0.96, np.radians(104.5)
    pos = np.array([[0, 0, 0], [r, 0, 0], [r * np.cos(th), r * np.sin(th), 0]])
    return np.array([8, 1, 1]), pos @ random_rotation(rng).T


# --------------------------------------------------------------------------------------------- QM9


def qm9_train_molecules(qm9: str | Path | None = None, *, exclude_elements=(9,)) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(gdb index, numbers, positions) of the QM9 molecules of the QM9 task's *train* split only.

    From a QM9 store (its ``train`` split), or, when ``qm9`` is None, from the qm9pack wheel with
    JMP's split (``jmp_split(N)["train"]``, global index = row in gdb order). Molecules holding an
    element of ``exclude_elements`` (fluorine: ANI-1x and Transition-1x are CHNO) are dropped.
    """
    from atomsift.data.readers import qm9 as qm9_reader

    out = []
    if qm9 is not None:
        from atomsift.data.store import Store

        store = Store(qm9)
        if store.dataset != "qm9":
            raise InputError(f"expected a QM9 store, found dataset '{store.dataset}'", path=qm9, field="dataset")
        train = store.split("train")
        off = store.offsets
        numbers, positions = store.array("numbers"), store.array("positions")
        sid = store.array("sid") if store.has("sid") else None
        for g in train:
            a, b = int(off[g]), int(off[g + 1])
            z = np.array(numbers[a:b], dtype=np.int64)
            if np.isin(z, exclude_elements).any():
                continue
            out.append((int(sid[g]) if sid is not None else int(g), z, np.array(positions[a:b])))
        return out
    rows = list(qm9_reader.read_qm9pack(qm9_reader.qm9pack_dir()))
    train = qm9_reader.jmp_split(len(rows))["train"]
    for g in train:
        gdb, z, pos, _ = rows[g]
        z = np.asarray(z, dtype=np.int64)
        if np.isin(z, exclude_elements).any():
            continue
        out.append((gdb, z, np.array(pos)))
    return out
