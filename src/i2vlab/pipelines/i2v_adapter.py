"""I2V-Adapter sampling: image + prompt -> video.

What is new here (I2V-Adapter §3.3 and the official pipeline), on diffusers' ``DDIMScheduler`` and
this project's components:

- the clean first-frame latent z1 = VAE(image) is frame 0 of the latents at *every* step: the
  scheduler steps frames 1..F-1 only, frame 0 is never touched;
- Frame Similarity Prior (FSP): instead of pure noise, start at t0 from
  ``x_t0^i = sqrt(a_t0) D(z1) + sqrt(1 - a_t0) eps^i`` with ``D(z) = M_p * z + (1 - M_p) * GaussianBlur(z)``,
  M_p ~ Bernoulli(p) elementwise over (b c f h w), blur kernel 9 / sigma 18, all in latent space.
  ``fsp_t0`` in (0, 1] picks the first DDIM timestep <= t0·T (later steps only, as in SDEdit); ``None``
  starts at the first timestep of the schedule (961 for 25 "leading" steps, as the official code);
  ``fsp_p`` is the keep-probability (official 0.5);
- classifier-free guidance with one scale over text and image: the unconditional branch is the
  negative prompt + the CLIP embedding of an all-zero image;
- optional LAB a/b histogram matching of every frame to frame 0 (official post-processing);
- optional ControlNet (diffusers ``ControlNetModel``, run per frame, residuals added to the UNet).

Returns videos (b f c h w) in [-1, 1]; ``scripts/sample.py`` writes them as mp4 (``--gif`` for gif).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from einops import rearrange

from i2vlab.diffusion.schedules import sampling_scheduler
from i2vlab.models.content_adapter import encode_clip_image, has_content_adapter
from i2vlab.pipelines.animatediff import AnimateDiffPipeline
from i2vlab.pipelines.frame_prior import (  # noqa: F401  (part of this module's interface)
    color_match,
    degrade,
    fsp_start_index,
    gaussian_blur,
    initial_latents,
)


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------
def _prepare_control(control: torch.Tensor, b: int, f: int, height: int, width: int, device) -> torch.Tensor:
    """Control frames (b f c h w or f c h w, values in [0, 1]) -> ((b f) c H W) at the pixel size."""
    if control.ndim == 4:
        control = control[None].expand(b, -1, -1, -1, -1)
    if control.shape[:2] != (b, f):
        raise ValueError(f"control frames must be (b={b}, f={f}, c, h, w), got {tuple(control.shape)}")
    x = rearrange(control.float(), "b f c h w -> (b f) c h w")
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.to(device)


def _latent_dtype(unet: Any) -> torch.dtype:
    """Latents and the scheduler's arithmetic: float32, or float64 for a float64 UNet (parity tests)."""
    return torch.float64 if getattr(unet, "dtype", torch.float32) == torch.float64 else torch.float32


