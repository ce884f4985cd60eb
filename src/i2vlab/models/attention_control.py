"""Rotated temporal attention (Generative Inbetweening §3.1) as diffusers attention processors.

SVD's temporal self-attention (``*.temporal_transformer_blocks.0.attn1``, 16 layers in the
full-size UNet) attends over frames: per spatial position, an (F x F) map per head.

- :class:`AttentionStoreProcessor` (frozen forward / reference UNet) computes attention normally
  and records each layer's probabilities, shape ``(B·HW, heads, F, F)``, in a shared
  :class:`AttentionStore`.
- :class:`AttentionFlipProcessor` (fine-tuned backward UNet) does not use its own query/key maps:
  it takes the same layer's stored map rotated by 180° (``A'[j, k] = A[F-1-j, F-1-k]``) and applies
  it to its own values, ``out = to_out(rot(A)·(X W_v))``.

Maps are keyed by the layer's module name (not by call order as in the official code), so the
pairing of reference and fine-tuned layers holds whatever order the layers run in, including the
recomputation of activation (gradient) checkpointing. The reference pass must run first at every
step, with the same batch layout (e.g. the same CFG halves).

New code here (not in diffusers): the two processors and the store; the Q/K/V/out projections
are the stock ``diffusers.models.attention_processor.Attention`` helpers.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from einops import rearrange
from torch import nn

#: suffix of the temporal self-attention modules in ``UNetSpatioTemporalConditionModel``
TEMPORAL_SELF_ATTN = "temporal_transformer_blocks.0.attn1"


def rotate_map(probs: torch.Tensor) -> torch.Tensor:
    """Rotate attention maps (..., F, F) by 180°: ``A'[..., j, k] = A[..., F-1-j, F-1-k]``."""
    return probs.flip(dims=(-2, -1))


class AttentionStore:
    """Attention probabilities of the reference pass, per layer name: ``(B·HW, heads, F, F)``."""

    def __init__(self) -> None:
        self.maps: dict[str, torch.Tensor] = {}
        self.recording = True

    def put(self, name: str, probs: torch.Tensor) -> None:
        if self.recording:
            self.maps[name] = probs.detach()

    def get(self, name: str) -> torch.Tensor:
        if name not in self.maps:
            raise RuntimeError(
                f"no stored attention map for {name!r}: the reference (forward) UNet must run before the "
                f"fine-tuned UNet at every step (stored: {sorted(self.maps)[:3]}...)"
            )
        return self.maps[name]

    def clear(self) -> None:
        self.maps.clear()

    def __len__(self) -> int:
        return len(self.maps)


def _project_in(attn, hidden_states: torch.Tensor, temb: torch.Tensor | None):
    """Shared pre-processing of ``AttnProcessor``: spatial/group norm, 4-D input to tokens."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape4 = None
    if hidden_states.ndim == 4:
        shape4 = hidden_states.shape
        b, c, h, w = shape4
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, residual, shape4


def _project_out(attn, out: torch.Tensor, residual: torch.Tensor, shape4) -> torch.Tensor:
    out = attn.to_out[0](out)
    out = attn.to_out[1](out)
    if shape4 is not None:
        out = out.transpose(-1, -2).reshape(shape4)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class AttentionStoreProcessor:
    """Standard self-attention that records its probabilities in ``store`` under ``name``."""

    def __init__(self, store: AttentionStore, name: str) -> None:
        self.store, self.name = store, name

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ):
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.name}: AttentionStoreProcessor is for self-attention layers only")
        x, residual, shape4 = _project_in(attn, hidden_states, temb)
        batch, seq = x.shape[:2]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
        q = attn.head_to_batch_dim(attn.to_q(x))
        k = attn.head_to_batch_dim(attn.to_k(x))
        v = attn.head_to_batch_dim(attn.to_v(x))
        probs = attn.get_attention_scores(q, k, attention_mask)  # (B·heads, F, F)
        self.store.put(self.name, rearrange(probs, "(b h) i j -> b h i j", b=batch))
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return _project_out(attn, out, residual, shape4)


class AttentionFlipProcessor:
    """Self-attention whose map is the reference layer's stored map rotated by 180°.

    The layer's own query/key projections are not used (their weights get no gradient); only
    ``to_v`` and ``to_out`` act on this layer's input."""

    def __init__(self, store: AttentionStore, name: str) -> None:
        self.store, self.name = store, name

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ):
        if encoder_hidden_states is not None:
            raise ValueError(f"{self.name}: AttentionFlipProcessor is for self-attention layers only")
        x, residual, shape4 = _project_in(attn, hidden_states, temb)
        batch, seq = x.shape[:2]
        ref = self.store.get(self.name)
        if ref.shape != (batch, attn.heads, seq, seq):
            raise RuntimeError(
                f"{self.name}: stored map has shape {tuple(ref.shape)}, this pass needs "
                f"{(batch, attn.heads, seq, seq)}: run the reference UNet on the same batch layout first"
            )
        v = attn.head_to_batch_dim(attn.to_v(x))
        probs = rearrange(rotate_map(ref), "b h i j -> (b h) i j").to(v.dtype)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return _project_out(attn, out, residual, shape4)


