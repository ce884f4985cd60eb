"""Text-to-video with diffusers' ``AnimateDiffPipeline`` on this project's components (the base
I2V-Adapter builds on): :class:`AnimateDiffPipeline` (``method=animatediff``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from diffusers import AnimateDiffPipeline as _DiffusersAnimateDiff
from diffusers import DDIMScheduler

from i2vlab.diffusion.schedules import sampling_scheduler
from i2vlab.pipelines.base import VideoPipeline


class AnimateDiffPipeline(VideoPipeline):
    """SD1.5 + motion module (``UNetMotionModel``): prompts -> videos with DDIM and CFG.

    ``UNetMotionModel`` does not repeat ``encoder_hidden_states`` over frames: :meth:`denoise` passes
    them with batch b·f."""

    default_sampling: ClassVar[dict[str, Any]] = {"num_inference_steps": 25, "guidance_scale": 7.5}
    keyframes: ClassVar[int] = 0

    def denoise(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        **unet_kwargs: Any,
    ):
        """latents (b c f h w), text (b, L, d) -> the UNet's output (b c f h w)."""
        f = noisy.shape[2]
        ehs = encoder_hidden_states.to(noisy.dtype).repeat_interleave(f, dim=0)
        return self.unet(noisy, timesteps, encoder_hidden_states=ehs, **unet_kwargs).sample

    def diffusers_pipeline(self, **scheduler_overrides: Any) -> _DiffusersAnimateDiff:
        """diffusers' ``AnimateDiffPipeline`` around these components (no copies)."""
        pipe = _DiffusersAnimateDiff(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            motion_adapter=None,
            scheduler=sampling_scheduler(self.noise_scheduler, DDIMScheduler, **scheduler_overrides),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def __call__(
        self,
        prompts: Sequence[str],
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Prompts -> videos (b f c h w in [-1, 1]). ``images`` only set the size (text-to-video).
        Options: ``num_inference_steps``, ``guidance_scale``, ``negative_prompt``, ``height``, ``width``."""
        num_frames, opts = self.options(num_frames, kwargs)
        if images is not None and "height" not in opts:
            opts["height"], opts["width"] = images.shape[-2:]
        out = self.diffusers_pipeline()(
            prompt=list(prompts),
            num_frames=num_frames or 16,
            height=opts.pop("height", None),
            width=opts.pop("width", None),
            generator=torch.Generator(device="cpu").manual_seed(int(seed)),
            num_inference_steps=int(opts.pop("num_inference_steps")),
            guidance_scale=float(opts.pop("guidance_scale")),
            negative_prompt=[opts.pop("negative_prompt", None) or ""] * len(prompts),
            output_type="pt",
            decode_chunk_size=self.vae_chunk_size,
        )
        if opts:
            raise ValueError(f"unknown sampling option(s) {sorted(opts)} for {type(self).__name__}")
        return out.frames.float().mul(2).sub(1).clamp(-1, 1)  # (b f c h w)