@torch.no_grad()
def sample_i2v(
    module: Any,
    prompts: Sequence[str],
    images: torch.Tensor | None,
    num_frames: int = 16,
    seed: int = 0,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    negative_prompt: str | None = None,
    fsp: bool = True,
    fsp_t0: float | None = None,
    fsp_p: float = 0.5,
    fsp_kernel: int = 9,
    fsp_sigma: float = 18.0,
    eta: float = 0.0,
    color_match_frames: bool = False,
    height: int | None = None,
    width: int | None = None,
    controlnet: Any = None,
    control_frames: torch.Tensor | None = None,
    controlnet_scale: float = 1.0,
    scheduler_overrides: dict | None = None,
    return_latents: bool = False,
    output_type: str = "video",
    prompt_embeds: torch.Tensor | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    image_embeds: torch.Tensor | None = None,
    negative_image_embeds: torch.Tensor | None = None,
    first_frame_latents: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    fsp_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Image(s) (b c h w in [-1, 1]) + prompts -> videos (b f c h w in [-1, 1]) with frame 0 = the image.

    ``module`` is an :class:`I2VAdapterPipeline` (or anything with its components and encoders: the
    unet with the first-frame processors, vae, text and image encoders, training scheduler). ``controlnet``: a diffusers ``ControlNetModel`` with
    ``control_frames`` (b f 3 H W in [0, 1]). ``return_latents``: also return the final latents;
    ``output_type="latent"``: return only the final latents (b c f h w), no decoding.

    Precomputed inputs, as diffusers pipelines accept them (each replaces one encoder call or draw):
    ``prompt_embeds`` / ``negative_prompt_embeds`` (b, L, d: text encoder output); ``image_embeds`` /
    ``negative_image_embeds`` (b, tokens, d: what the UNet's IP-Adapter projection takes, the CLIP
    penultimate hidden states); ``first_frame_latents`` (b c h w: scaled VAE latent of the image,
    ``images`` may then be ``None`` unless the CLIP embedding is computed from it); ``noise`` and
    ``fsp_mask`` (b c f h w, see :func:`initial_latents`)."""
    device = module.device
    if first_frame_latents is not None:
        b = first_frame_latents.shape[0]
    elif images is not None:
        b = images.shape[0]
    else:
        raise ValueError("give images (or first_frame_latents)")
    if len(prompts) != b:
        raise ValueError(f"{len(prompts)} prompts for {b} images")
    if images is not None:
        if height is not None and width is not None and images.shape[-2:] != (height, width):
            images = F.interpolate(images.float(), size=(height, width), mode="bilinear", align_corners=False)
        images = images.to(device)
        height, width = images.shape[-2:]
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    dtype = module.unet.dtype
    lat_dtype = _latent_dtype(module.unet)

    sched = sampling_scheduler(
        module.noise_scheduler, DDIMScheduler, **{"clip_sample": False, **(scheduler_overrides or {})}
    )
    sched.set_timesteps(num_inference_steps, device=device)
    if lat_dtype == torch.float64:  # the step's arithmetic in the latents' dtype (diffusers keeps float32
        sched.alphas_cumprod = sched.alphas_cumprod.to(lat_dtype)  # scalars; 0.11's add_noise cast them)

    if first_frame_latents is None:
        z1 = module.encode_image(images, generator=g)  # b c h w, scaled; a VAE sample as the official code
    else:
        z1 = first_frame_latents
    z1 = z1.to(device, lat_dtype)
    latents, start = initial_latents(
        z1, num_frames, sched, g, fsp, fsp_t0, fsp_p, fsp_kernel, fsp_sigma, noise=noise, fsp_mask=fsp_mask
    )

    cfg = guidance_scale > 1.0
    text = module.encode_prompt(list(prompts)) if prompt_embeds is None else prompt_embeds
    if cfg:
        neg = (
            module.encode_prompt([negative_prompt or ""] * b)
            if negative_prompt_embeds is None
            else negative_prompt_embeds
        )
        text = torch.cat([neg.to(text.device), text])
    unet_kwargs: dict[str, Any] = {}
    if has_content_adapter(module.unet):
        if image_embeds is None and images is None:
            raise ValueError("the content adapter needs images (or image_embeds)")
        img = encode_clip_image(module.image_encoder, images) if image_embeds is None else image_embeds
        if cfg:
            neg_img = (
                encode_clip_image(module.image_encoder, None, batch_size=b)
                if negative_image_embeds is None
                else negative_image_embeds
            )
            img = torch.cat([neg_img.to(img.device), img])
        unet_kwargs["added_cond_kwargs"] = {"image_embeds": [img[:, None].to(device, dtype)]}
    ehs = text.to(device).repeat_interleave(
        num_frames, dim=0
    )  # UNetMotionModel does not repeat it over frames
    control = None
    if controlnet is not None:
        if control_frames is None:
            raise ValueError("controlnet given without control_frames")
        if height is None:
            height, width = (s * 8 for s in z1.shape[-2:])
        control = _prepare_control(control_frames, b, num_frames, height, width, device)
        if cfg:
            control = torch.cat([control, control])

    for t in sched.timesteps[start:]:
        x = torch.cat([latents, latents]) if cfg else latents
        x = sched.scale_model_input(x, t)
        kw = dict(unet_kwargs)
        if control is not None:
            down, mid = controlnet(
                rearrange(x, "b c f h w -> (b f) c h w").to(controlnet.dtype),
                t,
                encoder_hidden_states=ehs.to(controlnet.dtype),
                controlnet_cond=control.to(controlnet.dtype),
                conditioning_scale=controlnet_scale,
                return_dict=False,
            )
            kw["down_block_additional_residuals"] = [r.to(dtype) for r in down]
            kw["mid_block_additional_residual"] = mid.to(dtype)
        eps = module.unet(x.to(dtype), t, encoder_hidden_states=ehs.to(dtype), **kw).sample.to(lat_dtype)
        if cfg:
            eps_u, eps_c = eps.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        # the scheduler steps frames 1..F-1 only; frame 0 stays the clean first-frame latent
        step = sched.step(eps[:, :, 1:], t, latents[:, :, 1:], eta=eta, generator=g if eta > 0 else None)
        latents = torch.cat([latents[:, :, :1], step.prev_sample.to(latents.dtype)], dim=2)

    if output_type == "latent":
        return latents
    if output_type != "video":
        raise ValueError(f"output_type must be 'video' or 'latent', got {output_type!r}")
    video = module.decode_latents(latents)
    if color_match_frames:
        video = torch.stack([color_match(v) for v in video])
    return (video, latents) if return_latents else video


class I2VAdapterPipeline(AnimateDiffPipeline):
    """I2V-Adapter: the AnimateDiff UNet with the first-frame attention branch on every spatial
    ``attn1`` and the IP-Adapter(-Plus) content adapter; ``__call__`` is :func:`sample_i2v`.

    Args (besides :class:`~i2vlab.pipelines.base.VideoPipeline`'s):
        image_encoder: ``CLIPVisionModelWithProjection`` (``hidden_states[-2]`` feeds the Resampler).
        content_adapter: ``install_content_adapter`` kwargs (``pretrained`` IP-Adapter file or
            ``image_proj`` Resampler config, ``scale``), or ``None`` for no content adapter (ablation).
        adapter: ``{copy_query: bool, pretrained: <exported/converted adapter .safetensors> | null}``.
    """

    components: ClassVar[tuple[str, ...]] = (*AnimateDiffPipeline.components, "image_encoder")
    default_sampling: ClassVar[dict[str, Any]] = {"num_inference_steps": 25, "guidance_scale": 7.5}
    keyframes: ClassVar[int] = 1

    def __init__(
        self,
        unet: Any,
        image_encoder: Any = None,
        content_adapter: Mapping[str, Any] | None = None,
        adapter: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        from i2vlab.models.content_adapter import install_content_adapter
        from i2vlab.models.i2v_adapter import install_i2v_adapter

        super().__init__(unet=unet, **kwargs)
        self.image_encoder = image_encoder
        if content_adapter:
            if image_encoder is None:
                raise ValueError("method.content_adapter needs method.image_encoder (a CLIP vision model)")
            install_content_adapter(unet, **content_adapter)  # before the I2V processors (it resets them)
        adapter = dict(adapter or {})
        install_i2v_adapter(unet, copy_query=bool(adapter.get("copy_query", True)))
        if adapter.get("pretrained"):
            self.load_adapter(adapter["pretrained"])
        self._personalized: dict[str, Any] = {}
        self._controlnets: dict[str, Any] = {}

    # -- conditioning --------------------------------------------------------------------------
    def image_embeddings(self, images: torch.Tensor, drop: torch.Tensor | None = None) -> dict[str, Any]:
        """UNet keyword arguments of the content adapter for first frames (b c h w in [-1, 1]);
        ``drop`` (b,) replaces chosen images by the unconditional (all-zero CLIP input) embedding."""
        if not has_content_adapter(self.unet):
            return {}
        emb = encode_clip_image(self.image_encoder, images, drop=drop)
        return {"added_cond_kwargs": {"image_embeds": [emb[:, None].to(self.device)]}}

    # -- weights ---------------------------------------------------------------------------------
    def load_adapter(self, path: str | Path) -> list[str]:
        """An adapter file (``export/trainable.safetensors`` or ``scripts/convert_i2v_adapter.py`` output)."""
        from safetensors.torch import load_file

        from i2vlab.models.i2v_adapter import load_i2v_adapter_state_dict
        from i2vlab.models.loading import WeightsNotFoundError, on_meta

        if on_meta():
            return []
        if not Path(path).is_file():
            raise WeightsNotFoundError(
                f"method.adapter.pretrained: {path!r} does not exist (an I2V-Adapter .safetensors)"
            )
        return load_i2v_adapter_state_dict(self.unet, load_file(str(path)))

    def personalize(
        self,
        personalized_unet: str | None = None,
        lora: str | None = None,
        lora_scale: float = 1.0,
        reset_query: bool = False,
    ) -> None:
        """Swap in a DreamBooth-style SD1.5 UNet (full weights) and/or add a LoRA, keeping the trained
        adapter and motion module. Idempotent for the same arguments."""
        from i2vlab.models.i2v_adapter import load_lora, load_personalized_unet

        key = {
            "personalized_unet": personalized_unet,
            "lora": lora,
            "lora_scale": lora_scale,
            "reset_query": reset_query,
        }
        if key == self._personalized:
            return
        if self._personalized:
            raise RuntimeError("this pipeline was already personalised differently; load it again")
        if personalized_unet:
            load_personalized_unet(self.unet, personalized_unet, reset_query=reset_query)
        if lora:
            load_lora(self.unet, lora, scale=lora_scale)
        self._personalized = key

    def controlnet(self, controlnet: Any) -> Any:
        """A ``ControlNetModel`` (given, or loaded once from its folder) on this pipeline's device."""
        if isinstance(controlnet, torch.nn.Module):
            return controlnet.to(self.device).eval()
        if controlnet not in self._controlnets:
            from diffusers import ControlNetModel

            from i2vlab.models.loading import check_weights

            check_weights(str(controlnet), "controlnet")
            self._controlnets[controlnet] = ControlNetModel.from_pretrained(controlnet).to(self.device).eval()
        return self._controlnets[controlnet]

    # -- sampling --------------------------------------------------------------------------------
    def __call__(
        self,
        prompts: Sequence[str],
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Image(s) (b c h w in [-1, 1]) + prompts -> videos (b f c h w in [-1, 1]); options: see
        :func:`sample_i2v`, plus ``personalized_unet``, ``lora``, ``lora_scale`` (:meth:`personalize`),
        ``controlnet`` (``ControlNetModel`` or its folder) with ``control_frames`` (b f 3 H W in [0, 1])
        or ``control_video`` (a video file, one control frame per output frame)."""
        if images is None:
            raise ValueError("I2V-Adapter needs a first-frame image (images=...)")
        num_frames, opts = self.options(num_frames, kwargs)
        num_frames = num_frames or 16
        perso = {
            k: opts.pop(k) for k in ("personalized_unet", "lora", "lora_scale", "reset_query") if k in opts
        }
        if perso.get("personalized_unet") or perso.get("lora"):
            self.personalize(**perso)
        video_path = opts.pop("control_video", None)
        if opts.get("controlnet") is not None:
            opts["controlnet"] = self.controlnet(opts["controlnet"])
            if video_path is not None and opts.get("control_frames") is None:
                from i2vlab.utils.video_io import from_uint8_frames, read_video

                frames = from_uint8_frames(read_video(video_path)[0][:num_frames])  # f c h w in [-1, 1]
                opts["control_frames"] = ((frames + 1) / 2)[None].expand(len(prompts), -1, -1, -1, -1)
        return sample_i2v(self, prompts, images, num_frames=num_frames, seed=seed, **opts)
