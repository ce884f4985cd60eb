"""Lightning callbacks: throughput and memory logging, atomic checkpoint I/O."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO


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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, fsyncs it and renames it into
    place: a run killed while saving never leaves a truncated ``last.ckpt``."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
