"""DynamiCrafter's dual cross-attention, as a diffusers attention processor.

New in the paper (everything else here is diffusers' ``Attention``): the spatial cross-attention
``attn2`` of every spatial transformer attends to the text tokens *and*, through new key/value
projections ``to_k_ip`` / ``to_v_ip``, to the frame's image tokens from the context learner, with a
shared query::

    out = to_out( Attn(Q, K_txt, V_txt) + s * lambda * Attn(Q, K_img, V_img) ),  lambda = tanh(alpha) + 1

``alpha`` is a per-layer scalar initialised to 0 (lambda = 1) and exists only when the gate is
learnable (the official 256 config); otherwise lambda is 1. ``gate_multiplier`` (a plain float, not a
weight; 1 by default) scales lambda at inference: the paper's Figure 2 study of raising or lowering
lambda in chosen layers (:func:`scaled_gates`). The context is ``[text ; image]`` along
the token axis: the first ``text_context_len`` tokens are text, the rest image tokens (reference:
``lvdm/modules/attention.py`` ``CrossAttention`` in Doubiiu/DynamiCrafter).

Temporal attention needs nothing new: the temporal transformers are diffusers'
``TransformerTemporalModel`` (self-attention over frames, no positional encoding), see ``unet3d.py``.

Tensor layouts: hidden states ``(b f) n c``; context ``(b f) (L_txt + L_img) d``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from torch import nn

#: processor names of the spatial cross-attentions that get the image branch (not temporal ones)
SPATIAL_CROSS_ATTN = re.compile(r"(^|.*\.)attentions\.\d+\.transformer_blocks\.\d+\.attn2\.processor$")


class DualCrossAttnProcessor(nn.Module):
    """Text cross-attention plus a gated image cross-attention sharing the query.

    Args:
        hidden_size: the attention's inner dimension (heads * head_dim).
        cross_attention_dim: width of the context tokens.
        text_context_len: number of leading text tokens in the context (77 for CLIP).
        scale: ``image_cross_attention_scale`` s (1.0 in all official configs).
        scale_learnable: create the per-layer gate ``alpha`` (lambda = tanh(alpha) + 1).
    """

    def __init__(
        self,
        hidden_size: int,
        cross_attention_dim: int,
        text_context_len: int = 77,
        scale: float = 1.0,
        scale_learnable: bool = False,
    ) -> None:
        super().__init__()
        self.text_context_len = int(text_context_len)
        self.scale = float(scale)
        self.scale_learnable = bool(scale_learnable)
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        if self.scale_learnable:
            self.alpha = nn.Parameter(torch.zeros(()))
        self.gate_multiplier = 1.0  # inference-time scale of lambda (Figure 2 study); not a weight

    def gate(self) -> torch.Tensor:
        """lambda = tanh(alpha) + 1 (a constant 1 when the gate is not learnable)."""
        if self.scale_learnable:
            return torch.tanh(self.alpha) + 1
        return torch.ones((), device=self.to_k_ip.weight.device)

    @staticmethod
    def _attend(
        attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None
    ) -> torch.Tensor:
        b, h = q.shape[0], attn.heads
        q, k, v = (x.view(b, -1, h, x.shape[-1] // h).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
        return out.transpose(1, 2).reshape(b, -1, h * out.shape[-1])

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ):
        if encoder_hidden_states is None:  # used as self-attention: nothing to add
            return _PLAIN(attn, hidden_states, None, attention_mask, temb)
        residual = hidden_states
        q = attn.to_q(hidden_states)
        text = encoder_hidden_states[:, : self.text_context_len]
        image = encoder_hidden_states[:, self.text_context_len :]
        mask_txt = mask_img = None
        if attention_mask is not None:  # a mask over the whole context: each branch gets its columns
            b = hidden_states.shape[0]
            mask = attn.prepare_attention_mask(attention_mask, encoder_hidden_states.shape[1], b)
            mask = mask.view(b, attn.heads, -1, mask.shape[-1])
            mask_txt, mask_img = mask[..., : self.text_context_len], mask[..., self.text_context_len :]
        out = self._attend(attn, q, attn.to_k(text), attn.to_v(text), mask_txt)
        if image.shape[1] > 0:
            out_ip = self._attend(attn, q, self.to_k_ip(image), self.to_v_ip(image), mask_img)
            gate = self.gate().to(out.dtype)
            if self.gate_multiplier != 1.0:
                gate = gate * self.gate_multiplier
            out = out + self.scale * gate * out_ip
        out = attn.to_out[1](attn.to_out[0](out.to(q.dtype)))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


#: the stateless diffusers processor for self-attention use (one for all layers: it keeps no state)
_PLAIN = AttnProcessor2_0()


def install_dual_cross_attention(
    unet: nn.Module, text_context_len: int = 77, scale: float = 1.0, scale_learnable: bool = False
) -> list[str]:
    """Put a :class:`DualCrossAttnProcessor` on every spatial cross-attention of a diffusers UNet
    (``UNet2DConditionModel`` or :class:`DynamiCrafterUNet3DModel`). Returns the processor names."""
    names = []
    for name, attn in list(unet.named_modules()):
        if isinstance(attn, Attention) and SPATIAL_CROSS_ATTN.match(f"{name}.processor"):
            new = DualCrossAttnProcessor(
                attn.inner_dim, attn.cross_attention_dim, text_context_len, scale, scale_learnable
            )
            attn.set_processor(new.to(device=attn.to_q.weight.device, dtype=attn.to_q.weight.dtype))
            names.append(f"{name}.processor")
    if not names:
        raise ValueError(
            f"{type(unet).__name__} has no spatial cross-attention (attentions.N...attn2) to extend"
        )
    return names


def dual_cross_attention_layers(module: nn.Module) -> list[DualCrossAttnProcessor]:
    """The dual cross-attention processors of a UNet in forward order (down, mid, up blocks): the
    order of the ``lambda/NN`` training logs and of ``scripts/plot_lambda.py`` (0-based)."""
    named = [(n, m) for n, m in module.named_modules() if isinstance(m, DualCrossAttnProcessor)]
    named.sort(key=lambda nm: layer_order_key(nm[0]))
    return [m for _, m in named]


@contextmanager
def scaled_gates(module: nn.Module, scale: float = 1.0, layers: Sequence[int] | None = None):
    """Multiply lambda of the chosen layers (0-based forward-order indices, all when ``None``) by
    ``scale`` inside the ``with`` block, then restore it (DynamiCrafter Figure 2, right: raising lambda
    in the middle layers suppresses motion, lowering it loses the object's shape)."""
    procs = dual_cross_attention_layers(module)
    chosen = range(len(procs)) if layers is None else [int(i) for i in layers]
    bad = [i for i in chosen if not 0 <= i < len(procs)]
    if bad:
        raise ValueError(
            f"gate_layers {bad}: this UNet has {len(procs)} dual cross-attention layers (0-based)"
        )
    before = [p.gate_multiplier for p in procs]
    try:
        for i in chosen:
            procs[i].gate_multiplier = before[i] * float(scale)
        yield procs
    finally:
        for p, b in zip(procs, before):
            p.gate_multiplier = b


def gate_values(module: nn.Module) -> OrderedDict[str, float]:
    """lambda of every gated layer, in forward order (down, mid, up), keyed by the attention's name."""
    out = OrderedDict()
    for name, m in module.named_modules():
        if isinstance(m, DualCrossAttnProcessor) and m.scale_learnable:
            out[name[: -len(".processor")]] = float(m.gate().detach())
    return out


def gates_from_state_dict(tensors: dict[str, torch.Tensor]) -> OrderedDict[str, float]:
    """lambda per layer from a checkpoint / export (``...attn2.processor.alpha`` entries), in network order."""
    keys = [k for k in tensors if k.endswith("processor.alpha")]
    keys.sort(key=layer_order_key)
    return OrderedDict(
        (k[: -len(".processor.alpha")], float(torch.tanh(tensors[k].float()) + 1)) for k in keys
    )


def layer_order_key(name: str) -> tuple:
    """Sort key putting down blocks first, then the mid block, then up blocks (forward order)."""
    part = 0 if "down_blocks." in name else 1 if "mid_block." in name else 2
    nums = tuple(int(n) for n in re.findall(r"\.(\d+)\.", name))
    return (part, *nums)
