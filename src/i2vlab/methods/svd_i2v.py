"""Stable Video Diffusion image-to-video training: the base model Generative Inbetweening fine-tunes.

SVD's objective on the shared core (Blattmann et al. 2023; the EDM maths is :mod:`i2vlab.diffusion.edm`):

- latents z (b f c h w, scaled VAE latents of the clip); σ ~ LogNormal(``p_mean``, ``p_std``);
  x = z + σ·ε; loss ``(1 + σ²)/σ² · |D(x; σ) - z|²`` with ``D = c_skip·x + c_out·F(c_in·x; c_noise)``;
- conditioning on the clip's first frame, as SVD: its CLIP image embedding (b, 1, d) as the
  cross-attention context, and the unscaled VAE mode of the frame plus ``noise_aug_strength``
  Gaussian noise, repeated over frames and concatenated to the UNet input on channels; added time
  ids [fps - 1, motion bucket, noise augmentation];
- conditioning dropout for classifier-free guidance: with probability ``cond_dropout`` both the CLIP
  embedding and the image latent are zeroed (the unconditional input SVD's sampler uses).

The whole UNet trains by default (``trainable``). Sampling (:meth:`SVDImageToVideo.sample`) is SVD's:
Euler steps on the Karras σ schedule of the backbone's ``EulerDiscreteScheduler`` with a per-frame
guidance ramp ``linspace(min_guidance_scale, max_guidance_scale, F)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import nn

from i2vlab.diffusion.edm import (
    denoised,
    euler_with_reinjection,
    init_noise_sigma,
    loss_weight,
    sample_sigmas,
    sampling_sigmas,
    stratified_sigmas,
    work_dtype,
)
from i2vlab.methods.base import VideoDiffusionModule
from i2vlab.models.svd import added_time_ids, clip_image_embeds, svd_unet_forward


class SVDImageToVideo(VideoDiffusionModule):
    """SVD image-to-video training and sampling.

    Args (besides :class:`~i2vlab.methods.base.VideoDiffusionModule`'s):
        image_encoder: frozen ``CLIPVisionModelWithProjection``.
        image_processor: ``CLIPImageProcessor`` (normalisation statistics).
        noise_scheduler: SVD's ``EulerDiscreteScheduler`` (sampling σ schedule).
        fps_id, motion_bucket_id, noise_aug_strength: micro-conditioning during training.
        p_mean, p_std: log-normal training noise levels.
        cond_dropout: probability of the unconditional input (zero embedding and image latent).
    """

    frozen_modules = ("vae", "image_encoder")

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        image_encoder: nn.Module,
        image_processor: Any,
        noise_scheduler: Any,
        trainable: Sequence[str] = (r"unet\..*",),
        fps_id: float = 6,
        motion_bucket_id: float = 127,
        noise_aug_strength: float = 0.02,
        p_mean: float = 0.7,
        p_std: float = 1.6,
        cond_dropout: float = 0.1,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("text_encoder", None), kwargs.pop("tokenizer", None)
        super().__init__(unet=unet, vae=vae, noise_scheduler=noise_scheduler, trainable=trainable, **kwargs)
        self.image_encoder = image_encoder
        self.image_processor = image_processor
        self.fps_id, self.motion_bucket_id = float(fps_id), float(motion_bucket_id)
        self.noise_aug_strength = float(noise_aug_strength)
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        self.cond_dropout = float(cond_dropout)

    # ------------------------------------------------------------------------------------------
    # encoders
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_condition(
        self, image: torch.Tensor, noise: torch.Tensor | None = None, noise_aug_strength: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SVD conditioning of frames (b c h w) in [-1, 1]: (CLIP embeds (b, 1, d) of the clean frame,
        unscaled VAE mode (b, c, h', w') of the frame + ``noise_aug_strength``·``noise``)."""
        aug = self.noise_aug_strength if noise_aug_strength is None else float(noise_aug_strength)
        dt = work_dtype(image.dtype)
        image = image.to(dt)
        embeds = clip_image_embeds(self.image_encoder, self.image_processor, image)
        noisy = image + aug * noise.to(image.device, dt) if noise is not None else image
        latents = self.vae.encode(noisy.to(self.vae.dtype)).latent_dist.mode().to(dt)
        return embeds, latents

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (b c f h w) -> video (b f c h w) in [-1, 1]; the temporal decoder sees
        ``vae_chunk_size`` frames of one video at a time."""
        out = []
        for z in latents:  # c f h w
            frames = rearrange(z, "c f h w -> f c h w") / self.latent_scale
            dec = [
                self.vae.decode(c.to(self.vae.dtype), num_frames=c.shape[0]).sample.float()
                for c in frames.split(self.vae_chunk_size)
            ]
            out.append(torch.cat(dec))
        return torch.stack(out).clamp(-1, 1)

    def time_ids(self, batch: int, dtype: torch.dtype = torch.float32, **overrides: float) -> torch.Tensor:
        ids = {"fps_id": self.fps_id, "motion_bucket_id": self.motion_bucket_id}
        ids.update(overrides)
        return added_time_ids(
            ids["fps_id"],
            ids["motion_bucket_id"],
            ids.get("noise_aug_strength", self.noise_aug_strength),
            batch,
            self.device,
            dtype=dtype,
            unet=self.unet,
        )

    # ------------------------------------------------------------------------------------------
    # training objective
    # ------------------------------------------------------------------------------------------
    def compute_loss(
        self,
        batch: Mapping[str, Any],
        generator: torch.Generator,
        timesteps: torch.Tensor | None = None,
        train: bool = True,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """EDM loss (``timesteps`` are noise levels σ here). Draw order from ``generator``: video
        latents, σ, latent noise, conditioning noise, dropout. Returns (b,)."""
        video = batch["video"].to(self.device)
        b = video.shape[0]
        z = rearrange(self.encode_video(video, generator), "b c f h w -> b f c h w")
        sigma = sample_sigmas(b, generator, self.p_mean, self.p_std) if timesteps is None else timesteps
        sigma = sigma.to(self.device, torch.float32)
        noise = torch.randn(z.shape, generator=generator, device=generator.device).to(z.device)
        x = z + noise * sigma.view(b, 1, 1, 1, 1)
        cond_noise = torch.randn(video[:, 0].shape, generator=generator, device=generator.device)
        embeds, cond_latents = self.encode_condition(video[:, 0], cond_noise.to(video.device))
        if train and self.cond_dropout > 0:
            keep = torch.rand(b, generator=generator, device=generator.device) >= self.cond_dropout
            keep = keep.to(self.device, embeds.dtype)
            embeds = embeds * keep.view(b, 1, 1)
            cond_latents = cond_latents * keep.view(b, 1, 1, 1)
        out = svd_unet_forward(self.unet, x, sigma, embeds, cond_latents, self.time_ids(b))
        d = denoised(out, x, sigma)
        err = (d - z).pow(2).mean(dim=(1, 2, 3, 4))
        return loss_weight(sigma) * err, {"sigma_median": sigma.median()}

    def validation_timesteps(self, n: int) -> torch.Tensor:
        """Fixed noise levels: centres of n equal-probability strata of LogNormal(p_mean, p_std)."""
        return stratified_sigmas(n, self.p_mean, self.p_std)

    # ------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str] = (),
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        num_inference_steps: int = 25,
        fps: float = 7,
        motion_bucket_id: float = 127,
        noise_aug_strength: float | None = None,
        min_guidance_scale: float = 1.0,
        max_guidance_scale: float = 3.0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """First frames (b c h w in [-1, 1]) -> videos (b f c h w in [-1, 1]). Prompts are ignored
        (SVD has no text conditioning). Options default to ``method.sampling``."""
        from i2vlab.pipelines.inbetween import frame_ramp

        if images is None:
            raise ValueError("SVD is image-to-video: pass images (b c h w in [-1, 1])")
        opts = {
            "num_inference_steps": num_inference_steps,
            "fps": fps,
            "motion_bucket_id": motion_bucket_id,
            "noise_aug_strength": noise_aug_strength,
            "min_guidance_scale": min_guidance_scale,
            "max_guidance_scale": max_guidance_scale,
            **self.sampling_cfg,
            **kwargs,
        }
        unknown = set(opts) - {
            "num_inference_steps",
            "fps",
            "motion_bucket_id",
            "noise_aug_strength",
            "min_guidance_scale",
            "max_guidance_scale",
            "num_frames",
        }
        if unknown:
            raise ValueError(f"unknown sampling option(s) {sorted(unknown)}")
        num_frames = int(num_frames or opts.get("num_frames") or self.unet.config.num_frames)
        aug = (
            self.noise_aug_strength
            if opts["noise_aug_strength"] is None
            else float(opts["noise_aug_strength"])
        )
        was_training = self.training
        self.eval()
        try:
            first = images.to(self.device, torch.float32)
            b = first.shape[0]
            g = torch.Generator(device=self.device).manual_seed(int(seed))
            cond_noise = torch.randn(first.shape, generator=g, device=self.device)
            embeds, lat = self.encode_condition(first, cond_noise, aug)
            ids = self.time_ids(
                b,
                fps_id=float(opts["fps"]) - 1,
                motion_bucket_id=float(opts["motion_bucket_id"]),
                noise_aug_strength=aug,
            )
            cfg = float(opts["max_guidance_scale"]) > 1.0
            if cfg:
                embeds = torch.cat([torch.zeros_like(embeds), embeds])
                lat = torch.cat([torch.zeros_like(lat), lat])
                ids = ids.repeat(2, 1)
            guidance = frame_ramp(
                num_frames,
                float(opts["min_guidance_scale"]),
                float(opts["max_guidance_scale"]),
                b,
                self.device,
            )
            sigmas = sampling_sigmas(self.noise_scheduler, int(opts["num_inference_steps"]))
            c = self.unet.config.out_channels
            h, w = lat.shape[-2:]
            x = torch.randn((b, num_frames, c, h, w), generator=g, device=self.device) * init_noise_sigma(
                sigmas
            )

            def denoise_fn(x: torch.Tensor, i: int) -> torch.Tensor:
                s = sigmas[i]
                inp = torch.cat([x, x]) if cfg else x
                out = svd_unet_forward(self.unet, inp, s, embeds, lat, ids).float()
                if cfg:
                    uncond, cond = out.chunk(2)
                    out = uncond + guidance * (cond - uncond)
                return denoised(out, x, s)

            x = euler_with_reinjection(denoise_fn, x, sigmas)
            return self.decode_latents(x.transpose(1, 2))
        finally:
            self.train(was_training)
