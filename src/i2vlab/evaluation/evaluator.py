"""The evaluator: read (or generate) videos, extract features per video (cached), update
torchmetrics metrics, and write results.json / results.md / per_video.csv / plots.

Work is split across ranks in contiguous chunks when ``torch.distributed`` is initialised;
metric states are reduced by torchmetrics and per-video rows are gathered to rank 0, so a
2-process run gives the same numbers as one process.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter, defaultdict
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from i2vlab.metrics import classes as M
from i2vlab.metrics import functional as Fm
from i2vlab.metrics.extractors import build_extractor

from .cache import FeatureCache
from .inputs import (
    ClipError,
    EvalItem,
    VideoRef,
    collect_videos,
    load_clip,
    load_condition_image,
    read_manifest,
)
from .inputs import ref_from_path as _ref

log = logging.getLogger(__name__)

# metric name -> feature group; "dover" is computed only when eval.extractors.dover is configured
METRIC_GROUPS = {
    "fvd": "i3d", "kvd": "i3d", "fid": "inception", "pic": "dreamsim",
    "clip_temp": "clip", "clip_first_frame": "clip", "clip_image": "clip", "clip_text": "clip",
    "flow_score": "flow", "warping_error": "flow", "lpips": "paired", "psnr": "paired", "ssim": "paired",
    "dover": "dover",
}  # fmt: skip
SET_METRICS = ("fvd", "kvd", "fid")  # need the real set
NOT_IMPLEMENTED: dict[str, str] = {}
DOVER_NOT_CONFIGURED = (
    "DoverVQA is not computed: eval.extractors.dover.weights_path is not set (DOVER.pth from "
    "https://github.com/QualityAssessment/DOVER/releases/download/v0.1.0/DOVER.pth)"
)
FVD_VARIANTS = {"styleganv": {"ddof": 0}, "videogpt": {"ddof": 1}}

DEFAULTS: dict = {
    "name": "custom",
    "protocol": {},
    "generated": None,
    "real": None,
    "manifest": None,
    "images": None,
    "prompts": None,
    "condition_image": "auto",
    "metrics": ["fvd", "kvd", "fid"],
    "num_frames": 16,
    "frame_stride": 1,
    "real_frame_stride": 1,
    "start_frame": 0,
    "resolution": [256, 256],
    "max_videos": None,
    "max_real_videos": None,
    "strict": False,
    "batch_size": 8,
    "num_workers": 0,
    "device": "auto",
    "cache_dir": "outputs/eval_cache",
    "output_dir": None,
    "allow_random_weights": False,
    "plots": True,
    "fvd": {"variant": "styleganv", "ddof": None},
    "fid": {"ddof": 1},
    "kvd": {"num_subsets": 100, "subset_size": 1000, "scale": 1.0, "seed": 0},
    "clip_text": {"scale": 1.0},
    "flow_score": {"evalcrafter_compat": {"pad_no_crop": False}},
    "warping_error": {"downsample": 0.5, "evalcrafter_compat": {"pad_no_crop": False, "double_rescale": False}},
    "dover": {"score": "technical_raw", "rescale": "evalcrafter"},
    "extractors": {
        "i3d": {"weights_path": None, "input_size": 224, "resize_mode": "squash", "width": 1.0, "bn_eps": "auto"},
        "inception": {"weights_path": None, "input_size": 299, "resize_mode": "tf1_squash"},
        "clip": {"weights_path": None, "convention": "standard", "tiny": None},
        "dreamsim": {"weights_path": None, "dreamsim_type": "ensemble", "tiny": None},
        "flow": {"name": "opencv_flow", "method": "dis", "weights_path": None, "variant": "raft_large",
                 "num_flow_updates": 20},
        "lpips": {"weights_path": None, "net": "alex"},
        "dover": {"weights_path": None, "seed": 0, "tiny": None,
                  "technical": {"fragments": 7, "fsize": 32, "clip_len": 32, "frame_interval": 2, "num_clips": 3},
                  "aesthetic": {"size": 224, "clip_len": 32, "t_frag": 32, "frame_interval": 2,
                                "antialias": False}},
    },
    "generate": {"checkpoint": None, "prompts": None, "num_frames": 16, "seed": 0, "batch_size": 1, "fps": 8,
                 "kwargs": {}},
    "synthetic": {"enabled": False, "num_videos": 6, "num_frames": 10, "size": [48, 64], "dir": None},
}  # fmt: skip


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("protocol", "tiny", "kwargs"):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_objects(obj):
    r, w = _rank_world()
    if w == 1:
        return [obj]
    out = [None] * w
    dist.all_gather_object(out, obj)
    return out


class _ClipDataset(Dataset):
    """Decodes one job: ``("fake", EvalItem)`` or ``("real", VideoRef)`` -> dict (errors as values)."""

    def __init__(self, jobs, cfg, need_paired: bool, need_image: bool):
        self.jobs, self.cfg, self.need_paired, self.need_image = jobs, cfg, need_paired, need_image

    def __len__(self):
        return len(self.jobs)

    def __getitem__(self, i):
        role, obj = self.jobs[i]
        c = self.cfg
        res = c["resolution"]
        out = {"role": role, "key": obj.key, "error": None}
        try:
            if role == "real":
                out["video"] = load_clip(obj, c["num_frames"], c["real_frame_stride"], c["start_frame"], res)
                out["ident"] = obj.identity
                return out
            out["video"] = load_clip(obj.generated, c["num_frames"], c["frame_stride"], c["start_frame"], res)
            out["ident"] = obj.generated.identity
        except ClipError as e:
            out["error"] = (e.reason, str(e))
            return out
        out["prompt"] = obj.prompt
        out["paired"] = None
        if obj.real is not None and (self.need_paired or self._image_from_real(obj)):
            try:
                out["paired"] = load_clip(
                    obj.real, c["num_frames"], c["real_frame_stride"], c["start_frame"], res
                )
                out["paired_ident"] = obj.real.identity
            except ClipError as e:
                out["paired_error"] = (f"paired_{e.reason}", str(e))
        if self.need_image:
            try:
                out["image"], out["image_source"], out["image_ident"] = self._image(obj, out)
            except ClipError as e:
                out["error"] = (e.reason, str(e))
        return out

    def _image_from_real(self, obj: EvalItem) -> bool:
        mode = self.cfg["condition_image"]
        return mode == "real_first_frame" or (mode == "auto" and obj.image is None)

    def _image(self, obj: EvalItem, out: dict):
        mode = self.cfg["condition_image"]
        res = self.cfg["resolution"]
        if mode in ("auto", "manifest", "images") and obj.image is not None:
            img = load_condition_image(obj.image, res)
            if res is None and img.shape[-2:] != out["video"].shape[-2:]:
                from i2vlab.data.transforms import resize_center_crop

                img = resize_center_crop(img[None], tuple(out["video"].shape[-2:]))[0]
            return img, "image_file", _ref(obj.image, obj.key).identity
        if mode in ("manifest", "images"):
            raise ClipError("no_condition_image", f"{obj.key}: condition_image={mode} but no image given")
        if mode in ("auto", "real_first_frame") and out.get("paired") is not None:
            return out["paired"][0], "real_first_frame", "real0:" + out["paired_ident"]
        if mode == "real_first_frame":
            raise ClipError("no_condition_image", f"{obj.key}: no paired real video for real_first_frame")
        return out["video"][0], "generated_first_frame", "gen0"


def _collate(batch):
    return batch


class Evaluator:
    """Build from the ``eval`` config dict (keys documented in docs/evaluation.md)."""

    def __init__(self, cfg: dict):
        self.cfg = c = deep_merge(DEFAULTS, dict(cfg))
        unknown = [m for m in c["metrics"] if m not in METRIC_GROUPS]
        if unknown:
            raise ValueError(f"eval.metrics: unknown {unknown}; known: {sorted(METRIC_GROUPS)}")
        if c["fvd"]["variant"] not in FVD_VARIANTS:
            raise ValueError(
                f"eval.fvd.variant must be one of {sorted(FVD_VARIANTS)}, got {c['fvd']['variant']!r}"
            )
        if c["num_frames"] < 2:
            raise ValueError("eval.num_frames must be >= 2")
        if c["output_dir"] is None:
            raise ValueError("eval.output_dir is not set (evaluate.py sets it to the Hydra run dir)")
        self.not_computed = dict(NOT_IMPLEMENTED)
        dcfg = c["extractors"]["dover"]
        if "dover" in c["metrics"] and dcfg.get("weights_path") in (None, "") and not dcfg.get("tiny"):
            self.not_computed["dover"] = DOVER_NOT_CONFIGURED  # a weights path or a tiny test net enables it
        self.metric_names = [
            m for m in c["metrics"] if METRIC_GROUPS[m] is not None and m not in self.not_computed
        ]
        self.groups = sorted({METRIC_GROUPS[m] for m in self.metric_names})
        self.device = self._device(c["device"])
        self.extractors = self._build_extractors()  # fails on missing weights before any video is read
        self.metrics = self._build_metrics()
        self.cache = FeatureCache(c["cache_dir"])
        self.on_batch_end = None  # test hook: called with the batch index after each batch

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _device(spec: str) -> torch.device:
        if spec == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(spec)

    def _build_extractors(self) -> dict:
        c = self.cfg
        ex, arw = {}, bool(c["allow_random_weights"])
        ecfg = c["extractors"]
        for g in self.groups:
            if g == "paired":
                if "lpips" in self.metric_names:
                    ex["lpips"] = build_extractor("lpips", allow_random_weights=arw, **ecfg["lpips"])
                continue
            if g == "flow":
                fc = dict(ecfg["flow"])
                name = fc.pop("name")
                if name == "opencv_flow":
                    ex["flow"] = build_extractor("opencv_flow", method=fc.get("method", "dis"))
                else:
                    fc.pop("method", None)
                    ex["flow"] = build_extractor(name, allow_random_weights=arw, **fc)
                continue
            ex[g] = build_extractor(g, allow_random_weights=arw, **ecfg[g])
        for e in ex.values():
            e.to(self.device).eval()
        return ex

    def _build_metrics(self) -> dict:
        c = self.cfg
        ddof = c["fvd"]["ddof"] if c["fvd"]["ddof"] is not None else FVD_VARIANTS[c["fvd"]["variant"]]["ddof"]
        self.fvd_ddof = int(ddof)
        k = c["kvd"]
        make = {
            "fvd": lambda: M.FrechetVideoDistance(ddof=self.fvd_ddof),
            "kvd": lambda: M.KernelVideoDistance(num_subsets=k["num_subsets"], subset_size=k["subset_size"],
                                                 seed=k["seed"]),
            "fid": lambda: M.FrechetInceptionDistanceFrames(ddof=int(c["fid"]["ddof"])),
            "pic": M.PerceptualInputConformity,
            "clip_temp": M.CLIPTemporalConsistency,
            "clip_first_frame": M.CLIPFirstFrameConsistency,
            "clip_image": M.CLIPImageFrameSimilarity,
            "clip_text": lambda: M.CLIPTextSimilarity(scale=c["clip_text"]["scale"]),
            "flow_score": lambda: M.FlowScore(evalcrafter_compat=c["flow_score"]["evalcrafter_compat"]),
            "warping_error": lambda: M.WarpingError(downsample=c["warping_error"]["downsample"],
                                                    evalcrafter_compat=c["warping_error"]["evalcrafter_compat"]),
            "lpips": M.VideoLPIPS,
            "psnr": M.VideoPSNR,
            "ssim": M.VideoSSIM,
            "dover": lambda: M.DOVERScores(score=c["dover"]["score"], rescale=c["dover"]["rescale"]),
        }  # fmt: skip
        return {m: make[m]() for m in self.metric_names}

    # ------------------------------------------------------------------ inputs
    def collect(self) -> tuple[list[EvalItem], list[VideoRef]]:
        """(generated items with their pairing, real reference set for FVD/FID/KVD)."""
        c = self.cfg
        real_refs, real_caps = collect_videos(c["real"])
        real_by_key = {r.key: r for r in real_refs}
        prompts = dict(real_caps)
        if c["prompts"]:
            prompts.update(_read_prompts(c["prompts"]))
        items: list[EvalItem] = []
        if c["manifest"]:
            for row in read_manifest(c["manifest"]):
                real = _ref(row["real"], row["key"]) if row.get("real") else real_by_key.get(row["key"])
                items.append(
                    EvalItem(
                        row["key"],
                        _ref(row["generated"], row["key"]),
                        real,
                        row.get("image"),
                        row.get("prompt") or prompts.get(row["key"]),
                    )
                )
            if not real_refs:
                real_refs = [it.real for it in items if it.real is not None]
        else:
            gen_refs, gen_caps = collect_videos(c["generated"])
            for k, v in gen_caps.items():
                prompts.setdefault(k, v)
            images = _index_images(c["images"]) if c["images"] else {}
            for r in gen_refs:
                items.append(
                    EvalItem(r.key, r, real_by_key.get(r.key), images.get(r.key), prompts.get(r.key))
                )
        if not items:
            raise ValueError(
                "no generated videos found: set eval.generated (folder/shards), eval.manifest, "
                "or eval.generate.checkpoint"
            )
        if c["max_videos"]:
            items = items[: int(c["max_videos"])]
        if c["max_real_videos"]:
            real_refs = real_refs[: int(c["max_real_videos"])]
        if any(m in SET_METRICS for m in self.metric_names) and not real_refs:
            raise ValueError(
                f"metrics {[m for m in self.metric_names if m in SET_METRICS]} need real videos: "
                "set eval.real (folder/shards) or a 'real' column in eval.manifest"
            )
        return items, real_refs

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        c = self.cfg
        out_dir = Path(c["output_dir"])
        out_dir.mkdir(parents=True, exist_ok=True)
        if c["generate"].get("checkpoint"):
            from .generate import generate_videos

            c["manifest"] = str(generate_videos(c["generate"], out_dir, c["resolution"]))
        if c["synthetic"]["enabled"] and not c["manifest"]:
            self._synthesize()
        items, real_refs = self.collect()
        rank, world = _rank_world()
        my_items = _chunk(items, rank, world)
        my_real = _chunk(real_refs, rank, world) if any(m in SET_METRICS for m in self.metric_names) else []
        need_paired = any(m in ("lpips", "psnr", "ssim") for m in self.metric_names)
        need_image = any(m in ("pic", "clip_image") for m in self.metric_names)
        jobs = [("fake", it) for it in my_items] + [("real", r) for r in my_real]
        ds = _ClipDataset(jobs, c, need_paired, need_image)
        loader = DataLoader(
            ds,
            batch_size=int(c["batch_size"]),
            num_workers=int(c["num_workers"]),
            collate_fn=_collate,
            shuffle=False,
        )
        self.rows: list[dict] = []
        self.skips: dict[str, Counter] = {"generated": Counter(), "real": Counter()}
        self.skip_examples: dict[str, list] = defaultdict(list)
        self.curves: dict[str, list] = {}
        self.image_sources: Counter = Counter()
        from tqdm.auto import tqdm

        for bi, batch in enumerate(tqdm(loader, desc=f"evaluate[{rank}]", disable=rank != 0, unit="batch")):
            self._process_batch(batch)
            if self.on_batch_end is not None:
                self.on_batch_end(bi)
        results = self._finalize(items, real_refs)
        if rank == 0:
            from .report import write_outputs

            write_outputs(results, self.rows, self.curves, out_dir, plots=bool(c["plots"]))
        return results

    def _synthesize(self):
        from .synthetic import make_synthetic_sets

        c = self.cfg
        s = c["synthetic"]
        root = Path(s["dir"] or Path(c["output_dir"]) / "synthetic")
        rank, _ = _rank_world()
        if rank == 0:
            gen, real = make_synthetic_sets(
                root, int(s["num_videos"]), int(s["num_frames"]), tuple(s["size"])
            )
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        gen, real = root / "generated", root / "real"
        if not c["generated"]:
            c["generated"] = str(gen)
        if not c["real"]:
            toy = Path("data/toy")
            c["real"] = (
                str(toy)
                if toy.is_dir() and any(toy.glob("*.tar")) and c["generated"] != str(gen)
                else str(real)
            )

    def _skip(self, role: str, key: str, reason: str, message: str):
        if self.cfg["strict"]:
            raise RuntimeError(f"eval.strict=true and a video was rejected ({reason}): {message}")
        self.skips[role][reason] += 1
        if len(self.skip_examples[reason]) < 5:
            self.skip_examples[reason].append(message)
        log.warning("skipped %s video %s: %s", role, key, message)

    # ------------------------------------------------------------------ features
    def _clip_key(self, ident: str, role: str, *extra) -> str:
        c = self.cfg
        stride = c["real_frame_stride"] if role == "real" else c["frame_stride"]
        return FeatureCache.make_key(
            ident, c["num_frames"], stride, c["start_frame"], c["resolution"], *extra
        )

    def _cached(self, group: str, samples: list[dict], keyfn, compute):
        """Per-sample cached values of ``group``; ``compute(list_of_samples) -> list of values``."""
        ns = f"{group}-{self._sig(group)}"
        vals, missing = [None] * len(samples), []
        for i, s in enumerate(samples):
            s.setdefault("_ckeys", {})[group] = keyfn(s)
            vals[i] = self.cache.get(ns, s["_ckeys"][group])
            if vals[i] is None:
                missing.append(i)
        if missing:
            new = compute([samples[i] for i in missing])
            for i, v in zip(missing, new):
                vals[i] = v
                self.cache.put(ns, samples[i]["_ckeys"][group], v)
        return vals

    def _sig(self, group: str) -> str:
        if group == "flow":
            c = self.cfg
            extra = (
                f"{c['warping_error']['downsample']}-{'fs' if 'flow_score' in self.metric_names else ''}"
                f"{'we' if 'warping_error' in self.metric_names else ''}"
                f"-{sorted(c['flow_score']['evalcrafter_compat'].items())}"
                f"-{sorted(c['warping_error']['evalcrafter_compat'].items())}"
            )
            return f"{self.extractors['flow'].signature()}-{extra}"
        if group == "paired":
            return self.extractors["lpips"].signature() if "lpips" in self.extractors else "nolpips"
        return self.extractors[group].signature()

    def _batched(self, fn, x: torch.Tensor) -> torch.Tensor:
        bs = max(1, int(self.cfg["batch_size"]))
        return torch.cat([fn(x[i : i + bs].to(self.device)).cpu() for i in range(0, x.shape[0], bs)])

    def _i3d(self, samples):
        vids = torch.stack([s["video"] for s in samples]) if _same_shape(samples) else None
        if vids is None:
            return [self.extractors["i3d"](s["video"][None].to(self.device)).cpu()[0] for s in samples]
        return list(self._batched(self.extractors["i3d"], vids))

    def _inception(self, samples):
        ex = self.extractors["inception"]
        bs = max(1, int(self.cfg["batch_size"])) * self.cfg["num_frames"]
        frames = [s["video"] for s in samples]
        if _same_shape(samples):
            allf = torch.cat(frames)
            feats = torch.cat([ex(allf[i : i + bs].to(self.device)).cpu() for i in range(0, len(allf), bs)])
            return list(feats.split([f.shape[0] for f in frames]))
        return [ex(f.to(self.device)).cpu() for f in frames]

    def _dreamsim(self, samples):
        ex = self.extractors["dreamsim"]
        out = []
        for s in samples:
            e = ex.embed(torch.cat([s["image"][None], s["video"]]).to(self.device)).cpu()
            out.append({"pic": Fm.pic_per_frame(e[0], e[1:]).float()})
        return out

    def _clip(self, samples):
        ex = self.extractors["clip"]
        out = []
        texts = [s.get("prompt") for s in samples]
        temb = (
            ex.embed_text([t for t in texts if t]).cpu()
            if any(texts) and "clip_text" in self.metric_names
            else None
        )
        ti = 0
        for s in samples:
            x = s["video"] if s.get("image") is None else torch.cat([s["image"][None], s["video"]])
            e = ex.embed_images(x.to(self.device)).cpu()
            img, fr = (e[0], e[1:]) if s.get("image") is not None else (None, e)
            d = {"adjacent": Fm.clip_adjacent(fr).float(), "first": Fm.clip_first_frame(fr).float()}
            if img is not None:
                d["image"] = Fm.clip_image_frames(img, fr).float()
            if s.get("prompt") and temb is not None:
                # EvalCrafter's CLIP-SIM resizes its frames differently (evalcrafter_raw): own embeddings
                ft = (
                    ex.embed_images(s["video"].to(self.device), for_text=True).cpu()
                    if ex.text_frames_differ
                    else fr
                )
                d["text"] = Fm.cosine(temb[ti][None], ft).float()
                ti += 1
            out.append(d)
        return out

    def _flow(self, samples):
        fl = self.extractors["flow"]
        ds = float(self.cfg["warping_error"]["downsample"])
        out = []
        for s in samples:
            v = s["video"].to(self.device)
            d = {}
            if "flow_score" in self.metric_names:
                d["flow"] = Fm.flow_magnitudes(v, fl, **self.metrics["flow_score"].compat).float()
            if "warping_error" in self.metric_names:
                d["warp"] = Fm.warping_errors(
                    v, fl, downsample=ds, **self.metrics["warping_error"].compat
                ).float()
            out.append(d)
        return out

    def _dover(self, samples):
        ex = self.extractors["dover"]
        return [ex(s["video"][None].to(self.device)).cpu()[0].double() for s in samples]

    def _paired(self, samples):
        out = []
        for s in samples:
            p, t = s["video"], s["paired"]
            d = {"psnr": Fm.psnr_per_frame(p, t).float(), "ssim": Fm.ssim_per_frame(p, t).float()}
            if "lpips" in self.extractors:
                d["lpips"] = self._batched_pair(self.extractors["lpips"], p, t)
            out.append(d)
        return out

    def _batched_pair(self, fn, a, b):
        bs = max(1, int(self.cfg["batch_size"]))
        return torch.cat(
            [
                fn(a[i : i + bs].to(self.device), b[i : i + bs].to(self.device)).cpu()
                for i in range(0, a.shape[0], bs)
            ]
        ).float()

    # ------------------------------------------------------------------ batch
    def _process_batch(self, batch: list[dict]):
        fakes, reals = [], []
        for s in batch:
            role = "generated" if s["role"] == "fake" else "real"
            if s["error"] is not None:
                self._skip(role, s["key"], *s["error"])
                self.rows.append({"key": s["key"], "role": role, "status": f"skipped:{s['error'][0]}"})
                continue
            (fakes if s["role"] == "fake" else reals).append(s)
        names = self.metric_names
        if reals:
            if "i3d" in self.groups:
                feats = self._cached("i3d", reals, lambda s: self._clip_key(s["ident"], "real"), self._i3d)
                f = torch.stack(feats)
                for m in ("fvd", "kvd"):
                    if m in names:
                        self.metrics[m].update(real=True, features=f)
            if "inception" in self.groups:
                feats = self._cached(
                    "inception", reals, lambda s: self._clip_key(s["ident"], "real"), self._inception
                )
                self.metrics["fid"].update(real=True, features=torch.cat(feats))
            for s in reals:
                self.rows.append({"key": s["key"], "role": "real", "status": "ok"})
        if not fakes:
            return
        rows = [{"key": s["key"], "role": "generated", "status": "ok"} for s in fakes]
        per: dict[str, list] = defaultdict(lambda: [None] * len(fakes))  # metric -> per-frame tensors

        def ck(s, *extra):
            return self._clip_key(s["ident"], "fake", *extra)

        if "i3d" in self.groups:
            f = torch.stack(self._cached("i3d", fakes, ck, self._i3d))
            for m in ("fvd", "kvd"):
                if m in names:
                    self.metrics[m].update(real=False, features=f)
        if "inception" in self.groups:
            self.metrics["fid"].update(
                real=False, features=torch.cat(self._cached("inception", fakes, ck, self._inception))
            )
        for s in fakes:
            if "image_source" in s:
                self.image_sources[s["image_source"]] += 1
        if "dreamsim" in self.groups:
            vals = self._cached("dreamsim", fakes, lambda s: ck(s, s["image_ident"]), self._dreamsim)
            per["pic"] = [v["pic"] for v in vals]
        if "clip" in self.groups:
            vals = self._cached(
                "clip", fakes, lambda s: ck(s, s.get("image_ident"), s.get("prompt")), self._clip
            )
            for m, k in (
                ("clip_temp", "adjacent"),
                ("clip_first_frame", "first"),
                ("clip_image", "image"),
                ("clip_text", "text"),
            ):
                if m in names:
                    per[m] = [v.get(k) for v in vals]
                    for i, v in enumerate(vals):
                        if v.get(k) is None:
                            reason = "no_prompt" if m == "clip_text" else "no_condition_image"
                            rows[i][f"{m}_note"] = reason
        if "flow" in self.groups:
            vals = self._cached("flow", fakes, ck, self._flow)
            for m, k in (("flow_score", "flow"), ("warping_error", "warp")):
                if m in names:
                    per[m] = [v[k] for v in vals]
        if "dover" in self.groups:
            raw = torch.stack(self._cached("dover", fakes, ck, self._dover))  # n 2: aesthetic, technical
            self.metrics["dover"].update(values=raw)
            for i, d in enumerate(self.metrics["dover"].per_video_scores(raw)):
                rows[i].update(d)
        if "paired" in self.groups:
            ok = []
            for i, s in enumerate(fakes):
                if s.get("paired") is None:
                    reason, msg = s.get("paired_error") or (
                        "no_ground_truth",
                        f"{s['key']}: no paired real video",
                    )
                    self._skip("generated", s["key"], reason, msg + " (LPIPS/PSNR/SSIM not computed)")
                    rows[i]["paired_note"] = reason
                elif s["paired"].shape != s["video"].shape:
                    msg = (
                        f"{s['key']}: generated clip {tuple(s['video'].shape)} vs ground truth "
                        f"{tuple(s['paired'].shape)}; set eval.resolution to compare at one size"
                    )
                    self._skip("generated", s["key"], "paired_shape_mismatch", msg)
                    rows[i]["paired_note"] = "paired_shape_mismatch"
                else:
                    ok.append(i)
            if ok:
                sub = [fakes[i] for i in ok]
                vals = self._cached("paired", sub, lambda s: ck(s, s["paired_ident"]), self._paired)
                for m in ("lpips", "psnr", "ssim"):
                    if m in names:
                        for i, v in zip(ok, vals):
                            per[m][i] = v[m]
        for m, lst in per.items():
            vals = [(i, v) for i, v in enumerate(lst) if v is not None]
            if not vals:
                continue
            means = torch.stack([v.double().mean() for _, v in vals])
            self.metrics[m].update(values=means)
            for (i, v), mu in zip(vals, means):
                rows[i][m] = float(mu)
                acc = self.curves.setdefault(m, [torch.zeros(len(v), dtype=torch.float64), 0])
                if len(acc[0]) == len(v):
                    acc[0] += v.double()
                    acc[1] += 1
        self.rows.extend(rows)

    # ------------------------------------------------------------------ results
    def _finalize(self, items, real_refs) -> dict:
        c = self.cfg
        gathered = _gather_objects(
            {
                "rows": self.rows,
                "skips": {k: dict(v) for k, v in self.skips.items()},
                "examples": dict(self.skip_examples),
                "curves": self.curves,
                "image_sources": dict(self.image_sources),
                "cache": (self.cache.hits, self.cache.misses),
            }
        )
        rows, skips, examples, curves, srcs = (
            [],
            {"generated": Counter(), "real": Counter()},
            {},
            {},
            Counter(),
        )
        hits = misses = 0
        for g in gathered:
            rows += g["rows"]
            for role in skips:
                skips[role].update(g["skips"][role])
            for k, v in g["examples"].items():
                examples.setdefault(k, []).extend(v)
            for m, (s, n) in g["curves"].items():
                if m in curves and len(curves[m][0]) == len(s):
                    curves[m][0] = curves[m][0] + s
                    curves[m][1] += n
                elif m not in curves:
                    curves[m] = [s.clone(), n]
            srcs.update(g["image_sources"])
            hits, misses = hits + g["cache"][0], misses + g["cache"][1]
        self.rows, self.curves = rows, curves
        n_gen = sum(1 for r in rows if r["role"] == "generated" and r["status"] == "ok")
        n_real = sum(1 for r in rows if r["role"] == "real" and r["status"] == "ok")
        values: dict = {}
        for m, metric in self.metrics.items():
            try:
                v = metric.compute()
            except ValueError as e:
                values[m] = {"value": None, "error": str(e)}
                continue
            if m == "kvd":
                scale = float(c["kvd"]["scale"])
                values[m] = {
                    "value": v["single"] * scale,
                    "single": v["single"] * scale,
                    "subset_mean": v["subset_mean"] * scale,
                    "subset_std": v["subset_std"] * scale,
                    "subset_size": v["subset_size"],
                    "num_subsets": metric.num_subsets,
                    "scale": scale,
                    "n_real": int(torch.cat(metric.real_features).shape[0])
                    if isinstance(metric.real_features, list)
                    else int(metric.real_features.shape[0]),  # noqa: E501
                    "n_fake": int(torch.cat(metric.fake_features).shape[0])
                    if isinstance(metric.fake_features, list)
                    else int(metric.fake_features.shape[0]),
                }  # noqa: E501
            elif m in ("fvd", "fid"):
                values[m] = {
                    "value": float(v),
                    "n_real": int(metric.real_n),
                    "n_fake": int(metric.fake_n),
                    "covariance": f"1/(N-{metric.ddof})" if metric.ddof else "1/N",
                }
                if m == "fid":
                    values[m]["unit"] = "frames (videos x frames, one Gaussian)"
            elif m == "dover":
                values[m] = {**v, "n": int(metric.count)}
            else:
                values[m] = {"value": float(v), "n": int(metric.count)}
        for m in c["metrics"]:
            if m in self.not_computed:
                values[m] = {"value": None, "error": self.not_computed[m]}
        for m in self.metrics:
            if m == "fvd":
                values[m].update({"variant": c["fvd"]["variant"], "extractor": "i3d"})
        reasons = []
        for name, e in self.extractors.items():
            if not e.comparable:
                reasons.append(f"{name}: random-init weights (allow_random_weights=true)")
        if (
            self.extractors.get("clip") is not None
            and c["extractors"]["clip"]["convention"] != "evalcrafter_raw"
            and (c.get("protocol") or {}).get("clip_convention") == "evalcrafter_raw"
        ):
            reasons.append("clip: preprocessing differs from the paper's EvalCrafter raw-pixel convention")
        want_n = (c.get("protocol") or {}).get("num_samples")
        if want_n and n_gen != int(want_n):
            reasons.append(f"N={n_gen} generated videos scored; the protocol uses {want_n}")
        for m in c["metrics"]:
            if m in self.not_computed:
                reasons.append(self.not_computed[m])
        from .report import git_revision

        return {
            "name": c["name"],
            "protocol": c.get("protocol") or {},
            "comparable": not any("random-init" in r for r in reasons),
            "notes": reasons,
            "metrics": values,
            "n": {
                "generated_listed": len(items),
                "real_listed": len(real_refs),
                "generated_scored": n_gen,
                "real_scored": n_real,
                "skipped": {k: dict(v) for k, v in skips.items()},
                "skip_examples": examples,
            },
            "clip": {
                "num_frames": c["num_frames"],
                "frame_stride": c["frame_stride"],
                "real_frame_stride": c["real_frame_stride"],
                "start_frame": c["start_frame"],
                "resolution": c["resolution"],
                "resize": "short side bilinear (antialias) + centre crop",
                "value_range": "[-1,1] from uint8 decode",
            },
            "condition_image_sources": dict(srcs),
            "extractors": {k: e.describe() for k, e in self.extractors.items()},
            "cache": {"dir": c["cache_dir"], "hits": hits, "misses": misses},
            "world_size": _rank_world()[1],
            "config": c,
            "git_revision": git_revision(),
        }


def _same_shape(samples) -> bool:
    return len({tuple(s["video"].shape) for s in samples}) == 1


def _chunk(seq: list, rank: int, world: int) -> list:
    n = len(seq)
    per = math.ceil(n / world) if world > 1 else n
    return seq[rank * per : (rank + 1) * per]


def _read_prompts(path: str) -> dict[str, str]:
    import csv
    import json

    p = Path(path)
    if p.suffix.lower() == ".json":
        return {str(k): str(v) for k, v in json.loads(p.read_text()).items()}
    if p.suffix.lower() == ".jsonl":
        return {r["key"]: r["prompt"] for r in map(json.loads, filter(str.strip, p.read_text().splitlines()))}
    if p.suffix.lower() == ".csv":
        with open(p, newline="") as f:
            return {r["key"]: r["prompt"] for r in csv.DictReader(f)}
    out = {}
    for line in p.read_text().splitlines():  # "key<TAB>prompt"
        if "\t" in line:
            k, v = line.split("\t", 1)
            out[k.strip()] = v.strip()
    return out


def _index_images(folder: str) -> dict[str, str]:
    from .inputs import IMAGE_EXTENSIONS

    p = Path(folder)
    if not p.is_dir():
        raise FileNotFoundError(f"eval.images={folder!r} is not a folder")
    return {q.stem: str(q) for q in sorted(p.iterdir()) if q.suffix.lower() in IMAGE_EXTENSIONS}
