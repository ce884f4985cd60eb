"""DynamiCrafter (Xing et al., ECCV'24): image-to-video by injecting the image twice into a
text-to-video UNet, trained on the shared :class:`~i2vlab.methods.base.VideoDiffusionModule` core.

The pipeline (:class:`~i2vlab.pipelines.dynamicrafter.DynamiCrafterPipeline`) holds the networks and
the conditioning (context tokens, visual-detail-guidance latents, the network call, the dynamic
rescale table). What training adds, in :meth:`DynamiCrafter.prepare_conditions`:

- a conditioning frame (random per sample during training, ``rand_cond_frame``; frame 0 otherwise),
  whose CLIP tokens through the context learner are appended to the text tokens and whose clean
  latent is concatenated to every frame (VDG; interpolation mode: first and last frame latents);
- the official conditioning dropout, r ~ U(0, 1): text dropped when r < 2p, CLIP image zeroed when
  p <= r < 3p (so: text only, both, image only); the concatenated latent is never dropped;
- frame stride / fps conditioning (``fps_condition_type``);
- the dynamic latent rescale of the 512/1024 models, as the objective's clean-latent scale.

The same class trains all three paper stages (stage 1 on a T2I ``UNet2DConditionModel``, frames as
images; stages 2 and 3 on :class:`DynamiCrafterUNet3DModel`); what trains is the ``trainable`` list of
``conf/method/dynamicrafter*.yaml``. Layouts: video b f c h w; latents b c f h w; context b L d.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from i2vlab.diffusion.objectives import DDPMObjective
from i2vlab.methods.base import VideoDiffusionModule
from i2vlab.models.dynamicrafter import gate_values
from i2vlab.models.dynamicrafter.convert import widen_conv_in
from i2vlab.models.dynamicrafter.schedule import dynamic_rescale_table
from i2vlab.pipelines.dynamicrafter import DynamiCrafterPipeline
from i2vlab.training.state import load_matching, load_weights_file

__all__ = ["DynamiCrafter", "dynamic_rescale_table"]

log = logging.getLogger(__name__)


class DynamiCrafter(VideoDiffusionModule):
    """DynamiCrafter training.

    Args (besides :class:`VideoDiffusionModule`'s and the pipeline's):
        uncond_prob: p of the conditioning dropout (0.05).
        rand_cond_frame: random conditioning frame during training (frame 0 when false / not training).
        fps_condition_type: ``fs`` (frame stride, 256 model), ``fps`` (fps // stride, 512/1024) or null.
        log_gates: log lambda of every gated layer each training step.
    """

    pipeline_class = DynamiCrafterPipeline
    frozen_modules = ("vae", "text_encoder", "image_encoder")

    def __init__(
        self,
        uncond_prob: float = 0.05,
        rand_cond_frame: bool = True,
        fps_condition_type: str | None = "fs",
        log_gates: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("text_dropout", 0.0)
        super().__init__(**kwargs)
        if fps_condition_type not in (None, "fs", "fps"):
            raise ValueError(f"method.fps_condition_type must be fs, fps or null, got {fps_condition_type!r}")
        self.uncond_prob = float(uncond_prob)
        self.rand_cond_frame = bool(rand_cond_frame)
        self.fps_condition_type = fps_condition_type
        self.log_gates = bool(log_gates)
        if self.pipe.text_context_len is None:
            log.warning("the UNet has no dual cross-attention: the image tokens will not be used")
        if self.pipe.vdg and self.pipe.interp_mode and self.rand_cond_frame:
            log.info("interp_mode: rand_cond_frame is ignored (the keyframes are the first and last frames)")

    def build_objective(self) -> DDPMObjective:
        """DDPM on the backbone's scheduler; the 512/1024 recipes scale x0 by ``scale_arr[t]``."""
        scale = self.pipe.x0_scale if self.pipe.use_dynamic_rescale else None
        return DDPMObjective(self.pipe.noise_scheduler, clean_scale=scale)

    # ------------------------------------------------------------------------------------------
    # conditioning
    # ------------------------------------------------------------------------------------------
    def frame_condition(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """fs for the UNet: the frame stride (``fs``) or the clip's fps = source fps // stride (``fps``)."""
        if self.fps_condition_type is None or not getattr(self.unet.config, "fps_condition", False):
            return None
        stride = torch.as_tensor(batch["frame_stride"], device=self.device).long()
        if self.fps_condition_type == "fs":
            return stride
        fps = torch.as_tensor(batch["fps"], device=self.device).float()
        return torch.div(fps, stride, rounding_mode="floor").long().clamp_min(1)

    def conditioning_draws(
        self, b: int, f: int, generator: torch.Generator, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The random draws of :meth:`prepare_conditions`: ``r`` ~ U(0, 1) per sample for the
        conditioning dropout (ones when nothing is dropped: validation or ``uncond_prob`` 0) and the
        conditioning frame per sample (frame 0 when not random). One method so that a test can
        replay another implementation's draws."""
        dev = self.device
        p = self.uncond_prob if train else 0.0
        r = (
            torch.rand(b, generator=generator, device=generator.device).to(dev)
            if p > 0
            else torch.ones(b, device=dev)
        )
        if train and self.rand_cond_frame and not self.pipe.interp_mode:
            idx = torch.randint(0, f, (b,), generator=generator, device=generator.device).to(dev)
        else:
            idx = torch.zeros(b, dtype=torch.long, device=dev)
        return r, idx

    def prepare_conditions(
        self, batch: Mapping[str, Any], latents: torch.Tensor, generator: torch.Generator, train: bool = True
    ) -> dict[str, Any]:
        video = batch["video"]
        b, f = video.shape[:2]
        p = self.uncond_prob if train else 0.0
        r, idx = self.conditioning_draws(b, f, generator, train)
        drop_text = r < 2 * p
        drop_image = (r >= p) & (r < 3 * p)
        captions = ["" if d else c for d, c in zip(drop_text.tolist(), batch["caption"])]
        image = video[torch.arange(b, device=self.device), idx] * (~drop_image).to(video.dtype).view(
            b, 1, 1, 1
        )
        context = torch.cat([self.encode_prompt(captions), self.pipe.image_context(image).float()], dim=1)
        cond = {
            "context": context,
            "fs": self.frame_condition(batch),
            "cond_frame": idx,
            "drop_text": drop_text,
            "drop_image": drop_image,
        }
        if self.pipe.vdg:
            cond["concat"] = self.pipe.concat_latents(latents, idx)
        return cond

    def denoise(self, noisy: torch.Tensor, levels: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        return self.pipe.denoise(noisy, levels, cond)

    def loss_logs(self, train: bool) -> dict[str, Any]:
        """The learned gate λ of every layer (paper Figure 2) and their mean."""
        logs: dict[str, Any] = {}
        if train and self.log_gates:
            gates = gate_values(self.unet)
            for i, v in enumerate(gates.values()):
                logs[f"lambda/{i:02d}"] = v
            if gates:
                logs["lambda/mean"] = float(np.mean(list(gates.values())))
        return logs

    # ------------------------------------------------------------------------------------------
    # stage chaining
    # ------------------------------------------------------------------------------------------
    def init_from(self, path: str | Path) -> list[str]:
        """As the core's, plus: a 4-channel ``conv_in`` (stage 2 / T2V weights) is widened into this
        UNet's 8-channel one, the new (image-latent) channels zero."""
        tensors = load_weights_file(path)
        own = dict(self.named_parameters())
        extra = []
        key = "unet.conv_in.weight"
        if key in tensors and key in own and tensors[key].shape != own[key].shape:
            with torch.no_grad():
                own[key].copy_(widen_conv_in(tensors[key], own[key].shape[1]).to(own[key].dtype))
            extra.append(key)
            log.info(
                "init_from: widened %s %s -> %s (new channels zero)",
                key,
                tuple(tensors[key].shape),
                tuple(own[key].shape),
            )
        return load_matching(self, tensors) + extra
