"""SO(3) tables of EquiformerV2: real spherical harmonics, S2 grids, Wigner-D matrices, edge frames.

Conventions are e3nn's (Geiger & Smidt 2022, "e3nn: Euclidean Neural Networks"), which the
published EquiformerV2 weights assume (Liao et al. 2024, "EquiformerV2: Improved Equivariant
Transformer for Scaling to Higher-Degree Representations", ICLR; the SO(2) machinery is eSCN's,
Passaro & Zitnick 2023, "Reducing SO(3) Convolutions to SO(2) for Efficient Equivariant GNNs"):

- A unit vector x = (sin b sin a, cos b, sin b cos a): the polar axis is y. The real spherical
  harmonics factorise as Y_lm(a, b) = S_m(a) P_l|m|(cos b) with S_m = sqrt(2) sin(|m| a) (m < 0),
  1 (m = 0), sqrt(2) cos(m a) (m > 0) and P the associated Legendre functions without the
  Condon-Shortley phase, normalised so that the integral of Y_lm^2 over the sphere is 1.
  Coefficients are ordered l = 0..lmax, m = -l..l ("l-primary").
- D_l(R) with Y_l(R x) = D_l(R) Y_l(x); for Euler angles R = R_y(a) R_x(b) R_y(c),
  D_l = Z_l(a) J_l Z_l(b) J_l Z_l(c), where Z_l is the rotation about y in this basis and
  J_l = D_l(M) for the swap M of x and -y (any sign convention of J_l cancels in the product).

Every table is computed here in float64 from these formulas (no data files) and cast to the
model's dtype; ``tools/eqv2_reference.py`` checks them against the reference implementation.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

# ----------------------------------------------------------------------------- coefficient layouts


def num_coefficients(lmax: int, mmax: int | None = None) -> int:
    """Number of (l, m) with l <= lmax and |m| <= min(l, mmax)."""
    mmax = lmax if mmax is None else mmax
    return sum(2 * min(l, mmax) + 1 for l in range(lmax + 1))


@lru_cache(maxsize=None)
def lm_list(lmax: int, mmax: int | None = None) -> tuple[tuple[int, int], ...]:
    """The (l, m) of every coefficient kept at (lmax, mmax), l-primary."""
    mmax = lmax if mmax is None else mmax
    return tuple((l, m) for l in range(lmax + 1) for m in range(-min(l, mmax), min(l, mmax) + 1))


@lru_cache(maxsize=None)
def reduced_index(lmax: int, mmax: int) -> tuple[int, ...]:
    """Positions in the full l-primary layout ((lmax+1)^2) of the coefficients with |m| <= mmax."""
    return tuple(l * l + l + m for l, m in lm_list(lmax, mmax))


@lru_cache(maxsize=None)
def m_primary_order(lmax: int, mmax: int) -> tuple[int, ...]:
    """Permutation of the reduced l-primary layout into eSCN's m-primary layout: all m = 0
    (l = 0..lmax), then for m = 1..mmax the +m coefficients (l = m..lmax) followed by the -m ones.
    The +m / -m pair of a degree is the real / imaginary part of one complex SO(2) coefficient."""
    lm = lm_list(lmax, mmax)
    pos = {v: i for i, v in enumerate(lm)}
    order = [pos[(l, 0)] for l in range(lmax + 1)]
    for m in range(1, mmax + 1):
        order += [pos[(l, m)] for l in range(m, lmax + 1)]
        order += [pos[(l, -m)] for l in range(m, lmax + 1)]
    return tuple(order)


def m_sizes(lmax: int, mmax: int) -> tuple[int, ...]:
    """Number of degrees l carrying order m, for m = 0..mmax."""
    return tuple(lmax - m + 1 for m in range(mmax + 1))


def degree_rescale(lmax: int, mmax: int) -> np.ndarray:
    """sqrt((2l+1) / (2 mmax + 1)) for degrees l > mmax, else 1, per reduced coefficient: with
    only |m| <= mmax kept, a degree's 2l+1 components carry the energy of 2 mmax + 1 of them."""
    return np.array([math.sqrt((2 * l + 1) / (2 * mmax + 1)) if l > mmax else 1.0 for l, _ in lm_list(lmax, mmax)])


# ----------------------------------------------------------------------------- spherical harmonics


@lru_cache(maxsize=None)
def _legendre_coeffs(l: int, m: int) -> np.ndarray:
    """Polynomial coefficients (in z) of d^{l+m}/dz^{l+m} (z^2 - 1)^l / (2^l l!)."""
    c = np.polynomial.polynomial.polypow([-1.0, 0.0, 1.0], l)
    if l + m:
        c = np.polynomial.polynomial.polyder(c, l + m)
    return c / (2.0**l * math.factorial(l))


