"""Distribution distances on feature vectors: Fréchet distance and polynomial-kernel MMD.

Written here (not taken from a library) because every reference implementation differs in a way
that changes the number (see ``shared/specs/METRICS.md`` §1, §3): by default we compute in float64,
take the trace of the matrix square root from eigenvalues (no ``scipy.linalg.sqrtm(disp=...)``), and
make the covariance estimator (1/N or 1/(N-1)) an explicit option.

Options that reproduce the reference conventions (verified against the reference code, see the
"Fidelity" section of ``docs/evaluation.md``):

- StyleGAN-V ``compute_fvd`` (FeatureStats 1/N in float64, ``scipy.linalg.sqrtm``):
  ``gaussian_stats(x, ddof=0)`` + ``frechet_distance`` (default ``method="eigh"``);
- VideoGPT / TATS ``tats/fvd/fvd.py frechet_distance`` (1/(N-1) covariance and tf-gan's SVD square
  roots, all in float32 torch): ``gaussian_stats(x, ddof=1, dtype="float32")`` +
  ``frechet_distance(..., method="tfgan_svd", dtype="float32")``;
- TATS ``polynomial_mmd`` (sklearn ``polynomial_kernel`` on the float32 logits it is given):
  ``polynomial_mmd(x, y, dtype="float32")``; on float64 features the float64 default;
- StyleGAN-V ``compute_kid`` (float32 features, subsets drawn with ``np.random.choice``, generated set
  first): ``polynomial_mmd_subsets(real, fake, sampling="stylegan", dtype="float32")`` (x 1000 on report).
"""

from __future__ import annotations

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _np64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_dtype(dtype: str) -> str:
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    return dtype


def gaussian_stats(features: ArrayLike, ddof: int = 1, dtype: str = "float64"):
    """Mean and covariance of ``features`` (n d).

    ``ddof=1`` is the unbiased 1/(N-1) estimator (pytorch-fid, tf-gan, torchmetrics, VideoGPT/TATS);
    ``ddof=0`` is 1/N (StyleGAN-V / StyleGAN2-ADA ``FeatureStats``).

    ``dtype="float64"`` (default): numpy float64 arrays. ``dtype="float32"``: float32 torch tensors,
    computed as VideoGPT/TATS's ``cov`` does (centre the (d, n) matrix, then ``Xc Xcᵀ / (n - ddof)``),
    to reproduce their float32 numbers.
    """
    if _check_dtype(dtype) == "float32":
        x = torch.as_tensor(features).detach().cpu().float()
        if x.ndim != 2 or x.shape[0] <= ddof:
            raise ValueError(f"need a (n, d) feature matrix with n > {ddof}, got shape {tuple(x.shape)}")
        xt = x.t()
        xc = xt - torch.mean(xt, dim=1, keepdim=True)
        return x.mean(dim=0), (1.0 / (x.shape[0] - ddof)) * xc.matmul(xc.t())
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


