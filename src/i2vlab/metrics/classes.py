"""torchmetrics ``Metric`` classes: state is summed (or concatenated) across processes by
torchmetrics, so a DDP evaluation reduces to the same numbers as one process.

Each metric can own its extractor (``update(videos, ...)`` extracts) or take precomputed
``features=`` / ``values=`` (what the evaluator does, so features can be cached per video).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from . import functional as Fm
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


class PerVideoMean(Metric):
    """Mean over videos of a per-video value (itself a mean over frames or frame pairs)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, extractor=None, **kwargs):
        super().__init__(**kwargs)
        self.extractor = extractor
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def per_video(self, *args, **kwargs) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def update(self, *args, values: torch.Tensor | None = None, **kwargs) -> None:
        v = self.per_video(*args, **kwargs) if values is None else values
        v = torch.as_tensor(v, dtype=torch.float64).flatten().to(self.total.device)
        self.total = self.total + v.sum()
        self.count = self.count + v.numel()

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError(f"{type(self).__name__}: no videos were scored")
        return self.total / self.count


class PerceptualInputConformity(PerVideoMean):
    """PIC = mean over frames of 1 - DreamSim(input image, frame). ``update(images b c h w, videos b f c h w)``."""

    def per_video(self, images, videos):
        out = []
        for img, vid in zip(images, videos):
            e = self.extractor.embed(torch.cat([img[None], vid]))
            out.append(Fm.pic_per_frame(e[0], e[1:]).mean())
        return torch.stack(out)


class _CLIPVideoMean(PerVideoMean):
    def _embed(self, vid):
        return self.extractor.embed_images(vid)


class CLIPTemporalConsistency(_CLIPVideoMean):
    """CLIPTemp (EvalCrafter): mean cos of CLIP embeddings of adjacent frames. ``update(videos)``."""

    def per_video(self, videos):
        return torch.stack([Fm.clip_adjacent(self._embed(v)).mean() for v in videos])


class CLIPFirstFrameConsistency(_CLIPVideoMean):
    """mean_{t>=1} cos(E(f_0), E(f_t)) (EvalCrafter first-frame / face consistency)."""

    def per_video(self, videos):
        return torch.stack([Fm.clip_first_frame(self._embed(v)).mean() for v in videos])


class CLIPImageFrameSimilarity(_CLIPVideoMean):
    """mean_t cos(E(input image), E(f_t)) (I2V-Adapter's CLIPTemp wording)."""

    def per_video(self, images, videos):
        out = []
        for img, vid in zip(images, videos):
            e = self._embed(torch.cat([img[None], vid]))
            out.append(Fm.clip_image_frames(e[0], e[1:]).mean())
        return torch.stack(out)


class CLIPTextSimilarity(_CLIPVideoMean):
    """CLIP-SIM: mean_t cos(E_img(f_t), E_txt(prompt)) x ``scale`` (1 = EvalCrafter, 100 = torchmetrics)."""

    def __init__(self, extractor=None, scale: float = 1.0, **kwargs):
        super().__init__(extractor, **kwargs)
        self.scale = float(scale)

    def per_video(self, prompts, videos):
        t = self.extractor.embed_text(list(prompts))
        return torch.stack(
            [
                Fm.cosine(t[i][None], self.extractor.embed_images(v, for_text=True)).mean() * self.scale
                for i, v in enumerate(videos)
            ]
        )


def _compat_flags(name: str, flags: dict | None, defaults: dict) -> dict:
    """``eval.<name>.evalcrafter_compat`` merged over ``defaults``; unknown keys fail early."""
    flags = dict(flags or {})
    unknown = sorted(set(flags) - set(defaults))
    if unknown:
        raise ValueError(f"eval.{name}.evalcrafter_compat: unknown {unknown}; known {sorted(defaults)}")
    return {k: bool(flags.get(k, v)) for k, v in defaults.items()}


class FlowScore(PerVideoMean):
    """EvalCrafter FlowScore: mean over adjacent pairs of the mean flow magnitude (native pixels).

    ``evalcrafter_compat``: ``{"pad_no_crop": bool}`` (see :func:`functional.flow_magnitudes`)."""

    def __init__(self, extractor=None, evalcrafter_compat: dict | None = None, **kwargs):
        super().__init__(extractor, **kwargs)
        self.compat = _compat_flags("flow_score", evalcrafter_compat, {"pad_no_crop": False})

    def per_video(self, videos):
        return torch.stack([Fm.flow_magnitudes(v, self.extractor, **self.compat).mean() for v in videos])


