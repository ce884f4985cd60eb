"""torchmetrics ``Metric`` classes: state is summed (or concatenated) across processes by
torchmetrics, so a DDP evaluation reduces to the same numbers as one process.

This module holds the distribution metrics (FVD, FID, KVD / KID); the per-video ones are in
:mod:`.per_video`. Each metric can own its extractor (``update(videos, ...)``
extracts) or take precomputed ``features=`` / ``values=`` (what the evaluator does, so features can be
cached per video).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from .distances import (
    frechet_distance,
    frechet_distance_from_features,
    polynomial_mmd,
    polynomial_mmd_subsets,
    stats_from_sums,
)


class FrechetDistance(Metric):
    """Streaming Fréchet distance between the real and generated feature Gaussians.

    Rows go to a buffer of ``sample_space_max`` rows per set (default: the feature dimension d, so it is
    no larger than Σxxᵀ); when it would overflow it is folded into float64 sums N, Σx, Σxxᵀ (one large
    matrix product per d rows: memory constant in the number of videos) and refilled. While no set was
    folded (N <= d), ``compute`` works in sample space (:func:`frechet_distance_from_features`: one
    n1 x n2 SVD, exact, much faster than the d x d eigendecompositions); otherwise from the sums
    (:func:`frechet_distance`). Fold points depend only on the order of the rows, so results are
    reproducible bit for bit for a given update order (and number of processes).
    ``ddof``: 0 = 1/N covariance (StyleGAN-V), 1 = 1/(N-1) (pytorch-fid, torchmetrics, VideoGPT).
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(
        self, num_features: int, extractor=None, ddof: int = 1, sample_space_max: int | None = None, **kwargs
    ):
        super().__init__(**kwargs)
        self.extractor, self.ddof, self.num_features = extractor, int(ddof), int(num_features)
        d = self.num_features
        self.sample_space_max = d if sample_space_max is None else int(sample_space_max)
        f64 = torch.float64
        for s in ("real", "fake"):
            self.add_state(f"{s}_n", torch.zeros((), dtype=f64), dist_reduce_fx="sum")  # all rows
            self.add_state(f"{s}_sum", torch.zeros(d, dtype=f64), dist_reduce_fx="sum")  # folded rows
            self.add_state(f"{s}_outer", torch.zeros(d, d, dtype=f64), dist_reduce_fx="sum")
            self.add_state(f"{s}_folds", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
            # per process: rows[:held] are its rows not folded yet
            self.add_state(
                f"{s}_rows", torch.zeros(max(self.sample_space_max, 1), d, dtype=f64), dist_reduce_fx="cat"
            )
            self.add_state(f"{s}_held", torch.zeros(1, dtype=f64), dist_reduce_fx="cat")

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        if self.extractor is None:
            raise ValueError(f"{type(self).__name__} has no extractor: pass features=")
        return self.extractor(x)

    def _fold(self, s: str, f: torch.Tensor) -> None:
        setattr(self, f"{s}_sum", getattr(self, f"{s}_sum") + f.sum(0))
        setattr(self, f"{s}_outer", getattr(self, f"{s}_outer") + f.T @ f)
        setattr(self, f"{s}_folds", getattr(self, f"{s}_folds") + 1)

    def update(
        self, x: torch.Tensor | None = None, *, real: bool, features: torch.Tensor | None = None
    ) -> None:
        f = self._features(x) if features is None else features
        f = f.reshape(-1, f.shape[-1]).double().to(self.real_sum.device)
        if f.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features}-d features, got {f.shape[1]}")
        s = "real" if real else "fake"
        setattr(self, f"{s}_n", getattr(self, f"{s}_n") + f.shape[0])
        rows, held, cap = getattr(self, f"{s}_rows"), getattr(self, f"{s}_held"), self.sample_space_max
        if cap == 0:
            self._fold(s, f)
            return
        while f.shape[0]:
            h = int(held[0])
            if h == cap:  # full and more rows come: fold the buffer, start it again
                self._fold(s, rows)
                h = 0
            k = min(cap - h, f.shape[0])
            rows[h : h + k] = f[:k]
            held[0], f = h + k, f[k:]

    def _buffered(self, s: str) -> torch.Tensor:
        """Every process's unfolded rows of set ``s`` (after torchmetrics' sync)."""
        held, rows = getattr(self, f"{s}_held").reshape(-1), getattr(self, f"{s}_rows")
        per = rows.reshape(held.numel(), -1, rows.shape[-1])
        return torch.cat([r[: int(h)] for r, h in zip(per, held)])

    def sample_space(self) -> bool:
        """True when no set was folded into sums: the distance is computed from the rows."""
        return bool(self.real_folds == 0 and self.fake_folds == 0)

    def compute(self) -> torch.Tensor:
        for s in ("real", "fake"):
            if getattr(self, f"{s}_n") <= self.ddof + 1:
                raise ValueError(
                    f"{type(self).__name__}: need at least {self.ddof + 2} {s} samples, got {int(getattr(self, f'{s}_n'))}"
                )
        xr, xf = self._buffered("real"), self._buffered("fake")
        if self.sample_space():
            return torch.tensor(frechet_distance_from_features(xr, xf, self.ddof), dtype=torch.float64)
        stats = [
            stats_from_sums(getattr(self, f"{s}_n"), getattr(self, f"{s}_sum") + x.sum(0),
                            getattr(self, f"{s}_outer") + x.T @ x, self.ddof)
            for s, x in (("real", xr), ("fake", xf))
        ]  # fmt: skip
        return torch.tensor(frechet_distance(*stats[0], *stats[1]), dtype=torch.float64)


