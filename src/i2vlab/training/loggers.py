"""A CSV logger that survives resume.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder already exists, so a resumed
run would lose the history. :class:`ResumableCSVLogger` keeps the rows logged before the
resumed step and appends after them (rows at or after the first newly logged step — logged after
the checkpoint the run resumed from — are replaced).
"""

from __future__ import annotations

import csv

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # keep the previous metrics.csv
        self._merged = False

    def save(self) -> None:
        if self.metrics and not self._merged and self._fs.isfile(self.metrics_file_path):
            first = min(int(m["step"]) for m in self.metrics)
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                old = [
                    r for r in csv.DictReader(f) if r.get("step") not in (None, "") and int(r["step"]) < first
                ]
            keys = sorted(set().union(*old, *self.metrics)) if old else []
            with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                if keys:
                    w = csv.DictWriter(f, fieldnames=keys)
                    w.writeheader()
                    w.writerows(old)
            if not keys:
                self._fs.rm_file(self.metrics_file_path)
            self.metrics_keys = keys
        if self.metrics:  # merged (or nothing to merge with) once the first rows are written
            self._merged = True
        super().save()


class ResumableCSVLogger(CSVLogger):
    """``pytorch_lightning.loggers.CSVLogger`` that appends to an existing ``metrics.csv`` on resume."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
