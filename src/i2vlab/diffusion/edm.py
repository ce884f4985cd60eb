"""EDM (Karras et al. 2022) as Stable Video Diffusion uses it: v-prediction preconditioning,
log-normal noise levels for training, the loss weighting, and Euler steps on the Karras σ schedule.

SVD's denoiser is ``D(x; σ) = c_skip(σ)·x + c_out(σ)·F(c_in(σ)·x; c_noise(σ))`` with

- ``c_skip = 1 / (σ² + 1)``, ``c_out = -σ / √(σ² + 1)``, ``c_in = 1 / √(σ² + 1)``, ``c_noise = 0.25·ln σ``;
- training noise levels ``σ ~ LogNormal(P_mean = 0.7, P_std = 1.6)`` and loss weight ``(1 + σ²) / σ²``;
- sampling on diffusers' ``EulerDiscreteScheduler`` with SVD's scheduler config (Karras σ in
  [0.002, 700], ``timestep_type: continuous`` so its ``timesteps`` are the ``c_noise`` values).

The σ schedule comes from the diffusers scheduler (:func:`sampling_sigmas`); the Euler step itself is
written out (:func:`euler_step`: the operations of ``EulerDiscreteScheduler.step`` with ``s_churn = 0``,
bit-identical to it and to the Generative Inbetweening code's copy of it in float32) because the
Generative Inbetweening sampler re-enters the same step several times (noise re-injection) and TRF
jumps back and forth between steps, which the scheduler's internal step counter does not model.

Precision: everything runs in float32, or in float64 when the inputs are float64 (the parity tests
do); σ factors are computed in σ's dtype, float32 for the scheduler's σ table as in the scheduler.
Unlike the scheduler, the step does not cast a float64 sample to float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

#: ``scheduler/scheduler_config.json`` of stabilityai/stable-video-diffusion-img2vid(-xt)
SVD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "interpolation_type": "linear",
    "prediction_type": "v_prediction",
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "use_karras_sigmas": True,
}


def work_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype EDM arithmetic runs in: float32, or float64 when any input is float64 (half
    precision inputs are computed in float32)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def as_sigma(sigma: torch.Tensor | float, device: torch.device | str | None = None) -> torch.Tensor:
    """σ as a float32 tensor, or float64 if given in float64 (a Python float becomes float32, as a
    scheduler's σ table is float32)."""
    s = torch.as_tensor(sigma, device=device)
    return s.to(work_dtype(s.dtype))


def _bcast(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """σ as a tensor broadcastable against ``like`` (per-sample σ of shape (b,) -> (b, 1, ...))."""
    s = as_sigma(sigma, like.device)
    if s.ndim == 0:
        return s
    return s.reshape(s.shape[0], *([1] * (like.ndim - 1)))


def c_skip(sigma: torch.Tensor) -> torch.Tensor:
    return 1.0 / (sigma**2 + 1.0)


def c_out(sigma: torch.Tensor) -> torch.Tensor:
    return -sigma / (sigma**2 + 1.0) ** 0.5


def c_in(sigma: torch.Tensor) -> torch.Tensor:
    return 1.0 / (sigma**2 + 1.0) ** 0.5


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """The UNet's timestep input for noise level σ (SVD: ``0.25·ln σ``; the UNet's sinusoidal
    embedding then runs in float32 whatever dtype is passed)."""
    return 0.25 * as_sigma(sigma).log()


def scale_input(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``c_in(σ)·x``, written ``x / (σ² + 1)^0.5`` as ``EulerDiscreteScheduler.scale_model_input`` and
    the official training script compute it."""
    s = _bcast(sigma, x)
    return (x.to(work_dtype(x.dtype, s.dtype)) / (s**2 + 1.0) ** 0.5).to(x.dtype)


def denoised(model_output: torch.Tensor, noisy: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``D = c_skip·x + c_out·F`` for a v-prediction network output ``F``, written
    ``F·c_out + x / (σ² + 1)`` as ``EulerDiscreteScheduler.step`` computes it; in float32 (float64 if
    any input is float64), with the σ factors in σ's own dtype (a scheduler's σ table is float32)."""
    s = _bcast(sigma, noisy)
    dt = work_dtype(noisy.dtype, model_output.dtype, s.dtype)
    return model_output.to(dt) * c_out(s) + noisy.to(dt) / (s**2 + 1.0)


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """EDM weighting ``λ(σ) = (1 + σ²) / σ²`` (turns the x0-error into a unit-variance v-error)."""
    return (1.0 + sigma**2) / sigma**2


def sample_sigmas(
    n: int,
    generator: torch.Generator | None = None,
    p_mean: float = 0.7,
    p_std: float = 1.6,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training noise levels ``σ = exp(P_mean + P_std·ε)``, ε ~ N(0, 1): shape (n,)."""
    device = generator.device if generator is not None else device
    eps = torch.randn(n, generator=generator, device=device)
    return (p_mean + p_std * eps).exp()


def stratified_sigmas(n: int, p_mean: float = 0.7, p_std: float = 1.6) -> torch.Tensor:
    """``n`` fixed noise levels at the centres of equal-probability strata of LogNormal(P_mean, P_std):
    the EDM counterpart of :func:`i2vlab.diffusion.schedules.stratified_timesteps` (validation loss)."""
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    z = math.sqrt(2.0) * torch.erfinv(2 * q - 1)
    return (p_mean + p_std * z).exp().float()


def karras_sigmas(
    n: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0
) -> torch.Tensor:
    """The Karras et al. schedule (n values, decreasing), without the trailing zero."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return ((hi + ramp * (lo - hi)) ** rho).float()


def build_euler_scheduler(
    name: str = "backbone.noise_scheduler",
    config: Mapping[str, Any] | None = None,
    pretrained: str | None = None,
    subfolder: str | None = "scheduler",
):
    """diffusers ``EulerDiscreteScheduler`` with SVD's config (or loaded from a pipeline folder).

    Always built on the CPU, also inside :func:`i2vlab.models.loading.build_on_meta`: a scheduler has
    no parameters and its constructor reads tensor values, which the meta device cannot."""
    from diffusers import EulerDiscreteScheduler

    from i2vlab.models.loading import load_or_build, on_meta, to_plain

    with torch.device("cpu"):
        if pretrained is not None and not on_meta():
            return load_or_build(EulerDiscreteScheduler, name, pretrained=pretrained, subfolder=subfolder)
        return EulerDiscreteScheduler(**{**SVD_SCHEDULER_CONFIG, **dict(to_plain(config) or {})})


def sampling_sigmas(scheduler, num_inference_steps: int) -> torch.Tensor:
    """The scheduler's σ schedule for ``num_inference_steps`` steps: ``num_inference_steps + 1`` values
    ending in 0 (float32, CPU)."""
    scheduler.set_timesteps(num_inference_steps, device="cpu")
    return scheduler.sigmas.detach().float().cpu().clone()


def init_noise_sigma(sigmas: torch.Tensor) -> float:
    """Standard deviation of the initial latents (``EulerDiscreteScheduler.init_noise_sigma`` for
    ``timestep_spacing`` leading/linspace): ``√(σ_max² + 1)``."""
    return float((sigmas.max() ** 2 + 1) ** 0.5)


def euler_step(
    x: torch.Tensor, denoised_x: torch.Tensor, sigma: torch.Tensor | float, sigma_next: torch.Tensor | float
) -> torch.Tensor:
    """One Euler step of the probability-flow ODE from σ to σ_next: ``x + (σ_next - σ)·(x - D)/σ``.

    The same operations as ``EulerDiscreteScheduler.step`` (``s_churn = 0``): σ and σ_next as tensors
    of σ's dtype (float32 for a Python float or a scheduler's σ table, so ``σ_next - σ`` is rounded
    as the scheduler rounds it), the sample in float32, or float64 for float64 inputs (the scheduler
    always casts the sample to float32)."""
    dt = work_dtype(x.dtype, denoised_x.dtype)
    s, s_next = as_sigma(sigma, x.device), as_sigma(sigma_next, x.device)
    d = (x.to(dt) - denoised_x.to(dt)) / s
    return (x.to(dt) + d * (s_next - s)).to(x.dtype)


def euler_with_reinjection(
    denoise_fn: Callable[[torch.Tensor, int], torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    injection_steps: int = 0,
    injection_ratio: float = 0.0,
    noise_sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Euler sampling with noise re-injection ("per-step recurrence", Generative Inbetweening §3.3).

    ``denoise_fn(x, i)`` returns D(x; σ_i). After the Euler step i -> i+1 of each of the first
    ``int(N·injection_ratio)`` steps, ``injection_steps`` times: add N(0, σ_i² - σ_{i+1}²) (back to
    level σ_i) and redo the step from there. ``noise_sampler(x)`` draws unit Gaussian noise shaped
    like ``x`` (default: from ``generator``). ``callback(i, x)`` sees x after step i (re-injections
    included). σ arithmetic (step sizes, the re-injection standard deviation) is done on the σ table
    as the official pipeline does it (``torch.sqrt(sigma_t**2 - sigma_tm1**2)`` on the scheduler's σ).
    """
    if noise_sampler is None:

        def noise_sampler(z: torch.Tensor) -> torch.Tensor:
            return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)

    n = len(sigmas) - 1
    threshold = int(n * injection_ratio)
    sigmas = as_sigma(sigmas.detach().cpu())
    for i in range(n):
        s, s_next = sigmas[i], sigmas[i + 1]
        x = euler_step(x, denoise_fn(x, i), s, s_next)
        if i < threshold and injection_steps > 0:
            std = (s**2 - s_next**2).clamp_min(0).sqrt().to(x.device)
            for _ in range(injection_steps):
                x = x + noise_sampler(x) * std
                x = euler_step(x, denoise_fn(x, i), s, s_next)
        if callback is not None:
            callback(i, x)
    return x
