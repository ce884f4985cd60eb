"""The VideoCrafter / LVDM 3D UNet of DynamiCrafter, assembled from diffusers building blocks.

Reference: ``lvdm/modules/networks/openaimodel3d.py`` ``UNetModel`` (Doubiiu/DynamiCrafter) with the
``configs/inference_{256,512,1024}_v1.0.yaml`` settings. Its pieces are exactly diffusers' 3D blocks
(the ModelScope lineage): ``ResnetBlock2D`` followed by ``TemporalConvLayer`` (LVDM ``ResBlock`` +
``TemporalConvBlock``), ``Transformer2DModel`` with linear projections (``SpatialTransformer``),
``TransformerTemporalModel`` without positional encoding (``TemporalTransformer``, non-causal),
conv down/up-sampling. So the levels are ``CrossAttnDownBlock3D`` / ``DownBlock3D`` /
``UNetMidBlock3DCrossAttn`` / ``UpBlock3D`` / ``CrossAttnUpBlock3D``, and the key layout follows
diffusers (the spatial layers share their names with SD2.1's ``UNet2DConditionModel``).

What is specific to DynamiCrafter (written here):

- ``transformer_in``: the extra temporal transformer after the input convolution (``init_attn``,
  8 heads x 64 regardless of width);
- ``fps_embedding``: sinusoidal embedding of the frame stride / fps through an MLP whose last layer
  is zero-initialised, added to the timestep embedding;
- per-frame context: the context is ``[text (L_txt) ; image (f * n_img)]``; frame ``i`` cross-attends
  to the text plus its own ``n_img`` image tokens (``frame_context``); the spatial ``attn2`` layers
  carry :class:`~i2vlab.models.dynamicrafter.attention.DualCrossAttnProcessor`;
- ``in_channels`` 8: the noisy latent plus the concatenated conditioning-image latent (VDG).

Layouts: ``sample`` b c f h w; ``encoder_hidden_states`` b L d; output b c f h w.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from diffusers.models.unets.unet_3d_blocks import UNetMidBlock3DCrossAttn, get_down_block, get_up_block
from diffusers.utils import BaseOutput
from einops import rearrange
from torch import nn

from i2vlab.models.dynamicrafter.attention import install_dual_cross_attention


@dataclass
class UNet3DOutput(BaseOutput):
    sample: torch.Tensor


def frame_context(
    context: torch.Tensor, num_frames: int, text_len: int, tokens_per_frame: int
) -> torch.Tensor:
    """``b (L_txt + L_img) d`` -> ``(b f) L d``: with ``L_img == f * tokens_per_frame`` frame i gets the
    text plus its own image tokens; otherwise every frame sees the whole context (as the official
    ``openaimodel3d.forward``)."""
    if context.shape[1] == text_len + num_frames * tokens_per_frame and tokens_per_frame > 0:
        text = context[:, :text_len].repeat_interleave(num_frames, dim=0)
        image = rearrange(context[:, text_len:], "b (f l) d -> (b f) l d", f=num_frames)
        return torch.cat([text, image], dim=1)
    return context.repeat_interleave(num_frames, dim=0)


class DynamiCrafterUNet3DModel(ModelMixin, AttentionMixin, ConfigMixin):
    """VideoCrafter (LVDM) 3D UNet with DynamiCrafter's image conditioning.

    Args (official name in brackets):
        in_channels: 8 with visual detail guidance, 4 for the plain T2V model.
        block_out_channels: ``model_channels * channel_mult`` (320 x [1, 2, 4, 4]).
        down_block_types / up_block_types: levels with attention (``attention_resolutions`` 4, 2, 1)
            use the CrossAttn blocks.
        layers_per_block: [num_res_blocks].
        attention_head_dim: [num_head_channels]; heads = channels // head_dim.
        cross_attention_dim: [context_dim].
        dropout: resnet dropout (temporal convs always use 0.1, as in LVDM).
        init_attention_heads: heads of ``transformer_in`` [init_attn: 8]; ``0`` disables it
            [addition_attention false].
        fps_condition / default_fs: [fs_condition / default_fs].
        image_cross_attention, image_cross_attention_scale, image_cross_attention_scale_learnable:
            dual cross-attention and its gate.
        text_context_len: number of text tokens at the head of the context (77).
        image_tokens_per_frame: image tokens per frame from the context learner (16).
        temporal_length: frames the model was trained on (16); informational (no positional encoding).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        out_channels: int = 4,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        layers_per_block: int = 2,
        attention_head_dim: int = 64,
        cross_attention_dim: int = 1024,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        dropout: float = 0.1,
        init_attention_heads: int = 8,
        fps_condition: bool = True,
        default_fs: int = 3,
        image_cross_attention: bool = True,
        image_cross_attention_scale: float = 1.0,
        image_cross_attention_scale_learnable: bool = False,
        text_context_len: int = 77,
        image_tokens_per_frame: int = 16,
        temporal_length: int = 16,
    ) -> None:
        super().__init__()
        ch0 = block_out_channels[0]
        temb_dim = ch0 * 4
        self.gradient_checkpointing = False
        self.conv_in = nn.Conv2d(in_channels, ch0, kernel_size=3, padding=1)
        self.time_proj = Timesteps(ch0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(ch0, temb_dim)
        if fps_condition:
            self.fps_embedding = TimestepEmbedding(ch0, temb_dim)
            nn.init.zeros_(self.fps_embedding.linear_2.weight)
            nn.init.zeros_(self.fps_embedding.linear_2.bias)
        if init_attention_heads:
            self.transformer_in = TransformerTemporalModel(
                num_attention_heads=init_attention_heads,
                attention_head_dim=attention_head_dim,
                in_channels=ch0,
                num_layers=1,
                norm_num_groups=norm_num_groups,
            )
        # LVDM: num_heads = channels // num_head_channels, head size num_head_channels, in the spatial
        # and the temporal transformers of every level. diffusers' 3D blocks take their
        # ``num_attention_heads`` argument as the head *size* (they build
        # ``Transformer2DModel(channels // num_attention_heads, num_attention_heads)`` and the same for
        # ``TransformerTemporalModel``), so the head size is what they must be given.
        head_size = attention_head_dim
        for c in block_out_channels:
            if c % head_size:
                raise ValueError(
                    f"block_out_channels {c} is not a multiple of attention_head_dim {head_size}"
                )
        common = dict(
            resnet_eps=norm_eps,
            resnet_act_fn="silu",
            resnet_groups=norm_num_groups,
            cross_attention_dim=cross_attention_dim,
            dropout=dropout,
            use_linear_projection=True,
        )

        self.down_blocks = nn.ModuleList()
        out_ch = ch0
        for i, kind in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            self.down_blocks.append(
                get_down_block(
                    kind,
                    num_layers=layers_per_block,
                    in_channels=in_ch,
                    out_channels=out_ch,
                    temb_channels=temb_dim,
                    add_downsample=i < len(block_out_channels) - 1,
                    num_attention_heads=head_size,
                    downsample_padding=1,
                    **common,
                )
            )
        self.mid_block = UNetMidBlock3DCrossAttn(
            in_channels=block_out_channels[-1],
            temb_channels=temb_dim,
            dropout=dropout,
            resnet_eps=norm_eps,
            resnet_act_fn="silu",
            cross_attention_dim=cross_attention_dim,
            num_attention_heads=head_size,
            resnet_groups=norm_num_groups,
            use_linear_projection=True,
        )
        self.up_blocks = nn.ModuleList()
        rev = list(reversed(block_out_channels))
        out_ch = rev[0]
        for i, kind in enumerate(up_block_types):
            prev, out_ch = out_ch, rev[i]
            in_ch = rev[min(i + 1, len(rev) - 1)]
            self.up_blocks.append(
                get_up_block(
                    kind,
                    num_layers=layers_per_block + 1,
                    in_channels=in_ch,
                    out_channels=out_ch,
                    prev_output_channel=prev,
                    temb_channels=temb_dim,
                    add_upsample=i < len(rev) - 1,
                    num_attention_heads=head_size,
                    resolution_idx=i,
                    **common,
                )
            )
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, ch0, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(ch0, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # LVDM zero_module
        nn.init.zeros_(self.conv_out.bias)
        if image_cross_attention:
            install_dual_cross_attention(
                self, text_context_len, image_cross_attention_scale, image_cross_attention_scale_learnable
            )

    # ------------------------------------------------------------------------------------------
    def _run(self, fn, *args, **kwargs):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, **kwargs)
        return fn(*args, **kwargs)

    def embed(
        self, timestep: torch.Tensor, batch: int, fs: torch.Tensor | None, dtype: torch.dtype
    ) -> torch.Tensor:
        """Timestep (+ fps / frame-stride) embedding, ``b temb``."""
        device = self.conv_in.weight.device
        t = torch.as_tensor(timestep, device=device)
        if t.ndim == 0:
            t = t[None]
        emb = self.time_embedding(self.time_proj(t.expand(batch)).to(dtype))
        if self.config.fps_condition:
            if fs is None:
                fs = torch.full((batch,), self.config.default_fs, device=device, dtype=torch.long)
            fs = torch.as_tensor(fs, device=device)
            if fs.ndim == 0:
                fs = fs[None]
            emb = emb + self.fps_embedding(self.time_proj(fs.expand(batch)).to(dtype))
        return emb

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
        fs: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet3DOutput | tuple:
        """``sample`` b c f h w, ``timestep`` (b,) or scalar, ``encoder_hidden_states`` b L d,
        ``fs`` (b,) frame stride or fps (``default_fs`` if None)."""
        b, _, f, h, w = sample.shape
        cfg = self.config
        context = frame_context(
            encoder_hidden_states,
            f,
            cfg.text_context_len,
            cfg.image_tokens_per_frame if cfg.image_cross_attention else 0,
        ).to(sample.dtype)
        emb = self.embed(timestep, b, fs, sample.dtype).repeat_interleave(f, dim=0)
        x = self.conv_in(rearrange(sample, "b c f h w -> (b f) c h w"))
        if cfg.init_attention_heads:
            x = self._run(self.transformer_in, x, num_frames=f, return_dict=False)[0]
        skips = (x,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                x, res = self._run(block, x, emb, encoder_hidden_states=context, num_frames=f)
            else:
                x, res = self._run(block, x, emb, num_frames=f)
            skips += res
        x = self._run(self.mid_block, x, emb, encoder_hidden_states=context, num_frames=f)
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[2:] if i < len(self.up_blocks) - 1 and skips else None
            if getattr(block, "has_cross_attention", False):
                x = self._run(
                    block, x, res, emb, encoder_hidden_states=context, upsample_size=size, num_frames=f
                )
            else:
                x = self._run(block, x, res, emb, upsample_size=size, num_frames=f)
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        out = rearrange(x, "(b f) c h w -> b c f h w", b=b)
        return UNet3DOutput(sample=out) if return_dict else (out,)
