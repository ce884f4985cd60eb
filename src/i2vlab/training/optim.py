"""The optimizer and LR schedule of a run: AdamW (fused on CUDA) with a diffusers LR schedule."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

DEFAULTS: dict[str, Any] = {
    "lr": 1e-4,
    "betas": (0.9, 0.999),
    "weight_decay": 1e-2,
    "eps": 1e-8,
    "scheduler": "constant_with_warmup",
    "warmup_steps": 0,
    "fused": "auto",
}


def build_optimizer(
    params: Sequence[torch.nn.Parameter], cfg: Mapping[str, Any], trainer: Any = None
) -> dict:
    """Lightning's ``configure_optimizers`` return value for ``params`` and the ``optimizer`` config
    (keys of :data:`DEFAULTS`); the schedule runs per step over ``trainer.max_steps``."""
    from diffusers.optimization import get_scheduler

    c = {**DEFAULTS, **dict(cfg)}
    fused = c["fused"]
    if fused == "auto":
        fused = len(params) > 0 and all(p.is_cuda for p in params)
    opt = torch.optim.AdamW(
        params,
        lr=float(c["lr"]),
        betas=tuple(c["betas"]),
        weight_decay=float(c["weight_decay"]),
        eps=float(c["eps"]),
        fused=bool(fused),
    )
    total = trainer.max_steps if trainer is not None and trainer.max_steps and trainer.max_steps > 0 else None
    sched = get_scheduler(
        c["scheduler"], opt, num_warmup_steps=int(c["warmup_steps"]), num_training_steps=total
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "name": "lr"}}
