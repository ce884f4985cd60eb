"""I2V-Adapter's content adapter: IP-Adapter(-Plus) image conditioning through diffusers.

Nothing here re-implements IP-Adapter. diffusers provides the pieces and this module wires them
onto a ``UNetMotionModel``:

- ``IPAdapterPlusImageProjection`` (the Resampler: CLIP penultimate-layer tokens -> ``num_queries``
  context tokens), held as ``unet.encoder_hid_proj`` (``MultiIPAdapterImageProjection``) with
  ``encoder_hid_dim_type = "ip_image_proj"``, so the UNet projects ``added_cond_kwargs["image_embeds"]``
  and repeats them over frames itself;
- ``IPAdapterAttnProcessor2_0`` on every spatial cross-attention (``attn2``): out = Attn(Q, K_txt, V_txt)
  + scale · Attn(Q, K_ip, V_ip);
- a ``transformers.CLIPVisionModelWithProjection`` image encoder (CLIP ViT-H/14 for the published
  IP-Adapter-Plus SD1.5), whose ``hidden_states[-2]`` are the Resampler's input.

Published weights (``ip-adapter-plus_sd15.bin`` / ``.safetensors``, keys ``image_proj`` / ``ip_adapter``)
load through diffusers' public loader, ``IPAdapterMixin.load_ip_adapter`` (a pipeline mixin: it is
called on a minimal holder of the UNet, with ``image_encoder_folder=None``; the image encoder is a
backbone component of its own). Without weights (tiny test configs, or the meta device for
parameter reports) the same classes are built from the config. Either way the UNet ends up as
diffusers' loader leaves it: ``encoder_hid_dim_type`` is set as an *attribute* of ``unet.config``
(not an item: ``unet.config.get(...)`` does not see it), which :func:`has_content_adapter` reads.
The unconditional image embedding is the encoder's output for an all-zero *preprocessed* image (as
the official code and diffusers' pipelines do).

The published file numbers its cross-attention k/v projections ``ip_adapter.<id>.to_{k,v}_ip.weight``
with ``id = 2 i + 1`` over the UNet's spatial ``attn2`` layers in ``attn_processors`` order (down,
up, mid; motion modules skipped): :func:`ip_adapter_layer_ids`, used to write such files
(``scripts/convert_i2v_adapter.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from i2vlab.models.loading import WeightsNotFoundError, check_weights, on_meta, to_plain
from i2vlab.utils.clip import clip_normalize

IP_ADAPTER_PUBLISHED = (
    "https://huggingface.co/h94/IP-Adapter (models/ip-adapter-plus_sd15.safetensors, models/image_encoder)"
)


def read_ip_adapter_file(path: str | Path, trust: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """An IP-Adapter checkpoint (``.bin``/``.pt`` dict with ``image_proj`` / ``ip_adapter``, read with
    ``torch.load(weights_only=True)`` unless ``trust``; or a ``.safetensors`` file with ``image_proj.`` /
    ``ip_adapter.`` key prefixes) -> {image_proj, ip_adapter}."""
    from i2vlab.utils.safe_load import load_torch_file

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(path))
        out: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for k, v in flat.items():
            head, _, rest = k.partition(".")
            if head in out:
                out[head][rest] = v
        return out
    sd = load_torch_file(path, what="IP-Adapter checkpoint", trust=trust)
    if not isinstance(sd, dict) or not {"image_proj", "ip_adapter"} <= set(sd):
        raise ValueError(f"{path}: not an IP-Adapter checkpoint (expected keys image_proj and ip_adapter)")
    return sd


def cross_attention_names(unet: nn.Module) -> list[str]:
    """Processor names of the spatial cross-attentions (``attn2``, not motion modules, not the Resampler)."""
    return [
        k
        for k in unet.attn_processors
        if k.endswith("attn2.processor")
        and "motion_modules" not in k
        and not k.startswith("encoder_hid_proj")
    ]


def install_content_adapter(
    unet: nn.Module,
    name: str = "backbone.content_adapter",
    pretrained: str | None = None,
    image_proj: Mapping[str, Any] | None = None,
    scale: float = 1.0,
) -> nn.Module:
    """Put IP-Adapter(-Plus) on ``unet`` (a ``UNetMotionModel``/``UNet2DConditionModel``) and return the
    image projection. ``pretrained``: an IP-Adapter checkpoint file (loaded with diffusers); ``None``
    (or on the meta device): random init from ``image_proj`` (``IPAdapterPlusImageProjection`` kwargs)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterPlusImageProjection, MultiIPAdapterImageProjection

    image_proj = dict(to_plain(image_proj) or {})
    if pretrained is not None and not on_meta():
        check_weights(pretrained, f"{name}.pretrained", IP_ADAPTER_PUBLISHED)
        if not Path(pretrained).expanduser().is_file():
            raise WeightsNotFoundError(
                f"{name}.pretrained must be an IP-Adapter checkpoint file, got {pretrained!r}. "
                f"Published: {IP_ADAPTER_PUBLISHED}"
            )
        load_ip_adapter_file(unet, Path(pretrained).expanduser())
    else:
        if not image_proj:
            raise ValueError(
                f"{name}: give `pretrained` (IP-Adapter file) or `image_proj` (Resampler config)"
            )
        num_tokens = int(image_proj.get("num_queries", 8))
        device = unet.conv_in.weight.device
        procs = dict(unet.attn_processors)
        for k in cross_attention_names(unet):
            attn = unet.get_submodule(k.rsplit(".", 1)[0])
            procs[k] = IPAdapterAttnProcessor2_0(
                hidden_size=attn.to_k.out_features,
                cross_attention_dim=attn.to_k.in_features,
                num_tokens=(num_tokens,),
                scale=scale,
            ).to(device)
        unet.set_attn_processor(procs)
        unet.encoder_hid_proj = MultiIPAdapterImageProjection(
            [IPAdapterPlusImageProjection(**image_proj).to(device)]
        )
        unet.config.encoder_hid_dim_type = "ip_image_proj"  # as diffusers' IP-Adapter loader sets it
    set_content_scale(unet, scale)
    return unet.encoder_hid_proj


