"""Lightning callbacks: throughput and memory logging, checkpoint-and-stop on preemption signals.

(Checkpoint files and their integrity: :mod:`i2vlab.checkpoints`.)"""

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
