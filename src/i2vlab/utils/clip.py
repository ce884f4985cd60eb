"""CLIP's input normalisation, in one place (the methods' image encoders and the evaluator's CLIP
metrics use the same constants; how each resizes differs on purpose and is documented there)."""

from __future__ import annotations

import torch

#: OpenAI CLIP's per-channel mean and std of [0, 1] RGB inputs
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_normalize(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` for images ``b c h w`` in [0, 1]; the constants are made in float32 (as
    the reference code) and applied in ``x``'s dtype (float64 stays float64)."""
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).to(x.device, x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=torch.float32).to(x.device, x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
