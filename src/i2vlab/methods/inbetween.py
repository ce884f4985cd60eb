"""Generative Inbetweening (Wang et al., ICLR'25): fine-tune SVD into a backward-motion model whose
temporal self-attention reuses the forward model's maps rotated by 180°; interpolate two keyframes
by fusing forward and backward predictions (:class:`~i2vlab.pipelines.inbetween.InbetweenPipeline`).

Training step (spec §3.2), the core's loss with these hooks and the EDM objective
(:class:`~i2vlab.diffusion.objectives.EDMObjective`):

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
UNet train (``method.trainable``). Conditioning per SVD: CLIP image embedding of the clean frame;
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
from i2vlab.diffusion.objectives import EDMObjective
from i2vlab.methods.base import VideoDiffusionModule
from i2vlab.models.svd import added_time_ids, svd_unet_forward
from i2vlab.pipelines.inbetween import InbetweenPipeline


class GenerativeInbetweening(VideoDiffusionModule):
    """SVD keyframe interpolation with rotated temporal attention.

    Args (besides :class:`VideoDiffusionModule`'s and the pipeline's):
        fps_id, motion_bucket_id: SVD micro-conditioning during training (``noise_aug_strength`` is
            the pipeline's).
        p_mean, p_std: log-normal training noise levels.
    """

    pipeline_class = InbetweenPipeline
    frozen_modules = ("vae", "image_encoder", "ref_unet")

    def __init__(
        self,
        fps_id: float = 6,
        motion_bucket_id: float = 127,
        p_mean: float = 0.7,
        p_std: float = 1.6,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("text_encoder", None), kwargs.pop("tokenizer", None)
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        super().__init__(**kwargs)
        self.fps_id, self.motion_bucket_id = float(fps_id), float(motion_bucket_id)

    def build_objective(self) -> EDMObjective:
        return EDMObjective(self.p_mean, self.p_std)

    def encode_latents(self, batch: Mapping[str, Any], generator: torch.Generator | None) -> torch.Tensor:
        """The time-reversed clip's latents (b c f h w), float32 (float64 for a float64 video)."""
        video = batch["video"].to(self.device)
        video = video.to(work_dtype(video.dtype))
        return self.encode_video(video, generator).to(video.dtype).flip(2)

    def conditioning_noise(self, shape: torch.Size, generator: torch.Generator | None) -> torch.Tensor:
        """The noise augmenting both conditioning frames (one draw, as the official script); one method so
        that a test can replay another implementation's draw."""
        return torch.randn(shape, generator=generator, device=generator.device if generator else None)

    def prepare_conditions(
        self, batch: Mapping[str, Any], latents: torch.Tensor, generator: torch.Generator, train: bool = True
    ) -> dict[str, Any]:
        video = batch["video"].to(self.device)
        dt = work_dtype(video.dtype)
        video = video.to(dt)
        noise = self.conditioning_noise(video[:, 0].shape, generator).to(video.device)
        cond_embeds, cond_latents = self.pipe.encode_condition(video[:, -1], noise)  # last original frame
        ref_embeds, ref_latents = self.pipe.encode_condition(video[:, 0], noise)  # first original frame
        time_ids = added_time_ids(
            self.fps_id,
            self.motion_bucket_id,
            self.pipe.noise_aug_strength,
            video.shape[0],
            self.device,
            dtype=dt,
            unet=self.unet,
        )
        return {
            "cond": (cond_embeds, cond_latents),
            "ref": (ref_embeds, ref_latents),
            "time_ids": time_ids,
        }

    def denoise(self, noisy: torch.Tensor, levels: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        """The reference pass on the forward video (fills the attention store, no gradient), then the
        trainable pass on the reversed one with the rotated maps; returns its raw (v) output, b c f h w."""
        x = rearrange(noisy, "b c f h w -> b f c h w")
        self.pipe.attention_store.clear()
        with torch.no_grad():
            svd_unet_forward(self.ref_unet, x.flip(1), levels, *cond["ref"], cond["time_ids"])
        out = svd_unet_forward(self.unet, x, levels, *cond["cond"], cond["time_ids"])
        return rearrange(out, "b f c h w -> b c f h w")

    def loss_logs(self, train: bool) -> dict[str, Any]:
        return {}
