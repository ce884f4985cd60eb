"""The AnimateDiff GroupNorm option on diffusers' UNetMotionModel (``backbone.unet.groupnorm``).

Against the official code: ``tests/test_parity_i2v_adapter.py``. Here: what each scope computes, that
the option leaves the state dict, the meta device and the configs as they should be.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UNetMotionModel
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from i2vlab.models.animatediff import build_motion_unet, resolve_groupnorm
from i2vlab.models.animatediff_norm import (
    FrameCount,
    VideoGroupNorm,
    describe,
    frame_count,
    groupnorm_mode,
    set_groupnorm_mode,
)
from i2vlab.models.loading import build_on_meta

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "sample_size": 8,
    "down_block_types": ["CrossAttnDownBlockMotion", "DownBlockMotion"],
    "up_block_types": ["UpBlockMotion", "CrossAttnUpBlockMotion"],
    "block_out_channels": [32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "cross_attention_dim": 8,
    "num_attention_heads": 2,
    "motion_max_seq_length": 24,
    "motion_num_attention_heads": 2,
    "use_motion_mid_block": False,
}


def test_scopes_compute_groupnorm_over_the_clip_or_the_frame():
    g = torch.Generator().manual_seed(0)
    norm = nn.GroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.normal_(generator=g)
        norm.bias.normal_(generator=g)
    b, f = 2, 3
    x5 = torch.randn(b, 8, f, 5, 4, generator=g, dtype=torch.float64)  # b c f h w
    norm = norm.double()
    frames = FrameCount()
    frames.num_frames = f
    clip = VideoGroupNorm(norm, "clip", frames)
    flat = x5.transpose(1, 2).reshape(b * f, 8, 5, 4)  # (b f) c h w, as diffusers' resnets see it
    expect = norm(x5).transpose(1, 2).reshape(b * f, 8, 5, 4)  # plain GroupNorm of the 5-D tensor
    assert torch.allclose(clip(flat), expect, rtol=0, atol=1e-12)
    per_frame = VideoGroupNorm(norm, "frame")
    expect = norm(flat).reshape(b, f, 8, 5, 4).transpose(1, 2)
    assert torch.allclose(per_frame(x5), expect, rtol=0, atol=1e-12)
    assert clip.weight is norm.weight and per_frame.bias is norm.bias  # the same parameters
    frames.num_frames = None
    with pytest.raises(RuntimeError, match="frames"):
        clip(flat)


def test_modes_keep_the_state_dict_and_switch_back():
    torch.manual_seed(0)
    unet = UNetMotionModel(**TINY)
    keys = {k: v.clone() for k, v in unet.state_dict().items()}
    ref_params = {n: p for n, p in unet.named_parameters()}
    set_groupnorm_mode(unet, "animatediff_v1")
    assert groupnorm_mode(unet) == "animatediff_v1"
    assert describe(unet) == {"resnet": ["clip"], "motion": ["frame"], "out": ["clip"]}
    sd = unet.state_dict()
    assert sd.keys() == keys.keys() and all(torch.equal(sd[k], v) for k, v in keys.items())
    assert all(p is ref_params[n] for n, p in unet.named_parameters())  # an optimizer's params stay valid
    set_groupnorm_mode(unet, "inflated")
    assert describe(unet) == {"resnet": ["diffusers"], "motion": ["frame"], "out": ["diffusers"]}
    set_groupnorm_mode(unet, "diffusers")
    assert not any(isinstance(m, VideoGroupNorm) for m in unet.modules())
    assert all(p is ref_params[n] for n, p in unet.named_parameters())
    with pytest.raises(ValueError, match="groupnorm"):
        set_groupnorm_mode(unet, "batch")


def test_output_depends_on_the_mode_and_frames_come_from_the_call():
    torch.manual_seed(0)
    unet = UNetMotionModel(**TINY).eval()
    x = torch.randn(1, 4, 3, 8, 8)
    ehs = torch.randn(3, 5, 8)
    with torch.no_grad():
        ref = unet(x, 10, ehs).sample
        set_groupnorm_mode(unet, "animatediff_v1")
        v1 = unet(x, 10, ehs).sample
        assert frame_count(unet).num_frames == 3
        x4 = torch.randn(2, 4, 4, 8, 8)
        unet(x4, 10, torch.randn(8, 5, 8))  # another frame count in the next call
        assert frame_count(unet).num_frames == 4
        set_groupnorm_mode(unet, "diffusers")
        assert torch.equal(unet(x, 10, ehs).sample, ref)
    assert not torch.allclose(v1, ref)


def test_meta_device_and_the_backbone_options():
    with build_on_meta():
        unet = build_motion_unet("backbone.unet", TINY, groupnorm="animatediff_v1")
    assert next(unet.parameters()).is_meta and groupnorm_mode(unet) == "animatediff_v1"
    # auto: the v1 layout (max_seq 24, no mid-block motion module) -> the official semantics
    assert resolve_groupnorm("auto", TINY) == "animatediff_v1"
    assert (
        resolve_groupnorm("auto", {**TINY, "motion_max_seq_length": 32, "use_motion_mid_block": True})
        == "diffusers"
    )
    for backbone, mode in [("tiny_i2v_adapter", "animatediff_v1"), ("tiny_animatediff", "diffusers")]:
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[f"backbone={backbone}"])
        with build_on_meta():
            unet = instantiate(cfg.backbone.unet)
        assert groupnorm_mode(unet) == mode, backbone
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["backbone=sd15_animatediff_ipplus"])
    assert cfg.backbone.unet.groupnorm == "animatediff_v1"
