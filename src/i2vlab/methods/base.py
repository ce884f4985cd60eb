"""The shared diffusion core that every method extends.

What lives here (and nowhere else): frozen VAE encoding/decoding per frame in chunks, frozen text
encoding with caption dropout, noise and targets through diffusers schedulers, the masked MSE
loss, selection of trainable parameters by name patterns, AdamW (fused where available) with a
diffusers LR schedule and warm-up, optional EMA (diffusers ``EMAModel``) of the trainable
parameters, per-step seeds, lean checkpoints (trainable weights + optimizer + EMA + RNG, frozen
weights only for random-init backbones), validation loss at fixed stratified timesteps and
fixed-seed validation samples written as mp4.

A method overrides a few hooks (see "method hooks" below): ``prepare_conditions``,
``prepare_noisy``, ``denoise``, ``loss_mask``, ``scale_clean_latents``, ``loss_logs``,
``validation_sample_inputs`` and ``sample``; or ``compute_loss`` wholesale when its objective
differs (e.g. EDM for SVD).

Tensor layouts: ``video`` b f c h w in [-1, 1]; ``latents`` b c f h w (diffusers video UNets).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from i2vlab.diffusion.schedules import stratified_timesteps, training_target
from i2vlab.training.state import (  # noqa: F401  (load_matching, load_weights_file: re-exported for methods)
    export_trainable,
    load_matching,
    load_trainable,
    load_weights_file,
    restore_contents,
    save_contents,
)
from i2vlab.utils.params import parameter_report, select_trainable
from i2vlab.utils.seeding import generator

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _plain(x: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(x, resolve=True) if isinstance(x, (DictConfig, ListConfig)) else x


class VideoDiffusionModule(pl.LightningModule):
    """Base LightningModule for latent video diffusion training.

    Args:
        unet: the denoiser (diffusers model).
        vae: frozen image VAE (``AutoencoderKL``-like, ``encode(x).latent_dist`` / ``decode(z).sample``).
        text_encoder, tokenizer: frozen text encoder (``last_hidden_state`` used) and its tokenizer; optional.
        noise_scheduler: diffusers training scheduler (``DDPMScheduler``); optional for EDM methods.
        trainable: full-match regexes over ``named_parameters()`` of this module; all else is frozen.
        optimizer: ``lr``, ``betas``, ``weight_decay``, ``eps``, ``scheduler`` (diffusers name),
            ``warmup_steps``, ``fused`` (``auto``/bool).
        ema: ``None`` or ``{decay, use_for_validation, export}``.
        vae_chunk_size: frames per VAE call.
        gradient_checkpointing: turn on the UNet's gradient checkpointing.
        frozen_dtype: dtype of fully frozen modules (``fp32``/``bf16``/``fp16``).
        text_dropout: probability of replacing a caption by "" during training (CFG).
        checkpoint_frozen: also store frozen weights in checkpoints (needed for random-init backbones).
        validation: ``{num_timesteps, num_samples, sample_steps, sample_dir, guidance_scale}``.
        sampling: default keyword arguments for :meth:`sample`.
        seed: base of the per-step seeds.
        nonfinite_loss: a NaN/inf training loss is logged with the step and the batch's keys, then
            ``skip`` (no optimizer step; single process only, DDP stops), ``stop`` (raise) or ``off``
            (no check: saves one host sync per step).
        max_nonfinite_steps: stop after this many non-finite losses in a row even when skipping.
    """

    #: modules that are never trained and can be cast to ``frozen_dtype``
    frozen_modules: tuple[str, ...] = ("vae", "text_encoder")

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer: Any = None,
        noise_scheduler: Any = None,
        trainable: Sequence[str] = (),
        optimizer: Mapping[str, Any] | None = None,
        ema: Mapping[str, Any] | None = None,
        vae_chunk_size: int = 8,
        gradient_checkpointing: bool = False,
        frozen_dtype: str = "fp32",
        text_dropout: float = 0.0,
        checkpoint_frozen: bool = False,
        validation: Mapping[str, Any] | None = None,
        sampling: Mapping[str, Any] | None = None,
        seed: int = 0,
        nonfinite_loss: str = "skip",
        max_nonfinite_steps: int = 10,
    ) -> None:
        super().__init__()
        if nonfinite_loss not in ("skip", "stop", "off"):
            raise ValueError(f"method.nonfinite_loss must be skip, stop or off, got {nonfinite_loss!r}")
        self.nonfinite_loss = nonfinite_loss
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self._nonfinite_in_a_row = 0
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.tokenizer, self.noise_scheduler = tokenizer, noise_scheduler
        self.trainable_patterns = list(_plain(trainable) or [])
        self.optimizer_cfg = dict(_plain(optimizer) or {})
        self.ema_cfg = dict(_plain(ema) or {}) if ema else None
        self.vae_chunk_size = int(vae_chunk_size)
        self.gradient_checkpointing = gradient_checkpointing
        self.frozen_dtype = DTYPES[frozen_dtype]
        self.text_dropout = float(text_dropout)
        self.checkpoint_frozen = checkpoint_frozen
        self.strict_loading = checkpoint_frozen
        self.validation_cfg = {
            "num_timesteps": 10,
            "num_samples": 0,
            "sample_steps": 10,
            "sample_dir": None,
            **dict(_plain(validation) or {}),
        }
        self.sampling_cfg = dict(_plain(sampling) or {})
        self.seed = int(seed)
        self.ema = None
        self._trainable_names: list[str] | None = None
        self._val_inputs: dict[str, Any] | None = None
        self._val_losses: list[torch.Tensor] = []
        self._empty_prompt: torch.Tensor | None = None

    # ------------------------------------------------------------------------------------------
    # trainable selection, parameter report
    # ------------------------------------------------------------------------------------------
    def configure_trainable(self) -> list[str]:
        """Apply ``trainable`` patterns (idempotent); frozen submodules go to eval mode."""
        if self._trainable_names is None:
            if not self.trainable_patterns:
                raise ValueError("method.trainable is empty: name the parameters this method trains")
            self._trainable_names = select_trainable(self, self.trainable_patterns)
            for name in self.frozen_modules:
                m = getattr(self, name, None)
                if isinstance(m, nn.Module):
                    m.eval()
            if self.gradient_checkpointing and hasattr(self.unet, "enable_gradient_checkpointing"):
                self.unet.enable_gradient_checkpointing()
        return self._trainable_names

    def parameter_report(self) -> str:
        self.configure_trainable()
        return parameter_report(self)[0]

    def trainable_parameters(self) -> list[nn.Parameter]:
        self.configure_trainable()
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> VideoDiffusionModule:
        super().train(mode)
        for name in self.frozen_modules:  # frozen encoders stay in eval mode (no dropout)
            m = getattr(self, name, None)
            if isinstance(m, nn.Module):
                m.eval()
        return self

    def setup(self, stage: str) -> None:
        self.configure_trainable()
        for name in self.frozen_modules:
            m = getattr(self, name, None)
            if isinstance(m, nn.Module) and not any(p.requires_grad for p in m.parameters()):
                if any(p.dtype != self.frozen_dtype for p in m.parameters()):
                    m.to(self.frozen_dtype)
        if self.ema_cfg and self.ema is None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(
                self.trainable_parameters(),
                decay=float(self.ema_cfg.get("decay", 0.9999)),
                use_ema_warmup=bool(self.ema_cfg.get("warmup", False)),
            )

    def on_fit_start(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)

    # ------------------------------------------------------------------------------------------
    # frozen encoders
    # ------------------------------------------------------------------------------------------
    @property
    def latent_scale(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 0.18215))

    @torch.no_grad()
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(b f c h w) in [-1, 1] -> scaled latents (b c f h w), VAE run on ``vae_chunk_size`` frames at a time."""
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

    def drop_captions(
        self, captions: Sequence[str], generator: torch.Generator, p: float | None = None
    ) -> list[str]:
        p = self.text_dropout if p is None else p
        if p <= 0:
            return list(captions)
        r = torch.rand(len(captions), generator=generator, device=generator.device).tolist()
        return ["" if ri < p else c for ri, c in zip(r, captions)]

    # ------------------------------------------------------------------------------------------
    # method hooks
    # ------------------------------------------------------------------------------------------
    def prepare_conditions(
        self, batch: Mapping[str, Any], latents: torch.Tensor, generator: torch.Generator, train: bool = True
    ) -> dict[str, Any]:
        """Conditioning for :meth:`denoise` (default: text embeddings of the captions)."""
        captions = self.drop_captions(batch["caption"], generator) if train else list(batch["caption"])
        return {"encoder_hidden_states": self.encode_prompt(captions)}

    def prepare_noisy(
        self, noisy: torch.Tensor, latents: torch.Tensor, cond: Mapping[str, Any]
    ) -> torch.Tensor:
        """Last change to the noisy latents before the denoiser (default: none)."""
        return noisy

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        raise NotImplementedError

    def loss_mask(self, latents: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor | None:
        """Per-frame loss weights (b, f), or ``None`` for all frames."""
        return None

    def sample(
        self,
        prompts: Sequence[str],
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Generate videos (b f c h w in [-1, 1]). Implemented by each method."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------
    # loss
    # ------------------------------------------------------------------------------------------
    def step_generator(self, micro_batch: int = 0, salt: int = 0) -> torch.Generator:
        """The training draws of one micro-batch: keyed by (seed, optimizer step, micro-batch index in
        the step, rank, salt) -- see :mod:`i2vlab.utils.seeding`. A resumed run draws the same."""
        return generator(
            "train", self.seed, self.global_step, micro_batch, self.global_rank, salt, device=self.device
        )

    def sample_timesteps(self, n: int, generator: torch.Generator) -> torch.Tensor:
        T = self.noise_scheduler.config.num_train_timesteps
        return torch.randint(0, T, (n,), generator=generator, device=self.device).long()

    def compute_loss(
        self,
        batch: Mapping[str, Any],
        generator: torch.Generator,
        timesteps: torch.Tensor | None = None,
        train: bool = True,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Noise-prediction loss. Returns (per-sample loss (b,), extra logs)."""
        latents = self.encode_video(batch["video"], generator)
        cond = self.prepare_conditions(batch, latents, generator, train=train)
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        t = self.sample_timesteps(latents.shape[0], generator) if timesteps is None else timesteps
        latents = self.scale_clean_latents(latents, t)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        noisy = self.prepare_noisy(noisy, latents, cond)
        pred = self.denoise(noisy, t, cond).float()
        target = training_target(self.noise_scheduler, latents, noise, t).float()
        return self.masked_mse(pred, target, self.loss_mask(latents, cond)), self.loss_logs(train)

    def scale_clean_latents(self, latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Clean latents as the noise schedule sees them (DynamiCrafter's dynamic rescale); default: as is."""
        return latents

    def loss_logs(self, train: bool) -> dict[str, Any]:
        """Extra scalars logged with the training loss (e.g. learned gates)."""
        return {}

    @staticmethod
    def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """MSE per sample over (c, f, h, w); ``mask`` (b, f) weights frames. Returns (b,)."""
        err = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 3, 4))  # (b, f)
        if mask is None:
            return err.mean(dim=1)
        mask = mask.to(err.dtype)
        return (err * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1)

    # ------------------------------------------------------------------------------------------
    # Lightning loop
    # ------------------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        acc = (
            int(getattr(self._trainer, "accumulate_grad_batches", 1) or 1) if self._trainer is not None else 1
        )
        loss, logs = self.compute_loss(batch, self.step_generator(micro_batch=batch_idx % acc))
        loss = loss.mean()
        b = batch["video"].shape[0]
        if self.nonfinite_loss != "off" and not bool(torch.isfinite(loss)):
            return self._nonfinite_step(loss, batch)
        self._nonfinite_in_a_row = 0
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for k, v in logs.items():
            self.log(f"train/{k}", v, batch_size=b)
        self._log_data_health()
        return loss

    def _nonfinite_step(self, loss: torch.Tensor, batch: Mapping[str, Any]) -> None:
        self._nonfinite_in_a_row += 1
        keys = list(batch.get("key", []))[:8]
        msg = (
            f"non-finite training loss ({float(loss.detach())}) at step {self.global_step}, batch keys {keys}"
        )
        distributed = self._trainer is not None and self.trainer.world_size > 1
        if (
            self.nonfinite_loss == "stop"
            or distributed
            or self._nonfinite_in_a_row > self.max_nonfinite_steps
        ):
            why = (
                "method.nonfinite_loss=stop"
                if self.nonfinite_loss == "stop"
                else "skipping is single-process only"
                if distributed
                else f"{self._nonfinite_in_a_row} in a row > method.max_nonfinite_steps"
            )
            raise FloatingPointError(
                f"{msg} ({why}). Lower optimizer.lr, keep trainer.gradient_clip_val, check these videos, "
                "or try trainer.precision=32-true / bf16-mixed instead of 16-mixed."
            )
        log.warning("%s: step skipped (no optimizer step)", msg)
        return None

    def _data_health_sum(self) -> dict[str, float] | None:
        """This rank's data-health totals summed over ranks (a collective: call on every rank)."""
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if dm is None or not hasattr(dm, "health_totals"):
            return None
        counts = dm.health_totals().snapshot()
        t = torch.tensor(list(counts.values()), dtype=torch.float64, device=self.device)
        if trainer.world_size > 1:
            t = trainer.strategy.reduce(t, reduce_op="sum")
        return dict(zip(counts, t.tolist()))

    def _save_global_data_health(self, checkpoint: dict[str, Any]) -> None:
        """The checkpoint carries the totals of all ranks (Lightning stores rank 0's data-module
        state only); on resume rank 0 starts from them and the other ranks from zero."""
        state = next((v for k, v in checkpoint.items() if isinstance(v, dict) and "health" in v), None)
        totals = self._data_health_sum()
        if state is not None and totals is not None:
            state["health"] = {k: int(v) for k, v in totals.items()}

    def _log_data_health(self) -> None:
        """``data/<kind>``: what the training stream skipped or repaired so far, summed over workers,
        epochs (and the run before a resume) and ranks; one reduction per logging interval."""
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if dm is None or not hasattr(dm, "health_totals"):
            return
        every = max(1, int(getattr(trainer, "log_every_n_steps", 1) or 1))
        if self.global_step % every:
            return
        for k, v in (self._data_health_sum() or {}).items():
            self.log(f"data/{k}", v, rank_zero_only=True)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # EMA right after each real optimizer step: before the checkpoint callbacks of the same step run
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.step(self.trainable_parameters())

    def validation_timesteps(self, n: int) -> torch.Tensor:
        """The fixed noise levels of the validation loss (EDM methods return sigmas instead)."""
        return stratified_timesteps(n, self.noise_scheduler.config.num_train_timesteps)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        b = batch["video"].shape[0]
        ts = self.validation_timesteps(int(self.validation_cfg["num_timesteps"]))
        losses = []
        for i, t in enumerate(ts.tolist()):
            g = torch.Generator(device=self.device).manual_seed(self.seed * 1000 + batch_idx * 97 + i)
            tt = torch.full((b,), t, device=self.device, dtype=ts.dtype)
            loss, _ = self.compute_loss(batch, g, timesteps=tt, train=False)
            losses.append(loss.detach())
        self._val_losses.append(torch.stack(losses, dim=1))  # (b, n)
        if batch_idx == 0 and self._val_inputs is None:
            self._val_inputs = self.validation_sample_inputs(batch, int(self.validation_cfg["num_samples"]))

    def validation_sample_inputs(self, batch: Mapping[str, Any], k: int) -> dict[str, Any]:
        """Keyword arguments of :meth:`sample` for the fixed-seed validation videos, taken from the
        first ``k`` clips of the first validation batch (keyframe methods add ``last_images``)."""
        return {
            "prompts": list(batch["caption"][:k]),
            "images": batch["video"][:k, 0].detach(),
            "num_frames": batch["video"].shape[1],
        }

    def on_validation_epoch_start(self) -> None:
        self._val_losses, self._val_inputs = [], None
        if self.ema is not None and self.ema_cfg.get("use_for_validation", True):
            self.ema.store(self.trainable_parameters())
            self.ema.copy_to(self.trainable_parameters())

    def on_validation_epoch_end(self) -> None:
        try:
            if self._val_losses:
                per_t = torch.cat(self._val_losses).mean(dim=0)
                self.log("val/loss", per_t.mean(), sync_dist=True)
                for i, v in enumerate(per_t):
                    self.log(f"val/loss_stratum{i:02d}", v, sync_dist=True)
        finally:
            if self.ema is not None and self.ema_cfg.get("use_for_validation", True):
                self.ema.restore(self.trainable_parameters())

    # ------------------------------------------------------------------------------------------
    # optimisation
    # ------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        from diffusers.optimization import get_scheduler

        params = self.trainable_parameters()
        cfg = {
            "lr": 1e-4,
            "betas": (0.9, 0.999),
            "weight_decay": 1e-2,
            "eps": 1e-8,
            "scheduler": "constant_with_warmup",
            "warmup_steps": 0,
            "fused": "auto",
            **self.optimizer_cfg,
        }
        fused = cfg["fused"]
        if fused == "auto":
            fused = all(p.is_cuda for p in params)
        opt = torch.optim.AdamW(
            params,
            lr=float(cfg["lr"]),
            betas=tuple(cfg["betas"]),
            weight_decay=float(cfg["weight_decay"]),
            eps=float(cfg["eps"]),
            fused=bool(fused),
        )
        trainer = self._trainer
        total = (
            trainer.max_steps if trainer is not None and trainer.max_steps and trainer.max_steps > 0 else None
        )
        sched = get_scheduler(
            cfg["scheduler"], opt, num_warmup_steps=int(cfg["warmup_steps"]), num_training_steps=total
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}

    # ------------------------------------------------------------------------------------------
    # checkpoints and exports (contents in i2vlab.training.state)
    # ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_contents(self, checkpoint)
        self._save_global_data_health(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_contents(self, checkpoint)

    def export_trainable(self, path: str | Path, config: Any = None, use_ema: bool = False) -> Path:
        """Write only the trainable weights as safetensors (and ``config.yaml`` beside it)."""
        return export_trainable(self, path, config=config, use_ema=use_ema)

    def init_from(self, path: str | Path) -> list[str]:
        """Initialise from a previous run (export or checkpoint): every matching tensor is copied."""
        return load_matching(self, path)

    def load_trainable(self, path: str | Path, strict: bool = True) -> list[str]:
        """Load an :meth:`export_trainable` file into this module. Returns the loaded names."""
        return load_trainable(self, path, names=set(self.configure_trainable()), strict=strict)
