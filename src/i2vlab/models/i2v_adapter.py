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
frames comes from a forward pre-hook on the UNet that reads ``sample`` (b c f h w)
(:func:`i2vlab.models.animatediff_norm.frame_count`, shared with the frame-aware GroupNorm), so the
adapted UNet works inside any caller (our pipeline, ControlNet residuals, gradient checkpointing).

Everything else (the Attention module, its weights, SDPA) is diffusers / PyTorch.

The second half of this module maps the official release's key layout (KwaiVGI/I2V-Adapter's
``UNet3DConditionModel``: SD1.5 + AnimateDiff v1 motion modules + IP-Adapter k/v + first-frame
branch) onto this project's and back: :func:`convert_official_unet`, :func:`convert_release`,
:func:`to_official_unet_state_dict`, :func:`export_official_adapter`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from i2vlab.models.animatediff_norm import FrameCount, frame_count

#: spatial self-attention processors of UNetMotionModel (motion modules and the IP projection excluded)
SPATIAL_SELF_ATTN = re.compile(
    r"(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.attentions\.\d+\.transformer_blocks\.\d+\.attn1\.processor"
)

#: full-match regex of the trainable parameters (method ``trainable`` config)
TRAINABLE_PATTERN = r"unet\..*\.attn1\.processor\.to_(q|out)_ff\.(weight|bias)"


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
        """diffusers' ``AttnProcessor2_0`` (the frozen self-attention, residual and rescale included)
        plus the first-frame branch ``W_O' A' + b_O'`` on the same normalised tokens. (The output
        dropout ``to_out[1]`` is applied to each branch; SD's is p = 0.)"""
        if encoder_hidden_states is not None:
            raise ValueError("FirstFrameAttnProcessor is for self-attention (attn1) only")
        f = self.frames.num_frames
        if f is None:
            raise RuntimeError("number of frames unknown: install the processor with install_i2v_adapter()")
        base = _PLAIN(attn, hidden_states, None, attention_mask, temb)
        x = hidden_states if attn.spatial_norm is None else attn.spatial_norm(hidden_states, temb)
        shape4 = x.shape if x.ndim == 4 else None
        if shape4 is not None:
            x = x.view(shape4[0], shape4[1], -1).transpose(1, 2)
        batch_size, n, _ = x.shape
        if batch_size % f:
            raise ValueError(f"batch of {batch_size} token sets is not a multiple of num_frames={f}")
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        out1 = self.first_frame_attention(attn, x, f, attention_mask)
        out1 = attn.to_out[1](self.to_out_ff(out1))
        if shape4 is not None:
            out1 = out1.transpose(-1, -2).reshape(shape4)
        return base + out1 / attn.rescale_output_factor

    def first_frame_attention(
        self, attn: nn.Module, x: torch.Tensor, f: int, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``A' = softmax(Q' K1^T / sqrt(d)) V1``: every frame's new queries (``to_q_ff``) attend to
        frame 0's frozen keys and values. ``x``: normalised tokens ((b f) n c). Returns (b f) n inner."""
        batch_size, n, _ = x.shape
        b, h = batch_size // f, attn.heads
        x0 = x.view(b, f, n, -1)[:, 0]  # frame 0's tokens
        k1, v1 = attn.to_k(x0), attn.to_v(x0)
        d = k1.shape[-1] // h
        k1, v1 = (t.view(b, n, h, d).transpose(1, 2) for t in (k1, v1))  # b h n d
        if attn.norm_k is not None:
            k1 = attn.norm_k(k1)
        q1 = self.to_q_ff(x)
        if attention_mask is None:
            # the queries of a clip's f frames are stacked along the sequence axis: no key is repeated
            q1 = q1.view(b, f * n, h, d).transpose(1, 2)  # b h (f n) d
            out1 = F.scaled_dot_product_attention(q1, k1, v1, dropout_p=0.0, is_causal=False)
        else:  # each frame keeps its own mask (as the official code does): repeat frame 0's keys
            mask = attn.prepare_attention_mask(attention_mask, n, batch_size)
            mask = mask.view(batch_size, h, -1, mask.shape[-1])
            q1 = q1.view(batch_size, -1, h, d).transpose(1, 2)
            k1, v1 = k1.repeat_interleave(f, dim=0), v1.repeat_interleave(f, dim=0)
            out1 = F.scaled_dot_product_attention(q1, k1, v1, attn_mask=mask, dropout_p=0.0, is_causal=False)
        return out1.transpose(1, 2).reshape(batch_size, n, h * d).to(x.dtype)


#: the stateless diffusers processor of the frozen branch (one for all layers: it keeps no state)
_PLAIN = AttnProcessor2_0()


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
    frames = frame_count(unet)
    new = {
        k: FirstFrameAttnProcessor(unet.get_submodule(k.rsplit(".", 1)[0]), frames, copy_query) for k in names
    }
    unet.set_attn_processor({**current, **new})
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
    """``to_q_ff <- to_q`` in every layer: the *initial* value of the branch's query (the paper's
    initialisation, and what the official ``from_pretrained_ip`` writes before the trained branch
    checkpoint is loaded over it). Applied after :func:`load_personalized_unet`, it makes the branch
    use the personalised UNet's own query projection, which the official code does not do."""
    with torch.no_grad():
        for name, proc in i2v_adapter_processors(unet).items():
            proc.to_q_ff.weight.copy_(unet.get_submodule(name.rsplit(".", 1)[0]).to_q.weight)


# the official formats and compatibility loaders (kept importable from here)
from i2vlab.models.i2v_adapter_compat import load_lora, load_personalized_unet  # noqa: E402,F401
from i2vlab.models.i2v_adapter_official import (  # noqa: E402,F401
    OfficialConversion,
    ReleaseConversion,
    convert_official_adapter,
    convert_official_unet,
    convert_release,
    export_official_adapter,
    official_key_to_ours,
    ours_key_to_official,
    read_checkpoint,
    to_official_unet_state_dict,
)
