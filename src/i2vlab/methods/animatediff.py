"""AnimateDiff-style text-to-video training: only the motion modules of a diffusers
``UNetMotionModel`` (SD1.5 + MotionAdapter) train. The base that I2V-Adapter builds on."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from i2vlab.methods.base import VideoDiffusionModule
from i2vlab.pipelines.animatediff import AnimateDiffPipeline


class AnimateDiffT2V(VideoDiffusionModule):
    """Text-to-video diffusion on ``UNetMotionModel``: latents (b c f h w), text (b, 77, d)."""

    pipeline_class = AnimateDiffPipeline

    def denoise(self, noisy: torch.Tensor, levels: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        return self.pipe.denoise(noisy, levels, cond["encoder_hidden_states"], **cond.get("unet_kwargs", {}))
