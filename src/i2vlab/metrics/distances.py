"""Distribution distances on feature vectors: Fréchet distance and polynomial-kernel MMD.

Written here (not taken from a library) because every reference implementation differs in a way
that changes the number (see ``shared/specs/METRICS.md`` §1, §3): we compute in float64, take the
trace of the matrix square root from eigenvalues (no ``scipy.linalg.sqrtm(disp=...)``), and make
the covariance estimator (1/N or 1/(N-1)) an explicit option.
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _np64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def gaussian_stats(features: ArrayLike, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``features`` (n d) in float64.

    ``ddof=1`` is the unbiased 1/(N-1) estimator (pytorch-fid, tf-gan, torchmetrics, VideoGPT/TATS);
    ``ddof=0`` is 1/N (StyleGAN-V / StyleGAN2-ADA ``FeatureStats``).
    """
    x = _np64(features)
    if x.ndim != 2 or x.shape[0] <= ddof:
        raise ValueError(f"need a (n, d) feature matrix with n > {ddof}, got shape {x.shape}")
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - ddof)


def stats_from_sums(
    n: float, feat_sum: ArrayLike, outer_sum: ArrayLike, ddof: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance from streaming sums: ``n``, ``Σx`` (d) and ``Σxxᵀ`` (d d), float64."""
    n = float(n)
    if n <= ddof:
        raise ValueError(f"need more than {ddof} samples for a covariance, got {int(n)}")
    s, ss = _np64(feat_sum), _np64(outer_sum)
    mu = s / n
    cov = (ss - n * np.outer(mu, mu)) / (n - ddof)
    return mu, (cov + cov.T) / 2


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    FD = ||mu1 - mu2||² + tr Σ1 + tr Σ2 - 2 tr (Σ1 Σ2)^{1/2}. The last trace is the sum of the square
    roots of the eigenvalues of A Σ2 A with A = Σ1^{1/2} (symmetric PSD, so ``eigh``); eigenvalues
    below zero (round-off) are clipped to 0. Inputs may be numpy arrays or tensors.
    """
    mu1, mu2, s1, s2 = _np64(mu1), _np64(mu2), _np64(sigma1), _np64(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    a = _sqrt_psd(s1)
    m = a @ s2 @ a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return float(max(fd, 0.0))  # FD >= 0 exactly; clip round-off


def polynomial_kernel(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> np.ndarray:
    """k(x, y) = (gamma xᵀy + coef0)^degree, gamma = 1/dim by default (sklearn and KID defaults)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef0) ** degree


def polynomial_mmd(
    x: ArrayLike, y: ArrayLike, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> float:
    """Unbiased MMD² with a polynomial kernel between sample sets ``x`` (m d) and ``y`` (n d), float64.

    MMD²ᵤ = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m-1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(n(n-1)) - 2 Σ_{i,j} k(xᵢ,yⱼ)/(mn).

    This is the single-estimate KVD of TATS/LVDM (all samples at once, raw scale, no x1000).
    It can be negative; for ``x`` against itself it is <= 0.
    """
    x, y = _np64(x), _np64(y)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"polynomial_mmd needs at least 2 samples per set, got {m} and {n}")
    kxx = polynomial_kernel(x, x, degree, gamma, coef0)
    kyy = polynomial_kernel(y, y, degree, gamma, coef0)
    kxy = polynomial_kernel(x, y, degree, gamma, coef0)
    term_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(term_x + term_y - 2.0 * kxy.sum() / (m * n))


def polynomial_mmd_subsets(
    x: ArrayLike,
    y: ArrayLike,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float, int]:
    """KID-style estimate: mean and population std of :func:`polynomial_mmd` over ``num_subsets``
    random subsets drawn without replacement, of size ``m = min(subset_size, len(x), len(y))``
    (StyleGAN2-ADA / clean-fid convention; torchmetrics raises instead of shrinking ``m``).

    Returns ``(mean, std, m)``. Raw scale (multiply by 1000 yourself if a paper reports KIDx1000).
    """
    x, y = _np64(x), _np64(y)
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"need at least 2 samples per set for subset MMD, got {x.shape[0]} and {y.shape[0]}")
    rng = np.random.default_rng(seed)
    vals = np.empty(num_subsets)
    for i in range(num_subsets):
        xi = x[rng.choice(x.shape[0], m, replace=False)]
        yi = y[rng.choice(y.shape[0], m, replace=False)]
        vals[i] = polynomial_mmd(xi, yi, degree, gamma, coef0)
    return float(vals.mean()), float(vals.std()), m
