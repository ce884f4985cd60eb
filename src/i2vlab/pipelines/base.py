"""The shape every method's inference takes: a plain object holding the method's components (UNet,
VAE, encoders, scheduler, attention processors), its conditioning functions and ``__call__``.

No Lightning here: a pipeline is built from a trained run (``from_pretrained``) or from components,
and the method's LightningModule holds the same pipeline object and adds only training (the
methods in :mod:`i2vlab.methods` construct their pipeline and register its modules as their own, so
parameter names -- ``unet.…`` -- are the same in checkpoints, exports and here).

Subclasses set :attr:`VideoPipeline.components` (constructor arguments that are networks or
tokenizers/schedulers, built from the run's backbone config) and implement ``__call__``. The
shared frozen encoders (VAE per frame in chunks, text encoder) live here.

Layouts: images b c h w and videos b f c h w in [-1, 1]; latents b c f h w.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from einops import rearrange
from torch import nn


class VideoPipeline:
    """Components + frozen encoders + sampling defaults. See the module docstring."""

    #: constructor arguments built from the backbone (the rest are plain settings)
    components: ClassVar[tuple[str, ...]] = ("unet", "vae", "text_encoder", "tokenizer", "noise_scheduler")
    #: sampling defaults of the method (``method.sampling`` overrides them; call arguments win)
    default_sampling: ClassVar[dict[str, Any]] = {}
    #: conditioning images one video needs (0: text-to-video, 1: image-to-video, 2: two keyframes)
    keyframes: ClassVar[int] = 1

    def __init__(
        self,
        unet: nn.Module | None = None,
        vae: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer: Any = None,
        noise_scheduler: Any = None,
        vae_chunk_size: int = 8,
        sampling: Mapping[str, Any] | None = None,
    ) -> None:
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.noise_scheduler = tokenizer, noise_scheduler
        self.vae_chunk_size = int(vae_chunk_size)
        self.sampling = {**self.default_sampling, **dict(sampling or {})}

    @classmethod
    def init_parameters(cls) -> set[str]:
        """Every keyword the constructor takes, following ``**kwargs`` up the class hierarchy."""
        names: set[str] = set()
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            params = inspect.signature(init).parameters
            names |= {
                n
                for n, p in params.items()
                if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            }
            if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
                break
        return names

    @classmethod
    def keyframes_for(cls, settings: Mapping[str, Any]) -> int:
        """Conditioning images per video for these settings (a run's ``method`` config), without
        building anything (command-line checks)."""
        return int(cls.keyframes)

    # ------------------------------------------------------------------------------------------
    # components
    # ------------------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """The networks of this pipeline by attribute name (the prefixes of their parameter names)."""
        return {k: v for k, v in vars(self).items() if isinstance(v, nn.Module)}

    @property
    def device(self) -> torch.device:
        for m in self.modules().values():
            for p in m.parameters():
                return p.device
        return torch.device("cpu")

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> VideoPipeline:
        for m in self.modules().values():
            m.to(device=device, dtype=dtype)
        return self

    def eval(self) -> VideoPipeline:
        for m in self.modules().values():
            m.eval()
        return self

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer, named as in the method's state dict (``unet.…``)."""
        out: dict[str, torch.Tensor] = {}
        for name, m in self.modules().items():
            for k, v in m.state_dict(keep_vars=True).items():
                out[f"{name}.{k}"] = v
        return out

    def load_tensors(self, tensors: Mapping[str, torch.Tensor], source: str = "weights") -> list[str]:
        """Copy ``tensors`` (names as :meth:`named_tensors`) into the components; an unknown name or a
        shape mismatch is an error naming ``source``. Returns the names loaded."""
        own = self.named_tensors()
        unknown = sorted(set(tensors) - set(own))
        if unknown:
            raise KeyError(
                f"{source}: {len(unknown)} tensors this pipeline does not have, e.g. {unknown[:3]}"
            )
        with torch.no_grad():
            for k, v in tensors.items():
                if own[k].shape != v.shape:
                    raise ValueError(
                        f"{source}: {k} has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}"
                    )
                own[k].copy_(v.to(own[k].dtype))
        return sorted(tensors)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        overrides: Sequence[str] = (),
        use_ema: bool = False,
    ) -> VideoPipeline:
        """Build from a run directory, a checkpoint or an export (see :func:`i2vlab.pipelines.load_pipeline`)."""
        from i2vlab.pipelines.loading import load_pipeline

        pipe = load_pipeline(path, device=device, overrides=overrides, use_ema=use_ema)
        if not isinstance(pipe, cls):
            raise TypeError(f"{path} holds a {type(pipe).__name__}, not a {cls.__name__}")
        return pipe

    # ------------------------------------------------------------------------------------------
    # frozen encoders
    # ------------------------------------------------------------------------------------------
    @property
    def latent_scale(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(b f c h w) in [-1, 1] -> scaled latents (b c f h w), ``vae_chunk_size`` frames per VAE call;
        a sample of the latent distribution with ``generator``, else its mode."""
        b = video.shape[0]
        frames = rearrange(video, "b f c h w -> (b f) c h w").to(self.vae.dtype)
        out = []
        for chunk in frames.split(self.vae_chunk_size):
            dist = self.vae.encode(chunk).latent_dist
            out.append(dist.sample(generator=generator) if generator is not None else dist.mode())
        lat = torch.cat(out).float() * self.latent_scale
        return rearrange(lat, "(b f) c h w -> b c f h w", b=b)

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(b c h w) in [-1, 1] -> scaled latents (b c h w)."""
        return self.encode_video(image[:, None], generator)[:, :, 0]

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (b c f h w) -> video (b f c h w) in [-1, 1]."""
        b = latents.shape[0]
        z = rearrange(latents, "b c f h w -> (b f) c h w") / self.latent_scale
        frames = torch.cat(
            [self.vae.decode(c.to(self.vae.dtype)).sample.float() for c in z.split(self.vae_chunk_size)]
        )
        return rearrange(frames, "(b f) c h w -> b f c h w", b=b).clamp(-1, 1)

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """Captions -> text encoder ``last_hidden_state`` (b, L, d)."""
        if self.text_encoder is None or self.tokenizer is None:
            raise RuntimeError(f"{type(self).__name__} has no text encoder/tokenizer configured")
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        return self.text_encoder(ids)[0].float()

    # ------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------
    def options(self, num_frames: int | None, kwargs: Mapping[str, Any]) -> tuple[int | None, dict[str, Any]]:
        """The sampling options of one call: the pipeline's defaults, then ``kwargs``; ``num_frames``
        from the argument, else the options (then removed from them). Also drops a configured ``seed``
        (the call's own ``seed`` argument wins)."""
        opts = {**self.sampling, **dict(kwargs)}
        n = opts.pop("num_frames", None)
        opts.pop("seed", None)
        return (int(num_frames) if num_frames else (int(n) if n else None)), opts

    def __call__(
        self,
        prompts: Sequence[str],
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Generate videos (b f c h w in [-1, 1])."""
        raise NotImplementedError
