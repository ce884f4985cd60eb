"""Feature extractors behind a small registry (``build_extractor(name, **cfg)``)."""

from . import clip, dover, dreamsim, flow, i3d, inception, lpips_net  # noqa: F401  (registers)
from .base import EXTRACTORS, Extractor, MissingWeightsError, build_extractor, file_sha256, resolve_weights

__all__ = [
    "EXTRACTORS",
    "Extractor",
    "MissingWeightsError",
    "build_extractor",
    "file_sha256",
    "resolve_weights",
]
