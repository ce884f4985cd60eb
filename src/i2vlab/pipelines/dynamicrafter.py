"""DynamiCrafter inference: :class:`DynamiCrafterPipeline` (components, conditioning) and its DDIM
sampler (50 steps, eta 1) with classifier-free guidance.

Follows ``lvdm/models/samplers/ddim.py`` / ``ddim_multiplecond.py`` and ``scripts/evaluation/inference.py``
``image_guided_synthesis`` (Doubiiu/DynamiCrafter); verified against them in
``tests/test_parity_dynamicrafter.py``:

- timesteps as LVDM's ``make_ddim_timesteps`` (:func:`~i2vlab.models.dynamicrafter.schedule.ddim_timesteps`):
  ``leading`` + offset 1 = LVDM "uniform" [1, 21, ..., 981] for the 256 model; ``trailing`` =
  "uniform_trailing" [19, 39, ..., 999] for 512/1024; cumulative alphas in float64
  (:func:`~i2vlab.models.dynamicrafter.schedule.alphas_cumprod`);
- the LVDM DDIM update (:func:`i2vlab.diffusion.ddim.ddim_step`): the dynamic rescale multiplies the
  predicted x0 by ``scale_arr[t_prev] / scale_arr[t]`` inside the step (1 on the last step, as
  LVDM's ``ddim_scale_arr_prev``);
- standard CFG: uncond = ("" text, CLIP of a zero image, the *same* concatenated latent); guidance only
  when the text scale is not 1 (as the official samplers);
- multi-condition CFG: ``e(0,0) + s_img [e(img,0) - e(0,0)] + s_txt [e(img,txt) - e(img,0)]``;
- ``guidance_rescale`` (0.7 for the v-prediction models) against the conditional output;
- interpolation (``last_images``: first and last latents concatenated, zeros between) and loop mode
  (the same image at both ends);
- the paper's Figure 2 gate study: ``gate_scale`` multiplies lambda of the layers ``gate_layers``
  (0-based, forward order as the ``lambda/NN`` logs; all when null) while sampling.

Ablation switches of the pipeline (paper Table 3, ``conf/experiment/ablation/dynamicrafter``):
``context_stream=False`` drops the context (CLIP + context learner) tokens, the UNet sees the text
only ("w/o ctx"); ``image_tokens="global"`` feeds the context learner the CLIP class token alone
instead of all last-layer tokens ("Ours_G", a single global token as I2VGen-XL).

:func:`i2vlab.diffusion.ddim.ddim_sample` is the step loop on any model callable; :func:`sample_dynamicrafter`
builds the conditions from a pipeline and runs it. The initial noise and the per-step noise
(eta > 0) come from a seeded generator, or are given (``x_T``, ``step_noise``) to replay a run.

Layouts: images b c h w in [-1, 1]; latents b c f h w; returns b f c h w in [-1, 1].
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from einops import rearrange

from i2vlab.diffusion.ddim import combine_guidance, ddim_sample, ddim_step  # noqa: F401
from i2vlab.models.dynamicrafter.schedule import (
    alphas_cumprod,
    ddim_timesteps,
    dynamic_rescale_table,
    use_float64_tables,
)
from i2vlab.pipelines.base import VideoPipeline

__all__ = [
    "DynamiCrafterPipeline",
    "combine_guidance",
    "ddim_sample",
    "ddim_step",
    "ddim_timesteps",
    "sample_dynamicrafter",
]


@torch.no_grad()
def sample_dynamicrafter(
    pipe,
    prompts: Sequence[str],
    images: torch.Tensor,
    num_frames: int | None = None,
    seed: int = 0,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    eta: float = 1.0,
    guidance_rescale: float = 0.0,
    multiple_cond_cfg: bool = False,
    cfg_img: float | None = None,
    fs: int | None = None,
    last_images: torch.Tensor | None = None,
    loop: bool = False,
    negative_prompt: str = "",
    gate_scale: float = 1.0,
    gate_layers: Sequence[int] | None = None,
    return_latents: bool = False,
    x_T: torch.Tensor | None = None,
    step_noise: Sequence[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Generate videos with a :class:`DynamiCrafterPipeline` (``pipe``).

    Args:
        images: conditioning images (b c h w in [-1, 1]); the video size follows them.
        num_frames: frames (the context learner's ``video_length`` for per-frame image tokens).
        guidance_scale: s_txt (and s for standard CFG); 1 disables guidance.
        multiple_cond_cfg / cfg_img: multi-condition CFG and its image scale s_img (default s_txt).
        fs: frame stride (256) or fps (512/1024); smaller -> more motion; the UNet's ``default_fs`` if None.
        last_images: end keyframes (interpolation); ``loop``: the start image at both ends.
        gate_scale / gate_layers: lambda of those dual cross-attention layers (0-based, forward order;
            all when None) is multiplied by ``gate_scale`` while sampling (paper Figure 2).
        x_T / step_noise: the initial latents and the noise of each step (eta > 0) instead of drawing
            them from ``seed`` (to replay another sampler's run).
    """
    dev = pipe.device
    b = len(prompts)
    images = images.to(dev)
    images = images.to(torch.promote_types(images.dtype, torch.float32))  # float64 stays float64
    if images.shape[0] != b:
        raise ValueError(f"{b} prompts but {images.shape[0]} images")
    vl = getattr(pipe.image_proj_model.config, "video_length", None)
    f = int(num_frames or vl or 16)
    interp = last_images is not None or loop
    if interp and not pipe.interp_mode:
        raise ValueError("last_images / loop need a model trained with method.interp_mode=true")
    if pipe.interp_mode and not interp:
        loop = interp = True  # an interpolation model given one image: loop mode

    # conditions: (img, txt), (0, 0) and, for multi-condition CFG, (img, 0)
    img_tokens = pipe.image_context(images)
    ctx_dtype = torch.promote_types(img_tokens.dtype, torch.float32)
    img_tokens = img_tokens.to(ctx_dtype)
    text = pipe.encode_prompt(list(prompts)).to(ctx_dtype)
    z0 = pipe.encode_image(images)  # b c h w
    concat = None
    if pipe.vdg:
        zf = z0[:, :, None].expand(-1, -1, f, -1, -1)
        if interp:
            zl = z0 if last_images is None else pipe.encode_image(last_images.to(dev, images.dtype))
            concat = pipe.concat_latents(
                zf.contiguous(), torch.zeros(b, dtype=torch.long, device=dev), last=zl
            )
        else:
            concat = zf.contiguous()
    fs_t = None if fs is None else torch.full((b,), int(fs), device=dev, dtype=torch.long)
    contexts = [torch.cat([text, img_tokens], 1)]
    if guidance_scale != 1.0:
        null = pipe.encode_prompt([negative_prompt] * b).to(ctx_dtype)
        uncond_img = pipe.image_context(torch.zeros_like(images)).to(ctx_dtype)
        contexts.append(torch.cat([null, uncond_img], 1))
        if multiple_cond_cfg:
            contexts.append(torch.cat([null, img_tokens], 1))
    n = len(contexts)
    cond = {
        "context": torch.cat(contexts),
        "fs": None if fs_t is None else fs_t.repeat(n),
        "concat": None if concat is None else concat.repeat(n, 1, 1, 1, 1),
    }

    sched_cfg = pipe.noise_scheduler.config
    scale = None
    if pipe.use_dynamic_rescale:
        scale = pipe.rescale_table()

    def model_fn(x: torch.Tensor, t: int) -> Sequence[torch.Tensor]:
        tt = torch.full((b * n,), t, device=dev, dtype=torch.long)
        return pipe.denoise(x.repeat(n, 1, 1, 1, 1), tt, cond).chunk(n)

    g = torch.Generator(device="cpu").manual_seed(int(seed))
    h, w = z0.shape[-2:]
    shape = (b, pipe.latent_channels, f, h, w)
    if x_T is None:
        x = torch.randn(shape, generator=g).to(dev)
    else:
        x = x_T.to(dev)
        if tuple(x.shape) != shape:
            raise ValueError(f"x_T has shape {tuple(x.shape)}, expected {shape}")
    if step_noise is None:
        noise_fn = lambda i, s: torch.randn(tuple(s), generator=g).to(dev, x.dtype)  # noqa: E731
    else:
        noise_fn = lambda i, s: step_noise[i].to(dev, x.dtype)  # noqa: E731
    gates = contextlib.nullcontext()
    if float(gate_scale) != 1.0:
        from i2vlab.models.dynamicrafter import scaled_gates

        gates = scaled_gates(pipe.unet, float(gate_scale), gate_layers)
    with gates:
        x = ddim_sample(
            model_fn,
            x,
            alphas_cumprod(sched_cfg),
            ddim_timesteps(sched_cfg, num_inference_steps),
            sched_cfg.prediction_type,
            guidance_scale=guidance_scale,
            cfg_img=cfg_img,
            guidance_rescale=guidance_rescale,
            eta=eta,
            x0_scale=scale,
            step_noise=noise_fn,
        )
    if return_latents:
        return x
    return pipe.decode_latents(x)


