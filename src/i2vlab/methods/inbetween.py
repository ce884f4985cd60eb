"""Generative Inbetweening (Wang et al., ICLR'25): fine-tune SVD into a backward-motion model whose
temporal self-attention reuses the forward model's maps rotated by 180°; interpolate two keyframes
by fusing forward and backward predictions (:class:`~i2vlab.pipelines.inbetween.InbetweenPipeline`).

Training step (spec §3.2): SVD's EDM objective (:class:`~i2vlab.methods.svd_i2v.SVDImageToVideo`,
:class:`~i2vlab.diffusion.objectives.EDMObjective`) with these hooks:

1. :meth:`encode_latents`: the clip (b f c h w, sampled at double rate by the data config) is
   encoded and **time-reversed**: the reversed latents ``z_rev`` are the target; σ ~ LogNormal(0.7, 1.6);
   ``x_rev = z_rev + σ·ε``;
2. :meth:`prepare_conditions`: SVD conditioning of the clip's **last** frame (trainable UNet) and of
   its **first** frame (reference UNet), with one noise-augmentation draw shared by both;
3. :meth:`denoise`: the frozen reference UNet (``ref_unet``) runs on ``flip_T(x_rev)`` -- the forward
   video -- conditioned on the first frame; its temporal self-attention maps fill the attention
   store; then the trainable UNet runs on ``x_rev`` conditioned on the last frame, each temporal
   self-attention using the same layer's stored map rotated 180° on its own values;
4. EDM loss ``(1+σ²)/σ² · |D(x_rev) - z_rev|²`` with ``D = c_skip·x + c_out·F``.

Only ``temporal_transformer_blocks.0.attn1.to_v.weight`` and ``.to_out.0.weight`` of the trainable
UNet train (``method.trainable``). With ``method.attention_rotation=false`` (the paper's "w/o RA"
ablation) there is no reference pass: the UNet fine-tunes on the reversed clips with its own
attention (the ablation recipe trains q, k, v and out). Conditioning per SVD: CLIP image embedding of the clean frame;
VAE ``mode()`` (unscaled) of the frame plus 0.02 Gaussian noise, repeated over frames and
concatenated on channels; added time ids [fps - 1 = 6, motion bucket 127, noise aug 0.02].

Memory: ``ref_unet`` is a second full copy of the SVD UNet (1.5 B parameters; ~3 GB in fp16, set
``method.frozen_dtype=fp16``/``bf16``), always frozen and in eval mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from einops import rearrange

from i2vlab.diffusion.edm import work_dtype
from i2vlab.methods.svd_i2v import SVDImageToVideo
from i2vlab.models.svd import svd_unet_forward
from i2vlab.pipelines.inbetween import InbetweenPipeline


class GenerativeInbetweening(SVDImageToVideo):
    """SVD keyframe interpolation with rotated temporal attention (no conditioning dropout).

    Args: :class:`~i2vlab.methods.svd_i2v.SVDImageToVideo`'s (``fps_id``, ``motion_bucket_id``,
    ``p_mean``, ``p_std``) and the pipeline's.
    """

    pipeline_class = InbetweenPipeline
    frozen_modules = ("vae", "image_encoder", "ref_unet")

    def __init__(self, cond_dropout: float = 0.0, **kwargs: Any) -> None:
        super().__init__(cond_dropout=cond_dropout, **kwargs)

    def encode_latents(self, batch: Mapping[str, Any], generator: torch.Generator | None) -> torch.Tensor:
        """The **time-reversed** clip's latents (b c f h w): the target of the backward model."""
        return super().encode_latents(batch, generator).flip(2)

    def prepare_conditions(
        self, batch: Mapping[str, Any], latents: torch.Tensor, generator: torch.Generator, train: bool = True
    ) -> dict[str, Any]:
        """The last frame conditions the trainable UNet, the first the reference UNet; one
        noise-augmentation draw for both (as the official script)."""
        video = batch["video"].to(self.device)
        video = video.to(work_dtype(video.dtype))
        noise = self.conditioning_noise(video[:, 0].shape, generator)
        return {
            "cond": self.condition(video[:, -1], noise),  # last original frame
            "ref": self.condition(video[:, 0], noise),  # first original frame
            "time_ids": self.time_ids(video.shape[0], video.dtype),
        }

    def denoise(self, noisy: torch.Tensor, levels: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        """The reference pass on the forward video (fills the attention store, no gradient), then the
        trainable pass on the reversed one with the rotated maps; returns its raw (v) output, b c f h w."""
        x = rearrange(noisy, "b c f h w -> b f c h w")
        self.pipe.attention_store.clear()
        if self.pipe.attention_rotation:
            with torch.no_grad():
                svd_unet_forward(self.ref_unet, x.flip(1), levels, *cond["ref"], cond["time_ids"])
        out = svd_unet_forward(self.unet, x, levels, *cond["cond"], cond["time_ids"])
        return rearrange(out, "b f c h w -> b c f h w")
