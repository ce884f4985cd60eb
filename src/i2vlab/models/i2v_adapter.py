"""I2V-Adapter's first-frame attention branch as a diffusers attention processor.

What is new here (I2V-Adapter, arXiv 2312.16693 §3.2; official ``MixedCausalAttention2D``): every
spatial self-attention (``attn1`` of each ``Transformer2DModel`` block of ``UNetMotionModel``: down,
mid and up) gets a second branch in which every frame's tokens query the *first* frame:

    A  = softmax(Q  K^T  / sqrt(d)) V          Q = X W_Q,  K = X W_K,  V = X W_V     (frozen, unchanged)
    A' = softmax(Q' K1^T / sqrt(d)) V1         Q' = X W_Q' (new),  K1, V1 = frozen W_K, W_V on frame 0
    out = Dropout(W_O A + b_O + W_O' A' + b_O')

``to_q_ff`` (W_Q', no bias) starts as a copy of ``to_q``; ``to_out_ff`` (W_O', b_O') starts at zero,
so at initialisation the adapted UNet computes exactly what the stock UNet computes. Only these
two projections train (2C² + C parameters per layer).

The processor is an ``nn.Module`` registered with ``set_attn_processor``: diffusers keeps it as the
``processor`` submodule of the ``Attention`` layer, so its weights appear in ``named_parameters()``
as ``...attn1.processor.to_q_ff.weight`` etc. Hidden states arrive as ``(b f) n c``; the number of
frames comes from a forward pre-hook on the UNet that reads ``sample`` (b c f h w), so the adapted
UNet works inside any caller (our pipeline, ControlNet residuals, gradient checkpointing).

Everything else (the Attention module, its weights, SDPA) is diffusers / PyTorch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: spatial self-attention processors of UNetMotionModel (motion modules and the IP projection excluded)
SPATIAL_SELF_ATTN = re.compile(
    r"(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.attentions\.\d+\.transformer_blocks\.\d+\.attn1\.processor"
)

#: full-match regex of the trainable parameters (method ``trainable`` config)
TRAINABLE_PATTERN = r"unet\..*\.attn1\.processor\.to_(q|out)_ff\.(weight|bias)"


class FrameCount:
    """Number of frames of the current UNet call, shared by all first-frame processors of one UNet."""

    def __init__(self) -> None:
        self.num_frames: int | None = None


class FirstFrameAttnProcessor(nn.Module):
    """Self-attention + first-frame attention (I2V-Adapter) for one ``attn1`` layer.

    Args:
        attn: the ``Attention`` layer this processor is built for (shapes, and ``to_q`` to copy).
        frames: the shared :class:`FrameCount` written by the UNet's forward pre-hook.
        copy_query: initialise ``to_q_ff`` from ``attn.to_q`` (True) or leave it random.
    """

    def __init__(self, attn: nn.Module, frames: FrameCount, copy_query: bool = True) -> None:
        super().__init__()
        to_q, to_out = attn.to_q, attn.to_out[0]
        w = to_q.weight
        self.to_q_ff = nn.Linear(
            to_q.in_features, to_q.out_features, bias=False, device=w.device, dtype=w.dtype
        )
        self.to_out_ff = nn.Linear(
            to_out.in_features, to_out.out_features, bias=True, device=w.device, dtype=w.dtype
        )
        with torch.no_grad():
            if copy_query:
                self.to_q_ff.weight.copy_(to_q.weight)
            self.to_out_ff.weight.zero_()
            self.to_out_ff.bias.zero_()
        self.frames = frames

    def extra_repr(self) -> str:
        return f"to_q_ff: {tuple(self.to_q_ff.weight.shape)}, to_out_ff: {tuple(self.to_out_ff.weight.shape)}"

    # diffusers' Attention filters keyword arguments by the signature of ``processor.__call__``,
    # so the maths is written in ``__call__`` (as diffusers' own nn.Module processors do).
    def __call__(  # type: ignore[override]
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("FirstFrameAttnProcessor is for self-attention (attn1) only")
        f = self.frames.num_frames
        if f is None:
            raise RuntimeError("number of frames unknown: install the processor with install_i2v_adapter()")
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, n, _ = hidden_states.shape
        if batch_size % f:
            raise ValueError(f"batch of {batch_size} token sets is not a multiple of num_frames={f}")
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, n, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        # frozen self-attention branch: the same operations, in the same order, as AttnProcessor2_0
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)

        # first-frame branch: every frame's new queries attend to frame 0's (frozen) keys and values.
        b = batch_size // f
        k1 = key.view(b, f, attn.heads, n, head_dim)[:, 0]  # b h n d
        v1 = value.view(b, f, attn.heads, n, head_dim)[:, 0]
        q1 = self.to_q_ff(hidden_states)
        if attention_mask is None:
            # the queries of a clip's f frames are stacked along the sequence axis: no key is repeated
            q1 = q1.view(b, f * n, attn.heads, head_dim).transpose(1, 2)  # b h (f n) d
            out1 = F.scaled_dot_product_attention(q1, k1, v1, dropout_p=0.0, is_causal=False)
        else:  # each frame keeps its own mask (as the official code does): repeat frame 0's keys
            q1 = q1.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
            k1 = k1.repeat_interleave(f, dim=0)
            v1 = v1.repeat_interleave(f, dim=0)
            out1 = F.scaled_dot_product_attention(
                q1, k1, v1, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )
        out1 = out1.transpose(1, 2).reshape(batch_size, n, attn.heads * head_dim).to(query.dtype)

        hidden_states = attn.to_out[0](out) + self.to_out_ff(out1)
        hidden_states = attn.to_out[1](hidden_states)  # dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class _FramesHook:
    """UNet forward pre-hook: record ``sample.shape[2]`` (b c f h w) for the first-frame processors."""

    def __init__(self, frames: FrameCount) -> None:
        self.frames = frames

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.frames.num_frames = int(sample.shape[2])


def spatial_self_attention_names(unet: nn.Module) -> list[str]:
    """Processor names of every spatial self-attention of ``unet`` (down, mid, up; not motion modules)."""
    return [k for k in unet.attn_processors if SPATIAL_SELF_ATTN.fullmatch(k) and "motion_modules" not in k]


def install_i2v_adapter(unet: nn.Module, copy_query: bool = True) -> dict[str, FirstFrameAttnProcessor]:
    """Put a :class:`FirstFrameAttnProcessor` on every spatial ``attn1`` of a ``UNetMotionModel``.

    Install the content adapter (IP-Adapter) first: diffusers' IP-Adapter loader resets every
    non-cross-attention processor. Returns {processor name: processor}. Idempotent.
    """
    names = spatial_self_attention_names(unet)
    if not names:
        raise ValueError(f"{type(unet).__name__} has no spatial self-attention (attn1) layers to adapt")
    current = unet.attn_processors
    if all(isinstance(current[k], FirstFrameAttnProcessor) for k in names):
        return {k: current[k] for k in names}
    frames = FrameCount()
    new = {
        k: FirstFrameAttnProcessor(unet.get_submodule(k.rsplit(".", 1)[0]), frames, copy_query) for k in names
    }
    unet.set_attn_processor({**current, **new})
    unet._i2v_frames_hook = unet.register_forward_pre_hook(_FramesHook(frames), with_kwargs=True)
    return new


def i2v_adapter_processors(unet: nn.Module) -> dict[str, FirstFrameAttnProcessor]:
    return {k: p for k, p in unet.attn_processors.items() if isinstance(p, FirstFrameAttnProcessor)}


def i2v_adapter_state_dict(unet: nn.Module, prefix: str = "unet.") -> dict[str, torch.Tensor]:
    """Only the new projections, named as in ``named_parameters()`` of the method (``unet.`` prefix)."""
    out = {}
    for name, proc in i2v_adapter_processors(unet).items():
        for pname, p in proc.named_parameters():
            out[f"{prefix}{name}.{pname}"] = p.detach()
    return out


def load_i2v_adapter_state_dict(
    unet: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str = "unet.", strict: bool = True
) -> list[str]:
    """Copy first-frame projections (named as :func:`i2v_adapter_state_dict`) into ``unet``."""
    own = i2v_adapter_state_dict(unet, prefix)
    if strict and set(own) != set(state_dict):
        missing, extra = sorted(set(own) - set(state_dict))[:3], sorted(set(state_dict) - set(own))[:3]
        raise KeyError(f"I2V-Adapter weights do not match this UNet (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        for k, v in state_dict.items():
            if k in own:
                if own[k].shape != v.shape:
                    raise ValueError(f"{k}: shape {tuple(v.shape)} != {tuple(own[k].shape)}")
                own[k].copy_(v.to(own[k].dtype))
    return sorted(k for k in state_dict if k in own)


def reset_query_from_to_q(unet: nn.Module) -> None:
    """``to_q_ff <- to_q`` in every layer: what the official loader does on every load (so that a
    personalised UNet's own query projection is used by the first-frame branch too)."""
    with torch.no_grad():
        for name, proc in i2v_adapter_processors(unet).items():
            proc.to_q_ff.weight.copy_(unet.get_submodule(name.rsplit(".", 1)[0]).to_q.weight)


# ----------------------------------------------------------------------------------------------
# compatibility with community SD1.5 weights (the paper's claim): personalised UNets and LoRA
# ----------------------------------------------------------------------------------------------
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd)


