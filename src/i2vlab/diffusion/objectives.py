"""Training objectives as objects: how to draw noise levels, noise the latents, form the target and
weight the loss. The training core (:class:`~i2vlab.methods.base.VideoDiffusionModule`) calls one
of these; no method rewrites the loss.

- :class:`DDPMObjective` -- discrete timesteps on a diffusers ``DDPMScheduler`` (epsilon or
  v-prediction, zero-terminal SNR through the scheduler's config), with an optional per-timestep
  clean-latent scale (DynamiCrafter's dynamic rescale of the 512/1024 models, ``x0 * scale_arr[t]``).
  The denoiser is the network itself.
- :class:`EDMObjective` -- continuous noise levels σ ~ LogNormal(P_mean, P_std) (SVD), with the
  whole preconditioning in :meth:`EDMObjective.denoise` (k-diffusion's ``Denoiser``): the network
  sees ``c_in·x`` and ``c_noise(σ)``, the prediction is ``D = c_skip·x + c_out·F``, the target the
  clean latents and the weight ``(1 + σ²)/σ²``.

Both return noise "levels" of shape (b,): timesteps (long) or σ (float).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from i2vlab.diffusion import edm
from i2vlab.diffusion.schedules import stratified_timesteps, training_target


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """MSE per sample over (c, f, h, w) of (b c f h w) tensors; ``mask`` (b, f) weights frames. (b,)."""
    err = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 3, 4))  # (b, f)
    if mask is None:
        return err.mean(dim=1)
    mask = mask.to(err.dtype)
    return (err * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)


class DDPMObjective:
    """Discrete-time diffusion on ``scheduler`` (``add_noise``, ``get_velocity``).

    Args:
        scheduler: the training ``DDPMScheduler`` (prediction type, betas, zero-SNR rescale).
        clean_scale: ``(timesteps) -> (b,)`` factors multiplying the clean latents before noising
            (DynamiCrafter's dynamic rescale); ``None`` for none.
    """

    def __init__(
        self, scheduler: Any, clean_scale: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        self.scheduler = scheduler
        self.clean_scale = clean_scale

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def sample_levels(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator, device=device).long()

    def validation_levels(self, n: int) -> torch.Tensor:
        """Fixed timesteps at the centres of n equal strata of [0, T): a low-variance validation loss."""
        return stratified_timesteps(n, self.num_train_timesteps)

    def clean(self, latents: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        if self.clean_scale is None:
            return latents
        return latents * self.clean_scale(levels).to(latents.device, latents.dtype).view(-1, 1, 1, 1, 1)

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(clean, noise, levels)

    def target(self, clean: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return training_target(self.scheduler, clean, noise, levels)

    def weight(self, levels: torch.Tensor) -> torch.Tensor | None:
        return None

    def denoise(
        self, network: Callable[..., torch.Tensor], noisy: torch.Tensor, levels: torch.Tensor, **cond: Any
    ):
        """The network's prediction (epsilon / v) for ``noisy`` at ``levels``."""
        return network(noisy, levels, **cond)


class EDMObjective:
    """EDM (Karras et al.) as SVD trains it: σ = exp(P_mean + P_std·ε); preconditioning for a
    v-prediction network (c_skip = 1/(σ²+1), c_out = -σ/√(σ²+1), c_in = 1/√(σ²+1),
    c_noise = ¼ ln σ); loss ``(1+σ²)/σ² · |D - x0|²``."""

    def __init__(self, p_mean: float = 0.7, p_std: float = 1.6) -> None:
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def sample_levels(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return edm.sample_sigmas(n, generator, self.p_mean, self.p_std).to(device)

    def validation_levels(self, n: int) -> torch.Tensor:
        """Centres of n equal-probability strata of LogNormal(P_mean, P_std)."""
        return edm.stratified_sigmas(n, self.p_mean, self.p_std)

    def clean(self, latents: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return latents

    def add_noise(self, clean: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        sigma = edm.as_sigma(levels, clean.device)
        dt = edm.work_dtype(clean.dtype, sigma.dtype)
        return clean.to(dt) + noise.to(clean.device, dt) * sigma.to(dt).view(-1, *([1] * (clean.ndim - 1)))

    def target(self, clean: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return clean

    def weight(self, levels: torch.Tensor) -> torch.Tensor:
        return edm.loss_weight(levels)

    def denoise(
        self, network: Callable[..., torch.Tensor], noisy: torch.Tensor, levels: torch.Tensor, **cond: Any
    ):
        """``D(x; σ) = c_skip·x + c_out·F(c_in·x, c_noise(σ))`` -- ``network`` takes the scaled input
        and σ itself (SVD's UNet wrappers apply ``c_noise``) and returns ``F``."""
        return edm.denoised(network(noisy, levels, **cond), noisy, levels)
