"""The evaluator: read or generate videos, score them, write tables (see docs/evaluation.md)."""

from .evaluator import DEFAULTS, METRIC_GROUPS, Evaluator, deep_merge
from .inputs import ClipError, EvalItem, VideoRef, collect_videos, load_clip, read_manifest

__all__ = [
    "DEFAULTS",
    "METRIC_GROUPS",
    "ClipError",
    "EvalItem",
    "Evaluator",
    "VideoRef",
    "collect_videos",
    "deep_merge",
    "load_clip",
    "read_manifest",
]
