"""What ``train.py`` does: instantiate everything from the composed config and run Lightning."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from i2vlab.callbacks import AtomicCheckpointIO
from i2vlab.utils.config import git_revision

log = logging.getLogger("i2vlab.train")


def instantiate_model(cfg: DictConfig) -> pl.LightningModule:
    """The method LightningModule from ``cfg.method`` (backbone components built recursively)."""
    return hydra.utils.instantiate(cfg.method, _convert_="partial")


def instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, logger); null entries are skipped."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str | Path) -> str | None:
    """``null`` -> fresh run; ``last`` -> <output_dir>/checkpoints/last.ckpt (must exist);
    a run directory -> its checkpoints/last.ckpt; a file -> itself."""
    if ckpt_path in (None, "", "null"):
        return None
    p = Path(output_dir) / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if p.is_dir():
        p = p / "checkpoints" / "last.ckpt"
    if not p.is_file():
        raise FileNotFoundError(
            f"ckpt_path={ckpt_path!r}: no checkpoint at {p}. To resume a run, pass its directory: "
            f"`ckpt_path=<run dir>` or `hydra.run.dir=<run dir> ckpt_path=last`."
        )
    return str(p)


def write_run_info(output_dir: Path, **extra: Any) -> Path:
    """``run_info.jsonl`` in the run directory: one line per launch (git revision, command line,
    library versions, host, time), so every result can be traced to the code that produced it."""
    import json
    import platform
    import sys
    import time

    import diffusers
    import torch

    info = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "git_revision": git_revision(),
        "argv": sys.argv,
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pl.__version__,
        "diffusers": diffusers.__version__,
        **extra,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "run_info.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps(info, default=str) + "\n")
    return path


def train(cfg: DictConfig) -> dict[str, float]:
    output_dir = Path(cfg.paths.output_dir)
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except Exception as e:  # e.g. a mandatory `???` value: show the unresolved config, then fail below
        text = f"{OmegaConf.to_yaml(cfg, resolve=False)}\n# (could not resolve: {e})"
    log.info("config:\n%s", text)  # Hydra's logging shows it on the console and in <run>/train.log
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    write_run_info(output_dir, resumed_from=ckpt_path)
    pl.seed_everything(cfg.seed, workers=True)  # random-init parts depend on it: seed right before building
    model = instantiate_model(cfg)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="partial")
    if cfg.get("init_from"):
        loaded = model.init_from(cfg.init_from)
        log.info("initialised %d tensors from %s", len(loaded), cfg.init_from)
    report = model.parameter_report()
    log.info("parameters:\n%s", report)

    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    for lg in loggers:
        if hasattr(lg, "log_hyperparams"):
            lg.log_hyperparams(
                {"config": OmegaConf.to_container(cfg, resolve=True), "git_revision": git_revision()}
            )
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.get("export", True) and trainer.is_global_zero:
        path = model.export_trainable(output_dir / "export" / "trainable.safetensors", config=cfg)
        print(f"trainable weights exported to {path}")
        if model.ema is not None:
            model.export_trainable(output_dir / "export" / "trainable_ema.safetensors", use_ema=True)
    if trainer.is_global_zero:
        print(f"run directory: {output_dir}")
        for name in ("checkpoints", "samples", "export", "csv", "tensorboard", "wandb"):
            if (output_dir / name).exists():
                print(f"  {name:<12} {output_dir / name}")
    return metrics