class FrechetVideoDistance(FrechetDistance):
    """FVD on I3D logits (400-d). ``update(videos b f c h w in [-1, 1], real=...)``."""

    def __init__(self, extractor=None, num_features: int = 400, ddof: int = 0, **kwargs):
        super().__init__(num_features, extractor=extractor, ddof=ddof, **kwargs)


class FrechetInceptionDistanceFrames(FrechetDistance):
    """FID over all frames of the videos (one Gaussian over b*f frames; 2048-d pool3)."""

    def __init__(self, extractor=None, num_features: int = 2048, ddof: int = 1, **kwargs):
        super().__init__(num_features, extractor=extractor, ddof=ddof, **kwargs)

    def _features(self, x):
        return super()._features(x.flatten(0, 1))


class KernelDistance(Metric):
    """Polynomial-kernel MMD² (KVD / KID) on features kept per sample (``cat`` state).

    ``compute()`` -> dict: ``single`` = one unbiased estimate on all samples (TATS/LVDM KVD, raw
    scale), ``subset_mean`` / ``subset_std`` = KID-style (``num_subsets`` x ``subset_size`` without
    replacement, StyleGAN2-ADA convention), and ``subset_size`` used. Multiply by ``scale`` on report.
    """

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(
        self,
        extractor=None,
        num_subsets: int = 100,
        subset_size: int = 1000,
        degree: int = 3,
        gamma: float | None = None,
        coef0: float = 1.0,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.extractor = extractor
        self.num_subsets, self.subset_size, self.seed = int(num_subsets), int(subset_size), int(seed)
        self.degree, self.gamma, self.coef0 = int(degree), gamma, float(coef0)
        self.add_state("real_features", [], dist_reduce_fx="cat")
        self.add_state("fake_features", [], dist_reduce_fx="cat")

    def update(
        self, x: torch.Tensor | None = None, *, real: bool, features: torch.Tensor | None = None
    ) -> None:
        if features is None:
            if self.extractor is None:
                raise ValueError(f"{type(self).__name__} has no extractor: pass features=")
            features = self.extractor(x)
        f = features.reshape(-1, features.shape[-1]).double()
        (self.real_features if real else self.fake_features).append(f)

    def compute(self) -> dict[str, float]:
        def cat(v):
            return torch.cat(v) if isinstance(v, list) else v

        x, y = cat(self.real_features), cat(self.fake_features)
        kw = {"degree": self.degree, "gamma": self.gamma, "coef0": self.coef0}
        single = polynomial_mmd(x, y, **kw)
        mean, std, m = polynomial_mmd_subsets(x, y, self.num_subsets, self.subset_size, seed=self.seed, **kw)
        return {"single": single, "subset_mean": mean, "subset_std": std, "subset_size": m}


class KernelVideoDistance(KernelDistance):
    """KVD on I3D logits."""
