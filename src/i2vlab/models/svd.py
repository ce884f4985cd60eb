"""Stable Video Diffusion components, all stock diffusers / transformers classes.

- UNet: ``diffusers.UNetSpatioTemporalConditionModel`` (input b f c h w with 8 channels: 4 noisy
  latent + 4 conditioning-frame latent; ``encoder_hidden_states`` (b, 1, 1024) CLIP image embedding;
  ``added_time_ids`` (b, 3) = [fps - 1, motion bucket, noise augmentation]).
- VAE: ``diffusers.AutoencoderKLTemporalDecoder`` (per-frame encoder, temporal decoder: ``decode``
  needs ``num_frames``).
- Image encoder: ``transformers.CLIPVisionModelWithProjection`` (ViT-H/14, projection 1024) with
  SVD's ``CLIPImageProcessor`` statistics.

Each builder takes ``pretrained`` (a local SVD pipeline folder or hub id; the component's
``subfolder``) or ``config`` (architecture, random init; tiny test configs), and builds from
``config`` on the meta device inside :func:`i2vlab.models.loading.build_on_meta`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from i2vlab.models.loading import check_weights, load_or_build, on_meta, to_plain

SVD_PUBLISHED = (
    "https://huggingface.co/stabilityai/stable-video-diffusion-img2vid (14 frames) and "
    "https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt (25 frames)"
)

#: ``feature_extractor/preprocessor_config.json`` of the SVD pipelines (OpenAI CLIP statistics)
SVD_IMAGE_PROCESSOR_CONFIG: dict[str, Any] = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 224},
}


def _variant(variant: str | None) -> dict[str, Any]:
    return {"variant": variant} if variant else {}


def build_svd_unet(
    name: str = "backbone.unet",
    config: Mapping[str, Any] | None = None,
    pretrained: str | None = None,
    subfolder: str | None = "unet",
    variant: str | None = None,
):
    """``UNetSpatioTemporalConditionModel`` from an SVD pipeline folder / hub id, or from ``config``."""
    return load_or_build(
        "diffusers.UNetSpatioTemporalConditionModel",
        name,
        config=config,
        pretrained=pretrained,
        subfolder=subfolder,
        published=SVD_PUBLISHED,
        **_variant(variant),
    )


def build_svd_vae(
    name: str = "backbone.vae",
    config: Mapping[str, Any] | None = None,
    pretrained: str | None = None,
    subfolder: str | None = "vae",
    variant: str | None = None,
):
    """``AutoencoderKLTemporalDecoder`` from an SVD pipeline folder / hub id, or from ``config``."""
    return load_or_build(
        "diffusers.AutoencoderKLTemporalDecoder",
        name,
        config=config,
        pretrained=pretrained,
        subfolder=subfolder,
        published=SVD_PUBLISHED,
        **_variant(variant),
    )


def build_image_encoder(
    name: str = "backbone.image_encoder",
    config: Mapping[str, Any] | None = None,
    pretrained: str | None = None,
    subfolder: str | None = "image_encoder",
    variant: str | None = None,
):
    """``CLIPVisionModelWithProjection`` from an SVD pipeline folder / hub id, or from ``config``
    (``transformers.CLIPVisionConfig`` keys)."""
    return load_or_build(
        "transformers.CLIPVisionModelWithProjection",
        name,
        config=config,
        pretrained=pretrained,
        subfolder=subfolder,
        published=SVD_PUBLISHED,
        config_class="transformers.CLIPVisionConfig",
        **_variant(variant),
    )


def build_image_processor(
    name: str = "backbone.image_processor",
    config: Mapping[str, Any] | None = None,
    pretrained: str | None = None,
    subfolder: str | None = "feature_extractor",
):
    """``CLIPImageProcessor`` (only its normalisation statistics are used): SVD's values by default."""
    from transformers import CLIPImageProcessor

    if pretrained is not None and not on_meta():
        check_weights(pretrained, f"{name}.pretrained", SVD_PUBLISHED)
        return CLIPImageProcessor.from_pretrained(pretrained, subfolder=subfolder)
    return CLIPImageProcessor(**{**SVD_IMAGE_PROCESSOR_CONFIG, **dict(to_plain(config) or {})})


