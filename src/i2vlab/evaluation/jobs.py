"""One job per video to score: its cache keys are known before anything is decoded, the decoding
workers look the cache up first and decode only what is missing, and :class:`Extraction` batches the
network calls of the misses across videos and hands the jobs back **in job order**, so metric states
are updated in the same order (and so to the same bits) however the cache was filled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from .cache import FeatureCache, note, tensor_text, text_tensor
from .features import Feature, FeatureInfo, FixedBatchRunner
from .inputs import ClipError, EvalItem, VideoRef, load_clip, load_condition_image
from .inputs import ref_from_path as _ref


@dataclass
class Job:
    index: int
    role: str  # "generated" | "real"
    key: str
    ref: VideoRef
    stride: int
    item: EvalItem | None = None
    image_source: str | None = None  # planned: image_file | real_first_frame | generated_first_frame
    image_ident: str | None = None
    error: tuple[str, str] | None = None  # known before decoding
    clip_key: str = ""
    keys: dict[str, str] = field(default_factory=dict)  # feature -> cache key (known before decoding)
    notes: dict[str, tuple[str, str]] = field(default_factory=dict)  # feature -> (reason, message)


def feature_key(clip_key: str, info: FeatureInfo, image_ident, prompt, paired_ident) -> str:
    extra = {"image": image_ident, "prompt": prompt, "paired": paired_ident}
    return FeatureCache.make_key(clip_key, *(f"{k}={extra[k]}" for k in sorted(info.needs)))


def _plan_image(item: EvalItem, mode: str) -> tuple[str | None, str | None, tuple | None]:
    """(source, identity, error) of the condition image, decided before decoding."""
    if mode in ("auto", "manifest", "images") and item.image is not None:
        return "image_file", _ref(item.image, item.key).identity, None
    if mode in ("manifest", "images"):
        return None, None, ("no_condition_image", f"{item.key}: condition_image={mode} but no image given")
    if mode in ("auto", "real_first_frame") and item.real is not None:
        return "real_first_frame", "real0:" + item.real.identity, None
    if mode == "real_first_frame":
        return None, None, ("no_condition_image", f"{item.key}: no paired real video for real_first_frame")
    return "generated_first_frame", "gen0", None


def plan_jobs(
    items: list[EvalItem], reals: list[VideoRef], infos: dict[str, FeatureInfo], cfg: dict
) -> list[Job]:
    res, start = cfg["resolution"], cfg["start_frame"]
    jobs: list[Job] = []
    for role, objs, stride in (
        ("generated", items, cfg["frame_stride"]),
        ("real", reals, cfg["real_frame_stride"]),
    ):
        feats = {n: i for n, i in infos.items() if role in i.roles}
        if not feats:
            continue
        for obj in objs:
            ref = obj.generated if role == "generated" else obj
            job = Job(len(jobs), role, obj.key, ref, stride, obj if role == "generated" else None)
            job.clip_key = FeatureCache.make_key(ref.identity, cfg["num_frames"], stride, start, res)
            needs = set().union(*(i.needs for i in feats.values()))
            if "image" in needs:
                job.image_source, job.image_ident, job.error = _plan_image(obj, cfg["condition_image"])
            real = obj.real if role == "generated" else None
            for n, info in feats.items():
                if "paired" in info.needs and real is None:
                    job.notes[n] = ("no_ground_truth", f"{obj.key}: no paired real video")
                    continue
                prompt = obj.prompt if role == "generated" else None
                job.keys[n] = feature_key(job.clip_key, info, job.image_ident, prompt, real and real.identity)
            jobs.append(job)
    return jobs


class JobDataset(Dataset):
    """``jobs[i]`` -> a sample dict: cached features, the names still ``missing`` and, only if some are,
    the decoded clip (``f c h w`` in [-1, 1]) and the inputs they need. Errors are values, not raised."""

    def __init__(self, jobs: list[Job], infos: dict[str, FeatureInfo], cache: FeatureCache, cfg: dict):
        self.jobs, self.infos, self.cache, self.cfg = jobs, infos, cache, cfg

    def __len__(self):
        return len(self.jobs)

    def _clip(self, ref: VideoRef, stride: int) -> torch.Tensor:
        c = self.cfg
        return load_clip(ref, c["num_frames"], stride, c["start_frame"], c["resolution"])

    def __getitem__(self, i: int) -> dict:
        job = self.jobs[i]
        s = {"index": job.index, "role": job.role, "key": job.key, "error": job.error, "features": {},
             "missing": [], "events": [], "image_source": job.image_source, "keys": job.keys,
             "prompt": job.item.prompt if job.item else None}  # fmt: skip
        if s["error"] is not None:
            return s
        for name, key in job.keys.items():
            value, status = self.cache.get(self.infos[name].namespace, key)
            s["events"].append((name, key, status))
            if value is None:
                s["missing"].append(name)
            else:
                s["features"][name] = value
                if "_image_source" in value:  # what the cached values were computed from
                    s["image_source"] = tensor_text(value["_image_source"])
        s["features"].update({n: note(*r) for n, r in job.notes.items()})
        if not s["missing"]:
            return s
        try:
            s["video"] = self._clip(job.ref, job.stride)
        except ClipError as e:
            s["error"] = (e.reason, str(e))
            return s
        needs = set().union(*(self.infos[n].needs for n in s["missing"]))
        real = job.item.real if job.item else None
        if real is not None and (
            "paired" in needs or ("image" in needs and job.image_source == "real_first_frame")
        ):
            try:
                s["paired"] = self._clip(real, self.cfg["real_frame_stride"])
            except ClipError as e:
                s["paired_error"] = (f"paired_{e.reason}", str(e))
        if "image" in needs:
            try:
                self._image(job, s)
            except ClipError as e:
                s["error"] = (e.reason, str(e))
        return s

    def _image(self, job: Job, s: dict) -> None:
        size = tuple(s["video"].shape[-2:])
        if job.image_source == "image_file":
            img = load_condition_image(job.item.image, self.cfg["resolution"])
        elif job.image_source == "real_first_frame" and s.get("paired") is not None:
            img = s["paired"][0]
        elif job.image_source == "real_first_frame" and self.cfg["condition_image"] == "real_first_frame":
            raise ClipError("no_condition_image", f"{job.key}: the paired real video is unreadable")
        else:  # auto, and the paired real video is unreadable: the generated first frame (kept in the entry)
            img, s["image_source"] = s["video"][0], "generated_first_frame"
        if tuple(img.shape[-2:]) != size:  # native resolution: the image at the clip's size
            from i2vlab.data.transforms import resize_center_crop

            img = resize_center_crop(img[None], size)[0]
        s["image"] = img


class Extraction:
    """Computes the missing features of submitted samples with fixed-batch network calls across samples,
    writes them to the cache, and releases samples strictly in job order (:meth:`ready`)."""

    def __init__(self, features: dict[str, Feature], cache: FeatureCache, infos: dict[str, FeatureInfo]):
        self.features, self.cache, self.infos = features, cache, infos
        self.runners = {
            (n, call): FixedBatchRunner(fn, batch, pad)
            for n, f in features.items()
            for call, (fn, batch, pad) in f.calls().items()
        }
        self.pending: dict[int, dict] = {}
        self.outs: dict[tuple[int, str], dict] = {}
        self.next = 0

    def submit(self, s: dict) -> None:
        self.pending[s["index"]] = s
        s["_waiting"] = set()
        if s["error"] is not None:
            return
        for n in s["missing"]:
            rows = self.features[n].rows(s)
            self.outs[(s["index"], n)] = {"_calls": set(rows)}
            if not rows:
                self._finish(s, n)
                continue
            s["_waiting"].add(n)
            for call, tensors in rows.items():
                self.runners[(n, call)].add(s["index"], tensors)

    def _finish(self, s: dict, n: str) -> None:
        out = self.outs.pop((s["index"], n))
        out.pop("_calls")
        with torch.inference_mode():
            value = self.features[n].finish(s, out)
        if "image" in self.infos[n].needs and s.get("image_source"):
            value["_image_source"] = text_tensor(s["image_source"])
        s["features"][n] = value
        s["_waiting"].discard(n)
        self.cache.put(self.infos[n].namespace, s["keys"][n], value)

    def step(self, final: bool = False) -> None:
        with torch.inference_mode():
            for (n, call), r in self.runners.items():
                r.run(final)
                for idx, out in r.pop_done():
                    entry = self.outs[(idx, n)]
                    entry[call] = out
                    entry["_calls"].discard(call)
                    if not entry["_calls"]:
                        self._finish(self.pending[idx], n)

    def ready(self) -> list[dict]:
        """Samples whose features are all there, in job order (stops at the first one still waiting)."""
        out = []
        while self.next in self.pending and not self.pending[self.next]["_waiting"]:
            s = self.pending.pop(self.next)
            for k in ("video", "paired", "image", "_waiting"):
                s.pop(k, None)
            out.append(s)
            self.next += 1
        return out
