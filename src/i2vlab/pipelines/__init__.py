"""Inference: one plain pipeline object per method (no Lightning), and ``load_pipeline(path)``.

from i2vlab.pipelines import load_pipeline
pipe = load_pipeline("outputs/toy_i2v_adapter/runs/<time>")
video = pipe(["a red circle moving left"], images=first_frames, num_frames=8, seed=0)  # b f c h w
"""

from __future__ import annotations

from typing import Any

#: method class name (``method._target_`` of a run config) -> its pipeline class
PIPELINES: dict[str, str] = {
    "AnimateDiffT2V": "i2vlab.pipelines.animatediff.AnimateDiffPipeline",
    "I2VAdapter": "i2vlab.pipelines.i2v_adapter.I2VAdapterPipeline",
    "DynamiCrafter": "i2vlab.pipelines.dynamicrafter.DynamiCrafterPipeline",
    "GenerativeInbetweening": "i2vlab.pipelines.inbetween.InbetweenPipeline",
    "SVDImageToVideo": "i2vlab.pipelines.svd.SVDPipeline",
}


def load_pipeline(*args: Any, **kwargs: Any):
    """See :func:`i2vlab.pipelines.loading.load_pipeline`."""
    from i2vlab.pipelines.loading import load_pipeline as _load

    return _load(*args, **kwargs)


__all__ = ["PIPELINES", "load_pipeline"]