def load_personalized_unet(unet: nn.Module, path: str | Path, reset_query: bool = False) -> list[str]:
    """Replace the SD1.5 (spatial) weights of a ``UNetMotionModel`` by a personalised SD1.5 UNet
    (DreamBooth-style full weights): a diffusers ``UNet2DConditionModel`` folder (or its parent
    pipeline folder with ``unet/``), or a ``.safetensors``/``.bin`` state dict in diffusers naming.
    Motion modules, the content adapter and the first-frame projections are kept. Returns the
    loaded names. ``reset_query``: also set ``to_q_ff <- to_q`` (what the official loader does).

    Original (LDM) single-file checkpoints must be converted to diffusers naming first (diffusers'
    ``UNet2DConditionModel.from_single_file`` or its conversion script)."""
    from i2vlab.models.loading import WeightsNotFoundError

    path = Path(path).expanduser()
    if path.is_dir():
        from diffusers import UNet2DConditionModel

        sub = {"subfolder": "unet"} if (path / "unet").is_dir() else {}
        sd = UNet2DConditionModel.from_pretrained(str(path), **sub).state_dict()
    elif path.is_file():
        sd = _read_state_dict(path)
    else:
        raise WeightsNotFoundError(
            f"personalized_unet: {str(path)!r} does not exist (a diffusers UNet folder or state dict)"
        )
    if any(k.startswith("model.diffusion_model.") for k in sd):
        raise ValueError(f"{path}: an original (LDM) checkpoint; convert it to diffusers naming first")
    own = unet.state_dict()
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


