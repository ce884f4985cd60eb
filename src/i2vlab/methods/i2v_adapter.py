"""I2V-Adapter (arXiv 2312.16693): image-to-video on a frozen SD1.5 + AnimateDiff ``UNetMotionModel``.

What training adds to the pipeline (:class:`~i2vlab.pipelines.i2v_adapter.I2VAdapterPipeline`:
first-frame attention branch, IP-Adapter content adapter, FSP sampling):

- only the branch's two new projections train (``to_q_ff``, ``to_out_ff``);
- the frozen content adapter is fed with the first frame, with image-embedding dropout for CFG;
- the unnoised first frame: ``noisy[:, :, 0] = z0[:, :, 0]`` exactly (not ``add_noise`` with zero
  noise, which scales it by sqrt(alpha_bar_t)), the same t for all frames, and the loss on frames 1..F-1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from i2vlab.methods.animatediff import AnimateDiffT2V
from i2vlab.pipelines.i2v_adapter import I2VAdapterPipeline


class I2VAdapter(AnimateDiffT2V):
    """I2V-Adapter training.

    Args (besides :class:`~i2vlab.methods.base.VideoDiffusionModule`'s and the pipeline's):
        image_dropout: probability of replacing the conditioning image by the all-zero CLIP input
            during training (the unconditional image branch of CFG).
    """

    pipeline_class = I2VAdapterPipeline
    frozen_modules = ("vae", "text_encoder", "image_encoder")

    def __init__(self, image_dropout: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_dropout = float(image_dropout)

    def image_embeddings(
        self, images: torch.Tensor, generator: torch.Generator | None = None, dropout: float = 0.0
    ) -> dict[str, Any]:
        """The content adapter's UNet inputs for first frames, each dropped with probability ``dropout``."""
        drop = None
        if dropout > 0 and generator is not None:
            drop = torch.rand(images.shape[0], generator=generator, device=generator.device) < dropout
        return self.pipe.image_embeddings(images, drop=drop)

    def prepare_conditions(
        self, batch: Mapping[str, Any], latents: torch.Tensor, generator: torch.Generator, train: bool = True
    ) -> dict[str, Any]:
        cond = super().prepare_conditions(batch, latents, generator, train)
        cond["unet_kwargs"] = self.image_embeddings(
            batch["video"][:, 0], generator, self.image_dropout if train else 0.0
        )
        return cond

    def prepare_noisy(
        self, noisy: torch.Tensor, latents: torch.Tensor, cond: Mapping[str, Any]
    ) -> torch.Tensor:
        """Frame 0 is the clean latent itself (bit-identical), the other frames keep their noise."""
        noisy = noisy.clone()
        noisy[:, :, 0] = latents[:, :, 0]
        return noisy

    def loss_mask(self, latents: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        """Frames 1..F-1 only."""
        mask = torch.ones(latents.shape[0], latents.shape[2], device=latents.device)
        mask[:, 0] = 0
        return mask