def resize_for_clip(image: torch.Tensor, size: int) -> torch.Tensor:
    """(b c h w) in [-1, 1] -> (b c size size) in [-1, 1], antialiased as in SVD's pipeline (no crop)."""
    if image.shape[-2:] == (size, size):
        return image
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
        _resize_with_antialiasing,
    )

    return _resize_with_antialiasing(image, (size, size))


@torch.no_grad()
def clip_image_embeds(image_encoder, image_processor, image: torch.Tensor) -> torch.Tensor:
    """SVD's image conditioning: (b c h w) in [-1, 1] -> ``image_embeds`` (b, 1, d).

    Resize (antialiased) to the encoder's ``image_size``, map to [0, 1], normalise with the
    processor's mean/std (what ``CLIPImageProcessor(do_normalize=True, do_resize=False, ...)`` does
    in the SVD pipeline, kept on the tensor's device). Computed in float32 (float64 for a float64
    image; ``CLIPImageProcessor`` itself would return float32); the embeddings come back in that dtype."""
    from i2vlab.diffusion.edm import work_dtype

    dt = work_dtype(image.dtype)
    size = int(image_encoder.config.image_size)
    x = (resize_for_clip(image.to(dt), size) + 1.0) / 2.0
    mean = torch.tensor(image_processor.image_mean, device=x.device, dtype=dt).view(1, -1, 1, 1)
    std = torch.tensor(image_processor.image_std, device=x.device, dtype=dt).view(1, -1, 1, 1)
    x = ((x - mean) / std).to(next(image_encoder.parameters()).dtype)
    return image_encoder(pixel_values=x).image_embeds.to(dt).unsqueeze(1)


def added_time_ids(
    fps_id: float,
    motion_bucket_id: float,
    noise_aug_strength: float,
    batch: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    unet=None,
) -> torch.Tensor:
    """SVD micro-conditioning ``[fps_id, motion_bucket_id, noise_aug_strength]`` repeated to (batch, 3).

    ``fps_id`` is the frame rate minus one (SVD was trained on fps - 1: the pipeline's fps 7 -> 6).
    With ``unet`` given, checks that its ``add_embedding`` expects three ids."""
    if unet is not None:
        expected = unet.add_embedding.linear_1.in_features
        passed = unet.config.addition_time_embed_dim * 3
        if expected != passed:
            raise ValueError(
                f"UNet expects {expected} added-time features, 3 ids give {passed}: check the unet config"
            )
    ids = torch.tensor(
        [[float(fps_id), float(motion_bucket_id), float(noise_aug_strength)]], device=device, dtype=dtype
    )
    return ids.repeat(batch, 1)


def svd_unet_forward(
    unet,
    noisy: torch.Tensor,
    sigma: torch.Tensor,
    image_embeds: torch.Tensor,
    image_latents: torch.Tensor,
    time_ids: torch.Tensor,
) -> torch.Tensor:
    """One SVD UNet call in EDM form; returns the raw (v-prediction) output.

    Args:
        noisy: (b f c h w) noisy latents x at level σ (unscaled).
        sigma: (b,) or scalar noise levels.
        image_embeds: (b, 1, d) CLIP embedding of the conditioning frame.
        image_latents: (b, c, h, w) or (b, f, c, h, w) conditioning-frame latents (VAE mode, unscaled).
        time_ids: (b, 3).
    """
    from i2vlab.diffusion.edm import as_sigma, c_noise, scale_input

    b, f = noisy.shape[:2]
    sigma = as_sigma(sigma, noisy.device)  # float32, or float64 if given so
    sigma = sigma.expand(b) if sigma.ndim == 0 else sigma
    if image_latents.ndim == 4:
        image_latents = image_latents[:, None].expand(-1, f, -1, -1, -1)
    dtype = unet.dtype
    inp = torch.cat([scale_input(noisy, sigma), image_latents.to(noisy.dtype)], dim=2).to(dtype)
    return unet(
        inp,
        c_noise(sigma).to(dtype),
        encoder_hidden_states=image_embeds.to(dtype),
        added_time_ids=time_ids.to(dtype),
        return_dict=False,
    )[0]