# ----------------------------------------------------------------------------------------------
# the official release's key names (scripts/convert_i2v_adapter.py)
# ----------------------------------------------------------------------------------------------
_OFFICIAL_KEY = re.compile(
    r"(?:.*?\.)?((?:down_blocks\.\d+|mid_block|up_blocks\.\d+)\.attentions\.\d+\.transformer_blocks\.\d+)"
    r"\.attn1\.(to_q_ff\.weight|to_out_ff\.weight|to_out_ff\.bias|to_q\.weight)"
)


def convert_official_state_dict(
    state_dict: Mapping[str, torch.Tensor], query_from_to_q: bool = False, prefix: str = "unet."
) -> dict[str, torch.Tensor]:
    """Map the official I2V-Adapter keys (AnimateDiff/diffusers-0.11 naming, e.g.
    ``down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q_ff.weight``, with or without a
    ``module.``/``unet.`` prefix) onto this project's names
    (``unet.down_blocks.0.attentions.1.transformer_blocks.0.attn1.processor.to_q_ff.weight``).

    The official loader (``UNet3DConditionModel.from_pretrained_ip``) overwrites ``to_q_ff`` with the
    same block's ``to_q`` on every load; ``query_from_to_q=True`` does the same here (and it is done
    for a block whose ``to_q_ff`` is absent). Everything else in the file (SD, motion module,
    IP-Adapter) is ignored."""
    blocks: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in state_dict.items():
        m = _OFFICIAL_KEY.fullmatch(k)
        if m and "motion_modules" not in k:
            blocks.setdefault(m.group(1), {})[m.group(2)] = v
    out: dict[str, torch.Tensor] = {}
    for block, t in sorted(blocks.items()):
        if "to_out_ff.weight" not in t:
            continue  # a plain SD block (to_q only): not adapted
        if "to_out_ff.bias" not in t:
            raise KeyError(f"{block}.attn1: to_out_ff.weight without to_out_ff.bias")
        q = (
            t["to_q.weight"]
            if (query_from_to_q or "to_q_ff.weight" not in t) and "to_q.weight" in t
            else t.get("to_q_ff.weight")
        )
        if q is None:
            raise KeyError(f"{block}.attn1: neither to_q_ff.weight nor to_q.weight in the file")
        base = f"{prefix}{block}.attn1.processor"
        out[f"{base}.to_q_ff.weight"] = q.clone()
        out[f"{base}.to_out_ff.weight"] = t["to_out_ff.weight"].clone()
        out[f"{base}.to_out_ff.bias"] = t["to_out_ff.bias"].clone()
    if not out:
        raise KeyError("no I2V-Adapter weights (attn1.to_out_ff.*) found in the state dict")
    return out
