"""I2V-Adapter's compatibility with community SD1.5 weights (the paper's claim): personalised
(DreamBooth-style) UNets -- also from the official combined release checkpoint -- and LoRAs, loaded
into the adapted UNet without touching the trained branch or the motion module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

from i2vlab.models.i2v_adapter import reset_query_from_to_q
from i2vlab.models.i2v_adapter_official import (
    _FF_KEY,
    _IP_KEY,
    _strip_prefix,
    convert_official_unet,
    read_checkpoint,
)


# ----------------------------------------------------------------------------------------------
# compatibility with community SD1.5 weights (the paper's claim): personalised UNets and LoRA
# ----------------------------------------------------------------------------------------------
def _looks_official(keys: Iterable[str]) -> bool:
    """Keys in the official I2V-Adapter / AnimateDiff UNet layout (not diffusers')."""
    return any(".temporal_transformer." in k or _FF_KEY.fullmatch(k) or _IP_KEY.fullmatch(k) for k in keys)


def load_personalized_unet(
    unet: nn.Module, path: str | Path, reset_query: bool = False, trust: bool = False
) -> list[str]:
    """Replace the weights of a ``UNetMotionModel`` by those of a personalised UNet.

    ``path``: a diffusers ``UNet2DConditionModel`` folder (or its parent pipeline folder with
    ``unet/``); a ``.safetensors``/``.bin`` state dict in diffusers naming (DreamBooth-style SD1.5
    weights: the motion modules, content adapter and first-frame projections are kept); or a state
    dict in the official I2V-Adapter / AnimateDiff UNet layout (e.g. ``animatediff_v15_v1_ipplus.pth``),
    converted by :func:`convert_official_unet`: every tensor it holds is loaded (SD, motion modules,
    IP-Adapter k/v, first-frame branch), and a key of no known layout is an error. Returns the loaded
    names (this UNet's). ``reset_query``: also set ``to_q_ff <- to_q`` (see :func:`reset_query_from_to_q`).

    Original (LDM) single-file checkpoints must be converted to diffusers naming first (diffusers'
    ``UNet2DConditionModel.from_single_file`` or its conversion script)."""
    from i2vlab.models.loading import WeightsNotFoundError

    path = Path(path).expanduser()
    if path.is_dir():
        from diffusers import UNet2DConditionModel

        sub = {"subfolder": "unet"} if (path / "unet").is_dir() else {}
        sd = UNet2DConditionModel.from_pretrained(str(path), **sub).state_dict()
    elif path.is_file():
        sd = read_checkpoint(path, trust=trust)
    else:
        raise WeightsNotFoundError(
            f"personalized_unet: {str(path)!r} does not exist (a diffusers UNet folder or state dict)"
        )
    if any(k.startswith("model.diffusion_model.") for k in sd):
        raise ValueError(f"{path}: an original (LDM) checkpoint; convert it to diffusers naming first")
    own = unet.state_dict()
    if _looks_official(sd):
        conv = convert_official_unet({_strip_prefix(k): v for k, v in sd.items()}, own)
        sd = {**conv.unet, **conv.ip, **conv.adapter_names()}
    unknown = [k for k in sd if k not in own]
    if unknown:
        raise KeyError(
            f"{path}: {len(unknown)} tensors do not belong to an SD1.5 UNet of this shape (e.g. {unknown[:3]})"
        )
    shape = [k for k, v in sd.items() if own[k].shape != v.shape]
    if shape:
        raise ValueError(f"{path}: shape mismatch for {shape[:3]}")
    with torch.no_grad():
        for k, v in sd.items():
            own[k].copy_(v.to(own[k].dtype))
    if reset_query:
        reset_query_from_to_q(unet)
    return sorted(sd)


def load_lora(
    unet: nn.Module,
    path: str | Path | Mapping[str, torch.Tensor],
    scale: float = 1.0,
    adapter_name: str = "personalized",
) -> str:
    """Add an SD1.5 LoRA (diffusers/PEFT, kohya or A1111 format; read and converted by diffusers'
    ``StableDiffusionLoraLoaderMixin.lora_state_dict``) to the UNet through PEFT, with weight ``scale``.
    LoRA layers wrap the frozen ``to_q/to_k/to_v/to_out`` (and whatever else the file targets); the
    first-frame projections are not touched."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    from i2vlab.models.loading import WeightsNotFoundError

    if not isinstance(path, Mapping) and not Path(path).expanduser().exists():
        raise WeightsNotFoundError(f"lora: {str(path)!r} does not exist (a LoRA .safetensors file or folder)")
    src = path if isinstance(path, Mapping) else str(Path(path).expanduser())
    state_dict, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(src)
    unet_sd = {k: v for k, v in state_dict.items() if k.startswith("unet.")}
    if not unet_sd:
        raise ValueError(f"{path}: no UNet LoRA weights found")
    unet_alphas = {k: v for k, v in (alphas or {}).items() if k.startswith("unet.")} or None
    grad = {n: p.requires_grad for n, p in unet.named_parameters()}
    unet.load_lora_adapter(unet_sd, network_alphas=unet_alphas, prefix="unet", adapter_name=adapter_name)
    unet.set_adapters([adapter_name], weights=[float(scale)])
    # PEFT freezes everything but the LoRA weights; restore the method's selection (LoRA stays frozen)
    for n, p in unet.named_parameters():
        p.requires_grad_(grad.get(n, False))
    return adapter_name
