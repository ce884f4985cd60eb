"""Fréchet distance and polynomial MMD against closed forms (METRICS.md §10), scipy, and a direct
float64 computation; streaming statistics against batch statistics; the sample-space Fréchet trace
against the StyleGAN-V parity fixtures and the d x d path."""

import numpy as np
import pytest
import scipy.linalg
import torch

from i2vlab.metrics import (
    FrechetDistance,
    KernelDistance,
    frechet_distance,
    frechet_distance_from_features,
    gaussian_stats,
    polynomial_mmd,
    polynomial_mmd_subsets,
    stats_from_sums,
)


def test_fd_closed_form_isotropic():
    d = 8
    assert frechet_distance(np.zeros(d), np.eye(d), np.ones(d), 4 * np.eye(d)) == pytest.approx(
        16.0, abs=1e-12
    )


def test_fd_closed_form_diagonal():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([4.0, 1.0, 9.0])
    fd = frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b))
    assert fd == pytest.approx(2.7792680298, abs=1e-9)
    assert fd == pytest.approx(((np.sqrt(a) - np.sqrt(b)) ** 2).sum(), abs=1e-12)


def test_fd_equal_covariance_is_mean_term():
    d = 512  # pytorch-fid's vector uses d = 2048 (FD = 2048); same closed form, cheaper eigh
    assert frechet_distance(np.zeros(d), np.eye(d), np.ones(d), np.eye(d)) == pytest.approx(512.0, rel=1e-12)


def test_fd_matches_scipy_sqrtm_on_random_psd():
    g = np.random.default_rng(0)
    x, y = g.normal(size=(200, 16)), g.normal(size=(150, 16)) @ g.normal(size=(16, 16)) * 0.5 + 0.3
    mu1, s1 = gaussian_stats(x)
    mu2, s2 = gaussian_stats(y)
    covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-10, abs=1e-10)
    # tensors in, same answer
    t = frechet_distance(*(torch.from_numpy(v).float() for v in (mu1, s1, mu2, s2)))
    assert t == pytest.approx(ref, rel=1e-4)


def test_fd_self_is_zero():
    x = np.random.default_rng(1).normal(size=(64, 32))
    mu, s = gaussian_stats(x)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-10


def test_fd_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


@pytest.mark.parametrize("ddof", [0, 1])
def test_streaming_stats_match_batch(ddof):
    x = np.random.default_rng(2).normal(size=(50, 6)) * 3 + 1
    mu, s = gaussian_stats(x, ddof=ddof)
    mu2, s2 = stats_from_sums(len(x), x.sum(0), x.T @ x, ddof=ddof)
    np.testing.assert_allclose(mu2, mu, rtol=1e-12)
    np.testing.assert_allclose(s2, s, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s, np.cov(x, rowvar=False, ddof=ddof), rtol=1e-12)