def load_ip_adapter_file(unet: nn.Module, path: str | Path) -> None:
    """Load a published-format IP-Adapter file into ``unet`` with diffusers' public loader
    (``IPAdapterMixin.load_ip_adapter``; ``.bin`` files are read with ``weights_only=True``)."""
    from diffusers.loaders import IPAdapterMixin

    class _UNetHolder(IPAdapterMixin):  # what the pipeline mixin needs of a pipeline: its unet
        def __init__(self, unet: nn.Module) -> None:
            self.unet = unet

    path = Path(path)
    _UNetHolder(unet).load_ip_adapter(
        str(path.parent), subfolder=None, weight_name=path.name, image_encoder_folder=None
    )


def ip_adapter_layer_ids(unet: nn.Module) -> dict[str, int]:
    """{``attn2`` processor name: id in the published ``ip_adapter`` state dict} (1, 3, 5, ...)."""
    return {name: 2 * i + 1 for i, name in enumerate(cross_attention_names(unet))}


def ip_adapter_file_tensors(
    image_proj: Mapping[str, torch.Tensor], kv: Mapping[str, torch.Tensor], unet: nn.Module
) -> dict[str, torch.Tensor]:
    """The flat tensors of a published-format ``.safetensors`` IP-Adapter file: ``image_proj.*``
    (the Resampler in its original naming, as ``ip-adapter-plus_sd15.bin`` stores it) and
    ``ip_adapter.<id>.to_{k,v}_ip.weight`` from ``kv`` = {``<attn2 processor name>.to_k_ip.0.weight``
    / ``...to_v_ip.0.weight``: tensor} (diffusers' processor names on ``unet``)."""
    ids = ip_adapter_layer_ids(unet)
    out = {f"image_proj.{k}": v for k, v in image_proj.items()}
    expected = {f"{name}.{p}_ip.0.weight" for name in ids for p in ("to_k", "to_v")}
    if set(kv) != expected:
        missing, extra = sorted(expected - set(kv))[:3], sorted(set(kv) - expected)[:3]
        raise KeyError(f"IP-Adapter k/v do not match this UNet (missing {missing}, unexpected {extra})")
    for name, i in ids.items():
        for p in ("to_k", "to_v"):
            out[f"ip_adapter.{i}.{p}_ip.weight"] = kv[f"{name}.{p}_ip.0.weight"]
    return out


def set_content_scale(unet: nn.Module, scale: float) -> None:
    """Image-prompt weight of every IP-Adapter cross-attention (0 switches the content adapter off)."""
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    for p in unet.attn_processors.values():
        if isinstance(p, IPAdapterAttnProcessor2_0):
            p.scale = [scale] * len(p.scale)


def has_content_adapter(unet: nn.Module) -> bool:
    """Whether ``unet`` projects ``added_cond_kwargs["image_embeds"]`` (an IP-Adapter is installed).

    diffusers' loader sets ``encoder_hid_dim_type`` as an attribute of the config (``FrozenDict``),
    not as an item, so it is read with ``getattr`` (as the UNet's own forward does)."""
    return (
        getattr(unet, "encoder_hid_proj", None) is not None
        and getattr(unet.config, "encoder_hid_dim_type", None) == "ip_image_proj"
    )


def clip_preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images (b c h w) in [-1, 1] -> CLIP pixel values (b c size size): bicubic resize of the short side,
    centre crop, CLIP mean/std (what ``CLIPImageProcessor`` does, on tensors)."""
    x = (images.float() + 1) / 2
    h, w = x.shape[-2:]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    return clip_normalize(x)


@torch.no_grad()
def encode_clip_image(
    image_encoder: nn.Module,
    images: torch.Tensor | None,
    batch_size: int | None = None,
    drop: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP penultimate hidden states (b, tokens, d) of images (b c h w in [-1, 1]).

    ``images=None`` gives the unconditional embedding (all-zero pixel values) for ``batch_size``;
    ``drop`` (b,) bool replaces the chosen images by that all-zero input (classifier-free guidance)."""
    size = int(image_encoder.config.image_size)
    param = next(image_encoder.parameters())
    if images is None:
        pixels = torch.zeros(batch_size or 1, 3, size, size, device=param.device)
    else:
        pixels = clip_preprocess(images.to(param.device), size)
        if drop is not None:
            pixels = torch.where(drop.to(pixels.device).view(-1, 1, 1, 1), torch.zeros_like(pixels), pixels)
    out = image_encoder(pixels.to(param.dtype), output_hidden_states=True)
    return out.hidden_states[-2].float()
