"""Training a VAE on video frames: ``AutoencoderKL`` (per-frame decoder) or SVD's
``AutoencoderKLTemporalDecoder`` (per-frame encoder, temporal decoder over the frames of a clip).

The objective is the plain one (no LPIPS: its backbone weights are a download, and no GAN): per
frame ``l1_weight·|x̂ - x| + l2_weight·(x̂ - x)² + kl_weight·KL(q(z|x) || N(0, I))``, with x̂ the
decoding of a posterior sample. Training sees ``frames_per_clip`` random frames of each clip (all of
them, in order, for the temporal decoder) and, optionally, one random ``crop_size`` square per clip
(the networks are convolutional; crops make a step cheaper). Validation reconstructs whole frames
from the posterior mode and logs ``val/loss`` (the reconstruction terms) and ``val/psnr`` (dB, on
[0, 1] pixels); its samples are original | reconstruction side by side.

The latent scale: ``scaling_factor: auto`` sets the VAE's ``scaling_factor`` to 1 / (standard
deviation of the validation latents), what makes the diffusion models' latents unit-variance (SD's
0.18215 is that number for its VAE). The export writes, beside ``trainable.safetensors``, the whole
VAE as a diffusers folder (``export/vae``) that a backbone loads with ``backbone.vae.pretrained``.

Everything else (trainable selection, AdamW + schedule, EMA, checkpoints, resume, export) is the
shared core's, :class:`~i2vlab.methods.base.VideoDiffusionModule`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from einops import rearrange
from torch import nn

from i2vlab.methods.base import VideoDiffusionModule


def psnr(a: torch.Tensor, b: torch.Tensor, dims: Sequence[int] | None = None) -> torch.Tensor:
    """PSNR in dB of images in [-1, 1] (measured on [0, 1]); mean squared error over ``dims``
    (default: all but the first)."""
    dims = tuple(range(1, a.ndim)) if dims is None else tuple(dims)
    mse = ((a.float() - b.float()) / 2).pow(2).mean(dim=dims)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


class VAETraining(VideoDiffusionModule):
    """Reconstruction training of ``vae`` on the data module's clips.

    Args (besides :class:`~i2vlab.methods.base.VideoDiffusionModule`'s, which are the same: ``trainable``
    patterns over ``vae.*``, ``optimizer``, ``ema``, ``checkpoint_frozen``, ``validation``, ``seed``):
        vae: ``AutoencoderKL`` or ``AutoencoderKLTemporalDecoder``.
        l1_weight, l2_weight, kl_weight: loss weights.
        frames_per_clip: random frames per clip a step trains on (``None``: all; the temporal decoder
            always decodes whole clips).
        crop_size: side of one random square crop per clip during training (``None``: whole frames).
        scaling_factor: ``auto`` (1 / std of the validation latents), a number, or ``None`` (keep).
    """

    frozen_modules: tuple[str, ...] = ()

    def __init__(
        self,
        vae: nn.Module,
        trainable: Sequence[str] = (r"vae\..*",),
        l1_weight: float = 1.0,
        l2_weight: float = 1.0,
        kl_weight: float = 1e-6,
        frames_per_clip: int | None = None,
        crop_size: int | None = None,
        scaling_factor: float | str | None = "auto",
        **kwargs: Any,
    ) -> None:
        for unused in ("unet", "text_encoder", "tokenizer", "noise_scheduler"):
            kwargs.pop(unused, None)
        super().__init__(unet=None, vae=vae, trainable=trainable, **kwargs)
        self.l1_weight, self.l2_weight, self.kl_weight = float(l1_weight), float(l2_weight), float(kl_weight)
        self.frames_per_clip = int(frames_per_clip) if frames_per_clip else None
        self.crop_size = int(crop_size) if crop_size else None
        if scaling_factor not in (None, "auto") and not isinstance(scaling_factor, (int, float)):
            raise ValueError(f"method.scaling_factor must be auto, a number or null, got {scaling_factor!r}")
        self.scaling_factor = scaling_factor
        self.temporal = "num_frames" in inspect.signature(vae.decode).parameters
        self._val_psnr: list[torch.Tensor] = []
        self._val_latent_sq: list[torch.Tensor] = []

    # ------------------------------------------------------------------------------------------
    # the autoencoder
    # ------------------------------------------------------------------------------------------
    def decode_frames(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Unscaled latents ((b f) c h w, frames of a clip consecutive) -> frames ((b f) c H W)."""
        if self.temporal:
            return self.vae.decode(z, num_frames=num_frames).sample
        return self.vae.decode(z).sample

    def reconstruct(
        self, video: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Any]:
        """(b f c h w) in [-1, 1] -> (reconstruction (b f c h w), posterior); a posterior sample with
        ``generator``, its mode without."""
        b, f = video.shape[:2]
        x = rearrange(video, "b f c h w -> (b f) c h w").to(self.vae.dtype)
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator=generator) if generator is not None else dist.mode()
        out = self.decode_frames(z, f)
        return rearrange(out.float(), "(b f) c h w -> b f c h w", b=b), dist

    def training_clips(self, video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The frames a training step sees: ``frames_per_clip`` random frames of each clip (sorted;
        whole clips for the temporal decoder), cropped to one random ``crop_size`` square per clip."""
        b, f, _, h, w = video.shape
        dev = generator.device
        if self.frames_per_clip and self.frames_per_clip < f and not self.temporal:
            idx = torch.rand(b, f, generator=generator, device=dev).argsort(dim=1)[:, : self.frames_per_clip]
            idx = idx.sort(dim=1).values.to(video.device)
            video = video[torch.arange(b, device=video.device)[:, None], idx]
        if self.crop_size and (self.crop_size < h or self.crop_size < w):
            s = self.crop_size
            top = torch.randint(0, h - s + 1, (b,), generator=generator, device=dev).tolist()
            left = torch.randint(0, w - s + 1, (b,), generator=generator, device=dev).tolist()
            video = torch.stack([v[..., t : t + s, x : x + s] for v, t, x in zip(video, top, left)])
        return video

    def compute_loss(
        self,
        batch: Mapping[str, Any],
        generator: torch.Generator,
        levels: torch.Tensor | None = None,
        train: bool = True,
        **unused: Any,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Per-clip loss (b,) and logs (``rec_l1``, ``kl``, ``psnr``); there are no noise ``levels``."""
        video = batch["video"].to(self.device)
        if train:
            video = self.training_clips(video, generator)
        rec, dist = self.reconstruct(video, generator if train else None)
        err = rec - video.float()
        l1 = err.abs().mean(dim=(1, 2, 3, 4))
        l2 = err.pow(2).mean(dim=(1, 2, 3, 4))
        kl = rearrange(dist.kl().float(), "(b f) -> b f", b=video.shape[0]).mean(dim=1)
        loss = self.l1_weight * l1 + self.l2_weight * l2 + (self.kl_weight * kl if train else 0.0)
        logs = {"rec_l1": l1.mean().detach(), "kl": kl.mean().detach(), "psnr": psnr(rec, video).mean()}
        return loss, logs

    # ------------------------------------------------------------------------------------------
    # validation: reconstruction loss, PSNR, latent statistics, side-by-side samples
    # ------------------------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_psnr, self._val_latent_sq = [], []

    @torch.no_grad()
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        video = batch["video"].to(self.device)
        rec, dist = self.reconstruct(video)
        err = rec - video.float()
        loss = self.l1_weight * err.abs().mean(dim=(1, 2, 3, 4)) + self.l2_weight * err.pow(2).mean(
            dim=(1, 2, 3, 4)
        )
        self._val_losses.append(loss[:, None].detach())
        self._val_psnr.append(psnr(rec, video, dims=(2, 3, 4)).flatten())  # per frame
        z = dist.mode().float()
        self._val_latent_sq.append(torch.stack([z.mean(), z.pow(2).mean()]))
        if batch_idx == 0 and self._val_inputs is None:
            self._val_inputs = self.validation_sample_inputs(batch, int(self.validation_cfg["num_samples"]))

    def latent_std(self) -> float | None:
        """Standard deviation of the validation latents collected so far (``None`` if none); with
        ``scaling_factor: auto`` the VAE's ``scaling_factor`` becomes its inverse."""
        if not self._val_latent_sq:
            return None
        mean, sq = torch.stack(self._val_latent_sq).mean(dim=0)
        std = float((sq - mean**2).clamp_min(1e-12).sqrt())
        if self.scaling_factor == "auto":
            self.vae.register_to_config(scaling_factor=1.0 / std)
        return std

    def on_validation_epoch_end(self) -> None:
        if self._val_psnr:
            self.log("val/psnr", torch.cat(self._val_psnr).mean(), sync_dist=True)
        std = self.latent_std()
        if std is not None:
            self.log("val/latent_std", std, sync_dist=True)
        super().on_validation_epoch_end()

    def validation_sample_inputs(self, batch: Mapping[str, Any], k: int) -> dict[str, Any]:
        return {"prompts": list(batch["caption"][:k]), "images": None, "video": batch["video"][:k].detach()}

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str] = (),
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        video: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Original | reconstruction side by side (b f c h 2w) of ``video`` (b f c h w in [-1, 1])."""
        if video is None:
            raise ValueError("a VAE reconstructs videos: pass video=(b f c h w)")
        rec, _ = self.reconstruct(video.to(self.device))
        return torch.cat([video.float().clamp(-1, 1), rec.clamp(-1, 1)], dim=-1)

    def init_from(self, path: str | Path) -> list[str]:
        """As the core's; also takes a diffusers VAE file (``diffusion_pytorch_model.safetensors``, names
        without the ``vae.`` prefix): e.g. a temporal-decoder VAE starting from an ``AutoencoderKL``'s
        encoder (every tensor whose name and shape match is copied)."""
        from i2vlab.training.state import load_matching, load_weights_file

        tensors = load_weights_file(path)
        if not any(k.startswith("vae.") for k in tensors):
            tensors = {f"vae.{k}": v for k, v in tensors.items()}
        return load_matching(self, tensors)

    # ------------------------------------------------------------------------------------------
    # export: the trainable tensors (as every method) and the whole VAE as a diffusers folder
    # ------------------------------------------------------------------------------------------
    def export_trainable(self, path: str | Path, config: Any = None, use_ema: bool = False) -> Path:
        out = super().export_trainable(path, config=config, use_ema=use_ema)
        if isinstance(self.scaling_factor, (int, float)):
            self.vae.register_to_config(scaling_factor=float(self.scaling_factor))
        if use_ema and self.ema is not None:
            self.ema.store(self.trainable_parameters())
            self.ema.copy_to(self.trainable_parameters())
        try:
            self.vae.save_pretrained(str(Path(out).parent / ("vae_ema" if use_ema else "vae")))
        finally:
            if use_ema and self.ema is not None:
                self.ema.restore(self.trainable_parameters())
        return out
