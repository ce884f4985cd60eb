"""A CSV logger that survives resume, on Lightning's public ``Logger`` interface only.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder already exists, so a resumed run
would lose its history. :class:`ResumableCSVLogger` keeps the rows logged before the resumed step
and continues after them: at its first write in a process, rows of the existing file at or after the
first step this process logs (logged after the checkpoint the run resumed from) are dropped, and
the file is rewritten atomically with the union of all columns. ``hparams.yaml`` sits beside it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities import rank_zero_only


class ResumableCSVLogger(Logger):
    """``<save_dir>/<name>/version_<version>/metrics.csv`` (fixed version: a resumed run writes to the
    same file). Rows are buffered and the file rewritten every ``flush_logs_every_n_steps`` rows and at
    the end."""

    def __init__(
        self, save_dir: str, name: str = "csv", version: int | str = 0, flush_logs_every_n_steps: int = 50
    ) -> None:
        super().__init__()
        self._save_dir, self._name, self._version = str(save_dir), name, version
        self.flush_every = max(1, int(flush_logs_every_n_steps))
        self._kept: list[dict[str, Any]] | None = None  # rows of an earlier run, read at the first write
        self._rows: list[dict[str, Any]] = []
        self._unflushed = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> int | str:
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def log_dir(self) -> str:
        return os.path.join(self._save_dir, self._name, f"version_{self._version}")

    @property
    def metrics_file(self) -> Path:
        return Path(self.log_dir) / "metrics.csv"

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        import yaml
        from omegaconf import OmegaConf

        plain = OmegaConf.to_container(params, resolve=True) if OmegaConf.is_config(params) else params
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.log_dir) / "hparams.yaml").write_text(yaml.safe_dump(_plain(plain), sort_keys=False))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        row = {k: _value(v) for k, v in metrics.items()}
        row["step"] = int(step if step is not None else len(self._rows))
        self._rows.append(row)
        self._unflushed += 1
        if self._unflushed >= self.flush_every:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        if not self._rows:
            return
        if self._kept is None:  # first write: keep what an earlier run logged before our first step
            first = min(int(r["step"]) for r in self._rows)
            self._kept = [
                r
                for r in _read(self.metrics_file)
                if r.get("step") not in (None, "") and int(r["step"]) < first
            ]
        rows = self._kept + self._rows
        keys = sorted(set().union(*rows))
        path = self.metrics_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
        self._unflushed = 0

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _value(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x if isinstance(x, (str, int, float, bool)) or x is None else str(x)
