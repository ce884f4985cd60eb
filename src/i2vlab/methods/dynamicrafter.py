"""DynamiCrafter (Xing et al., ECCV'24): image-to-video by injecting the image twice into a
text-to-video UNet, on the shared :class:`~i2vlab.methods.base.VideoDiffusionModule` core.

What is DynamiCrafter's (the rest is the core): the conditioning built in :meth:`prepare_conditions`
- a conditioning frame (random per sample during training, ``rand_cond_frame``; frame 0 otherwise),
  its CLIP ViT-H/14 tokens through the context learner (``image_proj_model``) -> per-frame image
  tokens appended to the text tokens ("dual-stream image injection");
- visual detail guidance (VDG): the clean latent of that frame concatenated on channels to the noisy
  latent of every frame (interpolation mode: first and last frame latents, zeros between);
- the official conditioning dropout, r ~ U(0, 1): text dropped when r < 2p, CLIP image zeroed when
  p <= r < 3p (so: text only, both, image only); the concatenated latent is never dropped;
- frame stride / fps conditioning (``fps_condition_type``);
- the dynamic latent rescale of the 512/1024 models (``use_dynamic_rescale``: x0 * scale_arr[t]).

The same class trains all three paper stages (stage 1 on a T2I ``UNet2DConditionModel``, frames as
images; stages 2 and 3 on :class:`DynamiCrafterUNet3DModel`); what trains is the ``trainable`` list of
``conf/method/dynamicrafter*.yaml``. Layouts: video b f c h w; latents b c f h w; context b L d.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from i2vlab.methods.base import VideoDiffusionModule, load_matching, load_weights_file
from i2vlab.models.dynamicrafter import (
    DualCrossAttnProcessor,
    DynamiCrafterUNet3DModel,
    clip_preprocess,
    frame_context,
    gate_values,
)
from i2vlab.models.dynamicrafter.convert import widen_conv_in
from i2vlab.models.dynamicrafter.schedule import dynamic_rescale_table, use_float64_tables

__all__ = ["DynamiCrafter", "dynamic_rescale_table"]

log = logging.getLogger(__name__)


class DynamiCrafter(VideoDiffusionModule):
    """DynamiCrafter training / sampling.

    Args (beyond :class:`VideoDiffusionModule`):
        image_encoder: frozen CLIP vision tower (``transformers.CLIPVisionModel``; all last-layer tokens).
        image_proj_model: the context learner (:class:`~i2vlab.models.dynamicrafter.Resampler`).
        uncond_prob: p of the conditioning dropout (0.05).
        rand_cond_frame: random conditioning frame during training (frame 0 when false / not training).
        interp_mode: two-keyframe interpolation (concat = first and last latents, CLIP sees frame 0).
        fps_condition_type: ``fs`` (frame stride, 256 model), ``fps`` (fps // stride, 512/1024) or null.
        use_dynamic_rescale, base_scale, turning_step: the 512/1024 dynamic latent rescale.
        clip_image_size: CLIP input size (224).
        log_gates: log lambda of every gated layer each training step.
    """

    frozen_modules = ("vae", "text_encoder", "image_encoder")

    def __init__(
        self,
        unet: nn.Module,
        image_encoder: nn.Module,
        image_proj_model: nn.Module,
        uncond_prob: float = 0.05,
        rand_cond_frame: bool = True,
        interp_mode: bool = False,
        fps_condition_type: str | None = "fs",
        use_dynamic_rescale: bool = False,
        base_scale: float = 0.7,
        turning_step: int = 400,
        clip_image_size: int = 224,
        log_gates: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("text_dropout", 0.0)
        super().__init__(unet=unet, **kwargs)
        if self.noise_scheduler is not None:  # LVDM's schedule tables (float64, not diffusers' float32)
            use_float64_tables(self.noise_scheduler)
        self.image_encoder = image_encoder
        self.image_proj_model = image_proj_model
        self.uncond_prob = float(uncond_prob)
        self.rand_cond_frame = bool(rand_cond_frame)
        self.interp_mode = bool(interp_mode)
        if fps_condition_type not in (None, "fs", "fps"):
            raise ValueError(f"method.fps_condition_type must be fs, fps or null, got {fps_condition_type!r}")
        self.fps_condition_type = fps_condition_type
        self.use_dynamic_rescale = bool(use_dynamic_rescale)
        self.base_scale, self.turning_step = float(base_scale), int(turning_step)
        self.clip_image_size = int(clip_image_size)
        self.log_gates = bool(log_gates)
        self.is_3d = isinstance(unet, DynamiCrafterUNet3DModel)
        self.latent_channels = int(unet.config.out_channels)
        self.vdg = int(unet.config.in_channels) == 2 * self.latent_channels
        procs = [m for m in unet.modules() if isinstance(m, DualCrossAttnProcessor)]
        self.text_context_len = procs[0].text_context_len if procs else None
        if not procs:
            log.warning("the UNet has no dual cross-attention: the image tokens will not be used")
        if self.vdg and self.interp_mode and self.rand_cond_frame:
            log.info("interp_mode: rand_cond_frame is ignored (the keyframes are the first and last frames)")

    # ------------------------------------------------------------------------------------------
    # conditioning
    # ------------------------------------------------------------------------------------------
    @property
    def tokens_per_frame(self) -> int:
        return int(self.image_proj_model.config.num_queries)

    def image_context(self, images: torch.Tensor) -> torch.Tensor:
        """Conditioning images (b c h w, [-1, 1]) -> image tokens (b, f*n, d) from the context learner."""
        with torch.no_grad():
            pix = clip_preprocess(images, self.clip_image_size).to(self.image_encoder.dtype)
            tokens = self.image_encoder(pixel_values=pix).last_hidden_state  # all tokens, before ln_post
        return self.image_proj_model(tokens.to(self.image_proj_model.dtype))

    def frame_condition(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        """fs for the UNet: the frame stride (``fs``) or the clip's fps = source fps // stride (``fps``)."""
        if self.fps_condition_type is None or not getattr(self.unet.config, "fps_condition", False):
            return None
        stride = torch.as_tensor(batch["frame_stride"], device=self.device).long()
        if self.fps_condition_type == "fs":
            return stride
        fps = torch.as_tensor(batch["fps"], device=self.device).float()
        return torch.div(fps, stride, rounding_mode="floor").long().clamp_min(1)

    def concat_latents(
        self, latents: torch.Tensor, cond_frame: torch.Tensor, last: torch.Tensor | None = None
    ) -> torch.Tensor:
        """VDG input (b c f h w): the conditioning frame's clean latent on every frame, or, in
        interpolation mode, first / last keyframe latents with zeros between."""
        b, f = latents.shape[0], latents.shape[2]
        if self.interp_mode:
            out = torch.zeros_like(latents)
            out[:, :, 0] = latents[:, :, 0]
            out[:, :, -1] = latents[:, :, -1] if last is None else last
            return out
        z = latents[torch.arange(b, device=latents.device), :, cond_frame]  # b c h w
        return z[:, :, None].expand(-1, -1, f, -1, -1).contiguous()

    def conditioning_draws(
        self, b: int, f: int, generator: torch.Generator, train: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The random draws of :meth:`prepare_conditions`: ``r`` ~ U(0, 1) per sample for the
        conditioning dropout (ones when nothing is dropped: validation or ``uncond_prob`` 0) and the
        conditioning frame per sample (frame 0 when not random). One method so that a test can
        replay another implementation's draws."""
        dev = self.device
        p = self.uncond_prob if train else 0.0
        if p > 0:
            r = torch.rand(b, generator=generator, device=generator.device).to(dev)
        else:
            r = torch.ones(b, device=dev)
        if train and self.rand_cond_frame and not self.interp_mode:
            idx = torch.randint(0, f, (b,), generator=generator, device=generator.device).to(dev)
        else:
            idx = torch.zeros(b, dtype=torch.long, device=dev)
        return r, idx

    def prepare_conditions(
        self, batch: Mapping[str, Any], latents: torch.Tensor, generator: torch.Generator, train: bool = True
    ) -> dict[str, Any]:
        video = batch["video"]
        b, f = video.shape[:2]
        dev = self.device
        p = self.uncond_prob if train else 0.0
        r, idx = self.conditioning_draws(b, f, generator, train)
        drop_text = r < 2 * p
        drop_image = (r >= p) & (r < 3 * p)
        captions = ["" if d else c for d, c in zip(drop_text.tolist(), batch["caption"])]
        image = video[torch.arange(b, device=dev), idx] * (~drop_image).to(video.dtype).view(b, 1, 1, 1)
        context = torch.cat([self.encode_prompt(captions), self.image_context(image).float()], dim=1)
        cond = {
            "context": context,
            "fs": self.frame_condition(batch),
            "cond_frame": idx,
            "drop_text": drop_text,
            "drop_image": drop_image,
        }
        if self.vdg:
            cond["concat"] = self.concat_latents(latents, idx)
        return cond

    # ------------------------------------------------------------------------------------------
    # denoiser and loss
    # ------------------------------------------------------------------------------------------
    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        """noisy (b c f h w) -> model output (b c f h w); VDG latent concatenated on channels."""
        x = noisy
        if self.vdg:
            x = torch.cat([x, cond["concat"].to(x.dtype)], dim=1)
        context = cond["context"].to(x.dtype)
        if self.is_3d:
            return self.unet(x, timesteps, encoder_hidden_states=context, fs=cond.get("fs")).sample
        # stage 1: the text-to-image UNet sees every frame as an image with its own image tokens
        b, _, f = x.shape[:3]
        ctx = frame_context(context, f, self.text_context_len or context.shape[1], self.tokens_per_frame)
        t = torch.as_tensor(timesteps, device=x.device)
        t = t.repeat_interleave(f) if t.ndim else t
        out = self.unet(rearrange(x, "b c f h w -> (b f) c h w"), t, encoder_hidden_states=ctx).sample
        return rearrange(out, "(b f) c h w -> b c f h w", b=b)

    def x0_scale(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Dynamic rescale factor per timestep (float64; 1 when off)."""
        if not self.use_dynamic_rescale:
            return torch.ones(timesteps.shape, device=timesteps.device, dtype=torch.float64)
        T = self.noise_scheduler.config.num_train_timesteps
        table = dynamic_rescale_table(T, self.base_scale, self.turning_step).to(timesteps.device)
        return table[timesteps.long()]

    def scale_clean_latents(self, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """512/1024 recipes: x0 multiplied by the dynamic rescale factor of its timestep."""
        if not self.use_dynamic_rescale:
            return latents
        return latents * self.x0_scale(timesteps).to(latents.dtype).view(-1, 1, 1, 1, 1)

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

    def validation_sample_inputs(self, batch: Mapping[str, Any], k: int) -> dict[str, Any]:
        """Interpolation mode: the validation videos run between each clip's first and last frames."""
        inputs = super().validation_sample_inputs(batch, k)
        if self.interp_mode:
            inputs["last_images"] = batch["video"][:k, -1].detach()
        return inputs

    # ------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------
    def sample(
        self,
        prompts: Sequence[str],
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Image(s) + prompts -> videos (b f c h w in [-1, 1]); see
        :func:`i2vlab.pipelines.dynamicrafter.sample_dynamicrafter` for the options (``last_images``,
        ``loop``, ``multiple_cond_cfg``, ``cfg_img``, ``fs``, ``guidance_rescale``, ``eta``...)."""
        from i2vlab.pipelines.dynamicrafter import sample_dynamicrafter

        opts = {**self.sampling_cfg, **kwargs}
        num_frames = num_frames or opts.pop("num_frames", None)
        opts.pop("num_frames", None)
        if images is None:
            raise ValueError("DynamiCrafter is image-to-video: pass images (b c h w in [-1, 1])")
        return sample_dynamicrafter(self, prompts, images, num_frames=num_frames, seed=seed, **opts)
