"""DynamiCrafter: official checkpoint layout <-> ours, and full-size parameter counts.

The reference layout (`official_unet_shapes`, `official_resampler_shapes`) is written here
independently of `i2vlab.models.dynamicrafter.convert`: it walks the module construction of
`lvdm/modules/networks/openaimodel3d.py` `UNetModel.__init__` and `lvdm/modules/encoders/resampler.py`
(Doubiiu/DynamiCrafter, read for key names and shapes) and lists every parameter with its shape.
Converting a synthetic state dict of exactly those keys must fill our model strictly, and the
full-size counts on the meta device must equal the sums of these official shapes.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from i2vlab.models.dynamicrafter import DynamiCrafterUNet3DModel, Resampler
from i2vlab.models.dynamicrafter.convert import (
    convert_resampler_state_dict,
    convert_unet_state_dict,
    resampler_state_dict_to_official,
    unet_state_dict_to_official,
)

CONF = Path(__file__).resolve().parents[1] / "conf"


# ----------------------------------------------------------------------------------------------
# the official layout, from openaimodel3d.py / attention.py / resampler.py
# ----------------------------------------------------------------------------------------------
def official_unet_shapes(
    in_channels=8,
    model_channels=320,
    out_channels=4,
    num_res_blocks=2,
    attention_resolutions=(4, 2, 1),
    channel_mult=(1, 2, 4, 4),
    num_head_channels=64,
    context_dim=1024,
    image_cross_attention_scale_learnable=False,
    fs_condition=True,
    init_attn_heads=8,
) -> dict[str, tuple[int, ...]]:
    S: dict[str, tuple[int, ...]] = {}
    ted = model_channels * 4

    def lin(p, i, o, bias=True):
        S[p + ".weight"] = (o, i)
        if bias:
            S[p + ".bias"] = (o,)

    def norm(p, c):
        S[p + ".weight"], S[p + ".bias"] = (c,), (c,)

    def conv(p, i, o, k):
        S[p + ".weight"], S[p + ".bias"] = (o, i, *k), (o,)

    def resblock(p, ch, out):  # ResBlock with use_temporal_conv
        norm(p + ".in_layers.0", ch)
        conv(p + ".in_layers.2", ch, out, (3, 3))
        lin(p + ".emb_layers.1", ted, out)
        norm(p + ".out_layers.0", out)
        conv(p + ".out_layers.3", out, out, (3, 3))
        if ch != out:
            conv(p + ".skip_connection", ch, out, (1, 1))
        tc = p + ".temopral_conv"
        norm(tc + ".conv1.0", out)
        conv(tc + ".conv1.2", out, out, (3, 1, 1))
        for k in (2, 3, 4):
            norm(f"{tc}.conv{k}.0", out)
            conv(f"{tc}.conv{k}.3", out, out, (3, 1, 1))

    def basic_block(p, inner, ctx, image):  # BasicTransformerBlock (attn1, ff, attn2, norm1-3)
        for a, kdim in (("attn1", inner), ("attn2", ctx or inner)):
            lin(f"{p}.{a}.to_q", inner, inner, False)
            lin(f"{p}.{a}.to_k", kdim, inner, False)
            lin(f"{p}.{a}.to_v", kdim, inner, False)
            lin(f"{p}.{a}.to_out.0", inner, inner)
        if image:
            lin(f"{p}.attn2.to_k_ip", ctx, inner, False)
            lin(f"{p}.attn2.to_v_ip", ctx, inner, False)
            if image_cross_attention_scale_learnable:
                S[f"{p}.attn2.alpha"] = ()
        lin(f"{p}.ff.net.0.proj", inner, inner * 4 * 2)  # GEGLU
        lin(f"{p}.ff.net.2", inner * 4, inner)
        for n in (1, 2, 3):
            norm(f"{p}.norm{n}", inner)

    def spatial(p, ch, heads, dh):  # SpatialTransformer, use_linear
        inner = heads * dh
        norm(p + ".norm", ch)
        lin(p + ".proj_in", ch, inner)
        basic_block(p + ".transformer_blocks.0", inner, context_dim, True)
        lin(p + ".proj_out", inner, ch)

    def temporal(p, ch, heads, dh, use_linear=True):  # TemporalTransformer, only_self_att
        inner = heads * dh
        norm(p + ".norm", ch)
        if use_linear:
            lin(p + ".proj_in", ch, inner)
        else:
            S[p + ".proj_in.weight"], S[p + ".proj_in.bias"] = (inner, ch, 1), (inner,)
        basic_block(p + ".transformer_blocks.0", inner, None, False)
        if use_linear:
            lin(p + ".proj_out", inner, ch)
        else:
            S[p + ".proj_out.weight"], S[p + ".proj_out.bias"] = (ch, inner, 1), (ch,)

    lin("time_embed.0", model_channels, ted)
    lin("time_embed.2", ted, ted)
    if fs_condition:
        lin("fps_embedding.0", model_channels, ted)
        lin("fps_embedding.2", ted, ted)
    conv("input_blocks.0.0", in_channels, model_channels, (3, 3))
    temporal("init_attn.0", model_channels, init_attn_heads, num_head_channels, use_linear=False)
    chans, ch, ds, k = [model_channels], model_channels, 1, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            out = mult * model_channels
            resblock(f"input_blocks.{k}.0", ch, out)
            ch = out
            if ds in attention_resolutions:
                spatial(f"input_blocks.{k}.1", ch, ch // num_head_channels, num_head_channels)
                temporal(f"input_blocks.{k}.2", ch, ch // num_head_channels, num_head_channels)
            chans.append(ch)
            k += 1
        if level != len(channel_mult) - 1:
            conv(f"input_blocks.{k}.0.op", ch, ch, (3, 3))
            chans.append(ch)
            k += 1
            ds *= 2
    resblock("middle_block.0", ch, ch)
    spatial("middle_block.1", ch, ch // num_head_channels, num_head_channels)
    temporal("middle_block.2", ch, ch // num_head_channels, num_head_channels)
    resblock("middle_block.3", ch, ch)
    k = 0
    for level, mult in list(enumerate(channel_mult))[::-1]:
        for i in range(num_res_blocks + 1):
            ich = chans.pop()
            out = model_channels * mult
            resblock(f"output_blocks.{k}.0", ch + ich, out)
            ch = out
            idx = 1
            if ds in attention_resolutions:
                spatial(f"output_blocks.{k}.1", ch, ch // num_head_channels, num_head_channels)
                temporal(f"output_blocks.{k}.2", ch, ch // num_head_channels, num_head_channels)
                idx = 3
            if level and i == num_res_blocks:
                conv(f"output_blocks.{k}.{idx}.conv", ch, ch, (3, 3))
                ds //= 2
            k += 1
    norm("out.0", ch)
    conv("out.2", model_channels, out_channels, (3, 3))
    return S


def official_resampler_shapes(
    dim=1024,
    depth=4,
    dim_head=64,
    heads=12,
    num_queries=16,
    embedding_dim=1280,
    output_dim=1024,
    ff_mult=4,
    video_length=16,
) -> dict[str, tuple[int, ...]]:
    inner = dim_head * heads
    S = {
        "latents": (1, num_queries * (video_length or 1), dim),
        "proj_in.weight": (dim, embedding_dim),
        "proj_in.bias": (dim,),
        "proj_out.weight": (output_dim, dim),
        "proj_out.bias": (output_dim,),
        "norm_out.weight": (output_dim,),
        "norm_out.bias": (output_dim,),
    }
    for i in range(depth):
        p = f"layers.{i}."
        S.update(
            {
                p + "0.norm1.weight": (dim,),
                p + "0.norm1.bias": (dim,),
                p + "0.norm2.weight": (dim,),
                p + "0.norm2.bias": (dim,),
                p + "0.to_q.weight": (inner, dim),
                p + "0.to_kv.weight": (2 * inner, dim),
                p + "0.to_out.weight": (dim, inner),
                p + "1.0.weight": (dim,),
                p + "1.0.bias": (dim,),
                p + "1.1.weight": (dim * ff_mult, dim),
                p + "1.3.weight": (dim, dim * ff_mult),
            }
        )
    return S


TINY_OFFICIAL = dict(
    in_channels=8,
    model_channels=32,
    out_channels=4,
    num_res_blocks=1,
    attention_resolutions=(1,),
    channel_mult=(1, 2),
    num_head_channels=16,
    context_dim=32,
    image_cross_attention_scale_learnable=True,
    init_attn_heads=2,
)
TINY_OURS = dict(
    in_channels=8,
    out_channels=4,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
    up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    layers_per_block=1,
    attention_head_dim=16,
    cross_attention_dim=32,
    norm_num_groups=8,
    init_attention_heads=2,
    image_cross_attention_scale_learnable=True,
    text_context_len=16,
    image_tokens_per_frame=4,
)


def _synthetic(shapes: dict[str, tuple[int, ...]], prefix: str, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {prefix + k: torch.randn(s, generator=g) for k, s in shapes.items()}


def test_official_unet_keys_convert_and_round_trip():
    official = _synthetic(official_unet_shapes(**TINY_OFFICIAL), "model.diffusion_model.")
    official["first_stage_model.encoder.conv_in.weight"] = torch.zeros(1)  # other parts are ignored
    model = DynamiCrafterUNet3DModel(**TINY_OURS)
    ours = convert_unet_state_dict(official, model.config)
    assert len(ours) == len(official) - 1
    model.load_state_dict(ours, strict=True)  # every key and shape present, nothing extra
    # values land where they belong: a few hand-picked correspondences
    sd = model.state_dict()
    pre = "model.diffusion_model."
    assert torch.equal(sd["conv_in.weight"], official[pre + "input_blocks.0.0.weight"])
    assert torch.equal(
        sd["transformer_in.proj_in.weight"], official[pre + "init_attn.0.proj_in.weight"][..., 0]
    )
    assert torch.equal(
        sd["down_blocks.0.temp_convs.0.conv4.3.weight"],
        official[pre + "input_blocks.1.0.temopral_conv.conv4.3.weight"],
    )
    assert torch.equal(
        sd["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_ip.weight"],
        official[pre + "input_blocks.1.1.transformer_blocks.0.attn2.to_k_ip.weight"],
    )
    assert torch.equal(
        sd["down_blocks.0.downsamplers.0.conv.weight"], official[pre + "input_blocks.2.0.op.weight"]
    )
    assert torch.equal(
        sd["up_blocks.0.upsamplers.0.conv.weight"], official[pre + "output_blocks.1.1.conv.weight"]
    )
    assert torch.equal(
        sd["up_blocks.1.temp_attentions.1.proj_out.weight"],
        official[pre + "output_blocks.3.2.proj_out.weight"],
    )
    assert torch.equal(
        sd["mid_block.resnets.1.conv2.weight"], official[pre + "middle_block.3.out_layers.3.weight"]
    )
    assert torch.equal(sd["fps_embedding.linear_2.weight"], official[pre + "fps_embedding.2.weight"])
    back = unet_state_dict_to_official(sd, model.config)
    del official["first_stage_model.encoder.conv_in.weight"]
    assert set(back) == set(official)
    assert all(torch.equal(back[k], official[k]) for k in official)


def test_official_resampler_keys_convert_and_round_trip():
    cfg = dict(
        dim=32,
        depth=2,
        dim_head=16,
        heads=3,
        num_queries=4,
        embedding_dim=24,
        output_dim=32,
        ff_mult=2,
        video_length=8,
    )
    official = _synthetic(official_resampler_shapes(**cfg), "image_proj_model.")
    model = Resampler(**cfg)
    ours = convert_resampler_state_dict(official)
    model.load_state_dict(ours, strict=True)
    kv = official["image_proj_model.layers.1.0.to_kv.weight"]
    assert torch.equal(model.state_dict()["layers.1.attn.to_v.weight"], kv[kv.shape[0] // 2 :])
    back = resampler_state_dict_to_official(model.state_dict())
    assert set(back) == set(official) and all(torch.equal(back[k], official[k]) for k in official)


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides)


# Official counts = sums of the official shapes above for configs/inference_*_v1.0.yaml (UNet, 8 input
# channels, 16 gates in the 256 config) and the Resampler (dim 1024, depth 4, heads 12, 16 x 16 queries).
OFFICIAL_UNET_256 = 1_438_854_996
OFFICIAL_UNET_512 = 1_438_854_980
OFFICIAL_RESAMPLER = 48_787_456


@pytest.mark.parametrize("size,learnable", [("256", True), ("512", False), ("1024", False)])
def test_full_size_counts_match_official_on_meta(size, learnable):
    from omegaconf import OmegaConf

    from i2vlab.models.dynamicrafter import build_resampler, build_unet3d
    from i2vlab.models.loading import build_on_meta

    cfg = _compose([f"backbone=dynamicrafter_{size}", "method=dynamicrafter"])
    ucfg = OmegaConf.to_container(cfg.backbone.unet.config, resolve=True)
    assert ucfg["image_cross_attention_scale_learnable"] is learnable
    with build_on_meta():
        unet = build_unet3d("backbone.unet", ucfg, pretrained="/nonexistent/model.ckpt")
        res = build_resampler(
            "backbone.image_proj_model", cfg.backbone.image_proj_model.config, pretrained="/nope.ckpt"
        )
    assert next(unet.parameters()).is_meta
    n_unet = sum(p.numel() for p in unet.parameters())
    ref = sum(
        math.prod(s) for s in official_unet_shapes(image_cross_attention_scale_learnable=learnable).values()
    )
    assert n_unet == ref == (OFFICIAL_UNET_256 if learnable else OFFICIAL_UNET_512)
    n_res = sum(p.numel() for p in res.parameters())
    assert n_res == sum(math.prod(s) for s in official_resampler_shapes().values()) == OFFICIAL_RESAMPLER


def test_param_report_meta_full_size():
    import importlib.util

    spec = importlib.util.spec_from_file_location("param_report", CONF.parent / "scripts" / "param_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.report(["experiment=dynamicrafter_stage3", "+meta=true"])
    last = text.strip().splitlines()[-1]
    tr, fr = (int(x.split("=")[1]) for x in last.split())
    import re

    temporal_re = re.compile(
        r"(init_attn\.|.*temopral_conv\.|(input_blocks\.\d+|output_blocks\.\d+|middle_block)\.2\.)"
    )
    temporal = sum(
        math.prod(s)
        for k, s in official_unet_shapes(image_cross_attention_scale_learnable=True).items()
        if temporal_re.match(k)
    )
    assert tr == OFFICIAL_UNET_256 + OFFICIAL_RESAMPLER - temporal
    assert fr > 1_000_000_000  # VAE + OpenCLIP-H text + CLIP-H vision + temporal layers


def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, CONF.parent / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_convert_script_and_builders_load_official_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from i2vlab.models.dynamicrafter import build_resampler, build_unet3d

    cfg = _compose(["backbone=tiny_dynamicrafter", "method=dynamicrafter"])
    rcfg = dict(cfg.backbone.image_proj_model.config)
    sd = _synthetic(official_unet_shapes(**TINY_OFFICIAL), "model.diffusion_model.")
    sd.update(_synthetic(official_resampler_shapes(**rcfg), "image_proj_model.", seed=1))
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd}, ckpt)
    out = _script("convert_dynamicrafter").main(
        ["--ckpt", str(ckpt), "--backbone", "tiny_dynamicrafter", "--out", str(tmp_path / "conv")]
    )
    from omegaconf import OmegaConf

    ucfg = OmegaConf.to_container(cfg.backbone.unet.config, resolve=True)
    direct = build_unet3d("backbone.unet", ucfg, pretrained=str(ckpt))
    folder = build_unet3d("backbone.unet", ucfg, pretrained=str(out / "unet"))
    ref = convert_unet_state_dict(sd, direct.config)
    for k, v in ref.items():
        assert torch.equal(direct.state_dict()[k], v) and torch.equal(folder.state_dict()[k], v)
    res = build_resampler("backbone.image_proj_model", rcfg, pretrained=str(ckpt))
    torch.testing.assert_close(res.latents, sd["image_proj_model.latents"])
    flat = load_file(str(out / "trainable.safetensors"))
    assert torch.equal(flat["unet.conv_in.weight"], sd["model.diffusion_model.input_blocks.0.0.weight"])
    assert "image_proj_model.layers.0.attn.to_k.weight" in flat
    # a 4-channel (T2V) checkpoint into the 8-channel model: new channels zero
    sd4 = dict(sd)
    sd4["model.diffusion_model.input_blocks.0.0.weight"] = sd[
        "model.diffusion_model.input_blocks.0.0.weight"
    ][:, :4]
    torch.save({"state_dict": sd4}, tmp_path / "t2v.ckpt")
    wide = build_unet3d("backbone.unet", ucfg, pretrained=str(tmp_path / "t2v.ckpt")).conv_in.weight
    assert (
        torch.equal(wide[:, :4], sd4["model.diffusion_model.input_blocks.0.0.weight"])
        and not wide[:, 4:].any()
    )
    back = _script("convert_dynamicrafter").main(
        ["--ckpt", str(out), "--to-official", "--out", str(tmp_path / "o.ckpt")]
    )
    sd_back = torch.load(back, weights_only=True)["state_dict"]
    assert set(sd_back) == set(sd) and all(torch.equal(sd_back[k], sd[k]) for k in sd)


def test_missing_official_checkpoint_names_the_key(tmp_path):
    from i2vlab.models.dynamicrafter import build_unet3d
    from i2vlab.models.loading import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="backbone.unet.pretrained"):
        build_unet3d("backbone.unet", TINY_OURS, pretrained=str(tmp_path / "missing" / "model.ckpt"))


def test_plot_lambda_from_export(tmp_path):
    from safetensors.torch import save_file

    alphas = {
        "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.alpha": 0.5,
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.alpha": -0.2,
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.processor.alpha": 0.0,
    }
    save_file({k: torch.tensor(v) for k, v in alphas.items()}, str(tmp_path / "e.safetensors"))
    out = _script("plot_lambda").main([str(tmp_path / "e.safetensors"), "--out", str(tmp_path / "l.png")])
    assert out.is_file() and out.stat().st_size > 0
    rows = out.with_suffix(".csv").read_text().splitlines()[1:]
    vals = [float(r.split(",")[2]) for r in rows]
    assert [r.split(".")[1] for r in rows] == ["down_blocks", "mid_block", "up_blocks"]  # forward order
    assert vals == pytest.approx([math.tanh(-0.2) + 1, 1.0, math.tanh(0.5) + 1], abs=1e-6)
