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
