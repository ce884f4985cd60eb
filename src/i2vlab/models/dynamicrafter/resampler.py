"""DynamiCrafter's context learner: CLIP image tokens -> per-frame query tokens.

The query transformer is the IP-Adapter-Plus "Resampler" (perceiver attention with keys =
[image tokens ; latents], then a feed-forward, both residual; ``proj_out`` + LayerNorm at the end),
which diffusers ships as ``IPAdapterPlusImageProjection``. What DynamiCrafter adds is the video
axis: ``num_queries`` learnable queries *per frame* for ``video_length`` frames (16 x 16 = 256 in
the official configs), so each frame receives its own tokens from the single conditioning image.

Input: CLIP ViT-H/14 last-layer tokens ``b 257 1280`` (all tokens, before ``ln_post``); output
``b (video_length * num_queries) output_dim``. Official argument names are kept
(``lvdm/modules/encoders/resampler.py`` in Doubiiu/DynamiCrafter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import IPAdapterPlusImageProjection
from diffusers.models.modeling_utils import ModelMixin

from i2vlab.utils.clip import clip_normalize


class Resampler(IPAdapterPlusImageProjection, ModelMixin, ConfigMixin):
    """Query transformer with ``num_queries * video_length`` learnable queries (diffusers layers).

    Args (official names): dim (query width), depth, dim_head, heads, num_queries (tokens per frame),
    embedding_dim (CLIP width), output_dim (UNet context width), ff_mult, video_length (frames;
    ``None`` for one set of queries shared by all frames).
    """

    @register_to_config
    def __init__(
        self,
        dim: int = 1024,
        depth: int = 4,
        dim_head: int = 64,
        heads: int = 12,
        num_queries: int = 16,
        embedding_dim: int = 1280,
        output_dim: int = 1024,
        ff_mult: int = 4,
        video_length: int | None = 16,
    ) -> None:
        total = num_queries * (video_length or 1)
        super().__init__(
            embed_dims=embedding_dim,
            output_dims=output_dim,
            hidden_dims=dim,
            depth=depth,
            dim_head=dim_head,
            heads=heads,
            num_queries=total,
            ffn_ratio=ff_mult,
        )

    @property
    def tokens_per_frame(self) -> int:
        return int(self.config.num_queries)


def _gaussian_kernel1d(size: int, sigma: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - size // 2
    g = torch.exp(-x.pow(2.0) / (2 * sigma.pow(2.0)))
    return g / g.sum()


def lvdm_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``b c h w`` as LVDM's CLIP preprocessing does (``kornia.geometry.resize(x, size,
    interpolation="bicubic", align_corners=True, antialias=True)``): when shrinking, a separable
    Gaussian blur (sigma = (factor - 1) / 2 per axis, at least 0.001; kernel ``int(max(4 sigma, 3))``
    made odd; reflect padding) and then plain bicubic interpolation (a = -0.75) with aligned corners.
    torch's own ``antialias=True`` filter is another one (Pillow's, bicubic a = -0.5): 7-20 % apart on
    smooth images, 25-60 % on noise, also when enlarging."""
    h, w = images.shape[-2:]
    size = (int(size[0]), int(size[1]))
    if (h, w) == size:
        return images
    factors = (h / size[0], w / size[1])
    x = images
    if max(factors) > 1:
        sig = [torch.tensor(max((f - 1.0) / 2.0, 0.001), dtype=x.dtype, device=x.device) for f in factors]
        ks = [int(max(4.0 * float(s), 3)) for s in sig]
        ks = [k + 1 if k % 2 == 0 else k for k in ks]
        c = x.shape[1]
        kx = _gaussian_kernel1d(ks[1], sig[1]).view(1, 1, 1, -1).expand(c, 1, 1, -1)
        ky = _gaussian_kernel1d(ks[0], sig[0]).view(1, 1, -1, 1).expand(c, 1, -1, 1)
        x = F.conv2d(F.pad(x, (ks[1] // 2, ks[1] // 2, 0, 0), mode="reflect"), kx, groups=c)
        x = F.conv2d(F.pad(x, (0, 0, ks[0] // 2, ks[0] // 2), mode="reflect"), ky, groups=c)
    return F.interpolate(x, size=size, mode="bicubic", align_corners=True)


def clip_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Images ``b c h w`` in [-1, 1] -> CLIP input, as ``FrozenOpenCLIPImageEmbedderV2.preprocess``:
    :func:`lvdm_resize` to ``size``, [0, 1], CLIP mean / std (LVDM's float32 constants)."""
    x = images.to(torch.promote_types(images.dtype, torch.float32))  # float64 stays float64
    x = lvdm_resize(x, (size, size))
    x = (x + 1.0) / 2.0
    return clip_normalize(x)
