"""DynamiCrafter: gated dual cross-attention, per-frame context, conditioning (VDG, dropout,
interpolation), trainable sets of the three stages, multi-condition CFG, stage chaining."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from diffusers.models.attention_processor import Attention
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from i2vlab.methods.dynamicrafter import DynamiCrafter, dynamic_rescale_table
from i2vlab.models.dynamicrafter import (
    DualCrossAttnProcessor,
    DynamiCrafterUNet3DModel,
    frame_context,
    gate_values,
)
from i2vlab.pipelines.dynamicrafter import combine_guidance, ddim_timesteps, sample_dynamicrafter
from i2vlab.training import instantiate_model

ROOT = Path(__file__).resolve().parents[1]
TEMPORAL = re.compile(r"unet\.(transformer_in|.*temp_convs|.*temp_attentions)\..*")


def build(experiment: str, tmp_path: Path, *extra: str) -> DynamiCrafter:
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={experiment}",
                f"paths.output_dir={tmp_path}",
                f"paths.root_dir={ROOT}",
                *extra,
            ],
        )
    with open_dict(cfg):
        cfg.paths.data_dir = str(ROOT / "data")
    return instantiate_model(cfg)


def toy_batch(b: int = 2, f: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.rand(b, f, 3, 32, 32, generator=g) * 2 - 1,
        "caption": ["a red circle", "a blue square"][:b],
        "fps": torch.tensor([24.0] * b),
        "frame_stride": torch.tensor([2] * b),
    }


# ----------------------------------------------------------------------------------------------
# dual cross-attention
# ----------------------------------------------------------------------------------------------
def test_dual_attention_matches_formula_and_gate_starts_at_one():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    proc = DualCrossAttnProcessor(16, 12, text_context_len=5, scale=0.8, scale_learnable=True)
    assert float(proc.gate()) == 1.0  # alpha = 0 -> lambda = tanh(0) + 1 = 1
    attn.set_processor(proc)
    with torch.no_grad():
        proc.alpha.fill_(0.3)
    x, ctx = torch.randn(3, 7, 16), torch.randn(3, 5 + 4, 12)
    out = attn(x, encoder_hidden_states=ctx)

    def sdpa(q, k, v):
        q, k, v = (t.view(3, -1, 2, 8).transpose(1, 2) for t in (q, k, v))
        w = (q @ k.transpose(-1, -2) / math.sqrt(8)).softmax(-1)
        return (w @ v).transpose(1, 2).reshape(3, -1, 16)

    q = attn.to_q(x)
    txt = sdpa(q, attn.to_k(ctx[:, :5]), attn.to_v(ctx[:, :5]))
    img = sdpa(q, proc.to_k_ip(ctx[:, 5:]), proc.to_v_ip(ctx[:, 5:]))
    ref = attn.to_out[0](txt + 0.8 * (math.tanh(0.3) + 1) * img)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # no image tokens: plain text cross-attention
    torch.testing.assert_close(
        attn(x, encoder_hidden_states=ctx[:, :5]), attn.to_out[0](txt), atol=1e-5, rtol=1e-5
    )


def _tiny_unet(learnable: bool) -> DynamiCrafterUNet3DModel:
    torch.manual_seed(0)
    unet = DynamiCrafterUNet3DModel(
        in_channels=8,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        layers_per_block=1,
        attention_head_dim=16,
        cross_attention_dim=32,
        norm_num_groups=8,
        init_attention_heads=2,
        text_context_len=6,
        image_tokens_per_frame=2,
        image_cross_attention_scale_learnable=learnable,
    )
    for p in unet.parameters():  # undo the zero inits so gradients reach every layer
        if p.ndim > 0 and not p.any():
            torch.nn.init.normal_(p, std=0.05)
    return unet


@pytest.mark.parametrize("learnable", [True, False])
def test_gate_gradient_only_where_learnable(learnable):
    unet = _tiny_unet(learnable)
    alphas = [n for n, _ in unet.named_parameters() if n.endswith("processor.alpha")]
    procs = [m for m in unet.modules() if isinstance(m, DualCrossAttnProcessor)]
    assert len(procs) == 4  # spatial attn2 only: down 1 + mid 1 + up 2 (none on temporal layers)
    if not learnable:
        assert alphas == [] and all(float(p.gate()) == 1.0 for p in procs)
        assert not any(isinstance(p, torch.nn.Parameter) for p in (pr.gate() for pr in procs))
        return
    assert len(alphas) == len(procs) and set(gate_values(unet).values()) == {1.0}
    x, ctx = torch.randn(1, 8, 4, 8, 8), torch.randn(1, 6 + 4 * 2, 32)
    unet(x, torch.tensor([500]), ctx).sample.square().mean().backward()
    grads = {n: p.grad for n, p in unet.named_parameters() if n.endswith("alpha")}
    assert all(g is not None and g.abs() > 0 for g in grads.values())


def test_frame_context_gives_each_frame_its_own_tokens():
    b, f, L, n, d = 2, 3, 4, 2, 5
    ctx = torch.randn(b, L + f * n, d)
    out = frame_context(ctx, f, L, n)
    assert out.shape == (b * f, L + n, d)
    for i in range(b):
        for j in range(f):
            torch.testing.assert_close(out[i * f + j, :L], ctx[i, :L])
            torch.testing.assert_close(out[i * f + j, L:], ctx[i, L + j * n : L + (j + 1) * n])
    # a context without per-frame tokens is shared by every frame
    assert torch.equal(frame_context(ctx[:, : L + 1], f, L, n)[1], ctx[0, : L + 1])


# ----------------------------------------------------------------------------------------------
# conditioning
# ----------------------------------------------------------------------------------------------
def test_conditioning_dropout_scheme_and_concat_never_dropped(tmp_path):
    m = build("toy_dynamicrafter_stage3", tmp_path)
    m.uncond_prob = 0.3  # r < 0.6: text dropped; 0.3 <= r < 0.9: image dropped
    batch = toy_batch(b=2)
    latents = m.encode_video(batch["video"])
    seen = set()
    for seed in range(12):
        cond = m.prepare_conditions(batch, latents, torch.Generator().manual_seed(seed), train=True)
        for dt, di, idx, i in zip(cond["drop_text"], cond["drop_image"], cond["cond_frame"], range(2)):
            seen.add((bool(dt), bool(di)))
            # the VDG latent is the clean latent of the conditioning frame on every frame, dropped or not
            expect = latents[i, :, int(idx)][:, None].expand(-1, 8, -1, -1)
            torch.testing.assert_close(cond["concat"][i], expect)
        # the context of a dropped image equals the context of a zero image
        for i in range(2):
            img = batch["video"][i, int(cond["cond_frame"][i])][None]
            tok = m.pipe.image_context(torch.zeros_like(img) if cond["drop_image"][i] else img)
            torch.testing.assert_close(
                cond["context"][i, m.pipe.text_context_len :], tok[0], atol=1e-5, rtol=1e-4
            )
    # r ~ U(0,1): text-only (r<p), both (p<=r<2p), image-only (2p<=r<3p), none; never "image only" below p
    assert seen <= {(True, False), (True, True), (False, True), (False, False)}
    assert {(True, False), (True, True), (False, True)} <= seen
    assert cond["fs"].tolist() == [2, 2]  # 256 recipe: fs = frame stride
    # validation: nothing dropped, conditioning frame 0
    cond = m.prepare_conditions(batch, latents, torch.Generator().manual_seed(0), train=False)
    assert not cond["drop_text"].any() and not cond["drop_image"].any() and not cond["cond_frame"].any()


def test_interp_concat_and_fps_condition(tmp_path):
    m = build("toy_dynamicrafter_interp", tmp_path, "backbone.fps_condition_type=fps")
    batch = toy_batch(b=2)
    latents = m.encode_video(batch["video"])
    cond = m.prepare_conditions(batch, latents, torch.Generator().manual_seed(0), train=True)
    c = cond["concat"]
    torch.testing.assert_close(c[:, :, 0], latents[:, :, 0])
    torch.testing.assert_close(c[:, :, -1], latents[:, :, -1])
    assert not c[:, :, 1:-1].any()
    assert not cond["cond_frame"].any()  # CLIP sees the first frame
    assert cond["fs"].tolist() == [12, 12]  # fps 24 // stride 2


def test_dynamic_rescale_table():
    s = dynamic_rescale_table(1000, 0.3, 400)
    assert (
        s.dtype == torch.float64
        and s[0] == 1.0
        and abs(float(s[399]) - 0.3) < 1e-12
        and (s[400:] == 0.3).all()
    )
    assert (s[1:400] <= s[:399]).all()
    assert ddim_timesteps({"num_train_timesteps": 1000, "timestep_spacing": "trailing"}, 50)[:2] == [999, 979]
    assert ddim_timesteps(
        {"num_train_timesteps": 1000, "timestep_spacing": "leading", "steps_offset": 1}, 50
    )[-2:] == [21, 1]


# ----------------------------------------------------------------------------------------------
# what each stage trains
# ----------------------------------------------------------------------------------------------
def test_trainable_sets_per_stage(tmp_path):
    names = {}
    for stage in ("stage1", "stage2", "stage3"):
        m = build(f"toy_dynamicrafter_{stage}", tmp_path)
        tr = set(m.configure_trainable())
        allp = {n for n, _ in m.named_parameters()}
        names[stage] = (m, tr, allp)
        assert not any(n.startswith(("vae.", "text_encoder.", "image_encoder.")) for n in tr)
        assert {n for n in allp if n.startswith("image_proj_model.")} <= tr
    m1, tr1, all1 = names["stage1"]
    assert not m1.pipe.is_3d and not m1.pipe.vdg
    assert tr1 == {
        n
        for n in all1
        if n.startswith("image_proj_model.")
        or re.fullmatch(r"unet\..*attn2\.processor\.(to_k_ip\.weight|to_v_ip\.weight|alpha)", n)
    }
    for stage, in_ch in (("stage2", 4), ("stage3", 8)):
        m, tr, allp = names[stage]
        assert m.unet.config.in_channels == in_ch and m.pipe.vdg == (in_ch == 8)
        unet_all = {n for n in allp if n.startswith("unet.")}
        temporal = {n for n in unet_all if TEMPORAL.fullmatch(n)}
        assert temporal and not (temporal & tr)  # temporal layers frozen throughout
        assert tr == (unet_all - temporal) | {n for n in allp if n.startswith("image_proj_model.")}
    mr = build("toy_dynamicrafter_stage3", tmp_path, "method=dynamicrafter_release")
    tr = set(mr.configure_trainable())
    assert tr == {n for n, _ in mr.named_parameters() if n.startswith(("unet.", "image_proj_model."))}


def test_t2i_spatial_layers_share_names_with_the_3d_unet(tmp_path):
    m1 = build("toy_dynamicrafter_stage1", tmp_path)
    m2 = build("toy_dynamicrafter_stage2", tmp_path)
    sd1, sd2 = m1.unet.state_dict(), m2.unet.state_dict()
    spatial3d = {k for k in sd2 if not TEMPORAL.fullmatch("unet." + k) and not k.startswith("fps_embedding")}
    assert spatial3d == set(sd1)
    assert all(sd1[k].shape == sd2[k].shape for k in sd1)


def test_init_from_widens_conv_in(tmp_path):
    m2 = build("toy_dynamicrafter_stage2", tmp_path)
    with torch.no_grad():
        m2.unet.conv_in.weight.normal_()
    m2.configure_trainable()
    path = m2.export_trainable(tmp_path / "s2.safetensors")
    m3 = build("toy_dynamicrafter_stage3", tmp_path)
    loaded = m3.init_from(path)
    assert "unet.conv_in.weight" in loaded
    w = m3.unet.conv_in.weight
    assert w.shape[1] == 8
    torch.testing.assert_close(w[:, :4], m2.unet.conv_in.weight)
    assert not w[:, 4:].any()
    torch.testing.assert_close(m3.image_proj_model.latents, m2.image_proj_model.latents)


# ----------------------------------------------------------------------------------------------
# sampling: CFG
# ----------------------------------------------------------------------------------------------
def test_multi_condition_cfg_reductions():
    g = torch.Generator().manual_seed(0)
    c, u, ui = (torch.randn(2, 4, 3, 5, 5, generator=g) for _ in range(3))
    torch.testing.assert_close(combine_guidance(c, u, 6.0, ui, cfg_img=6.0), combine_guidance(c, u, 6.0))
    torch.testing.assert_close(combine_guidance(c, u, 1.0, ui, cfg_img=1.0), c)
    torch.testing.assert_close(combine_guidance(c, u, 3.0, ui, cfg_img=2.0), u + 2 * (ui - u) + 3 * (c - ui))


def test_sampler_keeps_concat_in_uncond_and_multicond_equals_standard(tmp_path):
    m = build("toy_dynamicrafter_stage3", tmp_path)
    for p in m.unet.parameters():  # a non-trivial denoiser
        if p.ndim > 0 and not p.any():
            torch.nn.init.normal_(p, std=0.02)
    m.eval()
    images = toy_batch(b=2)["video"][:, 0]
    calls = []
    original = m.pipe.denoise

    def spy(noisy, t, cond):
        calls.append(cond["concat"])
        return original(noisy, t, cond)

    m.pipe.denoise = spy
    kw = dict(num_frames=8, seed=3, num_inference_steps=3, return_latents=True)
    std = sample_dynamicrafter(m.pipe, ["a", "b"], images, guidance_scale=5.0, **kw)
    concat = calls[0].chunk(2)  # (cond, uncond) batched together
    assert concat[0].abs().sum() > 0
    torch.testing.assert_close(concat[0], concat[1])  # c_concat kept in the unconditional branch
    torch.testing.assert_close(concat[0][:, :, 0], m.encode_image(images))
    calls.clear()
    multi = sample_dynamicrafter(
        m.pipe, ["a", "b"], images, guidance_scale=5.0, multiple_cond_cfg=True, cfg_img=5.0, **kw
    )
    assert calls[0].shape[0] == 6 and all(torch.equal(calls[0][:2], x) for x in calls[0].chunk(3))
    torch.testing.assert_close(multi, std, atol=1e-4, rtol=1e-4)
    different = sample_dynamicrafter(
        m.pipe, ["a", "b"], images, guidance_scale=5.0, multiple_cond_cfg=True, cfg_img=1.0, **kw
    )
    assert not torch.allclose(different, std, atol=1e-4)
    m.pipe.denoise = original
    vid = m.sample(["a"], images=images[:1], num_frames=8, seed=0, num_inference_steps=2, fs=5)
    assert vid.shape == (1, 8, 3, 32, 32) and vid.abs().max() <= 1


def test_training_loss_sees_dynamically_rescaled_x0(tmp_path):
    """512/1024 recipes: both the noisy input and the v target are built from x0 * scale_arr[t]."""
    from i2vlab.diffusion.schedules import training_target

    model = build("toy_dynamicrafter_stage3", tmp_path)
    model.configure_trainable()
    x0 = torch.randn(2, 4, 3, 8, 8)
    t = torch.tensor([0, 999])
    assert torch.equal(model.objective.clean(x0, t), x0)  # off: unchanged
    model.pipe.use_dynamic_rescale, model.pipe.base_scale, model.pipe.turning_step = True, 0.3, 400
    model.objective = model.build_objective()
    scaled = model.objective.clean(x0, t)
    assert torch.allclose(scaled[0], x0[0]) and torch.allclose(scaled[1], 0.3 * x0[1])
    sched = model.pipe.noise_scheduler
    sched.register_to_config(prediction_type="v_prediction")
    video = torch.rand(2, 4, 3, 32, 32) * 2 - 1
    batch = {
        "video": video,
        "caption": ["a", "b"],
        "fps": torch.full((2,), 8.0),
        "frame_stride": torch.ones(2),
    }
    latents = model.encode_latents(batch, None)
    noise = torch.randn_like(latents)
    levels = torch.tensor([999, 999])
    seen = {}

    def denoise(noisy, tt, cond):  # the network: record its input, predict zeros
        seen["noisy"] = noisy
        return torch.zeros_like(noisy)

    model.denoise = denoise
    loss, _ = model.compute_loss(
        batch, torch.Generator().manual_seed(0), levels=levels, train=False, noise=noise, latents=latents
    )
    clean = latents * 0.3  # scale_arr[999] = base_scale
    torch.testing.assert_close(seen["noisy"], sched.add_noise(clean, noise, levels))
    target = training_target(sched, clean, noise, levels)
    torch.testing.assert_close(loss, target.pow(2).mean(dim=(1, 2, 3, 4)))  # zero prediction: |v|^2
    unscaled = training_target(sched, latents, noise, levels).pow(2).mean(dim=(1, 2, 3, 4))
    assert not torch.allclose(loss, unscaled)  # the target side sees the rescale too


def test_dual_cross_attention_honours_an_attention_mask_over_the_context(tmp_path):
    """A boolean mask over [text ; image] tokens: masked text tokens are as if absent (the processor used
    to drop the mask)."""
    from diffusers.models.attention_processor import Attention

    from i2vlab.models.dynamicrafter.attention import DualCrossAttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=8, heads=2, dim_head=8)
    proc = DualCrossAttnProcessor(16, 8, text_context_len=4)
    x, text, image = torch.randn(2, 5, 16), torch.randn(2, 4, 8), torch.randn(2, 3, 8)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[:, 2:4] = False  # hide the last two text tokens
    got = proc(attn, x, torch.cat([text, image], 1), attention_mask=mask)
    short = DualCrossAttnProcessor(16, 8, text_context_len=2)
    short.load_state_dict(proc.state_dict())
    expected = short(attn, x, torch.cat([text[:, :2], image], 1))
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, proc(attn, x, torch.cat([text, image], 1)))
