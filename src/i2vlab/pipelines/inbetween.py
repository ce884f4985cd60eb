"""Keyframe interpolation with Stable Video Diffusion: :class:`InbetweenPipeline` -- Generative
Inbetweening, with TRF and optical flow as baselines (:mod:`i2vlab.pipelines.inbetween_baselines`).

- :func:`sample_inbetween` (Generative Inbetweening §3.3, ``method=ours``): at every Euler step,
  the frozen forward UNet predicts from frame 0 on ``z`` (recording its temporal attention maps),
  the fine-tuned backward UNet predicts from the last frame on ``flip_T(z)`` with the rotated maps;
  the predictions are fused ``0.5·v0 + 0.5·flip_T(v1)`` (optionally per-frame weights
  ``linspace(1, 0)``), each path with its own CFG (uncond = zero CLIP embedding + zero image
  latent; scale ``(linspace(1, 3, F) + reversed) / 2``). Noise re-injection: after each of the
  first ``noise_injection_ratio`` of the steps, ``noise_injection_steps`` times re-noise back to σ_i
  and redo the step (:func:`i2vlab.diffusion.edm.euler_with_reinjection`). ``backward``:
  ``finetuned`` (the method) or ``rotated_base`` (the paper's "w/o FT" ablation: the unmodified
  forward UNet with rotated maps in ``rotate_blocks``, the paper's ``[up]``, as the backward path).
- :func:`sample_trf` (Time Reversal Fusion, Feng et al. 2024, ``method=trf``): the unmodified SVD in
  both directions; the two Euler-stepped latents are blended after each step with per-frame linear
  weights (forward 1 -> 0, backward 0 -> 1); per-frame CFG 1 -> 3 per path; RePaint-style jumps back
  (``jump_length``, ``jump_n_sample``, ``repeat_step_ratio``, ``noise_scale_ratio``).
- :func:`flow_interpolate` (``method=flow``): classical bidirectional optical-flow interpolation
  (OpenCV DIS or Farneback flow, backward warping with the linear-motion flow approximation of
  Super SloMo, occlusion-agnostic blending). Needs no weights; a stand-in for FILM in the paper's table.

Tensors: keyframes (b c h w) in [-1, 1]; latents (b f c h w) as the SVD UNet takes them; videos
(b f c h w) in [-1, 1].
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from i2vlab.diffusion.edm import (
    denoised,
    euler_with_reinjection,
    sampling_sigmas,
    work_dtype,
)
from i2vlab.pipelines.inbetween_baselines import flow_interpolate, sample_trf, trf_step_schedule  # noqa: F401
from i2vlab.pipelines.svd import SVDPipeline
from i2vlab.pipelines.svd_common import (  # noqa: F401  (part of this module's interface)
    KeyframeCond,
    _check_keyframes,
    _initial_latents,
    encode_keyframes,
    frame_ramp,
    guided_prediction,
)


@torch.no_grad()
def sample_inbetween(
    module,
    first: torch.Tensor,
    last: torch.Tensor,
    num_frames: int,
    num_inference_steps: int = 50,
    fps: float = 7,
    motion_bucket_id: float = 127,
    noise_aug_strength: float = 0.02,
    min_guidance_scale: float = 1.0,
    max_guidance_scale: float = 3.0,
    weighted_average: bool = False,
    noise_injection_steps: int = 5,
    noise_injection_ratio: float = 0.5,
    backward: str = "finetuned",
    rotate_blocks: Sequence[str] | None = ("up",),
    seed: int = 0,
    latents: torch.Tensor | None = None,
    forward_unet=None,
    backward_unet=None,
    noise_sampler: Callable[[torch.Tensor], torch.Tensor] | None = None,
    cond_noise: torch.Tensor | None = None,
    step_callback: Callable[[int, torch.Tensor], None] | None = None,
    return_latents: bool = False,
) -> torch.Tensor:
    """Bidirectional fused sampling. ``forward_unet`` defaults to ``module.ref_unet`` (frozen SVD,
    records maps), ``backward_unet`` to ``module.unet`` (fine-tuned, rotated maps) or, with
    ``backward="rotated_base"``, to the frozen SVD with rotated maps in ``rotate_blocks`` only
    (``down`` / ``mid`` / ``up``; all when None); ``latents``:
    initial unit noise (b f c h w); ``noise_sampler``: re-injection noise (default: seeded Gaussian);
    ``cond_noise``: the keyframes' augmentation noise (b c h w; default: seeded Gaussian);
    ``step_callback(i, z)``: sees the latents after each step. Computed in float32 (float64 for
    float64 keyframes). Returns the video (b f c h w) in [-1, 1], or the final latents with
    ``return_latents``."""
    _check_keyframes(first, last, module)
    fwd = forward_unet if forward_unet is not None else module.ref_unet
    if backward not in ("finetuned", "rotated_base"):
        raise ValueError(f"backward must be finetuned or rotated_base, got {backward!r}")
    if backward_unet is not None:
        bwd = backward_unet
    elif backward == "rotated_base":
        bwd = module.rotated_base_unet(rotate_blocks)
    else:
        bwd = module.unet
    device, b, dt = first.device, first.shape[0], work_dtype(first.dtype)
    g = torch.Generator(device=device).manual_seed(int(seed))
    cfg = max_guidance_scale > 1.0
    c0, c1 = encode_keyframes(
        module, first.to(dt), last.to(dt), g, cfg, fps, motion_bucket_id, noise_aug_strength, cond_noise
    )
    sigmas = sampling_sigmas(module.noise_scheduler, num_inference_steps)
    z = _initial_latents(
        module, b, num_frames, first.shape[-2], first.shape[-1], sigmas, g, device, latents, dt
    )

    ramp = frame_ramp(num_frames, min_guidance_scale, max_guidance_scale, b, device, dt)
    if weighted_average:  # per-frame fusion weights, unsymmetrised CFG ramp
        guidance, w = ramp, frame_ramp(num_frames, 1.0, 0.0, b, device, dt)
    else:  # symmetrised ramp (constant (min + max) / 2), equal weights
        guidance, w = (ramp + ramp.flip(1)) / 2, 0.5
    guidance = guidance if cfg else None

    def fused_denoised(x: torch.Tensor, i: int) -> torch.Tensor:
        s = float(sigmas[i])
        v0 = guided_prediction(fwd, x, s, c0, guidance)  # forward pass first: fills the attention store
        v1 = guided_prediction(bwd, x.flip(1), s, c1, guidance)
        return denoised(w * v0 + (1 - w) * v1.flip(1), x, s)

    z = euler_with_reinjection(
        fused_denoised,
        z,
        sigmas,
        noise_injection_steps,
        noise_injection_ratio,
        noise_sampler=noise_sampler,
        generator=g,
        callback=step_callback,
    )
    if return_latents:
        return z
    return module.decode_latents(z.transpose(1, 2))


class InbetweenPipeline(SVDPipeline):
    """Generative Inbetweening on SVD: the frozen forward UNet (``ref_unet``, a copy of the base UNet
    taken at construction) records its temporal self-attention maps; the fine-tuned ``unet`` uses
    them rotated 180° (:mod:`i2vlab.models.attention_control`). ``__call__`` interpolates two
    keyframes with ``method`` ``ours`` (:func:`sample_inbetween`), ``trf`` or ``flow``.

    Arguments: :class:`~i2vlab.pipelines.svd.SVDPipeline`'s, and ``attention_rotation``: the
    fine-tuned UNet's temporal self-attention uses the rotated maps (the method); false: its own
    attention (the paper's "w/o RA" ablation, fine-tuned without rotation)."""

    components: ClassVar[tuple[str, ...]] = (*SVDPipeline.components, "ref_unet")
    default_sampling: ClassVar[dict[str, Any]] = {"method": "ours"}
    keyframes: ClassVar[int] = 2
    samplers: ClassVar[dict[str, Callable]] = {
        "ours": sample_inbetween,
        "trf": sample_trf,
        "flow": flow_interpolate,
    }

    def __init__(self, unet: Any, *args: Any, attention_rotation: bool = True, **kwargs: Any) -> None:
        from i2vlab.models.attention_control import (
            AttentionStore,
            install_flip_processors,
            install_store_processors,
        )

        super().__init__(unet, *args, **kwargs)
        self.ref_unet = copy.deepcopy(unet)  # the forward model: the base UNet before any fine-tuning
        self.ref_unet.requires_grad_(False)
        self.attention_store = AttentionStore()
        self.controlled_layers = install_store_processors(self.ref_unet, self.attention_store)
        self.attention_rotation = bool(attention_rotation)
        if self.attention_rotation:
            install_flip_processors(self.unet, self.attention_store, self.controlled_layers)
        self._rotated_base: dict[tuple, Any] = {}  # not a component: shares ref_unet's weights

    def rotated_base_unet(self, blocks: Sequence[str] | None = ("up",)):
        """The frozen forward UNet's weights with rotated maps in ``blocks`` (built once per choice;
        no weights are copied)."""
        from i2vlab.models.attention_control import rotated_view

        key = tuple(blocks) if blocks is not None else None
        if key not in self._rotated_base:
            self._rotated_base[key] = rotated_view(
                self.ref_unet, self.attention_store, self.controlled_layers, key
            )
        return self._rotated_base[key]

    @torch.no_grad()
    def __call__(
        self,
        prompts: Sequence[str],
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        last_images: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Interpolate between ``images`` (first keyframes, b c h w) and ``last_images`` (b c h w), both
        in [-1, 1]. Prompts are ignored (SVD has no text conditioning). ``method``: ``ours`` (fused
        forward + fine-tuned backward, noise re-injection), ``trf`` (Time Reversal Fusion on the
        unmodified SVD) or ``flow`` (OpenCV optical flow). Other keywords go to the chosen sampler;
        keys meant for another sampler are ignored. Returns (b f c h w) in [-1, 1]."""
        num_frames, opts = self.options(num_frames, kwargs)
        mode = opts.pop("method", "ours")
        if last_images is None:
            last_images = opts.pop("last_images", None)
        opts.pop("last_images", None)
        if mode not in self.samplers:
            raise ValueError(f"sampling method {mode!r}: choose one of {sorted(self.samplers)}")
        if images is None or last_images is None:
            raise ValueError(
                "keyframe interpolation needs two keyframes: images=(b c h w) and last_images=(b c h w)"
            )
        num_frames = int(num_frames or self.unet.config.num_frames)
        known = set().union(*(inspect.signature(f).parameters for f in self.samplers.values()))
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ValueError(
                f"unknown sampling option(s) {unknown}; options: {sorted(known - {'module', 'first', 'last'})}"
            )
        fn = self.samplers[mode]
        opts = {k: v for k, v in opts.items() if k in inspect.signature(fn).parameters}
        first = images.to(self.device, work_dtype(images.dtype))  # float32, float64 if given so
        last = last_images.to(self.device, first.dtype)
        if mode == "flow":
            return fn(first, last, num_frames, **opts)
        return fn(self, first, last, num_frames, seed=seed, **opts)
