"""Generative Inbetweening (Wang et al., ICLR'25): fine-tune SVD into a backward-motion model whose
temporal self-attention reuses the forward model's maps rotated by 180°; interpolate two keyframes
by fusing forward and backward predictions.

Training step (spec §3.2; ``compute_loss``):

1. the clip (b f c h w, sampled at double rate by the data config) is encoded; its **time-reversed**
   latents ``z_rev`` are the target; σ ~ LogNormal(0.7, 1.6); ``x_rev = z_rev + σ·ε``;
2. the frozen reference UNet (``ref_unet``, a copy of the base SVD UNet) runs on ``flip_T(x_rev)`` —
   the forward video — conditioned on the clip's **first** frame; its temporal self-attention maps
   fill the shared :class:`~i2vlab.models.attention_control.AttentionStore`;
3. the trainable UNet runs on ``x_rev`` conditioned on the clip's **last** frame, each temporal
   self-attention using the same layer's stored map rotated 180° on its own values;
4. EDM loss ``(1+σ²)/σ² · |D(x_rev) - z_rev|²`` with ``D = c_skip·x + c_out·F``.

Only ``temporal_transformer_blocks.0.attn1.to_v.weight`` and ``.to_out.0.weight`` of the trainable
UNet train (``method.trainable``). Conditioning per SVD: CLIP image embedding of the clean frame;
VAE ``mode()`` (unscaled) of the frame plus 0.02 Gaussian noise, repeated over frames and
concatenated on channels; added time ids [fps - 1 = 6, motion bucket 127, noise aug 0.02].

Memory: ``ref_unet`` is a second full copy of the SVD UNet (1.5 B parameters; ~3 GB in fp16, set
``method.frozen_dtype=fp16``/``bf16``), always frozen and in eval mode.

New code (beyond diffusers/transformers/Lightning): the two-pass objective and the sampling in
:mod:`i2vlab.pipelines.inbetween`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from einops import rearrange
from torch import nn

from i2vlab.diffusion.edm import denoised, loss_weight, sample_sigmas, stratified_sigmas, work_dtype
from i2vlab.methods.base import VideoDiffusionModule
from i2vlab.models.attention_control import AttentionStore, install_flip_processors, install_store_processors
from i2vlab.models.svd import added_time_ids, clip_image_embeds, svd_unet_forward
from i2vlab.pipelines import inbetween as pipes

SAMPLERS = {"ours": pipes.sample_inbetween, "trf": pipes.sample_trf, "flow": pipes.flow_interpolate}


class GenerativeInbetweening(VideoDiffusionModule):
    """SVD keyframe interpolation with rotated temporal attention.

    Args (besides :class:`VideoDiffusionModule`'s):
        image_encoder: ``CLIPVisionModelWithProjection`` (frozen).
        image_processor: ``CLIPImageProcessor`` (normalisation statistics).
        noise_scheduler: SVD's ``EulerDiscreteScheduler`` (sampling σ schedule).
        fps_id, motion_bucket_id, noise_aug_strength: SVD micro-conditioning during training.
        p_mean, p_std: log-normal training noise levels.
    """

    frozen_modules = ("vae", "image_encoder", "ref_unet")

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        image_encoder: nn.Module,
        image_processor: Any,
        noise_scheduler: Any,
        trainable: Sequence[str] = (),
        fps_id: float = 6,
        motion_bucket_id: float = 127,
        noise_aug_strength: float = 0.02,
        p_mean: float = 0.7,
        p_std: float = 1.6,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("text_encoder", None), kwargs.pop("tokenizer", None)
        super().__init__(
            unet=unet,
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            noise_scheduler=noise_scheduler,
            trainable=trainable,
            **kwargs,
        )
        self.image_encoder = image_encoder
        self.image_processor = image_processor
        self.fps_id, self.motion_bucket_id = float(fps_id), float(motion_bucket_id)
        self.noise_aug_strength = float(noise_aug_strength)
        self.p_mean, self.p_std = float(p_mean), float(p_std)
        # frozen forward model: a copy of the base UNet taken before any fine-tuning
        self.ref_unet = copy.deepcopy(unet)
        self.ref_unet.requires_grad_(False)
        self.attention_store = AttentionStore()
        self.controlled_layers = install_store_processors(self.ref_unet, self.attention_store)
        install_flip_processors(self.unet, self.attention_store, self.controlled_layers)

    # ------------------------------------------------------------------------------------------
    # encoders
    # ------------------------------------------------------------------------------------------
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

    # ------------------------------------------------------------------------------------------
    # training objective
    # ------------------------------------------------------------------------------------------
    def training_inputs(
        self,
        batch: Mapping[str, Any],
        generator: torch.Generator,
        sigmas: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        cond_noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Everything one step needs. Draw order from ``generator``: video latents, σ, latent noise,
        conditioning-image noise; each draw can be given instead (then it is not drawn): ``latents``
        (b f c h w, scaled VAE latents of ``batch["video"]`` in its own, forward, time order),
        ``sigmas`` (b,), ``noise`` (b f c h w, the noise of the *reversed* latents), ``cond_noise``
        (b c h w, the augmentation noise shared by both conditioning frames).

        Returns ``target`` (reversed latents, b f c h w), ``noisy`` (target + σ·ε), ``ref_noisy``
        (= flip_T(noisy), the forward video), ``sigma`` (b,), ``cond_embeds``/``cond_latents`` (last
        frame, trainable UNet), ``ref_embeds``/``ref_latents`` (first frame, reference UNet), ``time_ids``.
        Float32, or float64 for a float64 video.
        """
        video = batch["video"].to(self.device)
        dt = work_dtype(video.dtype)
        video = video.to(dt)
        b = video.shape[0]
        if latents is None:
            latents = rearrange(self.encode_video(video, generator), "b c f h w -> b f c h w")
        latents = latents.to(self.device, dt)
        target = latents.flip(1)  # time-reversed clip
        sigma = sample_sigmas(b, generator, self.p_mean, self.p_std) if sigmas is None else sigmas
        sigma = sigma.to(self.device, work_dtype(sigma.dtype, dt))
        if noise is None:
            noise = torch.randn(target.shape, generator=generator, device=target.device, dtype=torch.float32)
        noisy = target + noise.to(target.device, dt) * sigma.view(b, 1, 1, 1, 1)
        if cond_noise is None:
            cond_noise = torch.randn(
                video[:, 0].shape, generator=generator, device=video.device, dtype=torch.float32
            )
        cond_embeds, cond_latents = self.encode_condition(video[:, -1], cond_noise)  # last original frame
        ref_embeds, ref_latents = self.encode_condition(video[:, 0], cond_noise)  # first original frame
        time_ids = added_time_ids(
            self.fps_id,
            self.motion_bucket_id,
            self.noise_aug_strength,
            b,
            self.device,
            dtype=dt,
            unet=self.unet,
        )
        return {
            "target": target,
            "noisy": noisy,
            "ref_noisy": noisy.flip(1),
            "sigma": sigma,
            "cond_embeds": cond_embeds,
            "cond_latents": cond_latents,
            "ref_embeds": ref_embeds,
            "ref_latents": ref_latents,
            "time_ids": time_ids,
        }

    def compute_loss(
        self,
        batch: Mapping[str, Any],
        generator: torch.Generator,
        timesteps: torch.Tensor | None = None,
        train: bool = True,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """EDM loss of the backward model (``timesteps`` are noise levels σ here). Returns (b,)."""
        x = self.training_inputs(batch, generator, sigmas=timesteps)
        return self.two_pass_loss(x), {"sigma_median": x["sigma"].median()}

    def two_pass_loss(self, x: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample loss (b,) from :meth:`training_inputs`: the reference pass (fills the attention
        store, no gradient), then the trainable pass with the rotated maps, then the weighted EDM error."""
        self.attention_store.clear()
        with torch.no_grad():  # reference pass: fills the attention store
            svd_unet_forward(
                self.ref_unet, x["ref_noisy"], x["sigma"], x["ref_embeds"], x["ref_latents"], x["time_ids"]
            )
        out = svd_unet_forward(
            self.unet, x["noisy"], x["sigma"], x["cond_embeds"], x["cond_latents"], x["time_ids"]
        )
        d = denoised(out, x["noisy"], x["sigma"])
        err = (d - x["target"].to(d.dtype)).pow(2).mean(dim=(1, 2, 3, 4))
        return loss_weight(x["sigma"].to(d.dtype)) * err

    def validation_timesteps(self, n: int) -> torch.Tensor:
        """Fixed noise levels: centres of n equal-probability strata of LogNormal(p_mean, p_std)."""
        return stratified_sigmas(n, self.p_mean, self.p_std)

    def validation_sample_inputs(self, batch: Mapping[str, Any], k: int) -> dict[str, Any]:
        """The validation videos interpolate between each clip's first and last frames."""
        return {**super().validation_sample_inputs(batch, k), "last_images": batch["video"][:k, -1].detach()}

    # ------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        last_images: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Interpolate between ``images`` (first keyframes, b c h w) and ``last_images`` (b c h w), both
        in [-1, 1]. Prompts are ignored (SVD has no text conditioning). ``method``: ``ours`` (fused
        forward + fine-tuned backward, noise re-injection), ``trf`` (Time Reversal Fusion on the
        unmodified SVD) or ``flow`` (OpenCV optical flow). Other keywords go to the chosen sampler
        (see :mod:`i2vlab.pipelines.inbetween`); keys meant for another sampler are ignored.
        Returns (b f c h w) in [-1, 1]."""
        opts = {**self.sampling_cfg, **kwargs}
        mode = opts.pop("method", "ours")
        opts.pop("seed", None)  # the explicit argument wins over a configured default
        if last_images is None:
            last_images = opts.pop("last_images", None)
        opts.pop("last_images", None)
        if mode not in SAMPLERS:
            raise ValueError(f"sampling method {mode!r}: choose one of {sorted(SAMPLERS)}")
        if images is None or last_images is None:
            raise ValueError(
                "keyframe interpolation needs two keyframes: images=(b c h w) and last_images=(b c h w)"
            )
        num_frames = int(num_frames or opts.pop("num_frames", None) or self.unet.config.num_frames)
        opts.pop("num_frames", None)
        known = set().union(*(inspect.signature(f).parameters for f in SAMPLERS.values()))
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ValueError(
                f"unknown sampling option(s) {unknown}; options: {sorted(known - {'module', 'first', 'last'})}"
            )
        fn = SAMPLERS[mode]
        params = inspect.signature(fn).parameters
        opts = {k: v for k, v in opts.items() if k in params}
        first = images.to(self.device, work_dtype(images.dtype))  # float32, float64 if given so
        last = last_images.to(self.device, first.dtype)
        was_training = self.training
        self.eval()
        try:
            if mode == "flow":
                return fn(first, last, num_frames, **opts)
            return fn(self, first, last, num_frames, seed=seed, **opts)
        finally:
            self.train(was_training)
