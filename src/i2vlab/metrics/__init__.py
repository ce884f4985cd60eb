"""Video-generation metrics: distances, per-video functions, torchmetrics classes, extractors.

Public maths: :func:`frechet_distance` and :func:`polynomial_mmd` (float64, see ``distances``).
"""

from .classes import (
    FrechetDistance,
    FrechetInceptionDistanceFrames,
    FrechetVideoDistance,
    KernelDistance,
    KernelVideoDistance,
)
from .distances import (
    frechet_distance,
    frechet_distance_from_features,
    gaussian_stats,
    polynomial_mmd,
    polynomial_mmd_subsets,
    stats_from_sums,
)
from .extractors import EXTRACTORS, MissingWeightsError, build_extractor
from .per_video import (
    CLIPFirstFrameConsistency,
    CLIPImageFrameSimilarity,
    CLIPTemporalConsistency,
    CLIPTextSimilarity,
    DOVERScores,
    FlowScore,
    PerceptualInputConformity,
    PerVideoMean,
    VideoLPIPS,
    VideoPSNR,
    VideoSSIM,
    WarpingError,
)

__all__ = [
    "CLIPFirstFrameConsistency", "CLIPImageFrameSimilarity", "CLIPTemporalConsistency", "CLIPTextSimilarity",
    "DOVERScores", "EXTRACTORS", "FlowScore", "FrechetDistance", "FrechetInceptionDistanceFrames", "FrechetVideoDistance",
    "KernelDistance", "KernelVideoDistance", "MissingWeightsError", "PerVideoMean", "PerceptualInputConformity",
    "VideoLPIPS", "VideoPSNR", "VideoSSIM", "WarpingError", "build_extractor", "frechet_distance", "frechet_distance_from_features",
    "gaussian_stats", "polynomial_mmd", "polynomial_mmd_subsets", "stats_from_sums",
]  # fmt: skip
