"""What ``train.py`` does: instantiate everything from the composed config and run Lightning."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from i2vlab.errors import UserError
from i2vlab.training.checkpoints import AtomicCheckpointIO, clean_leftovers, find_resume_checkpoint
from i2vlab.utils.config import git_revision
from i2vlab.utils.runtime import global_rank, quiet_logs
from i2vlab.utils.validate import validate_train_config

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
    a run directory -> its checkpoints/last.ckpt; a file -> itself.

    A damaged checkpoint (truncated, zeroed, garbage, checksum mismatch) is named with the reason
    and the newest valid checkpoint of the same folder is used instead."""
    if ckpt_path in (None, "", "null"):
        return None
    p = Path(output_dir) / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if p.is_dir():
        p = p / "checkpoints" / "last.ckpt"
    if not p.is_file() and not (p.parent.is_dir() and any(p.parent.glob("*.ckpt"))):
        raise CheckpointNotFoundError(
            f"ckpt_path={ckpt_path!r}: no checkpoint at {p}. To resume a run, pass its directory: "
            f"`ckpt_path=<run dir>` or `hydra.run.dir=<run dir> ckpt_path=last`."
        )
    chosen, why = find_resume_checkpoint(p)
    if why is not None:
        log.warning(
            "cannot resume from %s; resuming from %s instead (the newest valid checkpoint)", why, chosen
        )
    return str(chosen)


class CheckpointNotFoundError(UserError, FileNotFoundError):
    pass


#: what an earlier run leaves in its directory (Hydra's own .hydra/ and train.log do not count)
RUN_ARTEFACTS = ("checkpoints", "export", "csv", "tensorboard", "wandb", "samples")


class RunDirectoryNotEmpty(UserError, RuntimeError):
    pass


def prepare_run_dir(output_dir: Path, ckpt_path: str | None, overwrite: bool) -> None:
    """Refuse to start a fresh run over an earlier one (its metrics, export and checkpoints would be
    mixed with or replaced by the new run's) unless it resumes or ``overwrite=true``; remove
    leftovers of killed checkpoint writes. Rank 0 only (other ranks start after it has written)."""
    if global_rank() != 0:
        return
    used = [n for n in RUN_ARTEFACTS if (output_dir / n).is_dir() and any((output_dir / n).iterdir())]
    if used and ckpt_path is None:
        if not overwrite:
            raise RunDirectoryNotEmpty(
                f"{output_dir} already holds a run ({', '.join(used)}). Resume it with ckpt_path=last, "
                f"choose another hydra.run.dir, or pass overwrite=true to delete {', '.join(used)} and start over."
            )
        import shutil

        for n in used:
            shutil.rmtree(output_dir / n)
        log.warning("overwrite=true: removed %s from %s", ", ".join(used), output_dir)
    clean_leftovers(output_dir / "checkpoints")


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
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **extra,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "run_info.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps(info, default=str) + "\n")
    return path


def summary(cfg: DictConfig, output_dir: Path) -> str:
    """The few lines the console gets (the whole resolved config goes to the run directory)."""
    choices = {}
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = dict(HydraConfig.get().runtime.choices)
    except Exception:  # noqa: BLE001 - no Hydra runtime (tests, API use)
        pass
    picked = ", ".join(
        f"{g}={choices[g]}" for g in ("experiment", "method", "backbone", "data", "trainer") if choices.get(g)
    )
    return (
        f"{cfg.get('task_name', 'train')}: {picked or 'config composed'}; seed {cfg.get('seed')}; "
        f"max_steps {OmegaConf.select(cfg, 'trainer.max_steps')}; run directory {output_dir} "
        f"(full config: {output_dir / 'config_resolved.yaml'})"
    )


class OutOfMemoryHelp(UserError, RuntimeError):
    pass


def _oom_message(cfg: DictConfig, e: BaseException) -> str:
    sel = lambda k: OmegaConf.select(cfg, k, default="?")  # noqa: E731
    return (
        f"out of GPU memory ({str(e).splitlines()[0][:160]}) with data.batch_size={sel('data.batch_size')}, "
        f"data.num_frames={sel('data.num_frames')}, data.resolution={sel('data.resolution')}, "
        f"trainer.precision={sel('trainer.precision')}. Try, in this order: "
        "method.gradient_checkpointing=true, method.frozen_dtype=bf16, trainer.precision=bf16-mixed, "
        "a smaller data.batch_size with trainer.accumulate_grad_batches to keep the effective batch, "
        "method.vae_chunk_size=2, fewer data.num_frames or a lower resolution; or trainer=fsdp."
    )


def train(cfg: DictConfig) -> dict[str, float]:
    quiet_logs()
    output_dir = Path(cfg.paths.output_dir)
    validate_train_config(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    prepare_run_dir(output_dir, ckpt_path, bool(cfg.get("overwrite", False)))
    if global_rank() == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        log.info("%s", summary(cfg, output_dir))
        write_run_info(output_dir, resumed_from=ckpt_path)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # random-init parts depend on it
    model = instantiate_model(cfg)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data, _convert_="partial")
    if cfg.get("init_from"):
        loaded = model.init_from(cfg.init_from)
        log.info("initialised %d tensors from %s", len(loaded), cfg.init_from)
    if global_rank() == 0:
        report = model.parameter_report()
        log.info("parameters: %s", report.strip().splitlines()[-1])
        (output_dir / "parameters.txt").write_text(report + "\n")

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
    preempt = next((c for c in callbacks if type(c).__name__ == "PreemptionCheckpoint"), None)
    if cfg.get("train", True):
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        except torch.cuda.OutOfMemoryError as e:
            raise OutOfMemoryHelp(_oom_message(cfg, e)) from e
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if preempt is not None and preempt.saved_path is not None:
        if trainer.is_global_zero:
            print(f"stopped by a signal at step {trainer.global_step}: checkpoint {preempt.saved_path}")
            print(f"resume with: python train.py <same overrides> hydra.run.dir={output_dir} ckpt_path=last")
        return metrics
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
