"""What the training loop does with a non-finite loss (``method.nonfinite_loss``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)


def skip_or_stop_nonfinite(module: Any, loss: torch.Tensor, batch: Mapping[str, Any]) -> None:
    """A NaN/inf loss: log it with the step and the batch's keys, then skip the step (returns
    ``None``: Lightning makes no optimizer step) or raise -- with ``nonfinite_loss=stop``, in DDP
    (ranks must agree to skip), or after ``max_nonfinite_steps`` in a row."""
    module._nonfinite_in_a_row += 1
    keys = list(batch.get("key", []))[:8]
    msg = f"non-finite training loss ({float(loss.detach())}) at step {module.global_step}, batch keys {keys}"
    distributed = module._trainer is not None and module.trainer.world_size > 1
    if (
        module.nonfinite_loss == "stop"
        or distributed
        or module._nonfinite_in_a_row > module.max_nonfinite_steps
    ):
        why = (
            "method.nonfinite_loss=stop"
            if module.nonfinite_loss == "stop"
            else "skipping is single-process only"
            if distributed
            else f"{module._nonfinite_in_a_row} in a row > method.max_nonfinite_steps"
        )
        raise FloatingPointError(
            f"{msg} ({why}). Lower optimizer.lr, keep trainer.gradient_clip_val, check these videos, "
            "or try trainer.precision=32-true / bf16-mixed instead of 16-mixed."
        )
    log.warning("%s: step skipped (no optimizer step)", msg)
    return None
