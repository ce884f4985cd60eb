"""A test-only callback that kills its own process (SIGKILL, no clean-up) when step N begins."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class KillAtStep(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:  # the checkpoint of step N was written at the end of step N
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtStep(pl.Callback):
    """Sends ``signal`` (by name) to its own process when step N begins (a scheduler's preemption)."""

    def __init__(self, step: int, signal: str = "SIGTERM") -> None:
        self.step, self.signal, self.sent = step, signal, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), getattr(signal, self.signal))


class KillInValidation(pl.Callback):
    """SIGKILLs its own process in the middle of the validation that follows step N."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.global_step >= self.step and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGKILL)
