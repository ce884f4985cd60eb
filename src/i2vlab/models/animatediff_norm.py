"""GroupNorm semantics of AnimateDiff UNets, as an option of diffusers' ``UNetMotionModel``.

The original AnimateDiff code runs the SD1.5 blocks on 5-D tensors (b c f h w), so a plain
``nn.GroupNorm`` there normalises each group over *all frames* of a clip, unless the model is built
with ``use_inflated_groupnorm: true`` (then ``InflatedGroupNorm`` normalises each frame). Its motion
module always normalises *per frame* (it rearranges to (b f) c h w before its GroupNorm). diffusers'
``UNetMotionModel`` does something else: its resnets and ``conv_norm_out`` see ((b f) c h w), so they
normalise per frame, while ``AnimateDiffTransformer3D`` normalises (b c f h w), i.e. over all frames.

===================  ==================  =======================  ============================
layer                ``diffusers``       ``animatediff_v1``       ``inflated``
===================  ==================  =======================  ============================
resnet norm1/norm2   per frame           all frames of the clip   per frame
``conv_norm_out``    per frame           all frames of the clip   per frame
motion module norm   all frames          per frame                per frame
spatial transformer  per frame           per frame                per frame
===================  ==================  =======================  ============================

``animatediff_v1`` is what the official I2V-Adapter code runs (AnimateDiff v1 motion module,
``use_inflated_groupnorm: false``); ``inflated`` is the same code with ``use_inflated_groupnorm: true``
(how AnimateDiff v2/v3 configure it). Both are verified against the official I2V-Adapter
``UNet3DConditionModel`` (``tests/test_parity_i2v_adapter.py``).

How: :func:`set_groupnorm_mode` swaps the affected ``nn.GroupNorm`` layers of a stock
``UNetMotionModel`` for :class:`VideoGroupNorm` (an ``nn.GroupNorm`` subclass holding the *same*
parameters, so state-dict keys, community weights, LoRA, optimizers and the meta device are
unaffected). A clip-wide norm needs the number of frames of the current call: a forward pre-hook on
the UNet reads it from ``sample`` (b c f h w) into a :class:`FrameCount` shared with the other
frame-aware layers (the I2V-Adapter attention processors use the same one), so it also holds when
diffusers recomputes a block under gradient checkpointing.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: accepted values of the ``groupnorm`` backbone option
GROUPNORM_MODES = ("diffusers", "animatediff_v1", "inflated")


class FrameCount:
    """Number of frames of the current UNet call, shared by the frame-aware layers of one UNet."""

    def __init__(self) -> None:
        self.num_frames: int | None = None


class _FramesHook:
    """UNet forward pre-hook: record ``sample.shape[2]`` (b c f h w)."""

    def __init__(self, frames: FrameCount) -> None:
        self.frames = frames

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.frames.num_frames = int(sample.shape[2])


def frame_count(unet: nn.Module) -> FrameCount:
    """The :class:`FrameCount` of ``unet``, registering its forward pre-hook on first use."""
    frames = getattr(unet, "_i2vlab_frames", None)
    if frames is None:
        frames = FrameCount()
        unet._i2vlab_frames = frames
        unet._i2vlab_frames_hook = unet.register_forward_pre_hook(_FramesHook(frames), with_kwargs=True)
    return frames


class VideoGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` over a chosen extent of a video batch.

    ``scope="clip"``: input ((b f) c h w), each group normalised over (c/g, f, h, w) of its clip
    (the frame count comes from ``frames``). ``scope="frame"``: input (b c f h w), each group
    normalised over (c/g, h, w) of each frame.
    """

    def __init__(self, norm: nn.GroupNorm, scope: str, frames: FrameCount | None = None) -> None:
        if scope not in ("clip", "frame"):
            raise ValueError(f"scope must be 'clip' or 'frame', got {scope!r}")
        if scope == "clip" and frames is None:
            raise ValueError("a clip-wide GroupNorm needs the UNet's FrameCount")
        super().__init__(norm.num_groups, norm.num_channels, norm.eps, affine=False)
        self.affine = norm.affine
        self.weight, self.bias = norm.weight, norm.bias  # the same Parameter objects
        self.scope = scope
        self.frames = frames

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scope={self.scope}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scope == "frame":
            b, c, f = x.shape[:3]
            y = x.transpose(1, 2).reshape(b * f, c, *x.shape[3:])
            y = F.group_norm(y, self.num_groups, self.weight, self.bias, self.eps)
            return y.reshape(b, f, c, *x.shape[3:]).transpose(1, 2)
        f = self.frames.num_frames
        if f is None:
            raise RuntimeError("number of frames unknown: the UNet's frame-count hook has not run")
        bf, c = x.shape[:2]
        if bf % f:
            raise ValueError(f"batch of {bf} frames is not a multiple of num_frames={f}")
        y = x.reshape(bf // f, f, c, *x.shape[2:]).transpose(1, 2)  # b c f h w
        y = F.group_norm(y, self.num_groups, self.weight, self.bias, self.eps)
        return y.transpose(1, 2).reshape(x.shape)


def _norm_sites(unet: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, attribute, kind) of every GroupNorm whose semantics differ between the modes;
    kind is ``resnet``, ``out`` or ``motion``."""
    from diffusers.models.resnet import ResnetBlock2D
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    sites = []
    for m in unet.modules():
        if isinstance(m, ResnetBlock2D):
            sites += [(m, "norm1", "resnet"), (m, "norm2", "resnet")]
        elif isinstance(m, AnimateDiffTransformer3D):
            sites.append((m, "norm", "motion"))
    if isinstance(getattr(unet, "conv_norm_out", None), nn.GroupNorm):
        sites.append((unet, "conv_norm_out", "out"))
    return sites


#: mode -> {kind: scope}; a kind left out keeps diffusers' own nn.GroupNorm
_SCOPES: dict[str, dict[str, str]] = {
    "diffusers": {},
    "animatediff_v1": {"resnet": "clip", "out": "clip", "motion": "frame"},
    "inflated": {"motion": "frame"},
}


def set_groupnorm_mode(unet: nn.Module, mode: str) -> nn.Module:
    """Give a ``UNetMotionModel`` the GroupNorm semantics ``mode`` (see the module docstring); returns it.
    Idempotent; switching back to ``diffusers`` restores plain ``nn.GroupNorm`` layers."""
    if mode not in GROUPNORM_MODES:
        raise ValueError(f"groupnorm must be one of {GROUPNORM_MODES}, got {mode!r}")
    scopes = _SCOPES[mode]
    frames = frame_count(unet) if "clip" in scopes.values() else getattr(unet, "_i2vlab_frames", None)
    for parent, attr, kind in _norm_sites(unet):
        norm = getattr(parent, attr)
        scope = scopes.get(kind)
        if scope is None:
            if isinstance(norm, VideoGroupNorm):
                plain = nn.GroupNorm(norm.num_groups, norm.num_channels, norm.eps, affine=False)
                plain.affine, plain.weight, plain.bias = norm.affine, norm.weight, norm.bias
                setattr(parent, attr, plain)
        elif not (isinstance(norm, VideoGroupNorm) and norm.scope == scope):
            setattr(parent, attr, VideoGroupNorm(norm, scope, frames))
    unet._i2vlab_groupnorm = mode
    return unet


def groupnorm_mode(unet: nn.Module) -> str:
    """The mode set by :func:`set_groupnorm_mode` (``diffusers`` if never set)."""
    return getattr(unet, "_i2vlab_groupnorm", "diffusers")


def describe(unet: nn.Module) -> dict[str, Any]:
    """{kind: scope} actually installed (for reports and tests)."""
    out: dict[str, set] = {}
    for parent, attr, kind in _norm_sites(unet):
        norm = getattr(parent, attr)
        out.setdefault(kind, set()).add(norm.scope if isinstance(norm, VideoGroupNorm) else "diffusers")
    return {k: sorted(v) for k, v in out.items()}