class WarpingError(PerVideoMean):
    """EvalCrafter warping error (lower is better), frames in [0, 1] at ``downsample`` resolution.

    ``evalcrafter_compat``: ``{"pad_no_crop": bool, "double_rescale": bool}`` (see
    :func:`functional.warping_errors`)."""

    higher_is_better = False

    def __init__(
        self, extractor=None, downsample: float = 0.5, evalcrafter_compat: dict | None = None, **kwargs
    ):
        super().__init__(extractor, **kwargs)
        self.downsample = float(downsample)
        self.compat = _compat_flags(
            "warping_error", evalcrafter_compat, {"pad_no_crop": False, "double_rescale": False}
        )

    def per_video(self, videos):
        return torch.stack(
            [Fm.warping_errors(v, self.extractor, self.downsample, **self.compat).mean() for v in videos]
        )


class VideoLPIPS(PerVideoMean):
    higher_is_better = False

    def per_video(self, preds, targets):
        return torch.stack([self.extractor(p, t).double().mean().cpu() for p, t in zip(preds, targets)])


class VideoPSNR(PerVideoMean):
    def per_video(self, preds, targets):
        return torch.stack([Fm.psnr_per_frame(p, t).mean() for p, t in zip(preds, targets)])


class VideoSSIM(PerVideoMean):
    def per_video(self, preds, targets):
        return torch.stack([Fm.ssim_per_frame(p, t).mean() for p, t in zip(preds, targets)])


class DOVERScores(Metric):
    """DOVER video quality (I2V-Adapter's DoverVQA, EvalCrafter's DOVER metric).

    ``update(videos)`` (with an extractor) or ``update(values=(n, 2) raw [aesthetic, technical])``.
    State: sums over videos of the raw scores and of the per-video rescaled 0-100 scores (EvalCrafter
    averages the per-video sigmoid scores). ``compute()`` -> dict: ``value`` (the score picked by
    ``score``, default ``technical_raw`` = ``dover_vqa``), ``technical_raw``, ``aesthetic_raw``,
    ``dover_technical``, ``dover_aesthetic``, ``dover_overall`` (``rescale`` constants, see
    :data:`i2vlab.metrics.extractors.dover.RESCALE`).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True
    FIELDS = ("technical_raw", "aesthetic_raw", "dover_technical", "dover_aesthetic", "dover_overall")
    SCORES = {"technical_raw": "technical_raw", "aesthetic_raw": "aesthetic_raw", "technical": "dover_technical",
              "aesthetic": "dover_aesthetic", "overall": "dover_overall"}  # fmt: skip

    def __init__(self, extractor=None, score: str = "technical_raw", rescale: str = "evalcrafter", **kwargs):
        super().__init__(**kwargs)
        from .extractors.dover import RESCALE

        if score not in self.SCORES:
            raise ValueError(f"eval.dover.score must be one of {sorted(self.SCORES)}, got {score!r}")
        if rescale not in RESCALE:
            raise ValueError(f"eval.dover.rescale must be one of {sorted(RESCALE)}, got {rescale!r}")
        self.extractor, self.score, self.rescale = extractor, score, rescale
        self.add_state("totals", torch.zeros(len(self.FIELDS), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _table(self, raw: torch.Tensor) -> torch.Tensor:
        """(n, 2) raw [aesthetic, technical] -> (n, 5) in ``FIELDS`` order."""
        from .extractors.dover import rescale_scores

        raw = torch.as_tensor(raw, dtype=torch.float64).reshape(-1, 2)
        r = rescale_scores(raw[:, 0], raw[:, 1], self.rescale)
        return torch.stack([raw[:, 1], raw[:, 0], r["technical"], r["aesthetic"], r["overall"]], 1)

    def per_video_scores(self, raw: torch.Tensor) -> list[dict]:
        """Per-video row entries: ``dover`` (the picked score) and the five fields."""
        out = []
        for row in self._table(raw):
            d = {f: float(v) for f, v in zip(self.FIELDS, row)}
            out.append({"dover": d[self.SCORES[self.score]], **{f"dover_{k}" if not k.startswith("dover") else k: v
                                                                  for k, v in d.items()}})  # fmt: skip
        return out

    def update(self, videos: torch.Tensor | None = None, *, values: torch.Tensor | None = None) -> None:
        if values is None:
            if self.extractor is None:
                raise ValueError("DOVERScores has no extractor: pass values=")
            values = self.extractor(videos)
        t = self._table(values).to(self.totals.device)
        self.totals = self.totals + t.sum(0)
        self.count = self.count + t.shape[0]

    def compute(self) -> dict:
        from .extractors.dover import FUSION_WEIGHTS, RESCALE

        if self.count == 0:
            raise ValueError("DOVERScores: no videos were scored")
        means = {f: float(v) for f, v in zip(self.FIELDS, self.totals / self.count)}
        return {
            "value": means[self.SCORES[self.score]],
            "score": self.score,
            "dover_vqa": means["technical_raw"],
            **means,
            "rescale": self.rescale,
            "rescale_constants": dict(RESCALE[self.rescale]),
            "fusion_weights": {"technical": FUSION_WEIGHTS[0], "aesthetic": FUSION_WEIGHTS[1]},
        }
