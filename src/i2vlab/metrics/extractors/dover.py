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

Module and parameter names equal the official ones (``technical_backbone.layers.0.blocks.0.attn.
fragment_position_bias_table``, ``aesthetic_backbone.stages.0.1.dwconv.weight``,
``technical_head.fc_hid.weight``, ...), including the persistent ``relative_position_index`` buffers, so
the official ``DOVER.pth`` (a plain state dict) loads strictly with an identity key mapping (only a
``module.`` prefix, if present, is stripped).

Input: videos ``b f c h w`` in [-1, 1] (the evaluator's clip is DOVER's "whole video"); output
``b 2`` raw scores ``[aesthetic, technical]`` (EvalCrafter's ``results[0]``, ``results[1]``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Extractor, load_state_dict_file, register_extractor, resolve_weights, seeded_init

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


# ---------------------------------------------------------------------------------------- swin
def _window_size(x_size, window_size, shift_size):
    ws, ss = list(window_size), list(shift_size)
    for i in range(3):
        if x_size[i] <= window_size[i]:
            ws[i], ss[i] = x_size[i], 0
    return tuple(ws), tuple(ss)


def _partition(x: torch.Tensor, ws) -> torch.Tensor:
    b, d, h, w, c = x.shape
    x = x.view(b, d // ws[0], ws[0], h // ws[1], ws[1], w // ws[2], ws[2], c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, ws[0] * ws[1] * ws[2], c)


def _reverse(win: torch.Tensor, ws, b, d, h, w) -> torch.Tensor:
    x = win.view(b, d // ws[0], h // ws[1], w // ws[2], ws[0], ws[1], ws[2], -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


@lru_cache(maxsize=64)
def _shift_mask(d, h, w, ws, ss, device) -> torch.Tensor:
    """Attention mask of shifted windows (0 / -100), literally as upstream ``compute_mask``."""
    img = torch.zeros((1, d, h, w, 1), device=device)
    cnt = 0
    for sd in (slice(-ws[0]), slice(-ws[0], -ss[0]), slice(-ss[0], None)):
        for sh in (slice(-ws[1]), slice(-ws[1], -ss[1]), slice(-ss[1], None)):
            for sw in (slice(-ws[2]), slice(-ws[2], -ss[2]), slice(-ss[2], None)):
                img[:, sd, sh, sw, :] = cnt
                cnt += 1
    mw = _partition(img, ws).squeeze(-1)
    m = mw.unsqueeze(1) - mw.unsqueeze(2)
    return m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0)


@lru_cache(maxsize=64)
def _fragment_gate(d, h, w, ws, ss, device) -> torch.Tensor:
    """Upstream ``global_position_index`` reduced as the attention uses it: the feature map is split
    into ``ws[1] x ws[2]`` cells (nearest interpolation of the cell index grid), shifted like the
    windows; returns per window the L1 distance between the cells of each token pair ``(nW, N, N)``
    (0 = same cell: the fragment bias table is used; the rest mixes both tables as upstream)."""
    grid = torch.stack(
        torch.meshgrid(torch.arange(1), torch.arange(ws[1]), torch.arange(ws[2]), indexing="ij")
    )
    coords = F.interpolate(grid[None].float().to(device), size=(d, h, w)).long().permute(0, 2, 3, 4, 1)
    coords = torch.roll(coords, shifts=(-ss[0], -ss[1], -ss[2]), dims=(1, 2, 3))
    wc = _partition(coords, ws)
    return (wc[:, None, :] - wc[:, :, None]).abs().sum(-1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention3D(nn.Module):
    def __init__(self, dim: int, window_size, num_heads: int, frag_bias: bool):
        super().__init__()
        self.window_size, self.num_heads = tuple(window_size), num_heads
        self.scale = (dim // num_heads) ** -0.5
        wd, wh, ww = self.window_size
        n_rel = (2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(n_rel, num_heads))
        if frag_bias:
            self.fragment_position_bias_table = nn.Parameter(torch.zeros(n_rel, num_heads))
        c = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij"))
        c = c.flatten(1)
        rel = (c[:, :, None] - c[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += wd - 1
        rel[:, :, 1] += wh - 1
        rel[:, :, 2] += ww - 1
        rel[:, :, 0] *= (2 * wh - 1) * (2 * ww - 1)
        rel[:, :, 1] *= 2 * ww - 1
        self.register_buffer("relative_position_index", rel.sum(-1))  # persistent: in DOVER.pth
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _bias(self, table, n):
        idx = self.relative_position_index[:n, :n].reshape(-1)
        return table[idx].reshape(n, n, -1).permute(2, 0, 1)

    def forward(self, x, mask, gate):
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        bias = self._bias(self.relative_position_bias_table, n).unsqueeze(0)  # 1 nH N N
        nw = gate.shape[0]
        if hasattr(self, "fragment_position_bias_table"):
            g = gate.unsqueeze(1).to(attn.dtype)
            bias = bias * g + self._bias(self.fragment_position_bias_table, n) * (1 - g)
        attn = (attn.view(bw // nw, nw, self.num_heads, n, n) + bias.unsqueeze(0)).view(
            -1, self.num_heads, n, n
        )
        if mask is not None:
            nm = mask.shape[0]
            attn = attn.view(bw // nm, nm, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = attn.softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


class SwinTransformerBlock3D(nn.Module):
    def __init__(self, dim, num_heads, window_size, shift_size, mlp_ratio, frag_bias):
        super().__init__()
        self.window_size, self.shift_size = tuple(window_size), tuple(shift_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window_size, num_heads, frag_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _attend(self, x, mask):
        b, d, h, w, c = x.shape
        ws, ss = _window_size((d, h, w), self.window_size, self.shift_size)
        x = self.norm1(x)
        pd, pb, pr = ((ws[i] - n % ws[i]) % ws[i] for i, n in enumerate((d, h, w)))
        x = F.pad(x, (0, 0, 0, pr, 0, pb, 0, pd))
        _, dp, hp, wp, _ = x.shape
        shifted = any(s > 0 for s in ss)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in ss), dims=(1, 2, 3))
        gate = _fragment_gate(dp, hp, wp, ws, ss, x.device)
        win = self.attn(_partition(x, ws), mask if shifted else None, gate)
        x = _reverse(win.view(-1, *ws, c), ws, b, dp, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=ss, dims=(1, 2, 3))
        return x[:, :d, :h, :w].contiguous()

    def forward(self, x, mask):
        x = x + self._attend(x, mask)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x):
        h, w = x.shape[2:4]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat(
            [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], -1
        )
        return self.reduction(self.norm(x))


class BasicLayer(nn.Module):
    def __init__(self, dim, depth, num_heads, window_size, mlp_ratio, frag_bias, downsample):
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(i // 2 for i in window_size)
        self.blocks = nn.ModuleList(
            SwinTransformerBlock3D(
                dim,
                num_heads,
                window_size,
                (0, 0, 0) if i % 2 == 0 else self.shift_size,
                mlp_ratio,
                frag_bias,
            )
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x):  # b c d h w
        b, c, d, h, w = x.shape
        ws, ss = _window_size((d, h, w), self.window_size, self.shift_size)
        x = x.permute(0, 2, 3, 4, 1)
        pad = [int(math.ceil(n / s)) * s for n, s in zip((d, h, w), ws)]
        mask = _shift_mask(*pad, ws, ss, x.device)
        for blk in self.blocks:
            x = blk(x, mask)
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute(0, 4, 1, 2, 3)


class PatchEmbed3D(nn.Module):
    def __init__(self, patch_size, embed_dim):
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.proj = nn.Conv3d(3, embed_dim, self.patch_size, self.patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        d, h, w = x.shape[2:]
        p = self.patch_size
        x = F.pad(x, (0, (-w) % p[2], 0, (-h) % p[1], 0, (-d) % p[0]))
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class SwinTransformer3D(nn.Module):
    """DOVER's technical backbone (``swin_tiny_grpb`` = upstream ``SwinTransformer3D()`` defaults)."""

    def __init__(
        self,
        patch_size=(2, 4, 4),
        embed_dim: int = 96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size=(8, 7, 7),
        mlp_ratio: float = 4.0,
        frag_biases=(True, True, True, False),
    ):
        super().__init__()
        self.patch_embed = PatchEmbed3D(patch_size, embed_dim)
        n = len(depths)
        self.layers = nn.ModuleList(
            BasicLayer(
                embed_dim * 2**i,
                depths[i],
                num_heads[i],
                window_size,
                mlp_ratio,
                bool(frag_biases[i]),
                i < n - 1,
            )
            for i in range(n)
        )
        self.num_features = embed_dim * 2 ** (n - 1)
        self.norm = nn.LayerNorm(self.num_features)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x.contiguous())
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


# ---------------------------------------------------------------------------------------- convnext
class LayerNorm(nn.Module):
    """ConvNeXt LayerNorm (eps 1e-6); ``channels_first`` normalises dim 1 of ``n c ...``."""

    def __init__(self, dim: int, eps: float = 1e-6, channels_first: bool = False):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim))
        self.eps, self.channels_first = eps, channels_first

    def forward(self, x):
        if not self.channels_first:
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        shape = (-1,) + (1,) * (x.ndim - 2)
        return self.weight.view(shape) * x + self.bias.view(shape)


class Block3D(nn.Module):
    def __init__(self, dim: int, inflate_len: int):
        super().__init__()
        self.dwconv = nn.Conv3d(dim, dim, (inflate_len, 7, 7), padding=(inflate_len // 2, 3, 3), groups=dim)
        self.norm = LayerNorm(dim)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 4, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 4, 1, 2, 3)


class ConvNeXt3D(nn.Module):
    """DOVER's aesthetic backbone (``conv_tiny`` = upstream ``convnext_3d_tiny``, inflate '131')."""

    def __init__(self, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), inflate_strategy: str = "131"):
        super().__init__()
        self.downsample_layers = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv3d(3, dims[0], (2, 4, 4), (2, 4, 4)), LayerNorm(dims[0], channels_first=True)
                )
            ]
        )
        for i in range(len(dims) - 1):
            self.downsample_layers.append(
                nn.Sequential(
                    LayerNorm(dims[i], channels_first=True),
                    nn.Conv3d(dims[i], dims[i + 1], (1, 2, 2), (1, 2, 2)),
                )
            )
        self.stages = nn.ModuleList(
            nn.Sequential(
                *[Block3D(dims[i], int(inflate_strategy[j % len(inflate_strategy)])) for j in range(d)]
            )
            for i, d in enumerate(depths)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class VQAHead(nn.Module):
    """Per-position quality map: 1x1x1 conv -> GELU -> 1x1x1 conv to 1 channel (dropout: eval no-op)."""

    def __init__(self, in_channels: int = 768, hidden_channels: int = 64):
        super().__init__()
        self.fc_hid = nn.Conv3d(in_channels, hidden_channels, 1)
        self.fc_last = nn.Conv3d(hidden_channels, 1, 1)
        self.gelu = nn.GELU()

    def forward(self, x):
        return self.fc_last(self.gelu(self.fc_hid(x)))


class DOVERNet(nn.Module):
    """The two DOVER branches with the official attribute names (``DOVER(**dover.yml model.args)``)."""

    def __init__(self, swin: dict | None = None, convnext: dict | None = None, head_hidden: int = 64):
        super().__init__()
        self.technical_backbone = SwinTransformer3D(**(swin or {}))
        self.aesthetic_backbone = ConvNeXt3D(**(convnext or {}))
        ct = self.technical_backbone.num_features
        ca = (convnext or {}).get("dims", (96, 192, 384, 768))[-1]
        self.technical_head = VQAHead(ct, head_hidden)
        self.aesthetic_head = VQAHead(ca, head_hidden)

    def forward(self, aesthetic: torch.Tensor, technical: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised views ``(n clips) c t h w`` -> raw score maps ``(n, 1, t', h', w')``."""
        return (
            self.aesthetic_head(self.aesthetic_backbone(aesthetic)),
            self.technical_head(self.technical_backbone(technical)),
        )


def map_official_keys(sd: dict) -> dict:
    """Official DOVER.pth keys -> this module's: identity, except a ``module.`` prefix is stripped."""
    return {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}


# ---------------------------------------------------------------------------------------- extractor
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
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        out = []
        for v in videos:
            a, t = self.views(v)
            sa, st = self.net(a, t)
            out.append(torch.stack([sa.float().mean(), st.float().mean()]))
        return torch.stack(out)


@register_extractor("dover")
def build_dover(
    weights_path=None,
    allow_random_weights: bool = False,
    technical: dict | None = None,
    aesthetic: dict | None = None,
    tiny: dict | None = None,
    seed: int = 0,
    config_key: str = "eval.extractors.dover.weights_path",
) -> DOVERExtractor:
    w = resolve_weights(
        weights_path,
        config_key=config_key,
        published=DOVER_PUBLISHED,
        allow_random_weights=allow_random_weights,
        what="DoverVQA needs the DOVER weights",
    )
    return DOVERExtractor(w, technical=technical, aesthetic=aesthetic, tiny=tiny, seed=seed)