def _mmd_direct(x, y):
    """Direct float64 double loop over the unbiased estimator's definition."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b / d + 1.0) ** 3

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_polynomial_mmd_matches_direct_computation():
    g = np.random.default_rng(3)
    x, y = g.normal(size=(12, 5)), g.normal(size=(9, 5)) + 0.5
    assert polynomial_mmd(x, y) == pytest.approx(_mmd_direct(x, y), rel=1e-12, abs=1e-14)


def test_polynomial_mmd_self_closed_form_and_sign():
    x = np.random.default_rng(4).normal(size=(20, 4))
    m = len(x)
    kk = (x @ x.T / 4 + 1) ** 3
    expected = 2 / (m - 1) * (kk.mean() - np.diag(kk).mean())
    v = polynomial_mmd(x, x)
    assert v == pytest.approx(expected, rel=1e-10)
    assert v <= 0


def test_polynomial_mmd_detects_shift():
    g = np.random.default_rng(5)
    x, y = g.normal(size=(100, 8)), g.normal(size=(100, 8))
    same = polynomial_mmd(x, y)
    shifted = polynomial_mmd(x, y + 2.0)
    assert abs(same) < 0.1 < shifted


def test_polynomial_mmd_subsets():
    g = np.random.default_rng(6)
    x, y = g.normal(size=(40, 8)), g.normal(size=(30, 8)) + 1.0
    mean, std, m = polynomial_mmd_subsets(x, y, num_subsets=20, subset_size=1000, seed=0)
    assert m == 30 and std >= 0 and mean > 0
    # with m = N for both sets, every subset is a permutation of the full sets: same value as single
    mean2, std2, _ = polynomial_mmd_subsets(x[:30], y, num_subsets=5, subset_size=30)
    assert mean2 == pytest.approx(polynomial_mmd(x[:30], y), rel=1e-10) and std2 < 1e-10


def test_frechet_metric_streaming_equals_offline():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=g), torch.randn(30, 6, generator=g) * 2 + 1
    m = FrechetDistance(6, ddof=1)
    for chunk in x.split(7):
        m.update(real=True, features=chunk)
    for chunk in y.split(4):
        m.update(real=False, features=chunk)
    ref = frechet_distance(*gaussian_stats(x, 1), *gaussian_stats(y, 1))
    assert float(m.compute()) == pytest.approx(ref, rel=1e-10)


def test_frechet_metric_needs_samples():
    m = FrechetDistance(3, ddof=1)
    m.update(real=True, features=torch.randn(2, 3))
    m.update(real=False, features=torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 3 real"):
        m.compute()


def test_kernel_metric_matches_function():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 4, generator=g), torch.randn(15, 4, generator=g) + 0.5
    m = KernelDistance(num_subsets=3, subset_size=10)
    m.update(real=True, features=x[:10])
    m.update(real=True, features=x[10:])
    m.update(real=False, features=y)
    out = m.compute()
    assert out["single"] == pytest.approx(polynomial_mmd(x, y), rel=1e-12)
    assert out["subset_size"] == 10


# ------------------------------------------------------------------------- sample-space Fréchet trace
def _fixture():
    from parity_helpers import load_fixture

    return load_fixture("metrics", "distances")


@pytest.mark.parametrize("ddof", [0, 1])
def test_sample_space_fd_equals_the_d_by_d_form(ddof):
    g = torch.Generator().manual_seed(3)
    for n1, n2, d in ((20, 30, 64), (50, 40, 8), (3, 3, 10)):  # N < d, N > d, tiny
        x, y = (
            torch.randn(n1, d, generator=g, dtype=torch.float64),
            torch.randn(n2, d, generator=g, dtype=torch.float64) * 1.5 + 0.2,
        )
        ref = frechet_distance(*gaussian_stats(x, ddof), *gaussian_stats(y, ddof))
        assert frechet_distance_from_features(x, y, ddof) == pytest.approx(ref, rel=1e-11), (n1, n2, d)
    x = torch.randn(12, 40, generator=g, dtype=torch.float64)
    assert frechet_distance_from_features(x, x, ddof) == pytest.approx(0.0, abs=1e-12)


def test_sample_space_fd_matches_stylegan_v_fixtures():
    """The StyleGAN-V parity fixtures (universome/stylegan-v compute_fvd, FeatureStats 1/N + sqrtm): 256 x 64
    (full rank) within 1e-10, and 64 x 400 (N < d, singular covariances) within the 1e-7 of StyleGAN-V's
    sqrtm round-off on the singular product (measured 4.9e-8), equal to the exact nuclear-norm value."""
    fx = _fixture()
    full = frechet_distance_from_features(fx["in.fullrank.real"], fx["in.fullrank.fake"], ddof=0)
    assert full == pytest.approx(fx["out.fullrank.stylegan_v_fvd"].item(), rel=1e-10)
    low = frechet_distance_from_features(fx["in.lowrank.real"], fx["in.lowrank.fake"], ddof=0)
    exact = frechet_distance(
        *gaussian_stats(fx["in.lowrank.real"], ddof=0), *gaussian_stats(fx["in.lowrank.fake"], ddof=0)
    )
    assert low == pytest.approx(exact, rel=1e-12)
    ref = fx["out.lowrank.stylegan_v_fvd"].item()
    assert abs(low - ref) / ref < 1e-7


def test_frechet_metric_uses_sample_space_while_it_fits_then_the_sums():
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(50, 50, generator=g), torch.randn(25, 50, generator=g) + 0.3
    m = FrechetDistance(50, ddof=1)
    for chunk in x.split(7):
        m.update(real=True, features=chunk)
    m.update(real=False, features=y)
    assert m.sample_space() and m._buffered("real").shape == (50, 50)  # N = d still fits
    ref = frechet_distance(*gaussian_stats(x, 1), *gaussian_stats(y, 1))
    assert float(m.compute()) == pytest.approx(ref, rel=1e-10)
    more = torch.randn(70, 50, generator=g)
    m.update(real=True, features=more)  # 120 > 50 rows: folded into the sums (twice: 50 + 50, 20 held)
    assert not m.sample_space() and int(m.real_folds) == 2 and m._buffered("real").shape == (20, 50)
    ref2 = frechet_distance(*gaussian_stats(torch.cat([x, more]), 1), *gaussian_stats(y, 1))
    assert float(m.compute()) == pytest.approx(ref2, rel=1e-10)
    off = FrechetDistance(50, ddof=1, sample_space_max=0)
    off.update(real=True, features=x)
    off.update(real=False, features=y)
    assert not off.sample_space() and float(off.compute()) == pytest.approx(ref, rel=1e-9)


def _fd_worker(rank, port, cases, out):
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        res = []
        for x, y, cap in cases:
            m = FrechetDistance(x.shape[1], ddof=1, sample_space_max=cap)
            for chunk in x[rank::2].split(3):
                m.update(real=True, features=chunk)
            m.update(
                real=False, features=y[rank * 4 : (rank + 1) * 4] if rank == 0 else y[4:]
            )  # uneven split
            res.append({"value": float(m.compute()), "sample_space": m.sample_space()})
        if rank == 0:
            torch.save(res, out)
    finally:
        dist.destroy_process_group()


def test_frechet_metric_reduces_across_processes(tmp_path):
    """Two gloo processes: the buffered rows (sample space, N <= d) and the folded sums plus each process's
    unfolded remainder (N > d) reduce to the one-process value."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    g = torch.Generator().manual_seed(5)
    x, y = (
        torch.randn(11, 6, generator=g, dtype=torch.float64),
        torch.randn(12, 6, generator=g, dtype=torch.float64) + 1,
    )
    cases = [(x[:5], y[:6], None), (x, y, 4)]
    out = tmp_path / "fd.pt"
    mp.spawn(_fd_worker, args=(port, cases, str(out)), nprocs=2, join=True)
    res = torch.load(out)
    assert res[0]["sample_space"] and not res[1]["sample_space"]
    for r, (a, b, _) in zip(res, cases):
        assert r["value"] == pytest.approx(
            frechet_distance(*gaussian_stats(a, 1), *gaussian_stats(b, 1)), rel=1e-10
        )
