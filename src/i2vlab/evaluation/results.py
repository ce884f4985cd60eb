"""The per-run tallies (rows, skips, notes, curves, cache events) and ``results.json``'s content:
tallies gathered from every rank, metrics computed (torchmetrics reduces their states), formatted by
their specs, with the notes on comparability."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import torch

from i2vlab.utils.config import git_revision

from .distributed import gather_objects, rank_world
from .registry import METRICS


@dataclass
class Tally:
    rows: list[dict] = field(default_factory=list)
    skips: dict = field(default_factory=lambda: {"generated": Counter(), "real": Counter()})
    partial: Counter = field(default_factory=Counter)  # scored videos some metric could not use
    metric_notes: Counter = field(default_factory=Counter)  # (metric, reason) -> videos
    examples: dict = field(default_factory=lambda: defaultdict(list))
    curves: dict = field(default_factory=dict)  # metric -> [sum of per-frame values, count]
    image_sources: Counter = field(default_factory=Counter)
    cache: Counter = field(default_factory=Counter)  # hit / absent / corrupt / disabled
    corrupt: list = field(default_factory=list)

    def example(self, reason: str, message: str) -> None:
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(message)

    def curve(self, metric: str, values: torch.Tensor) -> None:
        acc = self.curves.setdefault(metric, [torch.zeros(len(values), dtype=torch.float64), 0])
        if len(acc[0]) == len(values):
            acc[0] += values.double()
            acc[1] += 1

    def merged(self) -> Tally:
        """This tally summed over all ranks (rank 0's view is used to write the files)."""
        out = Tally()
        for t in gather_objects(self):
            out.rows += t.rows
            for role in out.skips:
                out.skips[role].update(t.skips[role])
            out.partial.update(t.partial)
            out.metric_notes.update(t.metric_notes)
            for k, v in t.examples.items():
                out.examples[k].extend(v)
            for m, (s, n) in t.curves.items():
                if m not in out.curves:
                    out.curves[m] = [s.clone(), n]
                elif len(out.curves[m][0]) == len(s):
                    out.curves[m][0] += s
                    out.curves[m][1] += n
            out.image_sources.update(t.image_sources)
            out.cache.update(t.cache)
            out.corrupt += t.corrupt
        return out


def compute_values(metrics: dict, cfg: dict, not_computed: dict, tally: Tally) -> dict:
    values: dict = {}
    for m in cfg["metrics"]:
        if m in not_computed:
            values[m] = {"value": None, "error": not_computed[m]}
            continue
        metric = metrics[m]
        try:
            if metric.update_count == 0 and rank_world()[1] == 1:  # (all ranks must call compute: it syncs)
                raise ValueError(f"{m}: no video was scored")
            v = metric.compute()
        except ValueError as e:
            why = {r: n for (mm, r), n in tally.metric_notes.items() if mm == m}
            hint = (
                f" (videos it could not use: {', '.join(f'{r}: {n}' for r, n in why.items())})" if why else ""
            )
            values[m] = {"value": None, "error": f"{e}{hint}"}
            continue
        fmt = METRICS[m].result
        values[m] = fmt(metric, v, cfg) if fmt else {"value": float(v), "n": int(metric.count)}
    return values


def build_results(
    cfg: dict, tally: Tally, values: dict, extractors: dict, n_listed: tuple, notes: list
) -> dict:
    n_gen = sum(1 for r in tally.rows if r["role"] == "generated" and r["status"] == "ok")
    n_real = sum(1 for r in tally.rows if r["role"] == "real" and r["status"] == "ok")
    reasons = list(notes)
    reasons += [
        f"{k}: random-init weights (allow_random_weights=true)"
        for k, e in extractors.items()
        if not e["comparable"]
    ]
    protocol = cfg.get("protocol") or {}
    clip = extractors.get("clip")
    if (
        clip
        and clip.get("convention") != "evalcrafter_raw"
        and protocol.get("clip_convention") == "evalcrafter_raw"
    ):
        reasons.append("clip: preprocessing differs from the paper's EvalCrafter raw-pixel convention")
    if protocol.get("num_samples") and n_gen != int(protocol["num_samples"]):
        reasons.append(f"N={n_gen} generated videos scored; the protocol uses {protocol['num_samples']}")
    reasons += [v["error"] for m, v in values.items() if v["value"] is None and "error" in v]
    return {
        "name": cfg["name"],
        "protocol": protocol,
        "comparable": not any("random-init" in r for r in reasons),
        "notes": reasons,
        "metrics": values,
        "n": {
            "generated_listed": n_listed[0],
            "real_listed": n_listed[1],
            "generated_scored": n_gen,
            "real_scored": n_real,
            "skipped": {k: dict(v) for k, v in tally.skips.items()},
            "partially_scored": dict(tally.partial),
            "skip_examples": dict(tally.examples),
        },
        "clip": {
            "num_frames": cfg["num_frames"],
            "frame_stride": cfg["frame_stride"],
            "real_frame_stride": cfg["real_frame_stride"],
            "start_frame": cfg["start_frame"],
            "resolution": cfg["resolution"],
            "resize": "short side bilinear (antialias) + centre crop",
            "value_range": "[-1,1] from uint8 decode",
        },
        "condition_image_sources": dict(tally.image_sources),
        "extractors": extractors,
        "cache": {
            "dir": cfg["cache_dir"],
            "hits": tally.cache["hit"],
            "misses": sum(v for k, v in tally.cache.items() if k != "hit"),
            "corrupt": tally.corrupt[:20],
            "events": dict(tally.cache),
        },  # fmt: skip
        "world_size": rank_world()[1],
        "config": cfg,
        "git_revision": git_revision(),
    }
