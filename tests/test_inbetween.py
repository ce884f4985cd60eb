"""Generative Inbetweening: rotated temporal attention, the two-pass training objective, the fused
sampler, TRF, the flow baseline, the SVD -> SVD-XT delta transfer and the full-size trainable count.
All on the tiny SVD backbone (real diffusers / transformers classes, random init)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from safetensors.torch import load_file

from i2vlab.diffusion import edm
from i2vlab.models.attention_control import (
    AttentionFlipProcessor,
    AttentionStore,
    AttentionStoreProcessor,
    rotate_map,
)
from i2vlab.pipelines.inbetween import flow_interpolate, sample_inbetween, sample_trf, trf_step_schedule

REPO = Path(__file__).resolve().parents[1]
F, HW, LAT = 4, 32, 8


def compose_cfg(overrides: list[str], tmp: Path | None = None):
    tmp = tmp or Path("/tmp/i2vlab_test_inbetween")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp}", f"paths.root_dir={REPO}", *overrides])


def build_module(seed: int = 0):
    cfg = compose_cfg(["experiment=toy_inbetween"])
    torch.manual_seed(seed)
    m = instantiate(cfg.method, _convert_="partial")
    m.configure_trainable()
    return m


@pytest.fixture(scope="module")
def module():
    return build_module()


def toy_video(b: int = 2, seed: int = 0) -> torch.Tensor:
    """(b f c h w) in [-1, 1]: a bright square moving right over a smooth background (frames differ)."""
    g = torch.Generator().manual_seed(seed)
    bg = torch.nn.functional.interpolate(torch.rand(b, 3, 4, 4, generator=g), size=(HW, HW), mode="bilinear")
    frames = []
    for t in range(F):
        x = bg.clone()
        x[:, :, 10:18, 2 + 5 * t : 10 + 5 * t] = 1.0
        frames.append(x)
    return torch.stack(frames, 1) * 2 - 1


def trainable_names(m) -> list[str]:
    return list(m.configure_trainable())


# ----------------------------------------------------------------------------------------------
# rotated attention
# ----------------------------------------------------------------------------------------------
def test_rotate_map_is_180_degree_rotation_and_an_involution():
    a = torch.rand(3, 2, 5, 5)
    r = rotate_map(a)
    for j in range(5):
        for k in range(5):
            assert torch.equal(r[..., j, k], a[..., 4 - j, 4 - k])
    assert torch.equal(rotate_map(r), a)
    assert not torch.equal(r, a)


def test_reference_pass_stores_every_temporal_layer(module):
    names = module.pipe.controlled_layers
    assert len(names) == 4 and all(n.endswith("temporal_transformer_blocks.0.attn1") for n in names)
    assert [n.split(".")[0] for n in names] == ["down_blocks", "mid_block", "up_blocks", "up_blocks"]
    for n in names:
        assert isinstance(module.ref_unet.get_submodule(n).processor, AttentionStoreProcessor)
        assert isinstance(module.unet.get_submodule(n).processor, AttentionFlipProcessor)
    batch = {"video": toy_video(2)}
    with torch.no_grad():
        module.compute_loss(batch, torch.Generator().manual_seed(0))
    assert sorted(module.pipe.attention_store.maps) == sorted(names)
    for n in names:
        p = module.pipe.attention_store.maps[n]
        heads = module.ref_unet.get_submodule(n).heads
        assert p.shape[1:] == (heads, F, F) and p.shape[0] % 2 == 0
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))  # row-stochastic
        torch.testing.assert_close(rotate_map(rotate_map(p)), p)


def test_flip_processor_output_is_rotated_map_times_own_values(module):
    name = module.pipe.controlled_layers[0]
    attn = module.unet.get_submodule(name)
    n, c = 3, attn.to_v.in_features
    x = torch.randn(n, F, c)
    store = AttentionStore()
    p = torch.softmax(torch.randn(n, attn.heads, F, F), -1)
    store.put(name, p)
    attn.set_processor(AttentionFlipProcessor(store, name))
    try:
        with torch.no_grad():
            out = attn(x)
            # by hand: per head, out_h = rot(P_h) @ (x W_v)_h, heads concatenated, then to_out
            v = x @ attn.to_v.weight.T
            v = v.view(n, F, attn.heads, c // attn.heads).permute(0, 2, 1, 3)  # n h f d
            pr = p.flip(-1).flip(-2)
            o = torch.einsum("nhjk,nhkd->nhjd", pr, v).permute(0, 2, 1, 3).reshape(n, F, c)
            expected = o @ attn.to_out[0].weight.T + attn.to_out[0].bias
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        # its own query/key projections play no part
        with torch.no_grad():
            attn.to_q.weight.add_(1.0)
            attn.to_k.weight.mul_(-3.0)
            torch.testing.assert_close(attn(x), out)
    finally:
        with torch.no_grad():
            attn.to_k.weight.div_(-3.0)
            attn.to_q.weight.sub_(1.0)
        attn.set_processor(AttentionFlipProcessor(module.pipe.attention_store, name))


def test_flip_processor_requires_the_reference_pass(module):
    store = AttentionStore()
    name = module.pipe.controlled_layers[0]
    attn = module.unet.get_submodule(name)
    attn.set_processor(AttentionFlipProcessor(store, name))
    try:
        with pytest.raises(RuntimeError, match="reference"):
            attn(torch.randn(2, F, attn.to_v.in_features))
    finally:
        attn.set_processor(AttentionFlipProcessor(module.pipe.attention_store, name))


# ----------------------------------------------------------------------------------------------
# training objective
# ----------------------------------------------------------------------------------------------
def test_trainable_parameters_are_v_and_out_weights_of_temporal_self_attention(module):
    names = trainable_names(module)
    assert len(names) == 2 * len(module.pipe.controlled_layers)
    expected = {f"unet.{n}.to_v.weight" for n in module.pipe.controlled_layers}
    expected |= {f"unet.{n}.to_out.0.weight" for n in module.pipe.controlled_layers}
    assert set(names) == expected
    assert all(not p.requires_grad for p in module.ref_unet.parameters())


def test_training_batch_is_time_reversed_and_conditioned_on_the_last_frame(module, monkeypatch):
    from einops import rearrange

    import i2vlab.methods.inbetween as method_mod

    video = toy_video(2, seed=3)
    z_rev = module.encode_latents({"video": video}, None)  # the VAE mode (no generator): b c f h w
    lat = module.encode_video(video)  # forward in time
    torch.testing.assert_close(z_rev, lat.flip(2))  # target = reversed clip
    assert not torch.allclose(z_rev, lat)
    cond = module.prepare_conditions({"video": video}, z_rev, torch.Generator().manual_seed(7))
    img_noise = torch.randn(video[:, 0].shape, generator=torch.Generator().manual_seed(7))  # its one draw
    emb_last, lat_last = module.pipe.encode_condition(video[:, -1], img_noise)
    emb_first, lat_first = module.pipe.encode_condition(video[:, 0], img_noise)
    torch.testing.assert_close(cond["cond"][0], emb_last)
    torch.testing.assert_close(cond["cond"][1], lat_last)
    torch.testing.assert_close(cond["ref"][0], emb_first)
    torch.testing.assert_close(cond["ref"][1], lat_first)
    assert not torch.allclose(cond["cond"][0], cond["ref"][0])
    # conditioning latents: unscaled VAE mode of the frame plus 0.02 noise
    expected = module.vae.encode(video[:, -1] + 0.02 * img_noise).latent_dist.mode()
    torch.testing.assert_close(cond["cond"][1], expected)
    torch.testing.assert_close(cond["time_ids"], torch.tensor([[6.0, 127.0, 0.02]]).repeat(2, 1))
    # the reference UNet sees the forward video (the noisy reversed one flipped back), first
    calls, forward = [], method_mod.svd_unet_forward
    monkeypatch.setattr(
        method_mod, "svd_unet_forward", lambda unet, x, *a: calls.append((unet, x)) or forward(unet, x, *a)
    )
    noisy = torch.randn(z_rev.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        module.denoise(noisy, torch.tensor([1.0, 2.0]), cond)
    assert [c[0] for c in calls] == [module.ref_unet, module.unet]
    torch.testing.assert_close(calls[0][1], rearrange(noisy, "b c f h w -> b f c h w").flip(1))
    torch.testing.assert_close(calls[1][1], rearrange(noisy, "b c f h w -> b f c h w"))


def test_loss_is_edm_objective_gradients_reach_only_v_and_out_and_checkpointing_keeps_layers_aligned(module):
    batch = {"video": toy_video(1)}
    sig = torch.tensor([1.5])
    module.train()
    module.zero_grad(set_to_none=True)
    loss, _ = module.compute_loss(batch, torch.Generator().manual_seed(2), levels=sig)
    loss.sum().backward()
    # exactly the two weights per temporal self-attention layer receive gradients (the flip layers'
    # own query/key are unused; see also the flip-processor test)
    got = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert got == set(trainable_names(module))
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}
    # the loss by hand, from the same inputs
    with torch.no_grad():
        z_rev = module.encode_latents(batch, None)
        noise = torch.randn(z_rev.shape, generator=torch.Generator().manual_seed(3))
        loss_fixed, _ = module.compute_loss(
            batch, torch.Generator().manual_seed(2), levels=sig, noise=noise, latents=z_rev
        )
        cond = module.prepare_conditions(batch, z_rev, torch.Generator().manual_seed(2))
        x = z_rev + sig.view(1, 1, 1, 1, 1) * noise
        out = module.denoise(x, sig, cond)
        s = sig.view(1, 1, 1, 1, 1)
        d = x / (s**2 + 1) - s / (s**2 + 1).sqrt() * out
        manual = ((1 + sig**2) / sig**2) * (d - z_rev).pow(2).mean(dim=(1, 2, 3, 4))
    torch.testing.assert_close(loss_fixed, manual, rtol=1e-5, atol=1e-7)
    # gradient checkpointing recomputes the flip layers in backward: same loss and gradients
    module.zero_grad(set_to_none=True)
    module.unet.enable_gradient_checkpointing()
    try:
        loss2, _ = module.compute_loss(batch, torch.Generator().manual_seed(2), levels=sig)
        loss2.sum().backward()
    finally:
        module.unet.disable_gradient_checkpointing()
    torch.testing.assert_close(loss2.detach(), loss.detach())
    params = dict(module.named_parameters())
    for n, gr in grads.items():
        torch.testing.assert_close(params[n].grad, gr, rtol=1e-4, atol=1e-7)
    module.zero_grad(set_to_none=True)
    module.eval()


def test_loss_falls_when_fitting_a_batch(module):
    batch = {"video": toy_video(1, seed=5)}
    sig = torch.tensor([1.2])
    start = {k: v.clone() for k, v in module.state_dict().items()}
    opt = torch.optim.Adam(module.trainable_parameters(), lr=3e-2)

    def fixed_loss() -> float:
        with torch.no_grad():
            return module.compute_loss(batch, torch.Generator().manual_seed(0), levels=sig)[0].mean().item()

    try:
        module.train()
        before = fixed_loss()
        for _ in range(4):
            loss, _ = module.compute_loss(batch, torch.Generator().manual_seed(0), levels=sig)
            opt.zero_grad()
            loss.mean().backward()
            opt.step()
        after = fixed_loss()
        assert after < 0.9 * before, (before, after)
        moved = {n for n, p in module.state_dict().items() if not torch.equal(p, start[n])}
        assert moved == set(trainable_names(module))  # only the trainable weights moved
    finally:
        module.load_state_dict(start)
        module.zero_grad(set_to_none=True)
        module.eval()


# ----------------------------------------------------------------------------------------------
# EDM helpers against diffusers
# ----------------------------------------------------------------------------------------------
def test_edm_euler_step_and_schedule_match_diffusers_euler_scheduler():
    sched = edm.build_euler_scheduler()
    sigmas = edm.sampling_sigmas(sched, 8)
    assert len(sigmas) == 9 and sigmas[-1] == 0 and math.isclose(float(sigmas[0]), 700.0, rel_tol=1e-4)
    assert torch.equal(sched.timesteps.float(), edm.c_noise(sigmas[:-1]))
    torch.testing.assert_close(sigmas[:-1], edm.karras_sigmas(8), rtol=1e-4, atol=1e-6)
    x, v = torch.randn(1, 3, 4, 4, 4), torch.randn(1, 3, 4, 4, 4)
    for i in range(8):  # float32: the same operations as the scheduler, bit-identical
        sched.set_timesteps(8)
        sched.set_begin_index(i)
        scaled = sched.scale_model_input(x, sched.timesteps[i])
        expected = sched.step(v, sched.timesteps[i], x).prev_sample
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        assert torch.equal(edm.scale_input(x, s), scaled)
        assert torch.equal(edm.euler_step(x, edm.denoised(v, x, s), s, s_next), expected)


def test_training_sigmas_are_lognormal_and_strata_are_its_quantiles():
    s = edm.sample_sigmas(20000, torch.Generator().manual_seed(0))
    assert abs(s.log().mean().item() - 0.7) < 0.05 and abs(s.log().std().item() - 1.6) < 0.05
    q = edm.stratified_sigmas(4)
    assert torch.all(q[1:] > q[:-1])
    frac = [(s < qi).float().mean().item() for qi in q]
    np.testing.assert_allclose(frac, [0.125, 0.375, 0.625, 0.875], atol=0.02)


# ----------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------
def _keyframes(b: int = 1):
    v = toy_video(b, seed=11)
    return v[:, 0], v[:, -1]


def _symmetric_noise(shape, seed):
    n = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return (n + n.flip(1)) / math.sqrt(2)


def test_fused_sampler_is_time_symmetric_for_identical_keyframes_and_a_symmetric_model(module):
    first, last = _keyframes()
    shape = (1, F, 4, LAT, LAT)
    z0 = _symmetric_noise(shape, 0)
    counter = {"n": 0}

    def symmetric_sampler(z):
        counter["n"] += 1
        return _symmetric_noise(z.shape, 100 + counter["n"])

    # the same network in both directions (forward SVD), identical keyframes
    kw = dict(
        num_inference_steps=4,
        noise_injection_steps=2,
        noise_injection_ratio=0.5,
        latents=z0,
        forward_unet=module.ref_unet,
        backward_unet=module.ref_unet,
        return_latents=True,
    )
    z = sample_inbetween(module.pipe, first, first, F, noise_sampler=symmetric_sampler, **kw)
    assert counter["n"] == 2 * 2  # injections: 2 per step on int(4 * 0.5) = 2 steps
    torch.testing.assert_close(z, z.flip(1), rtol=1e-4, atol=1e-4)
    assert z.std() > 0.05
    # different keyframes break the symmetry (the check above is not vacuous)
    counter["n"] = 0
    z2 = sample_inbetween(module.pipe, first, last, F, noise_sampler=symmetric_sampler, **kw)
    assert (z2 - z2.flip(1)).abs().max() > 1e-2
    # TRF is symmetric in the same sense (no jumps: their noise is not symmetric)
    zt = sample_trf(
        module.pipe,
        first,
        first,
        F,
        num_inference_steps=4,
        repeat_step_ratio=1.0,
        latents=z0,
        return_latents=True,
    )
    torch.testing.assert_close(zt, zt.flip(1), rtol=1e-4, atol=1e-4)


def test_noise_reinjection_counts_and_forward_runs_before_backward(module):
    first, last = _keyframes()
    calls = []
    h1 = module.ref_unet.register_forward_hook(lambda *a: calls.append("fwd"))
    h2 = module.unet.register_forward_hook(lambda *a: calls.append("bwd"))
    try:
        sample_inbetween(
            module.pipe,
            first,
            last,
            F,
            num_inference_steps=4,
            noise_injection_steps=3,
            noise_injection_ratio=0.5,
            return_latents=True,
        )
    finally:
        h1.remove()
        h2.remove()
    assert calls == ["fwd", "bwd"] * (4 + 3 * 2)  # 4 steps + 3 re-injections on the first 2


def test_fp16_vae_encodes_the_keyframes_in_float32_as_the_svd_pipeline(module):
    import copy

    from i2vlab.pipelines.inbetween import encode_keyframes

    m = copy.deepcopy(module)
    m.vae.half()
    assert m.vae.config.force_upcast
    seen = []
    m.vae.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    first, last = _keyframes()
    c0, c1 = encode_keyframes(m.pipe, first, last, torch.Generator().manual_seed(0), cfg=True)
    assert seen == [torch.float32, torch.float32] and m.vae.dtype == torch.float16
    assert c0.latents.dtype == torch.float32 and torch.isfinite(c0.latents).all()


def test_trf_schedule_matches_repaint_jumps():
    order = trf_step_schedule(50, jump_length=5, jump_n_sample=2, repeat_step_ratio=0.8)
    assert order[:16] == list(range(10)) + [8, 7, 6, 5, 4, 5]
    assert order[-1] == 49 and len(order) == 60
    assert trf_step_schedule(10, 5, 2, 1.0) == list(range(10))


@pytest.mark.parametrize("method", ["ours", "trf", "flow"])
def test_sample_returns_in_between_video(module, method):
    first, last = _keyframes(1)
    v = module.sample(
        [""],
        images=first,
        last_images=last,
        num_frames=F,
        seed=0,
        method=method,
        num_inference_steps=3,
        noise_injection_steps=1,
    )
    assert v.shape == (1, F, 3, HW, HW) and v.min() >= -1 and v.max() <= 1
    assert torch.isfinite(v).all()
    if method == "flow":  # the flow baseline warps the keyframes themselves: they come back exactly
        torch.testing.assert_close(v[:, 0], first, atol=1 / 127, rtol=0)
        torch.testing.assert_close(v[:, -1], last, atol=1 / 127, rtol=0)
    else:
        # a random tiny UNet cannot reproduce keyframes (the trained toy model does: see
        # test_toy_world.py, keyframe PSNR >= 25 dB); here: both keyframes steer the video, and the
        # seed fixes it
        kw = dict(num_frames=F, seed=0, method=method, num_inference_steps=3, noise_injection_steps=1)
        again = module.sample([""], images=first, last_images=last, **kw)
        torch.testing.assert_close(again, v, rtol=0, atol=0)
        other_last = module.sample([""], images=first, last_images=-last, **kw)
        other_first = module.sample([""], images=-first, last_images=last, **kw)
        assert (other_last - v).abs().mean() > 1e-4 and (other_first - v).abs().mean() > 1e-4
    with pytest.raises(ValueError, match="two keyframes"):
        module.sample([""], images=first[:1], num_frames=F, method=method)


def test_flow_baseline_follows_motion():
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")

    def blob(cx):
        img = torch.exp(-((xx - cx) ** 2 + (yy - 32) ** 2) / 60.0)
        return (img * 2 - 1).expand(3, -1, -1)[None]

    v = flow_interpolate(blob(24), blob(40), 3)
    mid = v[0, 1]
    err_flow = (mid - blob(32)[0]).abs().mean()
    err_blend = ((blob(24)[0] + blob(40)[0]) / 2 - blob(32)[0]).abs().mean()
    assert err_flow < 0.5 * err_blend, (err_flow, err_blend)


# ----------------------------------------------------------------------------------------------
# SVD -> SVD-XT delta transfer, full-size count
# ----------------------------------------------------------------------------------------------
def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_svd_to_svd_xt_delta_transfer_changes_only_the_trained_weights(module, tmp_path):
    from diffusers import UNetSpatioTemporalConditionModel
    from safetensors.torch import save_file

    transfer = _load_script("transfer_svd_delta")
    start = {k: v.clone() for k, v in module.state_dict().items()}
    module.unet.save_pretrained(tmp_path / "svd" / "unet")  # "SVD 14", the base of the fine-tuning
    base_sd = {k: v.clone() for k, v in module.unet.state_dict().items()}
    torch.manual_seed(1)  # "SVD-XT": same architecture, other weights
    target = UNetSpatioTemporalConditionModel.from_config(module.unet.config).state_dict()
    save_file({k: v.contiguous() for k, v in target.items()}, str(tmp_path / "xt.safetensors"))
    try:
        with torch.no_grad():  # "fine-tune": move the trainable weights
            for p in module.trainable_parameters():
                p.add_(torch.randn_like(p) * 0.1)
        ft_path = module.export_trainable(tmp_path / "run" / "export" / "trainable.safetensors")
        args = [
            "--finetuned",
            str(ft_path),
            "--base",
            str(tmp_path / "svd"),
            "--target",
            str(tmp_path / "xt.safetensors"),
        ]
        out = transfer.main(args)
        assert out == tmp_path / "run" / "export" / "trainable_svd_xt.safetensors"
        moved, ft = load_file(str(out)), load_file(str(ft_path))
        assert set(moved) == set(ft) == set(trainable_names(module))
        for k, w in moved.items():
            u = k[len("unet.") :]
            torch.testing.assert_close(w, target[u] + (ft[k] - base_sd[u]))
            assert not torch.allclose(w, ft[k])
        # loading the transferred weights changes exactly those tensors
        before = {k: v.clone() for k, v in module.state_dict().items()}
        module.load_trainable(out)
        changed = {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}
        assert changed == set(moved)
    finally:
        module.load_state_dict(start)


def test_full_size_trainable_count_on_meta_device():
    report = _load_script("param_report").report(["backbone=svd", "method=inbetween", "+meta=true"])
    assert report.splitlines()[-1].startswith("trainable=24780800 ")
    frozen = int(report.splitlines()[-1].split("frozen=")[1])
    assert frozen > 3_000_000_000  # two SVD UNets + VAE + CLIP ViT-H, all built on meta


def test_missing_svd_weights_fail_at_start_naming_the_config_key(tmp_path):
    from hydra.errors import InstantiationException

    cfg = compose_cfg(
        ["backbone=svd", "method=inbetween", f"backbone.pretrained={tmp_path}/no-svd"], tmp_path
    )
    with pytest.raises(
        InstantiationException, match=r"WeightsNotFoundError.*backbone\.unet.*stable-video-diffusion"
    ):
        instantiate(cfg.method, _convert_="partial")
