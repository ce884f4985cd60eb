"""DOVER's network (Wu et al., ICCV 2023): the technical branch (Video Swin-T with gated relative
position biases, ``swin_tiny_grpb``), the aesthetic branch (ConvNeXt-T inflated to 3D, ``conv_tiny``) and
the ``VQAHead`` quality-map heads, with the official module and parameter names (including the persistent
``relative_position_index`` buffers), so ``DOVER.pth`` loads strictly with the identity key mapping.

Written from ``VQAssessment/DOVER`` (``dover/models/evaluator.py``, ``swin_backbone.py``,
``conv_backbone.py``, ``head.py``; ``dover.yml`` model args). Views, scores and the extractor:
:mod:`i2vlab.metrics.extractors.dover`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F


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
