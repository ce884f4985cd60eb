"""What the evaluator extracts from each video: one :class:`Feature` per extractor (its network calls,
what it keeps per video, its cache signature), and the runner that batches those calls across videos.

**Batch-independent features.** A network's float32 output for one video changes (at ~1e-6 for I3D)
with the batch it was computed in when the batch *size* changes, because other kernels are picked; with
one batch shape, the other rows do not change it (checked on CPU for I3D, Inception and CLIP: identical
bits). So every network call gets exactly ``eval.extractors.<name>.forward_batch`` items of one shape
(the last call of a run is zero-padded; items of another shape go to their own calls). A video's features
are then the same bits whichever videos shared its calls, whatever ``eval.batch_size`` and whatever part
of the set a cache already held. ``forward_batch`` and the device type are part of the cache key.
Extractors that process items one by one (``batch_invariant``, e.g. OpenCV flow) are not padded.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass

import torch

from i2vlab.metrics import functional as Fm
from i2vlab.metrics.extractors import build_extractor

from .cache import note, read_note


class FixedBatchRunner:
    """Calls ``fn`` on exactly ``batch`` rows at a time (per row shape) gathered from many owners;
    an owner's output rows are handed back (in order) once all of them are computed."""

    def __init__(self, fn, batch: int, pad: bool = True):
        self.fn, self.batch, self.pad = fn, int(batch), pad
        self.queues: dict[tuple, list] = defaultdict(list)  # shape -> [[owner, tensors, next row]]
        self.rows: dict[tuple, int] = defaultdict(int)
        self.parts: dict = {}
        self.left: dict = {}
        self.done: list = []

    def add(self, owner, tensors: tuple[torch.Tensor, ...]) -> None:
        n = tensors[0].shape[0]
        shape = tuple((tuple(t.shape[1:]), t.dtype) for t in tensors)
        self.queues[shape].append([owner, tensors, 0])
        self.rows[shape] += n
        self.parts[owner], self.left[owner] = [], n

    def run(self, final: bool = False) -> None:
        for shape, q in self.queues.items():
            while self.rows[shape] >= self.batch or (final and self.rows[shape] > 0):
                self._call(shape, q)

    def _call(self, shape, q) -> None:
        taken, need = [], self.batch
        while need and q:
            entry = q[0]
            owner, tensors, start = entry
            k = min(need, tensors[0].shape[0] - start)
            taken.append((owner, [t[start : start + k] for t in tensors], k))
            entry[2] += k
            need -= k
            if entry[2] == tensors[0].shape[0]:
                q.pop(0)
        real = self.batch - need
        self.rows[shape] -= real
        inputs = [torch.cat([t[i] for _, t, _ in taken]) for i in range(len(taken[0][1]))]
        if need and self.pad:
            inputs = [torch.cat([x, x.new_zeros((need, *x.shape[1:]))]) for x in inputs]
        out = self.fn(*inputs)[:real]
        o = 0
        for owner, _, k in taken:
            self.parts[owner].append(out[o : o + k])
            o += k
            self.left[owner] -= k
            if self.left[owner] == 0:
                self.done.append((owner, torch.cat(self.parts.pop(owner))))
                del self.left[owner]

    def pop_done(self) -> list:
        out, self.done = self.done, []
        return out


@dataclass(frozen=True)
class FeatureInfo:
    """The picklable part of a feature (what the decoding workers need to look the cache up)."""

    name: str
    namespace: str
    needs: frozenset  # inputs besides the video: "image", "prompt", "paired"
    roles: tuple


