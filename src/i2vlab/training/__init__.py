"""Everything around the LightningModule that makes a run: ``train(cfg)`` (what ``train.py`` does),
checkpoint files and their contents, callbacks (validation videos, speed, preemption), loggers and
the sweep summary. The methods themselves (``i2vlab.methods``) only compute losses."""

from i2vlab.training.run import (
    CheckpointNotFoundError,
    OutOfMemoryHelp,
    RunDirectoryNotEmpty,
    instantiate_group,
    instantiate_model,
    prepare_run_dir,
    resolve_ckpt_path,
    train,
    write_run_info,
)

__all__ = [
    "CheckpointNotFoundError",
    "OutOfMemoryHelp",
    "RunDirectoryNotEmpty",
    "instantiate_group",
    "instantiate_model",
    "prepare_run_dir",
    "resolve_ckpt_path",
    "train",
    "write_run_info",
]
