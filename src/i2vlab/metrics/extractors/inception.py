"""InceptionV3 pool3 (2048-d) features for frame FID.

The network is torchvision's ``Inception3`` with the four block changes of the TF 2015-12-05 graph
that FID uses (as in pytorch-fid): average pools that exclude padding in the A, C and first E
blocks, and a max pool in the last E block; 1008 classes. Weights: pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` state dict, or the NVlabs TorchScript
``inception-2015-12-05.pt`` (called as StyleGAN2-ADA / clean-fid do, on uint8 input).

Preprocessing (``resize_mode``): ``tf1_squash`` = torch-fidelity's ``FeatureExtractorInceptionV3``
(uint8, TF1 bilinear to 299, (x-128)/128), which torchmetrics' ``FrechetInceptionDistance`` equals only
with ``antialias=False``: torchmetrics 1.9 defaults to ``antialias=True`` (torch bilinear with
antialiasing), which gives different features for images larger than 299 px; ``squash`` = pytorch-fid
(torch bilinear, align_corners=False, no antialias, 2x-1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models import inception as tvi

from . import base
from .base import Extractor, register_extractor
from .i3d import resize_frames

INCEPTION_PUBLISHED = (
    "pytorch-fid https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth, or NVlabs TorchScript "
    "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl "
    "(torchscript .pt form used by StyleGAN2-ADA/clean-fid)"
)


def _avg_nopad(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(tvi.InceptionA):
    def _forward(self, x):
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return [self.branch1x1(x), b5, b3, self.branch_pool(_avg_nopad(x))]


class FIDInceptionC(tvi.InceptionC):
    def _forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for m in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            d = m(d)
        return [self.branch1x1(x), b7, d, self.branch_pool(_avg_nopad(x))]


class FIDInceptionE(tvi.InceptionE):
    def __init__(self, in_channels, max_pool: bool = False, **kw):
        super().__init__(in_channels, **kw)
        self.max_pool = max_pool

    def _forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_nopad(x)
        return [self.branch1x1(x), b3, d, self.branch_pool(pool)]


def fid_inception_v3() -> tvi.Inception3:
    """InceptionV3 with the FID (TF 2015-12-05) block variants, 1008 classes, no aux head."""
    net = tvi.Inception3(num_classes=1008, aux_logits=False, init_weights=True)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE(1280)
    net.Mixed_7c = FIDInceptionE(2048, max_pool=True)
    return net


_POOL3_BLOCKS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
)  # fmt: skip


@register_extractor(
    "inception",
    config_key="eval.extractors.inception.weights_path",
    published=INCEPTION_PUBLISHED,
    what="FID needs InceptionV3 (TF 2015-12-05) weights",
)
class InceptionExtractor(Extractor):
    """Images ``n c h w`` in [-1, 1] -> pool3 features ``n 2048`` (float32; float64 if the network was
    cast with ``.double()``)."""

    name = "inception"
    random_init_scheme = "he_normal"

    def __init__(self, weights, input_size: int = 299, resize_mode: str = "tf1_squash", seed: int = 0):
        super().__init__(weights, seed)
        self.input_size, self.resize_mode = int(input_size), resize_mode
        self.torchscript = weights is not None and base.is_torchscript(weights)
        if self.torchscript:
            self.net = torch.jit.load(str(weights), map_location="cpu").eval()
        else:
            self.net = base.init_network(fid_inception_v3, weights, seed, "InceptionV3 (FID)")
        self.requires_grad_(False)

    def settings(self) -> dict:
        if self.torchscript:
            return {"format": "torchscript(nvlabs)", "call": "uint8 input, return_features=True"}
        norm = "(x-128)/128" if self.resize_mode == "tf1_squash" else "2x/255-1"
        return {
            "format": "state_dict(pytorch-fid)",
            "input_size": self.input_size,
            "resize_mode": self.resize_mode,
            "value_range": norm,
        }

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        u8 = ((images.float().clamp(-1, 1) + 1) * 127.5).round()
        if self.torchscript:
            return self.net(u8.to(torch.uint8), return_features=True).float()
        dt = self.net.fc.weight.dtype
        x = resize_frames(u8.to(dt), self.input_size, self.resize_mode)
        x = (x - 128.0) / 128.0 if self.resize_mode == "tf1_squash" else x / 127.5 - 1.0
        for name in _POOL3_BLOCKS:
            x = getattr(self.net, name)(x)
        return x.flatten(1) if dt == torch.float64 else x.flatten(1).float()