class Feature:
    """Per-video values from one extractor, for the metrics that share it (see :mod:`.registry`)."""

    name = ""
    extractor_key: str | None = None  # eval.extractors.<key>
    roles: tuple = ("generated",)
    key_inputs: tuple = ()  # inputs besides the video that change the value (in the cache key)

    def __init__(self, cfg: dict, metrics: set[str], device: torch.device):
        self.cfg, self.metrics, self.device = cfg, metrics, device
        self.options = dict(cfg["extractors"][self.extractor_key]) if self.extractor_key else {}
        self.forward_batch = int(self.options.pop("forward_batch", 1))
        self.extractor = self.build()
        if self.extractor is not None:
            self.extractor.to(device).eval()

    def build(self):
        return build_extractor(
            self.extractor_key, allow_random_weights=self.cfg["allow_random_weights"], **self.options
        )

    def settings(self) -> dict:
        """What else changes the values (metric options the feature applies)."""
        return {}

    def signature(self) -> str:
        blob = repr(sorted({
            "feature": self.name, "extractor": self.extractor.signature() if self.extractor is not None else None,
            "settings": repr(sorted(self.settings().items())), "forward_batch": self.forward_batch,
            "device": self.device.type, "format": 2,
        }.items()))  # fmt: skip
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def info(self) -> FeatureInfo:
        return FeatureInfo(
            self.name, f"{self.name}-{self.signature()}", frozenset(self.key_inputs), self.roles
        )

    def describe(self) -> dict:
        return {} if self.extractor is None else {self.extractor_key: self.extractor.describe()}

    def _on_device(self, fn):
        def call(*xs):
            return fn(*(x.to(self.device) for x in xs)).cpu()

        return call

    def calls(self) -> dict:
        """Network calls by name -> (fn on batched rows, forward batch, pad)."""
        pad = not getattr(self.extractor, "batch_invariant", False)
        return {k: (self._on_device(fn), self.forward_batch, pad) for k, fn in self.networks().items()}

    def networks(self) -> dict:
        return {}

    def rows(self, s: dict) -> dict:
        """Decoded sample -> network inputs by call name: tuples of tensors with equal first dims."""
        return {}

    def finish(self, s: dict, out: dict) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class _SetFeature(Feature):
    """A feature both sets get (FVD/KVD/FID): one network output per video (``frames=False``) or per frame."""

    roles = ("generated", "real")
    output, frames = "", False

    def networks(self):
        return {self.output: self.extractor}

    def rows(self, s):
        return {self.output: (s["video"] if self.frames else s["video"][None],)}

    def finish(self, s, out):
        return {self.output: out[self.output] if self.frames else out[self.output][0]}


class I3DFeature(_SetFeature):
    name = extractor_key = "i3d"
    output = "logits"  # 400-d, one per video


class InceptionFeature(_SetFeature):
    name = extractor_key = "inception"
    output, frames = "pool3", True  # 2048-d, one per frame


class DreamSimFeature(Feature):
    name = extractor_key = "dreamsim"
    key_inputs = ("image",)

    def networks(self):
        return {"embed": self.extractor.embed}

    def rows(self, s):
        return {"embed": (torch.cat([s["image"][None], s["video"]]),)}

    def finish(self, s, out):
        return {"image": out["embed"][0], "frames": out["embed"][1:]}


class CLIPFeature(Feature):
    name = extractor_key = "clip"

    def __init__(self, cfg, metrics, device):
        self.with_image, self.with_text = "clip_image" in metrics, "clip_text" in metrics
        self.key_inputs = ("image",) * self.with_image + ("prompt",) * self.with_text
        super().__init__(cfg, metrics, device)

    def settings(self):
        return {"image": self.with_image, "text": self.with_text}

    def networks(self):
        ex = self.extractor
        return {"images": ex.embed_images, "text_frames": lambda x: ex.embed_images(x, for_text=True)}

    def rows(self, s):
        v = s["video"]
        out = {"images": (torch.cat([s["image"][None], v]) if self.with_image else v,)}
        if self.with_text and s.get("prompt") and self.extractor.text_frames_differ:
            out["text_frames"] = (v,)
        return out

    def finish(self, s, out):
        emb = out["images"]
        res = {"frames": emb[-s["video"].shape[0] :]}
        if self.with_image:
            res["image"] = emb[0]
        if self.with_text and s.get("prompt"):
            res["text"] = self.extractor.embed_text([s["prompt"]]).cpu()[0]  # one prompt per call
            if "text_frames" in out:  # evalcrafter_raw: CLIP-SIM frames resized otherwise
                res["text_frames"] = out["text_frames"]
        return res


