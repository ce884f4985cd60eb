"""DynamiCrafter's networks: the VideoCrafter 3D UNet, the context learner (Resampler) and the gated
dual cross-attention, plus builders used by ``conf/backbone/*dynamicrafter*.yaml``.

Builders accept ``pretrained`` as a diffusers folder (``save_pretrained`` output, e.g. written by
``scripts/convert_dynamicrafter.py``) or an official checkpoint file (``model.ckpt``), converted on
load. On the meta device (parameter reports) they build from ``config`` only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from i2vlab.models.dynamicrafter.attention import (
    DualCrossAttnProcessor,
    dual_cross_attention_layers,
    gate_values,
    gates_from_state_dict,
    install_dual_cross_attention,
    scaled_gates,
)
from i2vlab.models.dynamicrafter.convert import (
    convert_resampler_state_dict,
    convert_unet_state_dict,
    load_official_checkpoint,
    widen_conv_in,
)
from i2vlab.models.dynamicrafter.resampler import Resampler, clip_preprocess
from i2vlab.models.dynamicrafter.unet3d import DynamiCrafterUNet3DModel, frame_context
from i2vlab.models.loading import WeightsNotFoundError, check_weights, load_or_build, on_meta, to_plain

__all__ = [
    "DualCrossAttnProcessor",
    "DynamiCrafterUNet3DModel",
    "Resampler",
    "build_resampler",
    "build_t2i_unet",
    "build_unet3d",
    "clip_preprocess",
    "dual_cross_attention_layers",
    "frame_context",
    "gate_values",
    "gates_from_state_dict",
    "install_dual_cross_attention",
    "scaled_gates",
]

log = logging.getLogger(__name__)

PUBLISHED = (
    "https://huggingface.co/Doubiiu/DynamiCrafter (256), Doubiiu/DynamiCrafter_512, "
    "Doubiiu/DynamiCrafter_1024, Doubiiu/DynamiCrafter_512_Interp (model.ckpt); "
    "VideoCrafter2 T2V: https://huggingface.co/VideoCrafter/VideoCrafter2 (model.ckpt)"
)


def _is_checkpoint_file(path: str) -> bool:
    return Path(path).suffix in (".ckpt", ".pt", ".pth", ".safetensors")


def _load_converted(model: torch.nn.Module, tensors: dict[str, torch.Tensor], name: str, source: str) -> None:
    own = model.state_dict()
    if "conv_in.weight" in tensors and "conv_in.weight" in own:
        tensors["conv_in.weight"] = widen_conv_in(tensors["conv_in.weight"], own["conv_in.weight"].shape[1])
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected:
        raise RuntimeError(
            f"{name}: {source} has weights this config does not ({unexpected[:5]}...): "
            f"check {name}.config against the checkpoint"
        )
    if missing:
        log.warning(
            "%s: %d weights not in %s, left at init (e.g. %s)", name, len(missing), source, missing[:4]
        )


def build_unet3d(
    name: str, config: Mapping[str, Any], pretrained: str | None = None, trust_checkpoint: bool = False
) -> DynamiCrafterUNet3DModel:
    """The DynamiCrafter / VideoCrafter 3D UNet from ``config`` and, unless on meta, ``pretrained``
    (official ``model.ckpt`` of DynamiCrafter or VideoCrafter2, or a diffusers folder). A 4-channel
    conv_in in the weights is widened to ``config.in_channels`` with zero new channels.
    ``trust_checkpoint`` allows a ``.ckpt`` that needs full unpickling (it can run code)."""
    config = dict(to_plain(config) or {})
    if on_meta() or pretrained is None:
        return DynamiCrafterUNet3DModel(**config)
    check_weights(pretrained, f"{name}.pretrained", PUBLISHED)
    if not _is_checkpoint_file(pretrained):
        return load_or_build(DynamiCrafterUNet3DModel, name, pretrained=pretrained, published=PUBLISHED)
    model = DynamiCrafterUNet3DModel(**config)
    _load_converted(
        model,
        convert_unet_state_dict(load_official_checkpoint(pretrained, trust_checkpoint), model.config),
        name,
        pretrained,
    )
    return model


def build_resampler(
    name: str, config: Mapping[str, Any], pretrained: str | None = None, trust_checkpoint: bool = False
) -> Resampler:
    """The context learner from ``config`` and ``pretrained`` (official ``model.ckpt``, its
    ``image_proj_model.*`` part, or a diffusers folder); random init when ``pretrained`` is null."""
    config = dict(to_plain(config) or {})
    if on_meta() or pretrained is None:
        return Resampler(**config)
    check_weights(pretrained, f"{name}.pretrained", PUBLISHED)
    if not _is_checkpoint_file(pretrained):
        return load_or_build(Resampler, name, pretrained=pretrained, published=PUBLISHED)
    model = Resampler(**config)
    tensors = convert_resampler_state_dict(load_official_checkpoint(pretrained, trust_checkpoint))
    if not tensors:
        raise WeightsNotFoundError(
            f"{name}: {pretrained} holds no image_proj_model.* weights (a T2V checkpoint?); "
            f"set {name}.pretrained=null to start the context learner from scratch"
        )
    model.load_state_dict(tensors)
    return model


def build_t2i_unet(
    name: str,
    config: Mapping[str, Any],
    pretrained: str | None = None,
    subfolder: str | None = "unet",
    image_cross_attention: Mapping[str, Any] | None = None,
    published: str | None = None,
):
    """Stage 1's text-to-image UNet (SD2.1 ``UNet2DConditionModel``) with the dual cross-attention
    processors installed on its spatial ``attn2`` layers (``image_cross_attention``:
    ``{text_context_len, scale, scale_learnable}``)."""
    unet = load_or_build(
        "diffusers.UNet2DConditionModel",
        name,
        config=config,
        pretrained=pretrained,
        subfolder=subfolder,
        published=published,
    )
    ica = dict(to_plain(image_cross_attention) or {})
    install_dual_cross_attention(
        unet,
        int(ica.get("text_context_len", 77)),
        float(ica.get("scale", 1.0)),
        bool(ica.get("scale_learnable", True)),
    )
    return unet
