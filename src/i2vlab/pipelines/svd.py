"""Stable Video Diffusion image-to-video: :class:`SVDPipeline` (``method=svd_i2v``), and the SVD
components every SVD-based pipeline shares (conditioning on a frame, the temporal VAE decoder).

Sampling is SVD's: Euler steps on the Karras σ schedule of the backbone's
``EulerDiscreteScheduler``; the first frame conditions through its CLIP image embedding and its
noise-augmented VAE latent concatenated on channels; classifier-free guidance with the per-frame
ramp ``linspace(min_guidance_scale, max_guidance_scale, F)`` against the zero embedding and latent.

Tensors: images (b c h w) in [-1, 1]; SVD latents (b f c h w); videos (b f c h w) in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from einops import rearrange

from i2vlab.diffusion.edm import (
    denoised,
    euler_with_reinjection,
    init_noise_sigma,
    sampling_sigmas,
    work_dtype,
)
from i2vlab.models.svd import added_time_ids, clip_image_embeds, svd_unet_forward
from i2vlab.pipelines.base import VideoPipeline


class SVDPipeline(VideoPipeline):
    """SVD components (``UNetSpatioTemporalConditionModel``, ``AutoencoderKLTemporalDecoder``, CLIP
    vision) and the conditioning on one frame.

    Args (besides :class:`~i2vlab.pipelines.base.VideoPipeline`'s; no text encoder):
        image_encoder: ``CLIPVisionModelWithProjection``; image_processor: ``CLIPImageProcessor``.
        noise_scheduler: SVD's ``EulerDiscreteScheduler`` (the sampling σ schedule).
        noise_aug_strength: noise added to the conditioning frames (SVD's micro-conditioning).
    """

    components: ClassVar[tuple[str, ...]] = (
        "unet",
        "vae",
        "image_encoder",
        "image_processor",
        "noise_scheduler",
    )
    default_sampling: ClassVar[dict[str, Any]] = {
        "num_inference_steps": 25,
        "fps": 7,
        "motion_bucket_id": 127,
        "min_guidance_scale": 1.0,
        "max_guidance_scale": 3.0,
    }

    def __init__(
        self,
        unet: Any,
        vae: Any,
        image_encoder: Any,
        image_processor: Any,
        noise_scheduler: Any,
        noise_aug_strength: float = 0.02,
        vae_chunk_size: int = 8,
        sampling: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            unet=unet,
            vae=vae,
            noise_scheduler=noise_scheduler,
            vae_chunk_size=vae_chunk_size,
            sampling=sampling,
        )
        self.image_encoder, self.image_processor = image_encoder, image_processor
        self.noise_aug_strength = float(noise_aug_strength)

    @torch.no_grad()
    def encode_condition(
        self, image: torch.Tensor, noise: torch.Tensor | None = None, noise_aug_strength: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SVD conditioning of frames (b c h w) in [-1, 1]: (CLIP embeds (b, 1, d) of the clean frame,
        unscaled VAE mode (b, c, h', w') of the frame + ``noise_aug_strength``·``noise``). Computed
        in float32, or float64 for a float64 ``image``."""
        aug = self.noise_aug_strength if noise_aug_strength is None else float(noise_aug_strength)
        dt = work_dtype(image.dtype)
        image = image.to(dt)
        embeds = clip_image_embeds(self.image_encoder, self.image_processor, image)
        noisy = image + aug * noise.to(image.device, dt) if noise is not None else image
        latents = self.vae.encode(noisy.to(self.vae.dtype)).latent_dist.mode().to(dt)
        return embeds, latents

    def time_ids(
        self,
        fps_id: float,
        motion_bucket_id: float,
        batch: int,
        dtype: torch.dtype = torch.float32,
        noise_aug_strength: float | None = None,
    ) -> torch.Tensor:
        """SVD's added time ids (b, 3): [fps - 1, motion bucket, noise augmentation]."""
        aug = self.noise_aug_strength if noise_aug_strength is None else float(noise_aug_strength)
        return added_time_ids(fps_id, motion_bucket_id, aug, batch, self.device, dtype=dtype, unet=self.unet)

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

    @torch.no_grad()
    def __call__(
        self,
        prompts: Sequence[str] = (),
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """First frames (b c h w in [-1, 1]) -> videos (b f c h w in [-1, 1]); prompts are ignored (SVD
        has no text conditioning). Options: ``num_inference_steps``, ``fps``, ``motion_bucket_id``,
        ``noise_aug_strength``, ``min_guidance_scale``, ``max_guidance_scale``."""
        from i2vlab.pipelines.svd_common import frame_ramp

        if images is None:
            raise ValueError("SVD is image-to-video: pass images (b c h w in [-1, 1])")
        num_frames, opts = self.options(num_frames, kwargs)
        known = set(self.default_sampling) | {"noise_aug_strength"}
        if set(opts) - known:
            raise ValueError(
                f"unknown sampling option(s) {sorted(set(opts) - known)}; options: {sorted(known)}"
            )
        num_frames = int(num_frames or self.unet.config.num_frames)
        aug = (
            self.noise_aug_strength
            if opts.get("noise_aug_strength") is None
            else float(opts["noise_aug_strength"])
        )
        first = images.to(self.device, torch.float32)
        b = first.shape[0]
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        cond_noise = torch.randn(first.shape, generator=g, device=self.device)
        embeds, lat = self.encode_condition(first, cond_noise, aug)
        ids = self.time_ids(
            float(opts["fps"]) - 1, float(opts["motion_bucket_id"]), b, noise_aug_strength=aug
        )
        cfg = float(opts["max_guidance_scale"]) > 1.0
        if cfg:
            embeds, lat, ids = (
                torch.cat([torch.zeros_like(embeds), embeds]),
                torch.cat([torch.zeros_like(lat), lat]),
                ids.repeat(2, 1),
            )
        guidance = frame_ramp(
            num_frames, float(opts["min_guidance_scale"]), float(opts["max_guidance_scale"]), b, self.device
        )
        sigmas = sampling_sigmas(self.noise_scheduler, int(opts["num_inference_steps"]))
        h, w = lat.shape[-2:]
        shape = (b, num_frames, self.unet.config.out_channels, h, w)
        x = torch.randn(shape, generator=g, device=self.device) * init_noise_sigma(sigmas)

        def denoise_fn(x: torch.Tensor, i: int) -> torch.Tensor:
            s = sigmas[i]
            out = svd_unet_forward(self.unet, torch.cat([x, x]) if cfg else x, s, embeds, lat, ids).float()
            if cfg:
                uncond, cond = out.chunk(2)
                out = uncond + guidance * (cond - uncond)
            return denoised(out, x, s)

        x = euler_with_reinjection(denoise_fn, x, sigmas)
        return self.decode_latents(x.transpose(1, 2))
