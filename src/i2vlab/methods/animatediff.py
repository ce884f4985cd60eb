"""AnimateDiff-style text-to-video training: only the motion modules of a diffusers
``UNetMotionModel`` (SD1.5 + MotionAdapter) train. The base that I2V-Adapter builds on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from i2vlab.methods.base import VideoDiffusionModule
from i2vlab.pipelines.animatediff import sample_t2v


class AnimateDiffT2V(VideoDiffusionModule):
    """Text-to-video diffusion on ``UNetMotionModel``: latents (b c f h w), text (b, 77, d).

    diffusers' ``UNetMotionModel`` does not repeat ``encoder_hidden_states`` over frames, so the
    text embeddings are passed with batch b·f (``repeat_interleave(f, 0)``).
    """

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        f = noisy.shape[2]
        ehs = cond["encoder_hidden_states"].to(noisy.dtype).repeat_interleave(f, dim=0)
        return self.unet(noisy, timesteps, encoder_hidden_states=ehs, **cond.get("unet_kwargs", {})).sample

    def sample(
        self,
        prompts: Sequence[str],
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        opts = {"num_inference_steps": 25, "guidance_scale": 7.5, **self.sampling_cfg, **kwargs}
        if images is not None and "height" not in opts:
            opts["height"], opts["width"] = images.shape[-2:]
        num_frames = num_frames or opts.pop("num_frames", 16)
        opts.pop("num_frames", None)
        return sample_t2v(self, prompts, num_frames=num_frames, seed=seed, **opts)
