"""The evaluator: read or generate videos, score them, write tables (see docs/evaluation.md).

Importing this package registers the ``eval/schema`` structured config with Hydra (:mod:`.config`)."""

from .config import DEFAULTS, EvalConfig, EvalConfigError, resolve_config
from .evaluator import Evaluator, NothingScoredError, StrictModeError
from .inputs import ClipError, EvalItem, VideoRef, collect_videos, load_clip, read_manifest
from .registry import METRICS, MetricSpec

__all__ = [
    "DEFAULTS",
    "METRICS",
    "ClipError",
    "EvalConfig",
    "EvalConfigError",
    "EvalItem",
    "Evaluator",
    "MetricSpec",
    "NothingScoredError",
    "StrictModeError",
    "VideoRef",
    "collect_videos",
    "load_clip",
    "read_manifest",
    "resolve_config",
]
