"""Text-to-video sampling with diffusers' ``AnimateDiffPipeline`` on this project's components."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import AnimateDiffPipeline, DDIMScheduler

from i2vlab.diffusion.schedules import sampling_scheduler


def build_t2v_pipeline(module, scheduler_overrides: dict | None = None) -> AnimateDiffPipeline:
    """Wrap a trained module's (frozen + trained) components in ``AnimateDiffPipeline`` (no copies)."""
    scheduler = sampling_scheduler(module.noise_scheduler, DDIMScheduler, **(scheduler_overrides or {}))
    pipe = AnimateDiffPipeline(
        vae=module.vae,
        text_encoder=module.text_encoder,
        tokenizer=module.tokenizer,
        unet=module.unet,
        motion_adapter=None,
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample_t2v(
    module,
    prompts: Sequence[str],
    num_frames: int = 16,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Returns videos (b f c h w) in [-1, 1]."""
    pipe = build_t2v_pipeline(module)
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = pipe(
        prompt=list(prompts),
        num_frames=num_frames,
        height=height,
        width=width,
        generator=g,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        output_type="pt",
        negative_prompt=[negative_prompt or ""] * len(prompts),
        decode_chunk_size=module.vae_chunk_size,
    )
    frames = out.frames  # (b f c h w) in [0, 1]
    return frames.float().mul(2).sub(1).clamp(-1, 1)
