"""Fréchet distance (CSI): closed forms, invariances, agreement with the scipy sqrtm formula."""

import numpy as np
import pytest

from atomsift.csi.frechet import frechet_distance, official_csi, trace_sqrt_product
from atomsift.errors import InputError


def _spd(rng, d, n=None, scale=1.0):
    """A sample covariance of n >= d correlated Gaussian draws (well conditioned)."""
    n = n or 4 * d
    x = rng.normal(size=(n, d)) @ (np.eye(d) + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d)) * scale
    return np.cov(x, rowvar=False)


def test_distance_to_itself_is_zero():
    rng = np.random.default_rng(0)
    s = _spd(rng, 40)
    mu = rng.normal(size=40)
    fd = frechet_distance(mu, s, mu, s)
    assert abs(fd) <= 1e-9 * np.trace(s)


def test_symmetric():
    rng = np.random.default_rng(1)
    s1, s2 = _spd(rng, 30), _spd(rng, 30, scale=2.0)
    m1, m2 = rng.normal(size=30), rng.normal(size=30)
    a, b = frechet_distance(m1, s1, m2, s2), frechet_distance(m2, s2, m1, s1)
    assert a > 0
    assert a == pytest.approx(b, rel=1e-10)


def test_closed_form_diagonal_gaussians():
    # For diagonal covariances: ||mu1-mu2||^2 + sum (sqrt a - sqrt b)^2.
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.1, 5, size=16), rng.uniform(0.1, 5, size=16)
    m1, m2 = rng.normal(size=16), rng.normal(size=16)
    expect = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expect, rel=1e-12)


def test_closed_form_is_rotation_invariant():
    # Rotating both Gaussians by the same orthogonal Q does not change the distance.
    rng = np.random.default_rng(3)
    a, b = rng.uniform(0.1, 5, size=12), rng.uniform(0.1, 5, size=12)
    m1, m2 = rng.normal(size=12), rng.normal(size=12)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    expect = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(q @ m1, q @ np.diag(a) @ q.T, q @ m2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expect, rel=1e-10)


@pytest.mark.parametrize("d", [8, 32, 128, 512])
def test_agrees_with_scipy_sqrtm_formula(d):
    rng = np.random.default_rng(d)
    s1, s2 = _spd(rng, d), _spd(rng, d, scale=1.5)
    m1, m2 = rng.normal(size=d), rng.normal(size=d) + 0.1
    ours, ref = frechet_distance(m1, s1, m2, s2), official_csi(m1, s1, m2, s2)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_rank_deficient_covariances_are_finite_and_exact():
    # n < d: both covariances singular; the official sqrtm path needs its ridge, ours needs none.
    rng = np.random.default_rng(4)
    d = 64
    x = rng.normal(size=(20, d))
    s = np.cov(x, rowvar=False)  # rank 19
    m1, m2 = np.zeros(d), np.full(d, 0.5)
    # identical singular covariances: only the means differ
    assert frechet_distance(m1, s, m2, s) == pytest.approx(0.25 * d, rel=1e-7)
    # a zero covariance: Tr sqrt(0 * S) = 0
    assert frechet_distance(m1, np.zeros((d, d)), m2, s) == pytest.approx(0.25 * d + np.trace(s), rel=1e-12)
    y = rng.normal(size=(10, d))
    fd = frechet_distance(m1, s, m2, np.cov(y, rowvar=False))
    assert np.isfinite(fd) and isinstance(fd, float) and fd > 0.25 * d


def test_trace_sqrt_product_of_commuting_matrices():
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    a, b = rng.uniform(0, 3, 10), rng.uniform(0, 3, 10)
    a[:3] = 0.0  # singular
    got = trace_sqrt_product(q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(np.sum(np.sqrt(a * b)), rel=1e-10)


def test_shape_mismatch_is_an_input_error():
    with pytest.raises(InputError, match="inconsistent shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(InputError, match="non-finite"):
        frechet_distance(np.zeros(2), np.eye(2), np.array([0.0, np.nan]), np.eye(2))


def test_cholesky_and_eigh_paths_agree():
    rng = np.random.default_rng(6)
    s1, s2 = _spd(rng, 96), _spd(rng, 96, scale=0.7)
    a = trace_sqrt_product(s1, s2, method="eigh")
    b = trace_sqrt_product(s1, s2, method="cholesky")
    assert a == pytest.approx(b, rel=1e-12)
    # a singular S1 must not take the Cholesky path in auto mode
    x = rng.normal(size=(30, 96))
    s_low = np.cov(x, rowvar=False)
    assert trace_sqrt_product(s_low, s2) == pytest.approx(trace_sqrt_product(s_low, s2, method="eigh"), rel=1e-12)
