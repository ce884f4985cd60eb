"""Per-video torchmetrics ``Metric`` classes: the mean over videos of a per-video value (PIC, CLIP
consistency and similarity, FlowScore, warping error, LPIPS / PSNR / SSIM) and DOVER's scores. States are
sums, reduced across processes by torchmetrics. Each can own its extractor (``update(videos, ...)``) or
take precomputed ``values=`` (what the evaluator does, from its cached features).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from . import functional as Fm


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
