"""The evaluator: read (or generate) videos, get each video's features from the cache or extract them,
update the registered metrics in job order, and write results.json / results.md / per_video.csv / plots.

Pieces: :mod:`.config` (the one defaults source), :mod:`.inputs` (folders, shards, manifests),
:mod:`.jobs` (cache-first decoding, batched extraction, ordered hand-back), :mod:`.features` (one per
extractor), :mod:`.registry` (one spec per metric), :mod:`.cache`, :mod:`.distributed`, :mod:`.results`,
:mod:`.report`. With ``torch.distributed`` initialised each rank scores a contiguous chunk; torchmetrics
reduces the metric states and rank 0 writes the files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from i2vlab.errors import UserError

from .cache import FeatureCache, read_note
from .config import DEFAULTS, EvalConfigError, resolve_config
from .distributed import barrier, chunk, rank_world
from .features import FEATURES
from .inputs import collect_items
from .jobs import Extraction, JobDataset, plan_jobs
from .registry import FVD_VARIANTS, METRICS
from .results import Tally, build_results, compute_values

log = logging.getLogger(__name__)

__all__ = ["DEFAULTS", "Evaluator", "NothingScoredError", "StrictModeError"]


class NothingScoredError(UserError, RuntimeError):
    """Every generated video was rejected: there is nothing to report."""


class StrictModeError(UserError, RuntimeError):
    """``eval.strict=true`` and a video (or its ground truth) was rejected."""


def _collate(batch):
    return batch


class Evaluator:
    """Build from the ``eval`` config (a partial dict is completed from :class:`~.config.EvalConfig`)."""

    def __init__(self, cfg: dict):
        self.cfg = c = resolve_config(cfg)
        unknown = [m for m in c["metrics"] if m not in METRICS]
        if unknown:
            raise EvalConfigError(f"eval.metrics: unknown {unknown}; known: {sorted(METRICS)}")
        if c["fvd"]["variant"] not in FVD_VARIANTS:
            raise EvalConfigError(
                f"eval.fvd.variant must be one of {sorted(FVD_VARIANTS)}, got {c['fvd']['variant']!r}"
            )
        if c["output_dir"] is None:
            raise EvalConfigError("eval.output_dir is not set (evaluate.py sets it to the Hydra run dir)")
        self.not_computed = {m: r for m in c["metrics"] if (r := METRICS[m].unavailable(c))}
        self.metric_names = [m for m in c["metrics"] if m not in self.not_computed]
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if c["device"] == "auto" else c["device"]
        )
        names = set(self.metric_names)
        # built here: a missing weights path fails before any video is read
        self.features = {
            f: FEATURES[f](c, names, self.device) for f in sorted({METRICS[m].feature for m in names})
        }
        self.extractors = {k: f.extractor for f in self.features.values() for k in f.describe()}
        self.metrics = {m: METRICS[m].build(c) for m in self.metric_names}
        self.cache = FeatureCache(c["cache_dir"])
        self.notes: list[str] = []
        self.on_batch_end = None  # test hook: called with the batch index after each batch

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        c = self.cfg
        for m in self.metrics.values():  # a second run() starts from empty states
            m.reset()
        out_dir = Path(c["output_dir"])
        out_dir.mkdir(parents=True, exist_ok=True)
        if c["generate"]["checkpoint"]:
            from .generate import generate_videos

            if rank_world()[0] == 0:
                generate_videos(c["generate"], out_dir, c["resolution"])
            barrier()
            c["manifest"] = str(out_dir / "generated" / "manifest.csv")
        if c["synthetic"]["enabled"] and not c["manifest"]:
            self._synthesize()
        need_real = any(METRICS[m].set_metric for m in self.metric_names)
        items, reals = collect_items(c, need_real)
        rank, world = rank_world()
        infos = {n: f.info() for n, f in self.features.items()}
        jobs = plan_jobs(chunk(items, rank, world), chunk(reals, rank, world) if need_real else [], infos, c)
        loader = DataLoader(JobDataset(jobs, infos, self.cache, c), batch_size=c["batch_size"],
                            num_workers=c["num_workers"], collate_fn=_collate, shuffle=False)  # fmt: skip
        tally, extraction = Tally(), Extraction(self.features, self.cache, infos)
        limit = max(64, 4 * c["batch_size"])  # samples held back at most before partial calls are forced
        from tqdm.auto import tqdm

        for bi, batch in enumerate(tqdm(loader, desc=f"evaluate[{rank}]", disable=rank != 0, unit="batch")):
            for s in batch:
                self._cache_events(s, tally)
                extraction.submit(s)
            extraction.step(final=len(extraction.pending) > limit)
            for s in extraction.ready():
                self._commit(s, tally)
            if self.on_batch_end is not None:
                self.on_batch_end(bi)
        extraction.step(final=True)
        for s in extraction.ready():
            self._commit(s, tally)
        merged = tally.merged()
        values = compute_values(self.metrics, c, self.not_computed, merged)
        described = {k: v for f in self.features.values() for k, v in f.describe().items()}
        results = build_results(c, merged, values, described, (len(items), len(reals)), self.notes)
        if rank == 0:
            from .report import write_outputs

            write_outputs(results, merged.rows, merged.curves, out_dir, plots=bool(c["plots"]), items=items)
        self._log_cache(merged)
        if results["n"]["generated_scored"] == 0:
            sk = results["n"]["skipped"]["generated"]
            first = next(iter(results["n"]["skip_examples"].values()), [""])[0]
            raise NothingScoredError(
                f"no generated video was scored: all {len(items)} listed were rejected "
                f"({', '.join(f'{k}: {v}' for k, v in sk.items())}; e.g. {first}). The files in {out_dir} list them."
            )
        return results

    def _synthesize(self) -> None:
        from .synthetic import make_synthetic_sets

        c, s = self.cfg, self.cfg["synthetic"]
        root = Path(s["dir"] or Path(c["output_dir"]) / "synthetic")
        if rank_world()[0] == 0:
            make_synthetic_sets(root, int(s["num_videos"]), int(s["num_frames"]), tuple(s["size"]))
        barrier()
        user_generated = bool(c["generated"])
        c["generated"] = c["generated"] or str(root / "generated")
        if c["real"]:
            return
        toy = s["toy_real"]
        if user_generated and toy and Path(toy).is_dir() and any(Path(toy).iterdir()):
            c["real"] = toy
            return
        c["real"] = str(root / "real")
        if user_generated:
            self.notes.append(
                f"real set: {c['real']} (synthetic), since eval.synthetic.toy_real={toy!r} holds no videos "
                "(build the toy shards: make toy-data)"
            )

    # ------------------------------------------------------------------ per sample
    def _cache_events(self, s: dict, tally: Tally) -> None:
        for name, key, status in s["events"]:
            kind = status.split(":")[0]
            tally.cache[kind] += 1
            if kind == "corrupt":
                log.warning(
                    "feature cache: %s entry of %s (%s) is %s; recomputed", name, s["key"], key, status
                )
                tally.corrupt.append({"feature": name, "video": s["key"], "key": key, "status": status})
            elif kind == "absent":
                log.debug("feature cache miss: %s of %s (%s)", name, s["key"], key)

    def _commit(self, s: dict, tally: Tally) -> None:
        c, role, key = self.cfg, s["role"], s["key"]
        if s["error"] is not None:
            reason, message = s["error"]
            if c["strict"]:
                raise StrictModeError(f"eval.strict=true and a video was rejected ({reason}): {message}")
            tally.skips[role][reason] += 1
            tally.example(reason, message)
            tally.rows.append({"key": key, "role": role, "status": f"skipped:{reason}"})
            log.warning("skipped %s video %s: %s", role, key, message)
            return
        row = {"key": key, "role": role, "status": "ok"}
        if role == "generated" and s["image_source"]:
            tally.image_sources[s["image_source"]] += 1
        notes: dict[tuple, list[str]] = {}
        for m in self.metric_names:
            spec = METRICS[m]
            if role == "real" and not spec.set_metric:
                continue
            feats = s["features"][spec.feature]
            upd = spec.update(self.metrics[m], feats, c, role)
            if upd.note:
                row[f"{m}_note"] = upd.note
                tally.metric_notes[(m, upd.note)] += 1
                detail = read_note(feats) or (upd.note, f"{key}: {upd.note}")
                notes.setdefault(detail, []).append(m)
            for k, v in (upd.row or {}).items():
                row[m if k == "value" else k] = v
            if upd.curve is not None:
                tally.curve(m, upd.curve)
        for (reason, message), ms in notes.items():
            if c["strict"] and reason != "no_prompt":
                raise StrictModeError(
                    f"eval.strict=true and {', '.join(ms)} could not be computed ({reason}): {message}"
                )
            tally.partial[reason] += 1
            tally.example(reason, message)
            log.info("video %s scored, but %s not computed for it: %s", key, "/".join(ms), message)
        tally.rows.append(row)

    def _log_cache(self, t: Tally) -> None:
        if self.cache.root is not None and rank_world()[0] == 0:
            log.info("feature cache %s: %d hits, %d absent, %d corrupt (recomputed)", self.cache.root,
                     t.cache["hit"], t.cache["absent"], t.cache["corrupt"])  # fmt: skip
