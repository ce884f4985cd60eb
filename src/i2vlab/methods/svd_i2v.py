"""Stable Video Diffusion image-to-video training: the base model Generative Inbetweening fine-tunes.

SVD's objective (Blattmann et al. 2023) on the shared core, with the EDM objective
(:class:`~i2vlab.diffusion.objectives.EDMObjective`):

- latents z (scaled VAE latents of the clip); σ ~ LogNormal(``p_mean``, ``p_std``); x = z + σ·ε;
  loss ``(1 + σ²)/σ² · |D(x; σ) - z|²`` with ``D = c_skip·x + c_out·F(c_in·x; c_noise)``;
- conditioning on the clip's first frame, as SVD: its CLIP image embedding (b, 1, d) as the
  cross-attention context, and the unscaled VAE mode of the frame plus ``noise_aug_strength``
  Gaussian noise, repeated over frames and concatenated to the UNet input on channels; added time
  ids [fps - 1, motion bucket, noise augmentation];
- conditioning dropout for classifier-free guidance: with probability ``cond_dropout`` both the CLIP
  embedding and the image latent are zeroed (the unconditional input SVD's sampler uses).

The whole UNet trains by default (``trainable``). Sampling is the pipeline's
(:class:`~i2vlab.pipelines.svd.SVDPipeline`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange

from i2vlab.diffusion.edm import work_dtype
from i2vlab.diffusion.objectives import EDMObjective
from i2vlab.methods.base import VideoDiffusionModule
from i2vlab.models.svd import svd_unet_forward
from i2vlab.pipelines.svd import SVDPipeline


class SVDImageToVideo(VideoDiffusionModule):
    """SVD image-to-video training.

    Args (besides :class:`VideoDiffusionModule`'s and the pipeline's):
        fps_id, motion_bucket_id: micro-conditioning during training (``noise_aug_strength`` is the
            pipeline's).
        p_mean, p_std: log-normal training noise levels.
        cond_dropout: probability of the unconditional input (zero embedding and image latent).
    """

    pipeline_class = SVDPipeline
    frozen_modules = ("vae", "image_encoder")

    def __init__(
        self,
        trainable: Sequence[str] = (r"unet\..*",),
        fps_id: float = 6,
        motion_bucket_id: float = 127,
        p_mean: float = 0.7,
        p_std: float = 1.6,
        cond_dropout: float = 0.1,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("text_encoder", None), kwargs.pop("tokenizer", None)
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        super().__init__(trainable=trainable, **kwargs)
        self.fps_id, self.motion_bucket_id = float(fps_id), float(motion_bucket_id)
        self.cond_dropout = float(cond_dropout)

    def build_objective(self) -> EDMObjective:
        return EDMObjective(self.p_mean, self.p_std)

    def encode_latents(self, batch: Mapping[str, Any], generator: torch.Generator | None) -> torch.Tensor:
        """The clip's latents (b c f h w), float32 (float64 for a float64 video)."""
        video = batch["video"].to(self.device)
        video = video.to(work_dtype(video.dtype))
        return self.encode_video(video, generator).to(video.dtype)

    def conditioning_noise(self, shape: torch.Size, generator: torch.Generator | None) -> torch.Tensor:
        """The noise augmenting the conditioning frame(s) (one draw); one method so that a test can
        replay another implementation's draw."""
        return torch.randn(shape, generator=generator, device=generator.device if generator else None)

    def condition(self, frame: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CLIP embeds, noise-augmented VAE latents) of frames (b c h w)."""
        return self.pipe.encode_condition(frame, noise)

    def time_ids(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.pipe.time_ids(self.fps_id, self.motion_bucket_id, batch, dtype=dtype)

    def prepare_conditions(
        self, batch: Mapping[str, Any], latents: torch.Tensor, generator: torch.Generator, train: bool = True
    ) -> dict[str, Any]:
        video = batch["video"].to(self.device)
        video = video.to(work_dtype(video.dtype))
        b = video.shape[0]
        embeds, cond_latents = self.condition(
            video[:, 0], self.conditioning_noise(video[:, 0].shape, generator)
        )
        if train and self.cond_dropout > 0:
            keep = torch.rand(b, generator=generator, device=generator.device) >= self.cond_dropout
            keep = keep.to(self.device, embeds.dtype)
            embeds, cond_latents = embeds * keep.view(b, 1, 1), cond_latents * keep.view(b, 1, 1, 1)
        return {"cond": (embeds, cond_latents), "time_ids": self.time_ids(b, video.dtype)}

    def denoise(self, noisy: torch.Tensor, levels: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        """The UNet's raw (v) output for noisy latents (b c f h w) at σ (b,)."""
        out = svd_unet_forward(
            self.unet, rearrange(noisy, "b c f h w -> b f c h w"), levels, *cond["cond"], cond["time_ids"]
        )
        return rearrange(out, "b f c h w -> b c f h w")