class DynamiCrafterPipeline(VideoPipeline):
    """DynamiCrafter: the VideoCrafter 3D UNet (or, stage 1, a text-to-image UNet) with the image
    injected twice -- per-frame context tokens from the context learner and, with visual detail
    guidance (8 input channels), the conditioning frame's latent concatenated to every frame.
    ``__call__`` is :func:`sample_dynamicrafter`.

    Args (besides :class:`~i2vlab.pipelines.base.VideoPipeline`'s):
        image_encoder: frozen CLIP vision tower (all last-layer tokens).
        image_proj_model: the context learner (:class:`~i2vlab.models.dynamicrafter.Resampler`).
        interp_mode: two-keyframe interpolation (concat = first and last latents, CLIP sees frame 0).
        use_dynamic_rescale, base_scale, turning_step: the 512/1024 dynamic latent rescale.
        clip_image_size: CLIP input size (224).
        context_stream: the context stream (CLIP tokens through the context learner, appended to the
            text tokens); false: text tokens only (paper Table 3 "w/o ctx").
        image_tokens: what the context learner reads: ``all`` last-layer CLIP tokens (the paper) or
            ``global``, the class token alone (Table 3 "Ours_G").
    """

    components: ClassVar[tuple[str, ...]] = (*VideoPipeline.components, "image_encoder", "image_proj_model")

    def __init__(
        self,
        unet: Any,
        image_encoder: Any = None,
        image_proj_model: Any = None,
        interp_mode: bool = False,
        use_dynamic_rescale: bool = False,
        base_scale: float = 0.7,
        turning_step: int = 400,
        clip_image_size: int = 224,
        context_stream: bool = True,
        image_tokens: str = "all",
        **kwargs: Any,
    ) -> None:
        from i2vlab.models.dynamicrafter import DualCrossAttnProcessor, DynamiCrafterUNet3DModel

        if image_tokens not in ("all", "global"):
            raise ValueError(f"method.image_tokens must be all or global, got {image_tokens!r}")

        super().__init__(unet=unet, **kwargs)
        if self.noise_scheduler is not None:  # LVDM's schedule tables (float64, not diffusers' float32)
            use_float64_tables(self.noise_scheduler)
        self.image_encoder, self.image_proj_model = image_encoder, image_proj_model
        self.interp_mode = bool(interp_mode)
        self.use_dynamic_rescale = bool(use_dynamic_rescale)
        self.base_scale, self.turning_step = float(base_scale), int(turning_step)
        self.clip_image_size = int(clip_image_size)
        self.context_stream, self.image_tokens = bool(context_stream), image_tokens
        self.is_3d = isinstance(unet, DynamiCrafterUNet3DModel)
        self.latent_channels = int(unet.config.out_channels)
        self.vdg = int(unet.config.in_channels) == 2 * self.latent_channels
        procs = [m for m in unet.modules() if isinstance(m, DualCrossAttnProcessor)]
        self.text_context_len = procs[0].text_context_len if procs else None

    @property
    def keyframes(self) -> int:  # type: ignore[override]
        return 2 if self.interp_mode else 1

    @classmethod
    def keyframes_for(cls, settings: Any) -> int:
        return 2 if settings.get("interp_mode", False) else 1

    @property
    def tokens_per_frame(self) -> int:
        return int(self.image_proj_model.config.num_queries)

    def image_context(self, images: torch.Tensor) -> torch.Tensor:
        """Conditioning images (b c h w, [-1, 1]) -> image tokens (b, f*n, d) from the context learner;
        (b, 0, d) without the context stream."""
        from i2vlab.models.dynamicrafter import clip_preprocess

        if not self.context_stream:
            d = int(self.unet.config.cross_attention_dim)
            return torch.zeros(images.shape[0], 0, d, device=images.device, dtype=images.dtype)
        with torch.no_grad():
            pix = clip_preprocess(images, self.clip_image_size).to(self.image_encoder.dtype)
            tokens = self.image_encoder(pixel_values=pix).last_hidden_state  # all tokens, before ln_post
        if self.image_tokens == "global":
            tokens = tokens[:, :1]  # the class token (f_cls) only
        return self.image_proj_model(tokens.to(self.image_proj_model.dtype))

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

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """noisy (b c f h w) -> model output (b c f h w); ``cond``: ``context`` (b L d), ``fs`` (b,) or
        None, ``concat`` (b c f h w, VDG) or None."""
        from i2vlab.models.dynamicrafter import frame_context

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

    def rescale_table(self) -> torch.Tensor:
        """``scale_arr`` of the dynamic rescale (float64, per training timestep)."""
        T = self.noise_scheduler.config.num_train_timesteps
        return dynamic_rescale_table(T, self.base_scale, self.turning_step)

    def x0_scale(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Dynamic rescale factor per timestep (float64; 1 when off)."""
        if not self.use_dynamic_rescale:
            return torch.ones(timesteps.shape, device=timesteps.device, dtype=torch.float64)
        return self.rescale_table().to(timesteps.device)[timesteps.long()]

    def __call__(
        self,
        prompts: Sequence[str],
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Image(s) + prompts -> videos (b f c h w in [-1, 1]); options: see
        :func:`sample_dynamicrafter` (``last_images``, ``loop``, ``multiple_cond_cfg``, ``cfg_img``, ``fs``,
        ``guidance_rescale``, ``eta``...)."""
        if images is None:
            raise ValueError("DynamiCrafter is image-to-video: pass images (b c h w in [-1, 1])")
        num_frames, opts = self.options(num_frames, kwargs)
        return sample_dynamicrafter(self, prompts, images, num_frames=num_frames, seed=seed, **opts)
