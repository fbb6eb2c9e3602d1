"""The quadruplet dihedral of nearly collinear atoms: atomsift's value against JMP's clamped formula
(issue 13; docs/model.md "Dihedral of nearly collinear atoms").

theta_cabd is the angle between u = V_ca x V_ba and v = V_db x V_ba. JMP computes it as
atan2(max(|u x v|, 1e-9), u . v) (JMP.md §1.5), which is exact only while |u||v| sin(theta) stays
above 1e-9; atomsift takes theta from the azimuths of u and v about V_ba, exact at any size of u
and v until |u| or |v| is below 1e-9 (float64), where the dihedral is undefined and both codes
use theta = pi / 2. This prints, in float64, for c-a-b bent by eps from collinear and a true
dihedral of 60 degrees: the exact theta, atomsift's, JMP's.

    python bench/dihedral_collinear.py
"""

from __future__ import annotations

import math

import torch

from atomsift.models.bases import _azimuth_features


def geometry(eps: float, theta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unit vectors V_ba (along z), V_ca (bent by eps from -z ... i.e. nearly collinear with V_ba)
    and V_db (perpendicular to V_ba), with dihedral ``theta`` between the two planes."""
    V_ba = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    V_ca = torch.tensor([math.sin(eps), 0.0, math.cos(eps)], dtype=torch.float64)
    V_db = torch.tensor([math.cos(theta), math.sin(theta), 0.0], dtype=torch.float64)
    return V_ca, V_ba, V_db


def theta_jmp(u: torch.Tensor, v: torch.Tensor) -> float:
    y = torch.linalg.cross(u, v).norm().clamp_min(1e-9)
    return float(torch.atan2(y, (u * v).sum()))


def theta_ours(u: torch.Tensor, v: torch.Tensor, n: torch.Tensor) -> float:
    e1 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    e1 = e1 - (e1 @ n) * n
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(n, e1)
    fu, du = _azimuth_features(u[None], e1[None], e2[None], 2)
    fv, dv = _azimuth_features(v[None], e1[None], e2[None], 2)
    if bool(du) or bool(dv):
        return math.pi / 2
    # features [cos a, 1-harmonic cos, sin]: cos(a_u - a_v) = cos cos + sin sin
    c = float(fu[0, 1] * fv[0, 1] + fu[0, 2] * fv[0, 2])
    return math.acos(max(-1.0, min(1.0, c)))


def main() -> int:
    true = math.radians(60.0)
    print(f"{'eps (rad)':>10s} {'|u||v|':>10s} {'exact':>8s} {'atomsift':>9s} {'JMP':>8s}  (degrees)")
    for eps in (1e-2, 1e-4, 1e-6, 1e-8, 3e-9, 1.5e-9, 1e-9, 1e-10):
        V_ca, V_ba, V_db = geometry(eps, true)
        u = torch.linalg.cross(V_ca, V_ba)
        v = torch.linalg.cross(V_db, V_ba)
        print(f"{eps:10.1e} {float(u.norm() * v.norm()):10.1e} {60.0:8.3f} {math.degrees(theta_ours(u, v, V_ba)):9.3f} "
              f"{math.degrees(theta_jmp(u, v)):8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
