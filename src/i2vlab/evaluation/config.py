"""The evaluator's configuration: one structured config, the only source of its defaults.

``conf/eval/base.yaml`` composes :class:`EvalConfig` as its schema (stored in Hydra's ConfigStore as
``eval/schema`` when this module is imported), and :func:`resolve_config` merges a partial dict onto the
same dataclass for code that builds an :class:`~i2vlab.evaluation.Evaluator` directly. Unknown keys
and wrong types fail with the key named. Every key is documented in docs/evaluation.md.

This module imports no torch, so the entry point can register the schema before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

import i2vlab.utils.config  # noqa: F401  (registers the ${i2vlab_root:} resolver)
from i2vlab.errors import UserError


class EvalConfigError(UserError, ValueError):
    """A wrong ``eval.*`` setting (unknown key, wrong type, unknown choice)."""


# ------------------------------------------------------------------------------ metric options
@dataclass
class FVDOptions:
    variant: str = "styleganv"  # styleganv (1/N covariance) | videogpt (1/(N-1))
    ddof: int | None = None  # overrides the variant's covariance estimator (0 or 1)


@dataclass
class FIDOptions:
    ddof: int = 1


@dataclass
class KVDOptions:
    num_subsets: int = 100
    subset_size: int = 1000
    scale: float = 1.0  # raw MMD² (LVDM KVD); 1000 for KIDx1000-style reporting
    seed: int = 0


@dataclass
class CLIPTextOptions:
    scale: float = 1.0  # 1 = EvalCrafter, 100 = torchmetrics CLIPScore


@dataclass
class FlowScoreCompat:
    pad_no_crop: bool = False  # EvalCrafter: mean over the x8-padded flow field


@dataclass
class FlowScoreOptions:
    evalcrafter_compat: FlowScoreCompat = field(default_factory=FlowScoreCompat)


@dataclass
class WarpingCompat:
    pad_no_crop: bool = False  # EvalCrafter: flows, mask and error on the x8-padded frames
    double_rescale: bool = False  # EvalCrafter: the flow net sees [0,1] frames divided by 255 again


@dataclass
class WarpingOptions:
    downsample: float = 0.5
    evalcrafter_compat: WarpingCompat = field(default_factory=WarpingCompat)


@dataclass
class DOVEROptions:
    score: str = (
        "technical_raw"  # technical_raw (dover_vqa) | aesthetic_raw | technical | aesthetic | overall
    )
    rescale: str = "evalcrafter"  # evalcrafter | upstream (VQAssessment/DOVER) constants


# ------------------------------------------------------------------------------ extractors
# forward_batch: items per network call, fixed (the last call is zero-padded), so a video's features
# do not depend on which videos shared its batch. Part of the feature-cache key.
@dataclass
class I3DOptions:
    weights_path: str | None = None  # i3d_torchscript.pt (StyleGAN-V) or i3d_pretrained_400.pt (TATS)
    input_size: int = 224
    resize_mode: str = "squash"  # squash | tf1_squash | short_side_crop
    width: float = 1.0
    bn_eps: Any = "auto"  # auto = 1e-5 (TATS/VideoGPT/cd-fvd for i3d_pretrained_400.pt); 1e-3 = TF graph
    forward_batch: int = 8  # videos


@dataclass
class InceptionOptions:
    weights_path: str | None = None  # pt_inception-2015-12-05-6726825d.pth or nvlabs inception-2015-12-05.pt
    input_size: int = 299
    # tf1_squash (torch-fidelity; torchmetrics' FID only with antialias=False) | squash (pytorch-fid)
    resize_mode: str = "tf1_squash"
    forward_batch: int = 64  # frames


@dataclass
class CLIPOptions:
    weights_path: str | None = None  # local folder of openai/clip-vit-base-patch32
    convention: str = "standard"  # standard | evalcrafter_raw
    tiny: dict[str, Any] | None = None
    forward_batch: int = 64  # images


@dataclass
class DreamSimOptions:
    weights_path: str | None = None  # dreamsim cache dir (needs `pip install dreamsim`)
    dreamsim_type: str = "ensemble"
    tiny: dict[str, Any] | None = None
    forward_batch: int = 64  # images


@dataclass
class FlowOptions:
    name: str = "opencv_flow"  # opencv_flow (no weights) | raft (torchvision RAFT, local weights)
    method: str = "dis"  # dis | farneback (opencv_flow)
    weights_path: str | None = None
    variant: str = "raft_large"
    num_flow_updates: int = 20
    forward_batch: int = 32  # frame pairs


@dataclass
class LPIPSOptions:
    weights_path: str | None = None  # torchvision alexnet state dict
    net: str = "alex"
    forward_batch: int = 64  # frame pairs


@dataclass
class DOVERTechnical:  # dover.yml val-l1080p technical view
    fragments: int = 7
    fsize: int = 32
    clip_len: int = 32
    frame_interval: int = 2
    num_clips: int = 3


@dataclass
class DOVERAesthetic:  # dover.yml val-l1080p aesthetic view
    size: int = 224
    clip_len: int = 32
    t_frag: int = 32
    frame_interval: int = 2
    antialias: bool = False  # torchvision<0.17 tensor Resize (what DOVER ran with)


@dataclass
class DOVERExtractorOptions:
    weights_path: str | None = None  # DOVER.pth (QualityAssessment/DOVER v0.1.0); null = not computed
    seed: int = 0  # seed of the random fragment / segment offsets (upstream: unseeded)
    tiny: dict[str, Any] | None = None  # {swin: {...}, convnext: {...}, head_hidden: int}: test nets
    technical: DOVERTechnical = field(default_factory=DOVERTechnical)
    aesthetic: DOVERAesthetic = field(default_factory=DOVERAesthetic)
    forward_batch: int = 4  # clips per branch call


@dataclass
class Extractors:
    i3d: I3DOptions = field(default_factory=I3DOptions)
    inception: InceptionOptions = field(default_factory=InceptionOptions)
    clip: CLIPOptions = field(default_factory=CLIPOptions)
    dreamsim: DreamSimOptions = field(default_factory=DreamSimOptions)
    flow: FlowOptions = field(default_factory=FlowOptions)
    lpips: LPIPSOptions = field(default_factory=LPIPSOptions)
    dover: DOVERExtractorOptions = field(default_factory=DOVERExtractorOptions)


# ------------------------------------------------------------------------------ generation, synthetic
@dataclass
class GenerateOptions:
    checkpoint: str | None = None  # run dir / checkpoint / export of a trained method
    prompts: str | None = None  # .txt (one prompt per line) or .csv/.jsonl (key, prompt, image, real)
    num_frames: int = 16
    seed: int = 0  # each video is sampled alone from derive_seed(seed, key)
    fps: float = 8.0
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to the sampling call


@dataclass
class SyntheticOptions:
    enabled: bool = False
    num_videos: int = 6
    num_frames: int = 10
    size: list[int] = field(default_factory=lambda: [48, 64])
    dir: str | None = None  # default <output_dir>/synthetic
    # real set when eval.generated is given and eval.real is not (the toy shards); if it does not
    # exist, the synthetic real videos are used and the results say so
    toy_real: str | None = "${i2vlab_root:}/data/toy/val"


@dataclass
class ReportOptions:
    html: bool = True  # write report.html (the results gallery) beside results.md
    max_samples: int = 16  # samples shown (first by key), each video re-encoded as H.264 + poster
    run: str | None = None  # training run whose curves / lambda to show (default: generate.checkpoint's)


# ------------------------------------------------------------------------------ the evaluation
@dataclass
class EvalConfig:
    name: str = "custom"
    protocol: dict[str, Any] = field(default_factory=dict)
    # inputs
    generated: Any = None  # folder (mp4/gif/frame folders), tar shard(s) path/glob/list, or a video file
    real: Any = None  # reference set for FVD/KVD/FID (and ground truth matched by key)
    manifest: str | None = None  # CSV/JSONL: generated, real, image, prompt, key (replaces `generated`)
    images: str | None = None  # folder of condition images matched by key (file stem)
    prompts: str | None = None  # .json {key: prompt} | .jsonl/.csv (key, prompt) | .txt "key<TAB>prompt"
    condition_image: str = "auto"  # auto | manifest | images | real_first_frame | generated_first_frame
    metrics: list[str] = field(default_factory=lambda: ["fvd", "kvd", "fid"])
    # clips
    num_frames: int = 16
    frame_stride: int = 1  # generated videos
    real_frame_stride: int = 1
    start_frame: int = 0
    resolution: list[int] | None = field(default_factory=lambda: [256, 256])  # [h, w]; null = native
    max_videos: int | None = None
    max_real_videos: int | None = None
    strict: bool = False  # a bad video raises instead of being skipped and counted
    # execution
    batch_size: int = 8  # videos per decoding batch (features do not depend on it)
    num_workers: int = 0
    device: str = "auto"
    cache_dir: str | None = "${i2vlab_root:}/outputs/eval_cache"  # null disables the feature cache
    output_dir: str | None = None  # null = the Hydra run dir
    allow_random_weights: bool = False  # smoke runs only: results labelled NOT COMPARABLE
    plots: bool = True
    # metric options
    fvd: FVDOptions = field(default_factory=FVDOptions)
    fid: FIDOptions = field(default_factory=FIDOptions)
    kvd: KVDOptions = field(default_factory=KVDOptions)
    clip_text: CLIPTextOptions = field(default_factory=CLIPTextOptions)
    flow_score: FlowScoreOptions = field(default_factory=FlowScoreOptions)
    warping_error: WarpingOptions = field(default_factory=WarpingOptions)
    dover: DOVEROptions = field(default_factory=DOVEROptions)
    extractors: Extractors = field(default_factory=Extractors)
    generate: GenerateOptions = field(default_factory=GenerateOptions)
    synthetic: SyntheticOptions = field(default_factory=SyntheticOptions)
    report: ReportOptions = field(default_factory=ReportOptions)


CONDITION_IMAGE_MODES = ("auto", "manifest", "images", "real_first_frame", "generated_first_frame")


def register_schema() -> None:
    """Store :class:`EvalConfig` as ``eval/schema`` (``conf/eval/base.yaml`` lists it in its defaults)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="eval", name="schema", node=EvalConfig)


def resolve_config(cfg: Any) -> dict:
    """A partial (or complete) ``eval`` config -> the complete, resolved, checked plain dict."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(EvalConfig), cfg or {})
        out = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as e:
        key, msg = getattr(e, "full_key", None), str(getattr(e, "msg", e)).splitlines()[0]
        raise EvalConfigError(f"eval.{key}: {msg}" if key else f"eval config: {msg}") from None
    if out["condition_image"] not in CONDITION_IMAGE_MODES:
        raise EvalConfigError(
            f"eval.condition_image must be one of {list(CONDITION_IMAGE_MODES)}, got {out['condition_image']!r}"
        )
    if out["num_frames"] < 2:
        raise EvalConfigError("eval.num_frames must be >= 2")
    for k in ("batch_size", "frame_stride", "real_frame_stride"):
        if out[k] < 1:
            raise EvalConfigError(f"eval.{k} must be >= 1, got {out[k]}")
    for name, ex in out["extractors"].items():
        if ex["forward_batch"] < 1:
            raise EvalConfigError(f"eval.extractors.{name}.forward_batch must be >= 1")
    return out


DEFAULTS: dict = OmegaConf.to_container(OmegaConf.structured(EvalConfig), resolve=True)

register_schema()
