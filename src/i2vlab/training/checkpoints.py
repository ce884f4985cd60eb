"""Checkpoint files that survive kills, full disks and corruption.

- :class:`AtomicCheckpointIO` (a Lightning ``CheckpointIO``): each checkpoint is written to a
  temporary file in the same folder while its SHA-256 is computed, fsynced, checked for size, and
  renamed into place; a sidecar ``<name>.sha256`` (JSON: size, sha256, global step) follows. A
  failed write (full disk, exception) removes its temporary file. Loading is always
  ``weights_only=True``: a checkpoint never runs code.
- :func:`find_resume_checkpoint`: on resume, a damaged ``last.ckpt`` (truncated, zeroed,
  garbage, empty, checksum mismatch) is reported by name and the newest valid ``*.ckpt`` of the
  same folder is used instead, saying which and why.
- :func:`clean_leftovers`: temporary files of killed writers are removed on start.
- :class:`ValidatedCheckpoint`: a ``ModelCheckpoint`` that writes a step's checkpoint *after* the
  validation run at that step, so a run killed during validation redoes it on resume.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint

from i2vlab.errors import UserError
from i2vlab.utils.safe_load import CorruptFileError, load_torch_file

log = logging.getLogger(__name__)

TMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


class NoValidCheckpointError(UserError, FileNotFoundError):
    pass


class _HashingWriter:
    """A file object that hashes what passes through it."""

    def __init__(self, f) -> None:
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def sidecar(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.sha256")


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic, checksummed checkpoint writes; safe loads. See the module docstring."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp_side = path.with_name(f".{path.name}.sha256.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                w = _HashingWriter(f)
                torch.save(checkpoint, w)
                f.flush()
                os.fsync(f.fileno())
            size = tmp.stat().st_size
            if size != w.n:
                raise OSError(f"wrote {w.n} bytes but {tmp} has {size}")
            meta = {"size": size, "sha256": w.h.hexdigest(), "global_step": checkpoint.get("global_step")}
            with open(tmp_side, "w") as f:
                json.dump(meta, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            os.replace(tmp_side, sidecar(path))
        finally:
            for t in (tmp, tmp_side):
                if t.exists():
                    t.unlink()

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        return load_torch_file(path, what="checkpoint", map_location=map_location, trust_flag=None)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        super().remove_checkpoint(path)
        side = sidecar(path)
        if side.exists():
            side.unlink()


def verify_checkpoint(path: str | os.PathLike) -> str | None:
    """``None`` if ``path`` is a usable checkpoint, else the reason it is not.

    With a sidecar, size and SHA-256 must match (a kill between renaming the file and its sidecar
    also fails this; ``last.ckpt`` is written after the step's own file, so the fallback holds the
    same state). Without a sidecar (runs of older versions) the file must load with the safe
    loader."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size == 0:
        return "empty file"
    side = sidecar(path)
    if side.is_file():
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            meta = None
        if not meta:
            return f"unreadable checksum file {side.name}"
        if meta.get("size") != size:
            return f"size {size} bytes, but {meta.get('size')} were written"
        if meta.get("sha256") != file_sha256(path):
            return "content does not match the checksum written with it"
        return None
    try:
        ckpt = load_torch_file(path, what="checkpoint", trust_flag=None)
    except (CorruptFileError, RuntimeError, OSError) as e:
        return str(e).split(". ", 1)[-1][:200] if isinstance(e, CorruptFileError) else str(e)[:200]
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return "not a training checkpoint (no state_dict)"
    return None


def _step_of(path: Path) -> int:
    side = sidecar(path)
    if side.is_file():
        try:
            step = json.loads(side.read_text()).get("global_step")
            if isinstance(step, int):
                return step
        except (OSError, ValueError):
            pass
    m = re.search(r"step[=_-]?(\d+)", path.stem)
    return int(m.group(1)) if m else -1


def find_resume_checkpoint(path: str | os.PathLike) -> tuple[Path, str | None]:
    """``path`` if it is valid; else the newest valid ``*.ckpt`` beside it (by global step, then
    modification time). Returns ``(path, why_not_the_requested_one)``; raises if none is valid."""
    path = Path(path)
    why = verify_checkpoint(path)
    if why is None:
        return path, None
    folder = path.parent
    candidates = [p for p in folder.glob("*.ckpt") if p != path and not p.name.startswith(".")]
    candidates.sort(key=lambda p: (_step_of(p), p.stat().st_mtime), reverse=True)
    rejected = []
    for c in candidates:
        reason = verify_checkpoint(c)
        if reason is None:
            return c, f"{path.name}: {why}"
        rejected.append(f"{c.name}: {reason}")
    raise NoValidCheckpointError(
        f"no usable checkpoint in {folder}: {path.name}: {why}"
        + (f"; also rejected {'; '.join(rejected[:5])}" if rejected else "")
        + ". Start fresh without ckpt_path (and with overwrite=true to reuse this run directory)."
    )


def clean_leftovers(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files of checkpoint writers that no longer run (killed mid-write)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = TMP_PATTERN.match(p.name)
        if not m:
            continue
        pid = int(m.group("pid"))
        if pid != os.getpid() and _alive(pid):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    if removed:
        log.info("removed %d leftover temporary checkpoint files in %s", len(removed), folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ValidatedCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose step checkpoints are written after that step's validation.

    Lightning saves ``every_n_train_steps`` checkpoints before the validation that follows the same
    step; a run killed during that validation would resume past it and never validate that step.
    Here such a save waits for the end of validation (Lightning's own deferred-save path). Steps
    without validation save at once, as before. File names never get ``-v1`` suffixes: a step's
    checkpoint written again after a resume replaces the old one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(*args, **kwargs)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        due = self._every_n_train_steps >= 1 and trainer.global_step % self._every_n_train_steps == 0
        if due and not self._should_skip_saving_checkpoint(trainer) and _validation_follows(trainer):
            self._defer_save_until_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, *args)

    def _save_deferred(self, trainer: pl.Trainer) -> None:
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
        self._defer_save_until_validation = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._defer_save_until_validation and not trainer.sanity_checking:
            self._save_deferred(trainer)
            return
        super().on_validation_end(trainer, pl_module)

    # a deferred save whose validation did not run (no validation batches) is written anyway
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._defer_save_until_validation:
            self._save_deferred(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._defer_save_until_validation:
            self._save_deferred(trainer)
        super().on_train_end(trainer, pl_module)


def _validation_follows(trainer: pl.Trainer) -> bool:
    """Whether Lightning runs validation right after the current training batch."""
    if not trainer.enable_validation:
        return False
    loop = trainer.fit_loop.epoch_loop
    check = getattr(loop, "_should_check_val_fx", None)  # the loop's own decision (Lightning 2.x)
    fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
    if check is None or fetcher is None:
        return False
    try:
        return bool(check(fetcher))
    except Exception:  # noqa: BLE001 - if Lightning changes, fall back to saving at once
        return False
