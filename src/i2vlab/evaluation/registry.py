"""The metric registry: one :class:`MetricSpec` per metric. Adding a metric is one entry here (plus a
:class:`~i2vlab.evaluation.features.Feature` if it needs an extractor no other metric uses).

A spec names the feature it reads (extractor, cache signature and feature function live there), builds
its torchmetrics metric from the config, updates it from one video's cached features, formats its
result, and may say why it cannot be computed with the given config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import i2vlab.metrics as M
from i2vlab.metrics import functional as Fm

from .cache import read_note

FVD_VARIANTS = {"styleganv": 0, "videogpt": 1}  # covariance ddof
DOVER_NOT_CONFIGURED = (
    "DoverVQA is not computed: eval.extractors.dover.weights_path is not set (DOVER.pth from "
    "https://github.com/QualityAssessment/DOVER/releases/download/v0.1.0/DOVER.pth)"
)


@dataclass
class Update:
    """What one video contributed: its per-frame values (the row's mean, the curve), other row columns,
    or the reason the metric was not computed for it."""

    curve: torch.Tensor | None = None
    row: dict | None = None
    note: str | None = None


@dataclass(frozen=True)
class MetricSpec:
    name: str
    label: str
    feature: str
    build: Callable[[dict], object]  # cfg -> torchmetrics Metric
    update: Callable  # (metric, features: dict, cfg, role) -> Update
    set_metric: bool = False  # compares the generated set with the real set (fed by both roles)
    result: Callable | None = None  # (metric, value, cfg) -> dict; default {"value", "n"}
    unavailable: Callable[[dict], str | None] = lambda cfg: None
    curve_x0: int = 0  # first frame index of the per-frame curve (1: frame pairs)
    plot: str | None = None  # plot file the curve goes to


def per_video(values: Callable[[dict, dict], torch.Tensor | str]):
    """An update from a per-frame function ``(features, cfg) -> tensor`` (or a reason string): the
    metric gets the video's mean, the row and the curve its values."""

    def update(metric, feats, cfg, role):
        n = read_note(feats)
        v = n[0] if n else values(feats, cfg)
        if isinstance(v, str):
            return Update(note=v)
        v = v.double()
        metric.update(values=v.mean()[None])
        return Update(curve=v, row={"value": float(v.mean())})

    return update


def set_features(field: str):
    def update(metric, feats, cfg, role):
        metric.update(real=role == "real", features=feats[field])
        return Update()

    return update


def _fvd_ddof(cfg) -> int:
    ddof = cfg["fvd"]["ddof"]
    return int(ddof) if ddof is not None else FVD_VARIANTS[cfg["fvd"]["variant"]]


def _fd_result(metric, value, cfg) -> dict:
    sample = metric.sample_space()
    return {"value": float(value), "n_real": int(metric.real_n), "n_fake": int(metric.fake_n),
            "covariance": f"1/(N-{metric.ddof})" if metric.ddof else "1/N",
            "trace": "sample space (SVD of Xr Xgᵀ)" if sample else "eigh of Σr^½ Σg Σr^½"}  # fmt: skip


def _fvd_result(metric, value, cfg):
    return {**_fd_result(metric, value, cfg), "variant": cfg["fvd"]["variant"], "extractor": "i3d"}


def _fid_result(metric, value, cfg):
    return {**_fd_result(metric, value, cfg), "unit": "frames (videos x frames, one Gaussian)"}


def _kvd_result(metric, v, cfg):
    scale = float(cfg["kvd"]["scale"])
    n = {s: int(torch.cat(f).shape[0]) if isinstance(f, list) else int(f.shape[0])
         for s, f in (("n_real", metric.real_features), ("n_fake", metric.fake_features))}  # fmt: skip
    return {"value": v["single"] * scale, "single": v["single"] * scale, "subset_mean": v["subset_mean"] * scale,
            "subset_std": v["subset_std"] * scale, "subset_size": v["subset_size"],
            "num_subsets": metric.num_subsets, "scale": scale, **n}  # fmt: skip


def _clip_text(f, cfg):
    if "text" not in f:
        return "no_prompt"
    return Fm.cosine(f["text"][None], f.get("text_frames", f["frames"])) * float(cfg["clip_text"]["scale"])


def _dover_update(metric, feats, cfg, role):
    raw = feats["raw"][None].double()  # [aesthetic, technical]
    metric.update(values=raw)
    return Update(row=metric.per_video_scores(raw)[0])


def _dover_unavailable(cfg):
    d = cfg["extractors"]["dover"]
    return DOVER_NOT_CONFIGURED if d.get("weights_path") in (None, "") and not d.get("tiny") else None


def _paired(field):
    return per_video(lambda f, cfg: f[field])


_CONSISTENCY = "per_frame_consistency.png"
_FLOW = "flow_over_time.png"
_PAIRED = "paired_per_frame.png"

METRICS: dict[str, MetricSpec] = {s.name: s for s in (
    MetricSpec("fvd", "FVD↓", "i3d", lambda c: M.FrechetVideoDistance(ddof=_fvd_ddof(c)),
               set_features("logits"), set_metric=True, result=_fvd_result),
    MetricSpec("kvd", "KVD↓", "i3d",
               lambda c: M.KernelVideoDistance(num_subsets=c["kvd"]["num_subsets"],
                                               subset_size=c["kvd"]["subset_size"], seed=c["kvd"]["seed"]),
               set_features("logits"), set_metric=True, result=_kvd_result),
    MetricSpec("fid", "FID↓", "inception", lambda c: M.FrechetInceptionDistanceFrames(ddof=int(c["fid"]["ddof"])),
               set_features("pool3"), set_metric=True, result=_fid_result),
    MetricSpec("pic", "PIC↑", "dreamsim", lambda c: M.PerceptualInputConformity(),
               per_video(lambda f, c: Fm.pic_per_frame(f["image"], f["frames"])), plot=_CONSISTENCY),
    MetricSpec("clip_temp", "CLIPTemp↑", "clip", lambda c: M.CLIPTemporalConsistency(),
               per_video(lambda f, c: Fm.clip_adjacent(f["frames"])), curve_x0=1, plot=_CONSISTENCY),
    MetricSpec("clip_first_frame", "CLIP first-frame↑", "clip", lambda c: M.CLIPFirstFrameConsistency(),
               per_video(lambda f, c: Fm.clip_first_frame(f["frames"])), curve_x0=1, plot=_CONSISTENCY),
    MetricSpec("clip_image", "CLIP image-frame↑", "clip", lambda c: M.CLIPImageFrameSimilarity(),
               per_video(lambda f, c: Fm.clip_image_frames(f["image"], f["frames"])), plot=_CONSISTENCY),
    MetricSpec("clip_text", "CLIP-SIM↑", "clip", lambda c: M.CLIPTextSimilarity(scale=c["clip_text"]["scale"]),
               per_video(_clip_text), plot=_CONSISTENCY),
    MetricSpec("flow_score", "FlowScore↑", "flow",
               lambda c: M.FlowScore(evalcrafter_compat=c["flow_score"]["evalcrafter_compat"]),
               per_video(lambda f, c: f["flow"]), curve_x0=1, plot=_FLOW),
    MetricSpec("warping_error", "WarpingError↓", "flow",
               lambda c: M.WarpingError(downsample=c["warping_error"]["downsample"],
                                        evalcrafter_compat=c["warping_error"]["evalcrafter_compat"]),
               per_video(lambda f, c: f["warp"]), curve_x0=1, plot=_FLOW),
    MetricSpec("lpips", "LPIPS↓", "paired", lambda c: M.VideoLPIPS(), _paired("lpips"), plot=_PAIRED),
    MetricSpec("psnr", "PSNR↑", "paired", lambda c: M.VideoPSNR(), _paired("psnr")),
    MetricSpec("ssim", "SSIM↑", "paired", lambda c: M.VideoSSIM(), _paired("ssim"), plot=_PAIRED),
    MetricSpec("dover", "DoverVQA↑", "dover",
               lambda c: M.DOVERScores(score=c["dover"]["score"], rescale=c["dover"]["rescale"]),
               _dover_update, result=lambda m, v, c: {**v, "n": int(m.count)}, unavailable=_dover_unavailable),
)}  # fmt: skip

LABELS = {name: spec.label for name, spec in METRICS.items()}