class FlowFeature(Feature):
    name, extractor_key = "flow", "flow"

    def __init__(self, cfg, metrics, device):
        self.fs, self.we = "flow_score" in metrics, "warping_error" in metrics
        self.fs_compat = dict(cfg["flow_score"]["evalcrafter_compat"])
        self.we_compat = dict(cfg["warping_error"]["evalcrafter_compat"])
        self.downsample = float(cfg["warping_error"]["downsample"])
        super().__init__(cfg, metrics, device)

    def build(self):
        o = dict(self.options)
        name = o.pop("name")
        if name == "opencv_flow":
            return build_extractor("opencv_flow", method=o["method"])
        o.pop("method", None)
        return build_extractor(name, allow_random_weights=self.cfg["allow_random_weights"], **o)

    def settings(self):
        return {"flow_score": self.fs and self.fs_compat, "warping_error": self.we and self.we_compat,
                "downsample": self.downsample}  # fmt: skip

    def networks(self):
        return {k: self.extractor for k, on in (("fs", self.fs), ("fw", self.we), ("bw", self.we)) if on}

    def _warp_frames(self, v):
        return Fm.warping_frames(v, self.downsample, self.we_compat["pad_no_crop"])

    def rows(self, s):
        out, v = {}, s["video"]
        if self.fs:
            out["fs"] = Fm.flow_score_pairs(v, self.fs_compat["pad_no_crop"])
        if self.we:
            x = self._warp_frames(v)
            n1, n2 = (Fm.warping_net_input(y, self.we_compat["double_rescale"]) for y in (x[:-1], x[1:]))
            out["fw"], out["bw"] = (n1, n2), (n2, n1)
        return out

    def finish(self, s, out):
        res = {}
        if self.fs:
            res["flow"] = Fm.mean_flow_magnitude(out["fs"])
        if self.we:
            x = self._warp_frames(s["video"])
            res["warp"] = Fm.warping_errors_from_flows(x[:-1], x[1:], out["fw"], out["bw"])
        return res


class DOVERFeature(Feature):
    name = extractor_key = "dover"

    def networks(self):
        return {"aesthetic": self.extractor.aesthetic_maps, "technical": self.extractor.technical_maps}

    def rows(self, s):
        a, t = self.extractor.views(s["video"].to(self.device))
        return {"aesthetic": (a.cpu(),), "technical": (t.cpu(),)}

    def finish(self, s, out):
        return {
            "raw": self.extractor.raw_scores(out["aesthetic"], out["technical"])
        }  # [aesthetic, technical]


class PairedFeature(Feature):
    """Per-frame PSNR / SSIM (and LPIPS, a network) against the ground-truth clip with the same key."""

    name, key_inputs = "paired", ("paired",)

    def __init__(self, cfg, metrics, device):
        self.extractor_key = "lpips" if "lpips" in metrics else None
        super().__init__(cfg, metrics, device)

    def build(self):
        return super().build() if self.extractor_key else None

    def networks(self):
        return {"lpips": self.extractor} if self.extractor is not None else {}

    def _problem(self, s) -> tuple[str, str] | None:
        if s.get("paired") is None:
            return s.get("paired_error") or ("no_ground_truth", f"{s['key']}: no paired real video")
        if s["paired"].shape != s["video"].shape:
            return "paired_shape_mismatch", (
                f"{s['key']}: generated clip {tuple(s['video'].shape)} vs ground truth "
                f"{tuple(s['paired'].shape)}; set eval.resolution to compare at one size"
            )
        return None

    def rows(self, s):
        if self._problem(s) or self.extractor is None:
            return {}
        return {"lpips": (s["video"], s["paired"])}

    def finish(self, s, out):
        problem = self._problem(s)
        if problem:
            return note(*problem)
        p, t = s["video"], s["paired"]
        res = {"psnr": Fm.psnr_per_frame(p, t), "ssim": Fm.ssim_per_frame(p, t)}
        if "lpips" in out:
            res["lpips"] = out["lpips"].double()
        return res


FEATURES: dict[str, type[Feature]] = {
    c.name: c
    for c in (
        I3DFeature,
        InceptionFeature,
        DreamSimFeature,
        CLIPFeature,
        FlowFeature,
        DOVERFeature,
        PairedFeature,
    )
}

__all__ = ["FEATURES", "Feature", "FeatureInfo", "FixedBatchRunner", "note", "read_note"]
