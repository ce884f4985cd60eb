"""I3D (Inflated Inception-v1, Carreira & Zisserman 2017) Kinetics-400 logits for FVD / KVD.

The architecture is written here from the paper's layer table, with TF "SAME" padding emulated,
and with the parameter names of the widely used PyTorch port (``Conv3d_1a_7x7.conv3d.weight``,
``Mixed_3b.b1b.bn.running_mean``, ``logits.conv3d.bias``) so the VideoGPT/TATS state dict
``i3d_pretrained_400.pt`` loads as is. The StyleGAN-V TorchScript detector
(``i3d_torchscript.pt``) is loaded with ``torch.jit.load`` and called the way StyleGAN-V calls it.

Output: 400-d pre-softmax logits averaged over time (the tensor TF exposes as
``RGB/inception_i3d/Mean:0``).

BatchNorm epsilon (``bn_eps``) follows where the weights come from: every PyTorch consumer of the
VideoGPT/TATS state dict ``i3d_pretrained_400.pt`` (TATS ``tats/fvd/pytorch_i3d.py``, cd-fvd,
common_metrics_on_video_quality) builds its BatchNorm3d with eps 1e-5, so ``bn_eps="auto"`` (default)
is 1e-5 for a state dict (and for random init, which has that port's layout). 1e-3 (the value the TF
graph stores, and piergiaj/pytorch-i3d's) stays available as ``bn_eps=1e-3``; with the TATS state dict
it changes the features by about 1 % and FVD by about 2 %. A TorchScript detector carries its own.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import base
from .base import Extractor, register_extractor

I3D_PUBLISHED = (
    "StyleGAN-V TorchScript detector https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt, or "
    "the VideoGPT/TATS state dict https://github.com/songweige/TATS/raw/main/tats/fvd/i3d_pretrained_400.pt; "
    "both are ports of tf.hub deepmind/i3d-kinetics-400/1"
)


def _same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    pad = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
    return pad // 2, pad - pad // 2


def _pad_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    t, h, w = x.shape[2:]
    pt, ph, pw = (_same_pad(n, k, s) for n, k, s in zip((t, h, w), kernel, stride))
    return F.pad(x, (*pw, *ph, *pt))


BN_EPS_STATE_DICT = 1e-5  # TATS / VideoGPT / cd-fvd BatchNorm3d eps for i3d_pretrained_400.pt
BN_EPS_TF = 1e-3  # the TF graph's (and piergiaj/pytorch-i3d's) value


def resolve_bn_eps(bn_eps: float | str | None) -> float:
    """``"auto"``/None -> 1e-5 (the PyTorch port's value for its state dict); else the float given."""
    if bn_eps in (None, "auto"):
        return BN_EPS_STATE_DICT
    eps = float(bn_eps)
    if not eps > 0:
        raise ValueError(f"eval.extractors.i3d.bn_eps must be 'auto' or a positive float, got {bn_eps!r}")
    return eps


class Unit3D(nn.Module):
    """Conv3d (no padding; TF SAME emulated) + BatchNorm3d(eps=bn_eps) + ReLU."""

    def __init__(
        self,
        cin,
        cout,
        kernel=(1, 1, 1),
        stride=(1, 1, 1),
        activation=True,
        bn=True,
        bias=False,
        bn_eps: float = BN_EPS_STATE_DICT,
    ):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=bn_eps, momentum=0.01) if bn else None
        self.activation = activation

    def forward(self, x):
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSamePadding(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x):
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    def __init__(self, cin, c, bn_eps: float = BN_EPS_STATE_DICT):
        super().__init__()
        e = {"bn_eps": bn_eps}
        self.b0 = Unit3D(cin, c[0], **e)
        self.b1a, self.b1b = Unit3D(cin, c[1], **e), Unit3D(c[1], c[2], (3, 3, 3), **e)
        self.b2a, self.b2b = Unit3D(cin, c[3], **e), Unit3D(c[3], c[4], (3, 3, 3), **e)
        self.b3a, self.b3b = MaxPool3dSamePadding((3, 3, 3), (1, 1, 1)), Unit3D(cin, c[5], **e)
        self.out_channels = c[0] + c[2] + c[4] + c[5]

    def forward(self, x):
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


# (name, out channels of the 6 branches) of the Inception-v1 mixed blocks
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


