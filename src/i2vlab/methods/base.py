"""The training core every method extends: a LightningModule around a method's pipeline.

What lives here: the method's :class:`~i2vlab.pipelines.base.VideoPipeline` (its components,
registered as this module's submodules so parameter names are ``unet.…`` everywhere), a
training objective (:mod:`i2vlab.diffusion.objectives`), selection of the trainable parameters by
name patterns, and the loop hooks: the loss of a batch, validation loss at fixed stratified noise
levels, EMA, non-finite-loss handling. What a checkpoint holds, exports, the optimizer, validation
videos and logging of data faults are training glue in :mod:`i2vlab.training`.

The loss of a batch (:meth:`VideoDiffusionModule.compute_loss`), one recipe for every method:

    latents = encode_latents(batch)            # VAE (a method may reorder, e.g. time-reverse)
    cond    = prepare_conditions(batch, ...)   # text, images, concatenated latents, dropout
    noise, levels                              # drawn (or given, to replay another run)
    clean   = objective.clean(latents, levels) # e.g. DynamiCrafter's dynamic rescale
    noisy   = prepare_noisy(objective.add_noise(clean, noise, levels), ...)
    pred    = objective.denoise(self.denoise, noisy, levels, cond=cond)
    loss    = weight(levels) * masked MSE(pred, objective.target(clean, noise, levels))

A method names its pipeline class and overrides only the hooks it changes: ``encode_latents``,
``prepare_conditions``, ``prepare_noisy``, ``denoise``, ``loss_mask``, ``loss_logs``,
``build_objective``.

Tensor layouts: ``video`` b f c h w in [-1, 1]; ``latents`` b c f h w.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import nn

from i2vlab.diffusion.objectives import DDPMObjective, masked_mse
from i2vlab.pipelines.base import VideoPipeline
from i2vlab.training.guards import skip_or_stop_nonfinite
from i2vlab.training.optim import build_optimizer
from i2vlab.training.state import (
    export_trainable,
    load_matching,
    load_trainable,
    restore_contents,
    save_contents,
)
from i2vlab.utils.config import to_plain
from i2vlab.utils.params import parameter_report, select_trainable
from i2vlab.utils.seeding import generator

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class VideoDiffusionModule(pl.LightningModule):
    """Base LightningModule for latent video diffusion training.

    Args:
        trainable: full-match regexes over ``named_parameters()`` of this module; all else is frozen.
        optimizer: ``lr``, ``betas``, ``weight_decay``, ``eps``, ``scheduler`` (diffusers name),
            ``warmup_steps``, ``fused`` (``auto``/bool); see :func:`i2vlab.training.optim.build_optimizer`.
        ema: ``None`` or ``{decay, warmup, use_for_validation}``.
        gradient_checkpointing: turn on the UNet's gradient checkpointing.
        frozen_dtype: dtype of fully frozen modules (``fp32``/``bf16``/``fp16``).
        text_dropout: probability of replacing a caption by "" during training (CFG).
        checkpoint_frozen: also store frozen weights in checkpoints (needed for random-init backbones).
        validation: ``{num_timesteps, num_samples, sample_steps, sample_dir}``.
        seed: base of the per-step seeds.
        nonfinite_loss: a NaN/inf training loss is logged with the step and the batch's keys, then
            ``skip`` (no optimizer step; single process only, DDP stops), ``stop`` (raise) or ``off``
            (no check: saves one host sync per step).
        max_nonfinite_steps: stop after this many non-finite losses in a row even when skipping.
        **components: the pipeline's constructor arguments (networks from the backbone, and its
            settings such as ``sampling`` or ``vae_chunk_size``); see :attr:`pipeline_class`.
    """

    #: the inference pipeline of this method (built from ``**components``)
    pipeline_class: ClassVar[type[VideoPipeline]] = VideoPipeline
    #: modules that are never trained and can be cast to ``frozen_dtype``
    frozen_modules: tuple[str, ...] = ("vae", "text_encoder")

    def __init__(
        self,
        trainable: Sequence[str] = (),
        optimizer: Mapping[str, Any] | None = None,
        ema: Mapping[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        frozen_dtype: str = "fp32",
        text_dropout: float = 0.0,
        checkpoint_frozen: bool = False,
        validation: Mapping[str, Any] | None = None,
        seed: int = 0,
        nonfinite_loss: str = "skip",
        max_nonfinite_steps: int = 10,
        **components: Any,
    ) -> None:
        super().__init__()
        if nonfinite_loss not in ("skip", "stop", "off"):
            raise ValueError(f"method.nonfinite_loss must be skip, stop or off, got {nonfinite_loss!r}")
        self.pipe = self.build_pipeline(components)
        for name in self.pipeline_class.components:  # the same objects: networks become submodules
            setattr(self, name, getattr(self.pipe, name, None))
        self.objective = self.build_objective()
        self.trainable_patterns = list(to_plain(trainable) or [])
        self.optimizer_cfg = dict(to_plain(optimizer) or {})
        self.ema_cfg = dict(to_plain(ema) or {}) if ema else None
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
            **dict(to_plain(validation) or {}),
        }
        self.seed = int(seed)
        self.nonfinite_loss = nonfinite_loss
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self._nonfinite_in_a_row = 0
        self.ema = None
        self._trainable_names: list[str] | None = None
        self._val_inputs: dict[str, Any] | None = None
        self._val_losses: list[torch.Tensor] = []

    def build_pipeline(self, components: Mapping[str, Any]) -> VideoPipeline:
        """The pipeline from the constructor's remaining keyword arguments (an unknown one is an error
        naming it, as a typo in ``method.*`` would be)."""
        accepted = self.pipeline_class.init_parameters()
        unknown = sorted(set(components) - accepted)
        if unknown:
            raise TypeError(
                f"{type(self).__name__}: unknown method argument(s) {unknown}; "
                f"its pipeline ({self.pipeline_class.__name__}) takes {sorted(accepted)}"
            )
        return self.pipeline_class(**{k: to_plain(v) for k, v in components.items()})

    def build_objective(self) -> Any:
        """The training objective (default: DDPM on the backbone's noise scheduler)."""
        return DDPMObjective(self.pipe.noise_scheduler)

    # ------------------------------------------------------------------------------------------
    # trainable selection, parameter report
    # ------------------------------------------------------------------------------------------
    def configure_trainable(self) -> list[str]:
        """Apply ``trainable`` patterns (idempotent); frozen submodules go to eval mode."""
        if self._trainable_names is None:
            if not self.trainable_patterns:
                raise ValueError("method.trainable is empty: name the parameters this method trains")
            self._trainable_names = select_trainable(self, self.trainable_patterns)
            self._frozen_eval()
            if self.gradient_checkpointing and hasattr(self.unet, "enable_gradient_checkpointing"):
                self.unet.enable_gradient_checkpointing()
        return self._trainable_names

    def _frozen_eval(self) -> None:
        for name in self.frozen_modules:
            m = getattr(self, name, None)
            if isinstance(m, nn.Module):
                m.eval()

    def parameter_report(self) -> str:
        self.configure_trainable()
        return parameter_report(self)[0]

    def trainable_parameters(self) -> list[nn.Parameter]:
        self.configure_trainable()
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> VideoDiffusionModule:
        super().train(mode)
        self._frozen_eval()  # frozen encoders stay in eval mode (no dropout)
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
    # frozen encoders (the pipeline's)
    # ------------------------------------------------------------------------------------------
    def encode_video(self, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.pipe.encode_video(video, generator)

    def encode_image(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.pipe.encode_image(image, generator)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        return self.pipe.decode_latents(latents)

    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.pipe.encode_prompt(prompts)

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
    def encode_latents(self, batch: Mapping[str, Any], generator: torch.Generator | None) -> torch.Tensor:
        """The clean latents the objective noises (default: the VAE's of ``batch["video"]``, b c f h w)."""
        return self.encode_video(batch["video"], generator)

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

    def denoise(self, noisy: torch.Tensor, levels: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        """The network call: noisy latents (b c f h w) at noise levels (b,) -> its raw output."""
        raise NotImplementedError

    def loss_mask(self, latents: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor | None:
        """Per-frame loss weights (b, f), or ``None`` for all frames."""
        return None

    def loss_logs(self, train: bool) -> dict[str, Any]:
        """Extra scalars logged with the training loss (e.g. learned gates)."""
        return {}

    def sample(
        self,
        prompts: Sequence[str],
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Generate videos (b f c h w in [-1, 1]) with the pipeline (``method.sampling`` defaults)."""
        return self.pipe(prompts, images=images, num_frames=num_frames, seed=seed, **kwargs)

    # ------------------------------------------------------------------------------------------
    # loss
    # ------------------------------------------------------------------------------------------
    def step_generator(self, micro_batch: int = 0, salt: int = 0) -> torch.Generator:
        """The training draws of one micro-batch: keyed by (seed, optimizer step, micro-batch index in
        the step, rank, salt) -- see :mod:`i2vlab.utils.seeding`. A resumed run draws the same."""
        return generator(
            "train", self.seed, self.global_step, micro_batch, self.global_rank, salt, device=self.device
        )

    def compute_loss(
        self,
        batch: Mapping[str, Any],
        generator: torch.Generator,
        levels: torch.Tensor | None = None,
        train: bool = True,
        noise: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Per-sample loss (b,) and extra logs, as the module docstring describes. ``levels`` (noise
        levels: timesteps for DDPM objectives, σ for EDM), ``noise`` and ``latents`` (b c f h w)
        replace the corresponding draws (to evaluate at fixed levels or replay another run)."""
        if latents is None:
            latents = self.encode_latents(batch, generator)
        cond = self.prepare_conditions(batch, latents, generator, train=train)
        if noise is None:
            noise = torch.randn(
                latents.shape, generator=generator, device=latents.device, dtype=latents.dtype
            )
        if levels is None:
            levels = self.objective.sample_levels(latents.shape[0], generator, latents.device)
        levels = levels.to(latents.device)
        clean = self.objective.clean(latents, levels)
        noisy = self.prepare_noisy(self.objective.add_noise(clean, noise, levels), clean, cond)
        pred = self.objective.denoise(self.denoise, noisy, levels, cond=cond)
        target = self.objective.target(clean, noise, levels)
        dt = torch.promote_types(pred.dtype, torch.float32)  # float32 (float64 stays float64)
        loss = masked_mse(pred.to(dt), target.to(dt), self.loss_mask(latents, cond))
        weight = self.objective.weight(levels)
        if weight is not None:
            loss = weight.to(loss.device, dt) * loss
        return loss, self.loss_logs(train)

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
            return skip_or_stop_nonfinite(self, loss, batch)
        self._nonfinite_in_a_row = 0
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        for k, v in logs.items():
            self.log(f"train/{k}", v, batch_size=b)
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # EMA right after each real optimizer step: before the checkpoint callbacks of the same step run
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.step(self.trainable_parameters())

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        b = batch["video"].shape[0]
        levels = self.objective.validation_levels(int(self.validation_cfg["num_timesteps"]))
        losses = []
        for i, t in enumerate(levels.tolist()):
            g = generator("val", self.seed, batch_idx, i, device=self.device)
            tt = torch.full((b,), t, device=self.device, dtype=levels.dtype)
            loss, _ = self.compute_loss(batch, g, levels=tt, train=False)
            losses.append(loss.detach())
        self._val_losses.append(torch.stack(losses, dim=1))  # (b, n)
        if batch_idx == 0 and self._val_inputs is None:
            self._val_inputs = self.validation_sample_inputs(batch, int(self.validation_cfg["num_samples"]))

    def validation_sample_inputs(self, batch: Mapping[str, Any], k: int) -> dict[str, Any]:
        """Keyword arguments of :meth:`sample` for the fixed-seed validation videos, taken from the
        first ``k`` clips of the first validation batch: their first frames (text-to-video pipelines take
        only their size; pipelines of two keyframes also get the last frames), captions and length."""
        inputs = {
            "prompts": list(batch["caption"][:k]),
            "images": batch["video"][:k, 0].detach(),
            "num_frames": batch["video"].shape[1],
        }
        if self.pipe.keyframes == 2:
            inputs["last_images"] = batch["video"][:k, -1].detach()
        return inputs

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

    def configure_optimizers(self):
        return build_optimizer(self.trainable_parameters(), self.optimizer_cfg, self._trainer)

    # ------------------------------------------------------------------------------------------
    # checkpoints and exports (contents in i2vlab.training.state)
    # ------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_contents(self, checkpoint)

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
