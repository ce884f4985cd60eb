"""Hydra callback that ends every multirun (grid, ``hparams_search=...``, any sweeper or launcher)
with a table: job number, overrides, status and ``optimized_metric``, best first.

Each job writes ``<job dir>/job_result.json`` when it ends (this runs where the job runs, so it
works with remote launchers too); at the end of the multirun the callback reads them back from the
sweep directory, prints the table and writes ``summary.md`` / ``summary.csv`` beside the jobs.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

RESULT = "job_result.json"


def _number(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class SweepSummary(Callback):
    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        try:
            out = Path(config.hydra.runtime.output_dir)
        except Exception:  # noqa: BLE001 - no runtime output dir: nothing to record
            return
        status = getattr(getattr(job_return, "status", None), "name", "UNKNOWN")
        value = None
        if status == "COMPLETED":
            value = _number(getattr(job_return, "_return_value", None))
        err = getattr(job_return, "_return_value", None) if status == "FAILED" else None
        record = {
            "job": OmegaConf.select(config, "hydra.job.num", default=None),
            "overrides": list(getattr(job_return, "overrides", None) or []),
            "metric": OmegaConf.select(config, "optimized_metric", default=None),
            "value": value,
            "status": status,
            "error": None if err is None else f"{type(err).__name__}: {str(err)[:300]}",
        }
        out.mkdir(parents=True, exist_ok=True)
        (out / RESULT).write_text(json.dumps(record, indent=1) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
        rows = []
        for f in sweep.glob(f"*/{RESULT}"):
            try:
                rows.append(json.loads(f.read_text()))
            except (OSError, ValueError):
                continue
        if not rows:
            log.warning("multirun ended; no job results found under %s", sweep)
            return
        direction = str(OmegaConf.select(config, "hydra.sweeper.direction", default="minimize") or "minimize")
        sign = -1.0 if "max" in direction else 1.0
        rows.sort(key=lambda r: (r["value"] is None, sign * (r["value"] or 0.0), r["job"] or 0))
        metric = next((r["metric"] for r in rows if r.get("metric")), "optimized_metric")
        table = summary_table(rows, metric)
        print(f"\nsweep summary ({len(rows)} jobs, {metric}, best first; {direction}):\n{table}")
        (sweep / "summary.md").write_text(f"# Sweep {sweep.name}\n\n{table}\n")
        with open(sweep / "summary.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["job", "overrides", "status", metric])
            for r in rows:
                w.writerow([r["job"], " ".join(r["overrides"]), r["status"], r["value"]])
        if all(r["value"] is None for r in rows if r["status"] == "COMPLETED"):
            print(
                f"no job logged {metric}: set optimized_metric to a logged key, or make validation run "
                "(trainer.val_check_interval <= trainer.max_steps)"
            )
        print(f"written: {sweep / 'summary.md'}, {sweep / 'summary.csv'}")


def summary_table(rows: list[dict], metric: str) -> str:
    lines = [f"| job | overrides | status | {metric} |", "|---|---|---|---|"]
    for r in rows:
        v = "" if r["value"] is None else f"{r['value']:.6g}"
        lines.append(f"| {r['job']} | {' '.join(r['overrides'])} | {r['status']} | {v} |")
    return "\n".join(lines)