def _psd_eigvals_clean(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off removed: values below ``max · n · ε`` (the usual
    numerical-rank tolerance) set to 0. Without this, a rank-deficient covariance (N <= d, e.g. FVD of
    50 videos on 400-d logits) contributes ~d spurious √(1e-16·max) terms to tr √(Σ1Σ2)."""
    tol = max(float(w.max(initial=0.0)), 0.0) * w.shape[0] * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(_psd_eigvals_clean(w))) @ v.T


def _svd_sqrt(mat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """tf-gan ``_symmetric_matrix_square_root``: U diag(√s) Vᵀ, singular values below ``eps`` left
    unrooted."""
    u, s, v = torch.svd(mat)
    si = torch.where(s < eps, s, torch.sqrt(s))
    return torch.matmul(torch.matmul(u, torch.diag(si)), v.t())


def _frechet_tfgan_svd(mu1, s1, mu2, s2, dtype: str) -> float:
    """tf-gan ``trace_sqrt_product`` with SVD square roots (VideoGPT / TATS / LVDM), in ``dtype``;
    the result is not clipped at 0 (as upstream)."""
    tdt = torch.float32 if dtype == "float32" else torch.float64

    def t(a):
        return torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).detach().cpu().to(tdt)

    mu1, s1, mu2, s2 = t(mu1), t(s1), t(mu2), t(s2)
    a = _svd_sqrt(s1)
    tr_covmean = torch.trace(_svd_sqrt(torch.matmul(a, torch.matmul(s2, a))))
    trace = torch.trace(s1 + s2) - 2.0 * tr_covmean
    return float(trace + torch.sum((mu1 - mu2) ** 2))


def frechet_distance(
    mu1: ArrayLike,
    sigma1: ArrayLike,
    mu2: ArrayLike,
    sigma2: ArrayLike,
    method: str = "eigh",
    dtype: str = "float64",
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    FD = ||mu1 - mu2||² + tr Σ1 + tr Σ2 - 2 tr (Σ1 Σ2)^{1/2}.

    ``method="eigh"`` (default, float64 only): the last trace is the sum of the square roots of the
    eigenvalues of A Σ2 A with A = Σ1^{1/2} (symmetric PSD, so ``eigh``); eigenvalues below the
    numerical-rank tolerance (``max · d · ε``, round-off; negative ones included) are set to 0, so a
    rank-deficient covariance (N <= d) gives the exact value (tr √(Σ1Σ2) = nuclear norm of X1c X2cᵀ / N,
    to 1e-15 on 64 x 400 features, where ``scipy.linalg.sqrtm`` is off by 5e-8); the result is clipped
    at 0. ``method="tfgan_svd"``: tf-gan's
    ``trace_sqrt_product`` (A = Σ1^{1/2} and (A Σ2 A)^{1/2} by SVD, singular values < 1e-10 unrooted),
    as VideoGPT / TATS compute it, in ``dtype`` (``"float32"`` reproduces TATS's float32 numbers);
    not clipped. Inputs may be numpy arrays or tensors.
    """
    if method not in ("eigh", "tfgan_svd"):
        raise ValueError(f"frechet_distance method must be 'eigh' or 'tfgan_svd', got {method!r}")
    _check_dtype(dtype)
    if method == "tfgan_svd":
        shapes = [tuple(np.shape(v)) for v in (mu1, sigma1, mu2, sigma2)]
        if shapes[0] != shapes[2] or shapes[1] != shapes[3] or shapes[1] != (shapes[0][0], shapes[0][0]):
            raise ValueError(
                f"shape mismatch: mu {shapes[0]} vs {shapes[2]}, sigma {shapes[1]} vs {shapes[3]}"
            )
        return _frechet_tfgan_svd(mu1, sigma1, mu2, sigma2, dtype)
    if dtype != "float64":
        raise ValueError("frechet_distance(method='eigh') computes in float64 only")
    mu1, mu2, s1, s2 = _np64(mu1), _np64(mu2), _np64(sigma1), _np64(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    a = _sqrt_psd(s1)
    m = a @ s2 @ a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(_psd_eigvals_clean(eig)).sum()
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean
    return float(max(fd, 0.0))  # FD >= 0 exactly; clip round-off


def frechet_distance_from_features(x: ArrayLike, y: ArrayLike, ddof: int = 1) -> float:
    """Fréchet distance of the Gaussians fitted to ``x`` (n1 d) and ``y`` (n2 d), computed in sample space.

    With centred samples Xc, Yc and n' = n - ddof: Σx = XcᵀXc / nx', so tr Σx = ||Xc||²_F / nx' and
    tr √(Σx Σy) = ||Xc Ycᵀ||_* / √(nx' ny') (the nonzero eigenvalues of Σx Σy are the squared singular
    values of Xc Ycᵀ / √(nx' ny')). One n1 x n2 SVD replaces the d x d eigendecompositions: exact (no
    round-off eigenvalues to clean) and much cheaper when n < d (e.g. FID over 64 videos x 16 frames on
    2048-d features). float64; clipped at 0. Equals :func:`frechet_distance` of :func:`gaussian_stats`.
    """
    x, y = _np64(x), _np64(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need (n, d) feature matrices of one d, got {x.shape} and {y.shape}")
    nx, ny = x.shape[0] - ddof, y.shape[0] - ddof
    if nx <= 0 or ny <= 0:
        raise ValueError(f"need more than {ddof} samples per set, got {x.shape[0]} and {y.shape[0]}")
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    nuclear = np.linalg.svd(xc @ yc.T, compute_uv=False).sum()
    diff = mx - my
    fd = diff @ diff + (xc * xc).sum() / nx + (yc * yc).sum() / ny - 2.0 * nuclear / np.sqrt(nx * ny)
    return float(max(fd, 0.0))


def polynomial_kernel(
    x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None, coef0: float = 1.0
) -> np.ndarray:
    """k(x, y) = (gamma xᵀy + coef0)^degree, gamma = 1/dim by default (sklearn and KID defaults)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef0) ** degree


def _np32(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _polynomial_kernel32(x: np.ndarray, y: np.ndarray, degree, gamma, coef0) -> np.ndarray:
    """sklearn ``polynomial_kernel`` in the input's float32: K = X Yᵀ; K *= γ; K += c; K **= d."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k = x @ y.T
    k *= gamma
    k += coef0
    k **= degree
    return k


def polynomial_mmd(
    x: ArrayLike,
    y: ArrayLike,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    dtype: str = "float64",
) -> float:
    """Unbiased MMD² with a polynomial kernel between sample sets ``x`` (m d) and ``y`` (n d).

    MMD²ᵤ = Σ_{i≠j} k(xᵢ,xⱼ)/(m(m-1)) + Σ_{i≠j} k(yᵢ,yⱼ)/(n(n-1)) - 2 Σ_{i,j} k(xᵢ,yⱼ)/(mn).

    This is the single-estimate KVD of TATS/LVDM (all samples at once, raw scale, no x1000).
    It can be negative; for ``x`` against itself it is <= 0. ``dtype="float32"`` computes the kernels
    and sums in float32 as TATS's ``polynomial_mmd`` does on the float32 logits it is given (sklearn
    keeps float32); the default is float64.
    """
    if _check_dtype(dtype) == "float32":
        x, y = _np32(x), _np32(y)
    else:
        x, y = _np64(x), _np64(y)
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"polynomial_mmd needs at least 2 samples per set, got {m} and {n}")
    if dtype == "float32":
        kxx = _polynomial_kernel32(x, x, degree, gamma, coef0)
        kyy = _polynomial_kernel32(y, y, degree, gamma, coef0)
        kxy = _polynomial_kernel32(x, y, degree, gamma, coef0)
        sxx = (kxx.sum() - np.diagonal(kxx).sum()) / (m * (m - 1))
        syy = (kyy.sum() - np.diagonal(kyy).sum()) / (n * (n - 1))
        return float(sxx + syy - 2 * (kxy.sum() / (m * n)))
    kxx = polynomial_kernel(x, x, degree, gamma, coef0)
    kyy = polynomial_kernel(y, y, degree, gamma, coef0)
    kxy = polynomial_kernel(x, y, degree, gamma, coef0)
    term_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    term_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(term_x + term_y - 2.0 * kxy.sum() / (m * n))


def _kid_subset32(gen: np.ndarray, real: np.ndarray, degree, gamma, coef0) -> np.float32:
    """One StyleGAN2-ADA / StyleGAN-V ``compute_kid`` subset term in float32, in their order:
    [Σ_offdiag (k(g,g) + k(r,r))] / (m-1) - 2 Σ k(g,r) / m (the caller divides by m)."""
    m, d = gen.shape

    def k(u, v):
        return (u @ v.T / d + coef0) ** degree if gamma is None else (u @ v.T * gamma + coef0) ** degree

    a = k(gen, gen) + k(real, real)
    b = k(gen, real)
    return (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m


def polynomial_mmd_subsets(
    x: ArrayLike,
    y: ArrayLike,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
    sampling: str = "generator",
    dtype: str = "float64",
) -> tuple[float, float, int]:
    """KID-style estimate: mean and population std of :func:`polynomial_mmd` over ``num_subsets``
    random subsets drawn without replacement, of size ``m = min(subset_size, len(x), len(y))``
    (StyleGAN2-ADA / clean-fid convention; torchmetrics raises instead of shrinking ``m``).
    ``x`` is the real set, ``y`` the generated one.

    ``sampling``: ``"generator"`` (default: ``np.random.default_rng(seed)``, x's subset then y's) or
    ``"stylegan"`` (StyleGAN2-ADA / StyleGAN-V ``compute_kid``: ``np.random.RandomState(seed).choice``,
    the generated set's subset first; equal to their code after ``np.random.seed(seed)``).
    ``dtype="float32"`` with ``sampling="stylegan"`` sums each subset in float32 in their order (their
    features are float32), reproducing ``compute_kid``'s number (÷ 1000); otherwise float64.

    Returns ``(mean, std, m)``. Raw scale (multiply by 1000 yourself if a paper reports KIDx1000).
    """
    if sampling not in ("generator", "stylegan"):
        raise ValueError(f"sampling must be 'generator' or 'stylegan', got {sampling!r}")
    if _check_dtype(dtype) == "float32" and sampling != "stylegan":
        raise ValueError(
            "polynomial_mmd_subsets(dtype='float32') reproduces StyleGAN-V: use sampling='stylegan'"
        )
    x, y = (_np32(x), _np32(y)) if dtype == "float32" else (_np64(x), _np64(y))
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2:
        raise ValueError(f"need at least 2 samples per set for subset MMD, got {x.shape[0]} and {y.shape[0]}")
    vals = np.empty(num_subsets)
    if sampling == "stylegan":
        rs = np.random.RandomState(seed)
        total = 0  # float32 running sum in float32 mode, as compute_kid's ``t``
        for i in range(num_subsets):
            yi = y[rs.choice(y.shape[0], m, replace=False)]
            xi = x[rs.choice(x.shape[0], m, replace=False)]
            if dtype == "float32":
                term = _kid_subset32(yi, xi, degree, gamma, coef0)
                total += term
                vals[i] = term / m
            else:
                vals[i] = polynomial_mmd(xi, yi, degree, gamma, coef0)
        mean = float(total / num_subsets / m) if dtype == "float32" else float(vals.mean())
        return mean, float(vals.std()), m
    rng = np.random.default_rng(seed)
    for i in range(num_subsets):
        xi = x[rng.choice(x.shape[0], m, replace=False)]
        yi = y[rng.choice(y.shape[0], m, replace=False)]
        vals[i] = polynomial_mmd(xi, yi, degree, gamma, coef0)
    return float(vals.mean()), float(vals.std()), m
