"""Lightning callbacks: validation videos, throughput and memory logging, checkpoint-and-stop on
preemption signals.

(Checkpoint files and their integrity: :mod:`i2vlab.training.checkpoints`.)"""

from __future__ import annotations

import logging
import resource
import signal
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger(__name__)


class SpeedMonitor(pl.Callback):
    """Logs ``perf/samples_per_sec`` (all ranks together), ``perf/step_time`` and ``perf/peak_mem_gb``
    (CUDA peak allocated on GPU, peak resident set size on CPU)."""

    def __init__(self, window: int = 10) -> None:
        self.window = window
        self._t0: float | None = None
        self._times: list[tuple[float, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None:
            return
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        dt = time.perf_counter() - self._t0
        n = (
            int(batch["video"].shape[0]) * trainer.world_size
            if isinstance(batch, dict) and "video" in batch
            else 0
        )
        self._times = (self._times + [(dt, n)])[-self.window :]
        tot_t, tot_n = sum(t for t, _ in self._times), sum(k for _, k in self._times)
        pl_module.log("perf/samples_per_sec", tot_n / max(tot_t, 1e-9), prog_bar=True)
        pl_module.log("perf/step_time", dt)
        pl_module.log("perf/peak_mem_gb", peak_memory_gb(pl_module.device))


def peak_memory_gb(device: torch.device | None = None) -> float:
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class DataHealthMonitor(pl.Callback):
    """``data/<kind>`` (:mod:`i2vlab.data.health`): what the training stream skipped or repaired so
    far, summed over workers, epochs (and the run before a resume) and ranks -- one reduction per
    logging interval -- and the all-rank totals in every checkpoint (Lightning keeps rank 0's data
    module state only; on resume rank 0 carries them on, the other ranks start from zero)."""

    @staticmethod
    def totals(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float] | None:
        """This rank's totals summed over ranks (a collective: every rank calls it)."""
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "health_totals"):
            return None
        counts = dm.health_totals().snapshot()
        t = torch.tensor(list(counts.values()), dtype=torch.float64, device=pl_module.device)
        if trainer.world_size > 1:
            t = trainer.strategy.reduce(t, reduce_op="sum")
        return dict(zip(counts, t.tolist()))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        every = max(1, int(getattr(trainer, "log_every_n_steps", 1) or 1))
        if trainer.global_step % every:
            return
        for k, v in (self.totals(trainer, pl_module) or {}).items():
            pl_module.log(f"data/{k}", v, rank_zero_only=True)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        state = next((v for v in checkpoint.values() if isinstance(v, dict) and "health" in v), None)
        totals = self.totals(trainer, pl_module)
        if state is not None and totals is not None:
            state["health"] = {k: int(v) for k, v in totals.items()}


class ValidationVideos(pl.Callback):
    """Fixed-seed validation videos: after each validation (not the sanity check), rank 0 samples the
    method from the first validation clips (``method.validation.num_samples`` of them, with
    ``sample_steps`` steps), writes ``<sample_dir>/step<N>_<i>.mp4`` and sends them to wandb /
    TensorBoard. Runs while the EMA weights are still swapped in when EMA validation is on."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        cfg = getattr(pl_module, "validation_cfg", {})
        inputs = getattr(pl_module, "_val_inputs", None)
        if trainer.sanity_checking or not inputs or int(cfg.get("num_samples", 0)) <= 0:
            return
        if trainer.global_rank != 0:
            return
        from i2vlab.utils.video_io import write_video

        with torch.no_grad():
            videos = pl_module.sample(
                **inputs, seed=pl_module.seed, num_inference_steps=int(cfg["sample_steps"])
            )
        root = Path(cfg.get("sample_dir") or Path(trainer.default_root_dir) / "samples")
        step = trainer.global_step
        paths = [write_video(root / f"step{step:07d}_{i}.mp4", v) for i, v in enumerate(videos)]
        log.info("validation samples written to %s", root)
        for logger in trainer.loggers:
            log_videos(logger, paths, videos, inputs["prompts"], step)


def log_videos(logger: Any, paths: list[Path], videos: torch.Tensor, captions: list[str], step: int) -> None:
    """Send validation videos to wandb / TensorBoard (CSV loggers keep the files only)."""
    name = type(logger).__name__
    try:
        if name == "WandbLogger":
            logger.log_video("val/samples", videos=[str(p) for p in paths], step=step, caption=captions)
        elif name == "TensorBoardLogger":
            from einops import rearrange

            frames = ((videos.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)  # b f c h w
            strip = rearrange(frames, "b f c h w -> c (b h) (f w)")
            logger.experiment.add_image("val/samples", strip, global_step=step)
    except Exception as e:  # noqa: BLE001 - logging media must never stop training
        log.warning("could not log validation videos to %s: %s", name, e)


class PreemptionCheckpoint(pl.Callback):
    """SIGTERM / SIGUSR1 (SLURM preemption, ``scancel --signal``, a scheduler's notice): finish the
    current batch, write ``checkpoints/last.ckpt`` (and the step file), and stop cleanly; the run
    resumes with ``ckpt_path=last``. Lightning's own SIGTERM handling (which stops without a
    checkpoint) keeps running beside this."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self) -> None:
        self.received: int | None = None
        self.saved_path: str | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum
        prev = self._previous.get(signum)
        if callable(prev):
            prev(signum, frame)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handler)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.saved_path is not None:
            return
        received = self.received is not None
        if trainer.world_size > 1:  # every rank must take part in the (collective) checkpoint
            flag = torch.tensor([float(received)], device=pl_module.device)
            received = bool(trainer.strategy.reduce(flag, reduce_op="max").item() > 0)
            self.received = self.received or (signal.SIGTERM if received else None)
        if not received:
            return
        ckpt = next((c for c in trainer.checkpoint_callbacks if getattr(c, "dirpath", None)), None)
        folder = Path(ckpt.dirpath) if ckpt is not None else Path(trainer.default_root_dir) / "checkpoints"
        path = folder / "last.ckpt"
        trainer.save_checkpoint(str(path))
        self.saved_path = str(path)
        trainer.should_stop = True
        name = signal.Signals(self.received).name
        log.warning(
            "%s received: checkpoint of step %d written to %s; resume with ckpt_path=last",
            name,
            trainer.global_step,
            path,
        )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous = {}