def temporal_self_attention_names(unet: nn.Module) -> list[str]:
    """Module names of the temporal self-attention layers, in down / mid / up order."""
    names = [
        n[: -len(".processor")] for n in unet.attn_processors if n.endswith(f"{TEMPORAL_SELF_ATTN}.processor")
    ]
    order = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
    return sorted(names, key=lambda n: (order.get(n.split(".")[0], 3), names.index(n)))


def _install(unet: nn.Module, factory, names: Iterable[str] | None = None) -> list[str]:
    targets = list(names) if names is not None else temporal_self_attention_names(unet)
    if not targets:
        raise ValueError(f"{type(unet).__name__} has no '{TEMPORAL_SELF_ATTN}' layers (not an SVD UNet?)")
    procs = dict(unet.attn_processors)
    for name in targets:
        procs[f"{name}.processor"] = factory(name)
    unet.set_attn_processor(procs)
    return targets


def layers_in_blocks(names: Iterable[str], blocks: Iterable[str] | None) -> list[str]:
    """The layer names among ``names`` inside the UNet parts ``blocks`` (``down``, ``mid``, ``up``;
    all when ``None``)."""
    if blocks is None:
        return list(names)
    parts = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}
    unknown = sorted(set(blocks) - set(parts))
    if unknown:
        raise ValueError(f"rotate_blocks {unknown}: choose from {sorted(parts)}")
    prefixes = tuple(parts[b] for b in blocks)
    return [n for n in names if n.startswith(prefixes)]


def rotated_view(
    unet: nn.Module, store: AttentionStore, names: Iterable[str], blocks: Iterable[str] | None = None
) -> nn.Module:
    """A second module tree over the **same** parameters as ``unet`` (no weights copied) whose temporal
    self-attention layers in ``blocks`` use the rotated maps of ``store`` and whose other temporal
    self-attention layers attend normally. Generative Inbetweening's "w/o FT" ablation: the backward
    path is the unmodified forward model with rotated attention maps (the paper: in the up blocks)."""
    import copy

    from diffusers.models.attention_processor import AttnProcessor2_0

    shared = {id(t): t for t in list(unet.parameters()) + list(unet.buffers())}
    shared[id(store)] = store
    view = copy.deepcopy(unet, memo=shared)
    names = list(names)
    rotated = set(layers_in_blocks(names, blocks))
    procs = dict(view.attn_processors)
    for n in names:
        procs[f"{n}.processor"] = AttentionFlipProcessor(store, n) if n in rotated else AttnProcessor2_0()
    view.set_attn_processor(procs)
    return view


def install_store_processors(unet: nn.Module, store: AttentionStore) -> list[str]:
    """Record the temporal self-attention maps of ``unet`` (the frozen reference) in ``store``."""
    return _install(unet, lambda n: AttentionStoreProcessor(store, n))


def install_flip_processors(
    unet: nn.Module, store: AttentionStore, names: Iterable[str] | None = None
) -> list[str]:
    """Make ``unet``'s temporal self-attention use the rotated maps of ``store`` (all 16 layers, or ``names``)."""
    return _install(unet, lambda n: AttentionFlipProcessor(store, n), names)
