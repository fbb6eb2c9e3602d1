"""The Fréchet distance between two Gaussians: the Chemical Similarity Index.

    CSI = ||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr (S1 S2)^(1/2)

(Dowson and Landau 1982; the FID of Heusel et al. 2017; PAPER.md §2.7). The trace term only needs
the eigenvalues of S1 S2, which for symmetric positive semi-definite S1, S2 are those of the
symmetric matrix A S2 A with A = S1^(1/2): with S1 = V diag(w) V^T, they are the eigenvalues of
diag(sqrt w) (V^T S2 V) diag(sqrt w). Two symmetric eigendecompositions therefore give the
trace without ever forming the square root of the non-symmetric product, so the result is real
and finite for singular or rank-deficient covariances (n < d), where ``scipy.linalg.sqrtm`` of
the product goes complex or non-finite. Directions where S1 has no variance add nothing to the
trace and are dropped before the second decomposition. When S1 is well conditioned its Cholesky
factor L gives the same eigenvalues as L^T S2 L at about half the cost (used automatically).
"""

from __future__ import annotations

import numpy as np

from atomsift.errors import InputError


def _check(mu1, s1, mu2, s2):
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    s1, s2 = np.asarray(s1, dtype=np.float64), np.asarray(s2, dtype=np.float64)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise InputError(f"inconsistent shapes: mean {mu1.shape} / {mu2.shape}, covariance {s1.shape} / {s2.shape}", field="mean")
    for name, a in (("mean", mu1), ("mean", mu2), ("cov", s1), ("cov", s2)):
        if not np.all(np.isfinite(a)):
            raise InputError("non-finite value", field=name)
    return mu1, s1, mu2, s2


# A covariance read from a file may differ from symmetric PSD by round-off only: asymmetry and
# negative eigenvalues up to this fraction of its trace (float64 accumulation leaves ~1e-13).
PSD_TOLERANCE = 1e-8


def check_covariance(cov: np.ndarray, path=None, field: str = "cov") -> None:
    """Raise InputError unless ``cov`` is a symmetric positive semi-definite matrix, up to
    :data:`PSD_TOLERANCE` x its trace (the Fréchet distance is only defined, and only >= 0, for
    those; an asymmetric or indefinite "covariance" gives a meaningless, possibly negative CSI)."""
    tr = float(np.trace(cov))
    tol = PSD_TOLERANCE * max(tr, 0.0)
    asym = float(np.abs(cov - cov.T).max(initial=0.0))
    if asym > tol:
        raise InputError(f"not symmetric (largest |C - C^T| = {asym:.3g}, tolerance {tol:.3g} = {PSD_TOLERANCE:g} x trace)",
                         path=path, field=field)
    low = float(np.linalg.eigvalsh(0.5 * (cov + cov.T))[0]) if cov.size else 0.0
    if low < -tol:
        raise InputError(f"not positive semi-definite (smallest eigenvalue {low:.6g}, tolerance {tol:.3g} = "
                         f"{PSD_TOLERANCE:g} x trace)", path=path, field=field)


def sqrt_factor(s1: np.ndarray, method: str = "auto") -> np.ndarray:
    """A matrix F with F F^T = S1 (over the directions where S1 has variance), such that the
    eigenvalues of F^T S2 F are those of S1 S2 for any S2 (:func:`trace_sqrt_product`).

    ``cholesky``: F = L of S1 = L L^T (only for well-conditioned S1); ``eigh``: F = V diag(sqrt w)
    over the eigenvalues w above round-off (robust to any rank deficiency); ``auto`` takes the
    Cholesky path when S1's pivots are all above 1e-10 of the largest. Factor a covariance once
    to pair it with many others (the jackknife of :mod:`atomsift.csi.estimate`)."""
    from scipy.linalg import LinAlgError, cholesky, eigh

    s1 = 0.5 * (s1 + s1.T)
    if method in ("auto", "cholesky"):
        try:
            low = cholesky(s1, lower=True, check_finite=False)
            piv = np.diag(low) ** 2
            if method == "cholesky" or piv.min() > 1e-10 * piv.max():
                return low
        except LinAlgError:
            if method == "cholesky":
                raise
    w, v = eigh(s1, driver="evd", overwrite_a=True, check_finite=False)
    # eigenvalues below round-off are noise around zero: drop them (a PSD matrix has none < 0)
    tol = max(float(w.max(initial=0.0)), 0.0) * w.size * np.finfo(np.float64).eps
    keep = w > tol
    return v[:, keep] * np.sqrt(w[keep])[None, :]


def trace_sqrt_with(factor: np.ndarray, s2: np.ndarray) -> float:
    """Tr (S1 S2)^(1/2) given ``factor`` = :func:`sqrt_factor` (S1): the sum of the square roots of
    the eigenvalues of the symmetric matrix F^T S2 F."""
    from scipy.linalg import eigh

    if factor.shape[1] == 0:
        return 0.0
    m = factor.T @ (0.5 * (s2 + s2.T)) @ factor
    m = 0.5 * (m + m.T)
    ev = eigh(m, eigvals_only=True, driver="evr", overwrite_a=True, check_finite=False)
    return float(np.sqrt(np.clip(ev, 0.0, None)).sum())


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, method: str = "auto") -> float:
    """Tr (S1 S2)^(1/2) for symmetric PSD S1, S2: sum of sqrt(eigenvalues of a symmetric matrix).

    ``eigh``: S1 = V diag(w) V^T, eigenvalues of diag(sqrt w) V^T S2 V diag(sqrt w) over the
    directions where S1 has variance (robust to any rank deficiency).
    ``cholesky``: S1 = L L^T, eigenvalues of L^T S2 L (the same numbers, about twice as fast; only
    for well-conditioned S1). ``auto`` takes the Cholesky path when S1's pivots are all above
    1e-10 of the largest and the eigh path otherwise.
    """
    return trace_sqrt_with(sqrt_factor(s1, method), s2)


def frechet_distance(mu1, s1, mu2, s2) -> float:
    """Fréchet distance between N(mu1, S1) and N(mu2, S2) for symmetric PSD S1, S2: real, finite, >= 0."""
    mu1, s1, mu2, s2 = _check(mu1, s1, mu2, s2)
    diff = mu1 - mu2
    tr = trace_sqrt_product(s1.copy(), s2)
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr)
    # the exact value is >= 0 for PSD covariances (moments files are checked to be PSD up to
    # round-off when read); cancellation can leave a tiny negative number for equal inputs
    return max(value, 0.0)


def official_csi(mu1, s1, mu2, s2, eps: float = 1e-6) -> float:
    """The official compute_csi.py formula: ``scipy.linalg.sqrtm(S1 S2)``; if that is not
    finite, add eps*I to both covariances and retry; complex results with an imaginary diagonal
    above 1e-3 are an error, otherwise the real part is kept. For tests and the benchmark."""
    from scipy import linalg

    mu1, s1, mu2, s2 = _check(mu1, s1, mu2, s2)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError(f"imaginary component {m}")
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