def legendre(l: int, m: int, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Normalised associated Legendre function of cos b = z, |sin b| = y (m >= 0)."""
    norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - m) / math.factorial(l + m))
    return norm * np.polynomial.polynomial.polyval(z, _legendre_coeffs(l, m)) * y**m


def sh_alpha_beta(lmax: int, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Y_lm(alpha, beta), shape (..., (lmax+1)^2), float64, l-primary."""
    alpha = np.asarray(alpha, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    z, y = np.cos(beta), np.abs(np.sin(beta))
    out = []
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            if m < 0:
                s = math.sqrt(2.0) * np.sin(-m * alpha)
            elif m == 0:
                s = np.ones_like(alpha)
            else:
                s = math.sqrt(2.0) * np.cos(m * alpha)
            out.append(s * legendre(l, abs(m), z, y))
    return np.stack(out, axis=-1)


def sh_xyz(lmax: int, xyz: np.ndarray) -> np.ndarray:
    """Y_lm of the directions of ``xyz`` (..., 3)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    xyz = xyz / np.linalg.norm(xyz, axis=-1, keepdims=True)
    alpha = np.arctan2(xyz[..., 0], xyz[..., 2])
    beta = np.arccos(np.clip(xyz[..., 1], -1.0, 1.0))
    return sh_alpha_beta(lmax, alpha, beta)


# ----------------------------------------------------------------------------- S2 grids


def quadrature_weights(b: int) -> np.ndarray:
    """Weights of the 2b-point latitude grid b_j = pi (j + 1/2) / 2b (Driscoll & Healy 1994;
    Kostelec & Rockmore 2008, eq. 2.5), divided by 2 (2b)^2."""
    j = np.arange(2 * b)[:, None]
    k = np.arange(b)[None, :]
    w = (2.0 / b) * np.sin(math.pi * (2 * j[:, 0] + 1) / (4 * b)) * (
        np.sin((2 * j + 1) * (2 * k + 1) * math.pi / (4 * b)) / (2 * k + 1)
    ).sum(axis=1)
    return w / (2.0 * (2 * b) ** 2)


def grid_points(res_beta: int, res_alpha: int) -> tuple[np.ndarray, np.ndarray]:
    """Latitudes b_i = pi (i + 1/2) / res_beta and longitudes a_j = 2 pi j / res_alpha."""
    betas = (np.arange(res_beta) + 0.5) / res_beta * math.pi
    alphas = np.arange(res_alpha) / res_alpha * 2 * math.pi
    return betas, alphas


@lru_cache(maxsize=None)
def grid_matrices(lmax: int, mmax: int, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """(to_grid, from_grid), each (res_beta, res_alpha, num_coefficients(lmax, mmax)), float64.

    to_grid[b, a, i] = n_l Y_i(a, b), with the "component" normalisation
    n_l = sqrt(4 pi / (2l + 1)) / sqrt(lmax + 1) (every degree has unit variance on the sphere);
    from_grid[b, a, i] = w_b Y_i(a, b) sqrt(4 pi (2l + 1)) sqrt(lmax + 1) res_beta^2 / res_alpha,
    its quadrature inverse. Degrees above mmax are rescaled by :func:`degree_rescale` in both.
    """
    res_beta = res_alpha = resolution
    if res_beta % 2 or lmax + 1 > res_beta // 2:
        raise ValueError(f"grid resolution {resolution} cannot resolve lmax {lmax}")
    betas, alphas = grid_points(res_beta, res_alpha)
    Y = sh_alpha_beta(lmax, alphas[None, :], betas[:, None])  # (b, a, (lmax+1)^2)
    ls = np.array([l for l in range(lmax + 1) for _ in range(2 * l + 1)])
    n_to = math.sqrt(4 * math.pi) / np.sqrt(2 * ls + 1) / math.sqrt(lmax + 1)
    n_from = math.sqrt(4 * math.pi) * np.sqrt(2 * ls + 1) * math.sqrt(lmax + 1)
    qw = quadrature_weights(res_beta // 2) * res_beta**2 / res_alpha
    to_grid = Y * n_to
    from_grid = Y * n_from * qw[:, None, None]
    idx = list(reduced_index(lmax, mmax))
    scale = degree_rescale(lmax, mmax)
    return to_grid[..., idx] * scale, from_grid[..., idx] * scale


# ----------------------------------------------------------------------------- Wigner-D matrices

# x <-> -y swap (det -1): with Z_l the rotation about y, J_l Z_l(b) J_l is the rotation about x
_SWAP = np.array([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@lru_cache(maxsize=None)
def j_matrix(l: int) -> np.ndarray:
    """J_l = D_l(M): solved from Y_l(M x) = J_l Y_l(x) on points in general position (exact up to
    float64 rounding; the system is overdetermined and consistent)."""
    rng = np.random.default_rng(l)
    x = rng.normal(size=(8 * (2 * l + 1), 3))
    y = sh_xyz(l, x)[:, l * l :]
    ym = sh_xyz(l, x @ _SWAP.T)[:, l * l :]
    return np.linalg.lstsq(y, ym, rcond=None)[0].T


def z_rotation(angle: Tensor, l: int) -> Tensor:
    """Z_l(angle) (..., 2l+1, 2l+1): cos(f angle) on the diagonal and sin(f angle) on the
    anti-diagonal, with frequencies f = l, l-1, ..., -l down the rows."""
    n = 2 * l + 1
    out = angle.new_zeros((*angle.shape, n, n))
    rows = torch.arange(n, device=angle.device)
    freq = torch.arange(l, -l - 1, -1, dtype=angle.dtype, device=angle.device)
    out[..., rows, rows.flip(0)] = torch.sin(freq * angle[..., None])
    out[..., rows, rows] = torch.cos(freq * angle[..., None])
    return out


def _matrix_x(t: Tensor) -> Tensor:
    c, s, o, z = t.cos(), t.sin(), torch.ones_like(t), torch.zeros_like(t)
    return torch.stack([torch.stack([o, z, z], -1), torch.stack([z, c, -s], -1), torch.stack([z, s, c], -1)], -2)


def _matrix_y(t: Tensor) -> Tensor:
    c, s, o, z = t.cos(), t.sin(), torch.ones_like(t), torch.zeros_like(t)
    return torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2)


def euler_angles(rot: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(a, b, c) with rot = R_y(a) R_x(b) R_y(c): a, b locate rot e_y, c is the remaining
    rotation about y."""
    y = torch.nn.functional.normalize(rot[..., :, 1], dim=-1).clamp(-1.0, 1.0)
    beta = torch.acos(y[..., 1])
    alpha = torch.atan2(y[..., 0], y[..., 2])
    rest = (_matrix_y(alpha) @ _matrix_x(beta) @ _matrix_y(torch.zeros_like(alpha))).transpose(-1, -2) @ rot
    gamma = torch.atan2(rest[..., 0, 2], rest[..., 0, 0])
    return alpha, beta, gamma


def wigner_d(rot: Tensor, lmax: int, j: list[Tensor]) -> Tensor:
    """Block-diagonal D(rot) over l = 0..lmax, (E, (lmax+1)^2, (lmax+1)^2); ``j`` holds J_l in
    the dtype and device of ``rot``."""
    alpha, beta, gamma = euler_angles(rot)
    size = (lmax + 1) ** 2
    out = rot.new_zeros((rot.shape[0], size, size))
    for l in range(lmax + 1):
        J = j[l]
        block = z_rotation(alpha, l) @ J @ z_rotation(beta, l) @ J @ z_rotation(gamma, l)
        out[:, l * l : (l + 1) ** 2, l * l : (l + 1) ** 2] = block
    return out


# ----------------------------------------------------------------------------- edge frames


def edge_frames(vec: Tensor, roll: Tensor) -> Tensor:
    """(E, 3, 3) rotations taking each edge direction to +y (eSCN's edge-aligned frame).

    ``vec`` (E, 3) is the edge vector; ``roll`` (E, 3) fixes the rotation about the edge: its
    normalised direction, or a copy with two components swapped (x,y -> -y,x, then y,z -> -z,y)
    when that copy is less aligned with the edge, spans the frame with the edge. EquiformerV2
    draws ``roll`` uniformly from [-0.5, 0.5]^3 at every call; the result depends on it only
    through the S2-grid activation, which is equivariant to rotations about the edge only up to
    its grid resolution.
    """
    x = vec / torch.sqrt(torch.sum(vec**2, dim=1)).view(-1, 1)
    r = roll / torch.sqrt(torch.sum(roll**2, dim=1)).view(-1, 1)
    rb = torch.stack([-r[:, 1], r[:, 0], r[:, 2]], dim=1)
    rc = torch.stack([r[:, 0], -r[:, 2], r[:, 1]], dim=1)
    dot = torch.abs(torch.sum(r * x, dim=1)).view(-1, 1)
    dot_b = torch.abs(torch.sum(rb * x, dim=1)).view(-1, 1)
    r = torch.where(torch.gt(dot, dot_b), rb, r)
    dot = torch.abs(torch.sum(r * x, dim=1)).view(-1, 1)
    dot_c = torch.abs(torch.sum(rc * x, dim=1)).view(-1, 1)
    r = torch.where(torch.gt(dot, dot_c), rc, r)
    z = torch.cross(x, r, dim=1)
    z = z / torch.sqrt(torch.sum(z**2, dim=1, keepdim=True))
    z = z / torch.sqrt(torch.sum(z**2, dim=1)).view(-1, 1)
    y = torch.cross(x, z, dim=1)
    y = y / torch.sqrt(torch.sum(y**2, dim=1, keepdim=True))
    # rows: the frame's axes; the edge becomes e_y
    return torch.stack([z, x, -y], dim=1)


def least_aligned_axis(vec: Tensor) -> Tensor:
    """The coordinate axis least aligned with each edge (ties: the first): our deterministic
    ``roll`` for :func:`edge_frames`, so a structure's features do not depend on a random draw."""
    k = torch.argmin(vec.abs(), dim=1)
    return torch.nn.functional.one_hot(k, 3).to(vec.dtype)
