"""DOVER (Wu et al., ICCV 2023) video quality: aesthetic and technical scores, for I2V-Adapter's
DoverVQA (EvalCrafter's DOVER metric).

Written from the reference code (``VQAssessment/DOVER``: ``dover/models/evaluator.py``,
``conv_backbone.py``, ``swin_backbone.py``, ``head.py``, ``dover/datasets/dover_datasets.py``,
``dover.yml`` data ``val-l1080p`` and model args) and EvalCrafter's copy
(``evalcrafter/EvalCrafter metrics/DOVER/evaluate_a_set_of_videos.py``):

- technical branch: Video Swin-T with gated relative position biases (``swin_tiny_grpb``: patch
  (2,4,4), embed 96, depths (2,2,6,2), heads (3,6,12,24), window (8,7,7), fragment bias tables in
  stages 1-3) on 7x7 fragments of 32 px (224x224), 32 frames at interval 2, 3 clips;
- aesthetic branch: ConvNeXt-T inflated to 3D (stem (2,4,4), depthwise (k,7,7) with k = 1,3,1,...)
  on 224x224 resized frames, 32 frames from 32 temporal segments;
- heads: ``VQAHead`` (1x1x1 conv 768->64, GELU, 1x1x1 conv 64->1) on the un-pooled feature map;
  the raw score of a branch is the mean of the map over clips and positions.

This module holds the views, the score rescaling and the extractor; the network (official module and
parameter names, so ``DOVER.pth`` loads strictly) is in :mod:`i2vlab.metrics.extractors.dover_net`.

Input: videos ``b f c h w`` in [-1, 1] (the evaluator's clip is DOVER's "whole video"); output
``b 2`` raw scores ``[aesthetic, technical]`` (EvalCrafter's ``results[0]``, ``results[1]``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .base import Extractor, load_state_dict_file, register_extractor, seeded_init
from .dover_net import DOVERNet, map_official_keys

__all__ = ["DOVERNet", "DOVERExtractor", "RESCALE", "FUSION_WEIGHTS", "frame_indices", "rescale_scores",
           "resized_view", "spatial_fragments", "map_official_keys"]  # fmt: skip

DOVER_PUBLISHED = (
    "https://github.com/QualityAssessment/DOVER/releases/download/v0.1.0/DOVER.pth "
    "(the file EvalCrafter's checkpoints/download.sh fetches)"
)
DOVER_MEAN = (123.675, 116.28, 103.53)
DOVER_STD = (58.395, 57.12, 57.375)

# Score rescaling: t' = (t - t_mean) / t_std, a' = (a - a_mean) / a_std; technical = 100 sigma(t'),
# aesthetic = 100 sigma(a'), overall = 100 sigma(0.6104 t' + 0.3896 a').
RESCALE = {
    # EvalCrafter metrics/DOVER/evaluate_a_set_of_videos.py fuse_results ("mean and std from generated
    # videos' (prompt700-release) results"): t' = (t + 0.0758) / 0.0129, a' = (a - 0.1253) / 0.0318
    "evalcrafter": {"t_mean": -0.0758, "t_std": 0.0129, "a_mean": 0.1253, "a_std": 0.0318},
    # VQAssessment/DOVER evaluate_a_set_of_videos.py fuse_results: t' = (t - 0.1107) / 0.07355,
    # a' = (a + 0.08285) / 0.03774
    "upstream": {"t_mean": 0.1107, "t_std": 0.07355, "a_mean": -0.08285, "a_std": 0.03774},
}
FUSION_WEIGHTS = (0.6104, 0.3896)  # (technical, aesthetic), both scripts


def rescale_scores(aesthetic_raw: torch.Tensor, technical_raw: torch.Tensor, constants: str = "evalcrafter"):
    """Raw DOVER outputs -> dict of 0-100 ``technical``, ``aesthetic``, ``overall`` (per element)."""
    if constants not in RESCALE:
        raise ValueError(f"eval.dover.rescale must be one of {sorted(RESCALE)}, got {constants!r}")
    k = RESCALE[constants]
    t = (torch.as_tensor(technical_raw, dtype=torch.float64) - k["t_mean"]) / k["t_std"]
    a = (torch.as_tensor(aesthetic_raw, dtype=torch.float64) - k["a_mean"]) / k["a_std"]
    wt, wa = FUSION_WEIGHTS
    return {
        "technical": 100 * torch.sigmoid(t),
        "aesthetic": 100 * torch.sigmoid(a),
        "overall": 100 * torch.sigmoid(wt * t + wa * a),
    }


# ---------------------------------------------------------------------------------------- sampling
def frame_indices(
    num_frames: int, fsize_t: int, fragments_t: int, frame_interval: int, generator: torch.Generator
) -> torch.Tensor:
    """DOVER's ``UnifiedFrameSampler`` (one clip): ``fragments_t`` equal temporal segments, from each
    ``fsize_t`` frames at ``frame_interval`` starting at a random offset when the segment is longer
    than ``fsize_t * frame_interval`` (else 0); indices wrap modulo ``num_frames``.

    Technical view: (fsize_t, fragments_t) = (clip_len, num_clips) = (32, 3); aesthetic view:
    (clip_len // t_frag, t_frag) = (1, 32). Videos with fewer than 32 frames give repeated frames
    (a 16-frame clip's aesthetic view is frame 0 x 32, as upstream)."""
    seg = num_frames // fragments_t
    grids = torch.arange(fragments_t) * seg
    if seg > fsize_t * frame_interval:
        off = torch.randint(0, seg - fsize_t * frame_interval, (fragments_t,), generator=generator)
    else:
        off = torch.zeros(fragments_t, dtype=torch.long)
    idx = torch.arange(fsize_t)[None, :] * frame_interval + off[:, None] + grids[:, None]
    return idx.flatten() % num_frames


def spatial_fragments(
    video: torch.Tensor,
    fragments: int = 7,
    fsize: int = 32,
    aligned: int = 32,
    generator: torch.Generator | None = None,
    return_origins: bool = False,
):
    """DOVER's ``get_spatial_fragments`` (``random=False``, fallback ``upsample``) on ``c t h w`` with
    values in 0-255: the frame is split into ``fragments x fragments`` grid cells; from each a
    ``fsize`` patch at a random offset inside the cell (the same within each ``aligned`` frames) is
    spliced into a ``fragments*fsize`` square. Frames smaller than that are first upsampled
    (bilinear, truncated to integers as upstream's uint8 cast); as upstream, the grid is computed on
    the size *before* upsampling. ``return_origins``: also the ``(t_groups, fragments, fragments, 2)``
    top-left corners (in the possibly upsampled frame)."""
    size = fragments * fsize
    t, res_h, res_w = video.shape[-3:]
    ratio = min(res_h / size, res_w / size)
    if ratio < 1:
        video = F.interpolate(video / 255.0, scale_factor=1 / ratio, mode="bilinear")
        video = (video * 255.0).clamp(0, 255).floor()
    if t == 1:
        aligned = 1
    if t % aligned != 0:
        raise ValueError(f"DOVER fragments: {t} frames is not a multiple of aligned={aligned}")
    ng = t // aligned
    hgrid = [min(res_h // fragments * i, res_h - fsize) for i in range(fragments)]
    wgrid = [min(res_w // fragments * i, res_w - fsize) for i in range(fragments)]
    hlen, wlen = res_h // fragments, res_w // fragments

    def offsets(length):
        if length > fsize:
            return torch.randint(length - fsize, (fragments, fragments, ng), generator=generator)
        return torch.zeros((fragments, fragments, ng), dtype=torch.long)

    rh, rw = offsets(hlen), offsets(wlen)
    out = video.new_zeros(video.shape[:-2] + (size, size))
    origins = torch.zeros(ng, fragments, fragments, 2, dtype=torch.long)
    for i, hs in enumerate(hgrid):
        for j, ws in enumerate(wgrid):
            for g in range(ng):
                y, x = hs + int(rh[i, j, g]), ws + int(rw[i, j, g])
                origins[g, i, j] = torch.tensor([y, x])
                out[
                    :,
                    g * aligned : (g + 1) * aligned,
                    i * fsize : (i + 1) * fsize,
                    j * fsize : (j + 1) * fsize,
                ] = video[:, g * aligned : (g + 1) * aligned, y : y + fsize, x : x + fsize]
    return (out, origins) if return_origins else out


def resized_view(video: torch.Tensor, size: int = 224, antialias: bool = False) -> torch.Tensor:
    """DOVER's ``get_resized_video``: torchvision ``Resize((size, size))`` (bilinear, aspect not kept)
    on uint8 frames ``c t h w`` -> rounded back to integers. ``antialias=False`` is the tensor behaviour
    of torchvision < 0.17, which DOVER was written against."""
    x = video.permute(1, 0, 2, 3)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
        x = x.round().clamp(0, 255)
    return x.permute(1, 0, 2, 3)


# ---------------------------------------------------------------------------------------- extractor
@register_extractor(
    "dover",
    config_key="eval.extractors.dover.weights_path",
    published=DOVER_PUBLISHED,
    what="DoverVQA needs the DOVER weights",
)
class DOVERExtractor(Extractor):
    """Videos ``b f c h w`` in [-1, 1] -> raw DOVER scores ``b 2`` = ``[aesthetic, technical]``."""

    name = "dover"
    random_init_scheme = "dover_trunc_normal"

    def __init__(
        self,
        weights: Path | None,
        technical: dict | None = None,
        aesthetic: dict | None = None,
        tiny: dict | None = None,
        seed: int = 0,
    ):
        super().__init__(weights, seed)
        self.technical = {"fragments": 7, "fsize": 32, "clip_len": 32, "frame_interval": 2, "num_clips": 3,
                          **(technical or {})}  # fmt: skip
        self.aesthetic = {"size": 224, "clip_len": 32, "t_frag": 32, "frame_interval": 2, "antialias": False,
                          **(aesthetic or {})}  # fmt: skip
        self.tiny = dict(tiny) if tiny else None
        arch = self.tiny or {}
        with seeded_init(seed):
            self.net = DOVERNet(arch.get("swin"), arch.get("convnext"), arch.get("head_hidden", 64)).eval()
        if weights is not None:
            sd = map_official_keys(load_state_dict_file(Path(weights)))
            missing, unexpected = self.net.load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise RuntimeError(
                    f"DOVER: {weights} does not match the DOVER architecture (dover.yml model args); missing "
                    f"{len(missing)} keys (e.g. {missing[:3]}), unexpected {len(unexpected)} (e.g. {unexpected[:3]})"
                )
        self.register_buffer("mean", torch.tensor(DOVER_MEAN).view(3, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(DOVER_STD).view(3, 1, 1, 1), persistent=False)
        self.requires_grad_(False)

    def settings(self) -> dict:
        return {
            "technical": dict(self.technical),
            "aesthetic": dict(self.aesthetic),
            "tiny": self.tiny,
            "value_range": "uint8 0-255, (x - mean) / std",
            "views_seed": self.seed,
        }

    def views(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One video ``f c h w`` in [-1, 1] -> normalised (aesthetic, technical) clips ``n c t h w``."""
        g = torch.Generator().manual_seed(self.seed)  # fixed view offsets (upstream: unseeded RNG)
        u8 = ((video.float().clamp(-1, 1) + 1) * 127.5).round().permute(1, 0, 2, 3)  # c f h w
        n = u8.shape[1]
        te, ae = self.technical, self.aesthetic
        ti = frame_indices(n, te["clip_len"], te["num_clips"], te["frame_interval"], g)
        ai = frame_indices(n, ae["clip_len"] // ae["t_frag"], ae["t_frag"], ae["frame_interval"], g)
        tech = spatial_fragments(u8[:, ti.to(u8.device)], te["fragments"], te["fsize"], te["clip_len"], g)
        aes = resized_view(u8[:, ai.to(u8.device)], ae["size"], ae["antialias"])
        tech = ((tech - self.mean) / self.std).unflatten(1, (te["num_clips"], -1)).transpose(0, 1)
        aes = ((aes - self.mean) / self.std).unflatten(1, (1, -1)).transpose(0, 1)
        return aes.contiguous(), tech.contiguous()

    @torch.no_grad()
    def aesthetic_maps(self, clips: torch.Tensor) -> torch.Tensor:
        """Normalised aesthetic clips ``n c t h w`` -> score maps ``n 1 t' h' w'`` (one clip per row)."""
        return self.net.aesthetic_head(self.net.aesthetic_backbone(clips))

    @torch.no_grad()
    def technical_maps(self, clips: torch.Tensor) -> torch.Tensor:
        return self.net.technical_head(self.net.technical_backbone(clips))

    @staticmethod
    def raw_scores(aesthetic_maps: torch.Tensor, technical_maps: torch.Tensor) -> torch.Tensor:
        """One video's maps (all its clips) -> ``[aesthetic, technical]`` raw scores (float32 means)."""
        return torch.stack([aesthetic_maps.float().mean(), technical_maps.float().mean()])

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        out = []
        for v in videos:
            a, t = self.views(v)
            sa, st = self.net(a, t)
            out.append(self.raw_scores(sa, st))
        return torch.stack(out)
