"""Noise schedules and training targets, on diffusers schedulers.

Prediction types: ``epsilon`` and ``v_prediction`` (diffusers' ``DDPMScheduler`` does the maths,
including ``rescale_betas_zero_snr``); EDM (SVD) lives in :mod:`i2vlab.diffusion.edm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from i2vlab.models.loading import load_or_build


def build_noise_scheduler(
    name: str = "backbone.noise_scheduler",
    config: Mapping[str, Any] | None = None,
    pretrained: str | None = None,
    subfolder: str | None = "scheduler",
    cls: str = "diffusers.DDPMScheduler",
    **overrides: Any,
) -> DDPMScheduler:
    """A training scheduler from config or from a pipeline's ``scheduler`` folder; ``overrides``
    (e.g. ``prediction_type``, ``rescale_betas_zero_snr``, ``timestep_spacing``) win."""
    if pretrained is not None:
        sched = load_or_build(cls, name, pretrained=pretrained, subfolder=subfolder)
        return sched.__class__.from_config(sched.config, **overrides) if overrides else sched
    return load_or_build(cls, name, config={**dict(config or {}), **overrides})


def sampling_scheduler(train_scheduler: DDPMScheduler, cls: type = DDIMScheduler, **overrides: Any):
    """A sampling scheduler sharing the training scheduler's betas and prediction type."""
    return cls.from_config(train_scheduler.config, **overrides)


def training_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the network should predict for ``scheduler.config.prediction_type``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unsupported prediction_type {kind!r}; use epsilon, v_prediction or sample")


def stratified_timesteps(num: int, num_train_timesteps: int = 1000) -> torch.Tensor:
    """``num`` fixed timesteps at the centres of equal strata of [0, T): a low-variance validation signal."""
    edges = torch.linspace(0, num_train_timesteps, num + 1)
    return ((edges[:-1] + edges[1:]) / 2).long().clamp(0, num_train_timesteps - 1)