class InceptionI3d(nn.Module):
    """I3D on ``b c t h w`` input in [-1, 1]; returns time-averaged logits ``b num_classes``.

    ``width`` scales every channel count (1.0 = the published network; tiny values are for tests).
    ``bn_eps``: BatchNorm epsilon (1e-5 for the TATS/VideoGPT state dict, see the module docstring).
    """

    def __init__(self, num_classes: int = 400, width: float = 1.0, bn_eps: float = BN_EPS_STATE_DICT):
        super().__init__()

        def ch(c):
            return max(1, int(math.ceil(c * width)))

        self.width, self.bn_eps = width, float(bn_eps)
        e = {"bn_eps": self.bn_eps}
        self.Conv3d_1a_7x7 = Unit3D(3, ch(64), (7, 7, 7), (2, 2, 2), **e)
        self.MaxPool3d_2a_3x3 = MaxPool3dSamePadding((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(ch(64), ch(64), **e)
        self.Conv3d_2c_3x3 = Unit3D(ch(64), ch(192), (3, 3, 3), **e)
        self.MaxPool3d_3a_3x3 = MaxPool3dSamePadding((1, 3, 3), (1, 2, 2))
        cin = ch(192)
        for name, c in _MIXED.items():
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPool3dSamePadding((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPool3dSamePadding((2, 2, 2), (2, 2, 2))
            mod = InceptionModule(cin, tuple(ch(v) for v in c), self.bn_eps)
            setattr(self, name, mod)
            cin = mod.out_channels
        self.logits = Unit3D(cin, num_classes, activation=False, bn=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._modules:
            if name == "logits":
                break
            x = getattr(self, name)(x)
        # AvgPool3d kernel (2, 7, 7), stride 1 (the published head); clamped for inputs < 224 px.
        k = (min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4]))
        x = F.avg_pool3d(x, k, stride=1)
        x = self.logits(x)  # b 400 t' h' w'
        return x.mean(dim=(3, 4)).mean(dim=2)


def tf1_bilinear_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres, no antialias) on ``n c h w``.

    As TF1's kernel: the scale ``in/out`` is a float32, source positions ``out_index * scale`` are
    computed in float32 (in the input's dtype when that is float64, with the float32 scale, as
    torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``), and the lerps run along the width
    first (``left + (right - left) * dx``), then along the height."""
    out = x
    for dim, new in ((-1, size[1]), (-2, size[0])):
        old = out.shape[dim]
        if old == new:
            continue
        scale = torch.tensor(old / new, dtype=torch.float32)
        src = torch.arange(new, dtype=x.dtype if x.dtype == torch.float64 else torch.float32) * scale
        src = src.to(x.device)
        i0 = src.long()  # truncation = floor (positions are >= 0)
        i1 = (i0 + 1).clamp(max=old - 1)
        frac = (src - i0.to(src.dtype)).to(x.dtype)
        shape = [1] * out.ndim
        shape[dim] = new
        lo, hi = out.index_select(dim, i0), out.index_select(dim, i1)
        out = lo + (hi - lo) * frac.view(shape)
    return out


def resize_frames(x: torch.Tensor, size: int | tuple[int, int], mode: str) -> torch.Tensor:
    """Resize ``n c h w`` to ``size``. ``mode``: ``squash`` (torch bilinear, align_corners=False,
    aspect ratio not kept: TF/TATS/LVDM/cdfvd), ``tf1_squash`` (TF1 bilinear), ``short_side_crop``
    (bilinear short side to size, centre crop: JunyaoHu)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "squash":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if mode == "tf1_squash":
        return tf1_bilinear_resize(x, size)
    if mode == "short_side_crop":
        h, w = x.shape[-2:]
        s = max(size[0] / h, size[1] / w)
        nh, nw = math.ceil(h * s), math.ceil(w * s)
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
        return x[..., top : top + size[0], left : left + size[1]]
    raise ValueError(f"unknown resize mode {mode!r} (squash | tf1_squash | short_side_crop)")


@register_extractor(
    "i3d",
    config_key="eval.extractors.i3d.weights_path",
    published=I3D_PUBLISHED,
    what="FVD/KVD need I3D Kinetics-400 weights",
)
class I3DExtractor(Extractor):
    """Videos ``b f c h w`` in [-1, 1] -> I3D logits ``b 400`` (float32; the network's dtype if it
    was cast, e.g. ``.double()`` for float64 checks)."""

    name = "i3d"
    random_init_scheme = "he_normal"

    def __init__(
        self,
        weights: object | None,
        input_size: int = 224,
        resize_mode: str = "squash",
        width: float = 1.0,
        seed: int = 0,
        bn_eps: float | str = "auto",
    ):
        super().__init__(weights, seed)
        self.input_size, self.resize_mode, self.width = int(input_size), resize_mode, float(width)
        self.torchscript = weights is not None and base.is_torchscript(weights)
        self.bn_eps = None if self.torchscript else resolve_bn_eps(bn_eps)
        if self.torchscript:
            self.net = torch.jit.load(str(weights), map_location="cpu").eval()
        else:
            self.net = base.init_network(
                lambda: InceptionI3d(400, width=width, bn_eps=self.bn_eps), weights, seed, "I3D"
            )
        self.requires_grad_(False)

    def settings(self) -> dict:
        if self.torchscript:
            return {"format": "torchscript(stylegan-v)", "call": "rescale=True, resize=True, uint8 input"}
        return {
            "format": "state_dict",
            "input_size": self.input_size,
            "resize_mode": self.resize_mode,
            "value_range": "[-1,1] after uint8 quantisation",
            "width": self.width,
            "bn_eps": self.bn_eps,
        }

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        b, f = videos.shape[:2]
        # Quantise to uint8 like saved videos / StyleGAN-V (x*127.5+128 clamp, here with rounding).
        u8 = ((videos.float().clamp(-1, 1) + 1) * 127.5).round()
        if self.torchscript:
            x = u8.to(torch.uint8).permute(0, 2, 1, 3, 4).contiguous()
            return self.net(x, rescale=True, resize=True, return_features=True).float()
        dt = self.net.logits.conv3d.weight.dtype
        x = resize_frames(u8.flatten(0, 1).to(dt), self.input_size, self.resize_mode)
        x = x.view(b, f, 3, *x.shape[-2:]).permute(0, 2, 1, 3, 4) / 127.5 - 1.0
        out = self.net(x.contiguous())
        return out if dt == torch.float64 else out.float()
