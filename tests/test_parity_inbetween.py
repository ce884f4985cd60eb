"""Generative Inbetweening against the official code (jeanne-wang/svd_keyframe_interpolation).

Fixtures (``tests/fixtures/parity/inbetween/``, made by ``scripts/parity/inbetween.py`` with a
checkout of the official repository) hold tiny seeded networks and what the official processors,
training step, pipeline and scheduler computed with them. Here the same weights go into *our*
classes (the stock diffusers / transformers models through our builders, our processors, our
method and sampler), and the results are compared:

- stored and rotated temporal attention maps, per layer, and both UNet outputs (float64);
- one training step: loss per sample and the gradient of every trainable weight (float64);
- the fused bidirectional sampler with noise re-injection, after every step (float64; the official
  scheduler rounds the sample to float32 at every step, see ``SAMPLER_RTOL``);
- the Karras σ schedule, timesteps, ``init_noise_sigma``, input scaling and one Euler step (float32).

Each comparison is paired with a guard: the same run with one key piece broken (no 180° rotation,
wrong conditioning frame, wrong loss weight, wrong fusion weights, wrong re-injection scale, ...)
must miss the fixture by orders of magnitude, so the fixtures do discriminate.
"""

from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange
from parity_helpers import assert_rel_close, load_fixture, rel_err

from i2vlab.diffusion import edm
from i2vlab.methods import inbetween as method_mod
from i2vlab.models import attention_control as ac
from i2vlab.models.svd import build_image_encoder, build_image_processor, build_svd_unet, build_svd_vae

GROUP = "inbetween"
#: the official scheduler casts the sample to float32 at every step (``step``: ``sample =
#: sample.to(torch.float32)``), so its float64 run carries float32 rounding; ours keeps float64.
#: Measured 5.4e-8 (equal weights) / 4.9e-8 (weighted); 0 with that cast replayed (test below)
SAMPLER_RTOL = 2e-7
#: a broken piece must miss the fixture by at least this much
BROKEN = 1e-3
TRAINABLE = [
    r"unet\..*temporal_transformer_blocks\.0\.attn1\.to_v\.weight",
    r"unet\..*temporal_transformer_blocks\.0\.attn1\.to_out\.0\.weight",
]
V_OUT = (
    "temporal_transformer_blocks.0.attn1.to_v.weight",
    "temporal_transformer_blocks.0.attn1.to_out.0.weight",
)


@pytest.fixture(scope="module")
def weights():
    return load_fixture(GROUP, "weights")


def _load(net: torch.nn.Module, weights, key: str) -> torch.nn.Module:
    net.double()
    net.load_state_dict(weights.group(f"official.{key}."))  # float16 values, copied into float64
    return net.eval().requires_grad_(False)


def unet(weights, key: str):
    return _load(build_svd_unet(config=weights.config["unet"]), weights, key)


def make_module(weights, clip: str):
    """Our method on the fixture's networks, float64: ``unet_a`` as the base (its copy is the reference)."""
    cfg = weights.config
    module = method_mod.GenerativeInbetweening(
        unet=unet(weights, "unet_a"),
        vae=_load(build_svd_vae(config=cfg["vae"]), weights, "vae"),
        image_encoder=_load(build_image_encoder(config=cfg[clip]), weights, clip),
        image_processor=build_image_processor(
            config={"image_mean": cfg["image_mean"], "image_std": cfg["image_std"]}
        ),
        noise_scheduler=edm.build_euler_scheduler(config=cfg["scheduler"]),
        trainable=TRAINABLE,
    )
    module.configure_trainable()
    return module.double()


def layer_names(fx) -> dict[str, str]:
    """Official store key ``place.index`` -> layer name (the official store lists layers by call order)."""
    out, count = {}, {}
    for name in fx.meta["layer_order"]:
        place = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}[name.split(".")[0]]
        out[f"{place}.{count.setdefault(place, 0)}"] = name
        count[place] += 1
    return out


# ----------------------------------------------------------------------------------------------
# attention maps
# ----------------------------------------------------------------------------------------------
def run_attention(weights, fx):
    ref, flip = unet(weights, "unet_a"), unet(weights, "unet_b")
    store = ac.AttentionStore()
    names = ac.install_store_processors(ref, store)
    ac.install_flip_processors(flip, store, names)
    kw = {"added_time_ids": fx["in.time_ids"], "return_dict": False}
    with torch.no_grad():
        ref_out = ref(
            fx["in.ref_sample"], fx["in.timestep"], encoder_hidden_states=fx["in.ref_embeds"], **kw
        )[0]
        flip_out = flip(
            fx["in.flip_sample"], fx["in.timestep"], encoder_hidden_states=fx["in.flip_embeds"], **kw
        )[0]
    return store, ref_out, flip_out


def test_attention_maps_and_flip_pass_match_official(weights):
    fx = load_fixture(GROUP, "attention")
    store, ref_out, flip_out = run_attention(weights, fx)
    names = layer_names(fx)
    assert sorted(names.values()) == sorted(store.maps) and len(names) == 4
    for key, name in names.items():
        assert_rel_close(store.maps[name], fx[f"out.maps.{key}"], what=f"stored map {key} ({name})")
    assert_rel_close(ref_out, fx["out.ref"], what="reference UNet output")
    assert_rel_close(flip_out, fx["out.flip"], what="flip UNet output")


def test_attention_guard_without_rotation_misses_the_fixture(weights, monkeypatch):
    fx = load_fixture(GROUP, "attention")
    monkeypatch.setattr(ac, "rotate_map", lambda p: p)
    _, ref_out, flip_out = run_attention(weights, fx)
    assert rel_err(ref_out, fx["out.ref"]) < 1e-10  # the reference pass does not rotate
    assert rel_err(flip_out, fx["out.flip"]) > BROKEN


# ----------------------------------------------------------------------------------------------
# training step
# ----------------------------------------------------------------------------------------------
def training_step(weights, fx, broken: str | None = None, monkeypatch=None):
    """Our method's loss (the core's ``compute_loss`` with the method's hooks) on the fixture's step,
    the official draws replayed: σ as ``levels``, the reversed clip's latents and noise as ``latents``
    and ``noise``, the conditioning-frame noise through :meth:`conditioning_noise`. ``broken`` breaks
    one piece on purpose (the guards)."""
    module = make_module(weights, "clip224")
    b_sd = weights.group("official.unet_b.")
    with torch.no_grad():  # the trainable UNet at a later step: unet_b's to_v / to_out.0 weights
        for name, p in module.unet.named_parameters():
            if name.endswith(V_OUT):
                p.copy_(b_sd[name].double())
    module.train()
    module.conditioning_noise = lambda shape, g: fx["in.cond_noise"]
    seen: dict = {}
    prepare = module.prepare_conditions

    def prepare_conditions(batch, latents, g, train=True):
        cond = prepare(batch, latents, g, train)
        seen.update(cond)
        if broken == "conditions_swapped":
            cond = {**cond, "cond": cond["ref"], "ref": cond["cond"]}
        return cond

    module.prepare_conditions = prepare_conditions
    if (
        broken == "ref_pass_on_reversed_video"
    ):  # the reference pass sees the reversed video, not the forward one
        forward = method_mod.svd_unet_forward

        def svd_unet_forward(unet, x, *args):
            return forward(unet, x.flip(1) if unet is module.ref_unet else x, *args)

        monkeypatch.setattr(method_mod, "svd_unet_forward", svd_unet_forward)
    if broken == "unit_loss_weight":
        module.objective.weight = lambda s: torch.ones_like(s)
    loss, _ = module.compute_loss(
        {"video": fx["in.video"]},
        torch.Generator().manual_seed(0),
        levels=fx["in.sigma"],
        latents=rearrange(fx["in.latents"], "b f c h w -> b c f h w"),  # the reversed clip's latents
        noise=rearrange(fx["in.noise"], "b f c h w -> b c f h w"),
    )
    loss.mean().backward()
    grads = {n[len("unet.") :]: p.grad for n, p in module.named_parameters() if p.requires_grad}
    return seen, loss, grads


def test_training_loss_and_gradients_match_official(weights):
    fx = load_fixture(GROUP, "training")
    x, loss, grads = training_step(weights, fx)
    assert_rel_close(x["cond"][0], fx["out.cond_embeds"], what="CLIP embedding of the last frame")
    assert_rel_close(x["ref"][0], fx["out.ref_embeds"], what="CLIP embedding of the first frame")
    assert_rel_close(x["cond"][1], fx["out.cond_latents"], what="VAE mode of the noisy last frame")
    assert_rel_close(x["ref"][1], fx["out.ref_latents"], what="VAE mode of the noisy first frame")
    assert_rel_close(loss.detach(), fx["out.loss_per_sample"], what="loss per sample")
    assert_rel_close(loss.detach().mean(), fx["out.loss"], what="loss")
    expected = fx.group("out.grad.")
    assert sorted(grads) == sorted(expected) and len(expected) == 8
    for name, g in grads.items():
        assert_rel_close(g, expected[name], what=f"gradient of {name}")


@pytest.mark.parametrize(
    "broken",
    [
        "no_rotation",
        "ref_pass_on_reversed_video",
        "conditions_swapped",
        "unit_loss_weight",
    ],
)
def test_training_guards_miss_the_fixture(weights, broken, monkeypatch):
    fx = load_fixture(GROUP, "training")
    if broken == "no_rotation":
        monkeypatch.setattr(ac, "rotate_map", lambda p: p)
    _, loss, grads = training_step(weights, fx, None if broken == "no_rotation" else broken, monkeypatch)
    errs = [rel_err(loss.detach(), fx["out.loss_per_sample"])]
    errs += [rel_err(g, fx[f"out.grad.{n}"]) for n, g in grads.items()]
    assert max(errs) > BROKEN, errs


# ----------------------------------------------------------------------------------------------
# fused sampler
# ----------------------------------------------------------------------------------------------
def run_sampler(weights, fx, **overrides):
    module = make_module(weights, "clip16")
    module.unet.load_state_dict(weights.group("official.unet_b."))  # the fine-tuned model: other weights
    call = fx.meta["call"]
    injections = iter(fx[f"in.inject.{k}"] for k in range(1000) if f"in.inject.{k}" in fx)
    scale = overrides.pop("injection_scale", 1.0)
    steps: list[torch.Tensor] = []
    opts = {
        "method": "ours",
        "num_inference_steps": call["num_inference_steps"],
        "noise_injection_steps": call["noise_injection_steps"],
        "noise_injection_ratio": call["noise_injection_ratio"],
        "min_guidance_scale": call["min_guidance_scale"],
        "max_guidance_scale": call["max_guidance_scale"],
        "fps": call["fps"],
        "motion_bucket_id": call["motion_bucket_id"],
        "noise_aug_strength": call["noise_aug_strength"],
        "weighted_average": call["weighted_average"],
        **overrides,
    }
    z = module.sample(
        ["", ""],
        images=fx["in.image1"] * 2 - 1,  # the official tensors are in [0, 1], ours in [-1, 1]
        last_images=fx["in.image2"] * 2 - 1,
        num_frames=fx["in.latents"].shape[1],
        latents=fx["in.latents"],
        cond_noise=fx["in.cond_noise"],
        noise_sampler=lambda z: next(injections) * scale,
        step_callback=lambda i, z: steps.append(z.clone()),
        return_latents=True,
        **opts,
    )
    return z, steps


@pytest.mark.parametrize("name", ["sampler", "sampler_weighted"])
def test_fused_sampler_matches_official_pipeline_every_step(weights, name):
    fx = load_fixture(GROUP, name)
    z, steps = run_sampler(weights, fx)
    assert z.dtype == torch.float64
    n = fx.meta["call"]["num_inference_steps"]
    assert len(steps) == n
    for i, s in enumerate(steps):
        assert_rel_close(s, fx[f"out.step.{i}"], rtol=SAMPLER_RTOL, what=f"latents after step {i}")
    assert_rel_close(z, fx["out.latents"], rtol=SAMPLER_RTOL, what="final latents")


def test_fused_sampler_is_exact_with_the_official_float32_step_replayed(weights, monkeypatch):
    """The only difference left: the official ``EulerDiscreteScheduler.step`` casts the sample to
    float32 and then computes ``sample / (σ² + 1)`` and ``sample + (sample - D) / σ · dt`` from it.
    Replaying that cast on our side makes the float64 runs agree to the last bit."""
    from i2vlab.pipelines import inbetween as pipe_mod

    def denoised32(v, x, s):
        s = edm.as_sigma(s)
        return v * edm.c_out(s) + x.to(torch.float32) / (s**2 + 1.0)

    def euler32(x, d, s, s_next):
        x32, s, s_next = x.to(torch.float32), edm.as_sigma(s), edm.as_sigma(s_next)
        return (x32 + (x32 - d) / s * (s_next - s)).to(d.dtype)

    monkeypatch.setattr(pipe_mod, "denoised", denoised32)
    monkeypatch.setattr(edm, "euler_step", euler32)
    for name in ("sampler", "sampler_weighted"):
        fx = load_fixture(GROUP, name)
        z, steps = run_sampler(weights, fx)
        for i, s in enumerate(steps):
            assert_rel_close(s, fx[f"out.step.{i}"], what=f"{name}: latents after step {i}")
        assert_rel_close(z, fx["out.latents"], what=f"{name}: final latents")


@pytest.mark.parametrize(
    "broken",
    ["no_rotation", "fusion_weights", "injection_scale", "uncond_scale"],
)
def test_sampler_guards_miss_the_fixture(weights, broken, monkeypatch):
    fx = load_fixture(GROUP, "sampler")
    overrides = {}
    if broken == "no_rotation":
        monkeypatch.setattr(ac, "rotate_map", lambda p: p)
    elif broken == "fusion_weights":  # per-frame linspace(1, 0) weights instead of 0.5 / 0.5
        overrides["weighted_average"] = True
    elif broken == "injection_scale":  # re-injection noise 10 % too strong
        overrides["injection_scale"] = 1.1
    else:  # CFG scale 1 -> 3 symmetrised gives 2 per frame; 1 -> 2.5 gives 1.75
        overrides["max_guidance_scale"] = 2.5
    z, _ = run_sampler(weights, fx, **overrides)
    assert rel_err(z, fx["out.latents"]) > BROKEN


# ----------------------------------------------------------------------------------------------
# scheduler
# ----------------------------------------------------------------------------------------------
def test_karras_schedule_timesteps_and_euler_step_match_official_scheduler(weights):
    fx = load_fixture(GROUP, "scheduler")
    assert fx.meta["config"] == edm.SVD_SCHEDULER_CONFIG == weights.config["scheduler"]
    sched = edm.build_euler_scheduler()
    for n in (4, 25, 50):
        sig = edm.sampling_sigmas(sched, n)
        assert torch.equal(sig, fx[f"out.sigmas.{n}"]), n  # bit-identical σ table (float32)
        assert_rel_close(edm.c_noise(sig[:-1]), fx[f"out.timesteps.{n}"], rtol=0, what="timesteps")
        assert edm.init_noise_sigma(sig) == float(fx[f"out.init_noise_sigma.{n}"])
    n, i = fx.meta["step"]["num_inference_steps"], fx.meta["step"]["index"]
    sig = edm.sampling_sigmas(sched, n)
    x, v = fx["in.x"], fx["in.v"]
    s, s_next = float(sig[i]), float(sig[i + 1])
    # float32 in, the same operations as the scheduler: bit-identical
    assert torch.equal(edm.scale_input(x, s), fx["out.scaled"])
    assert torch.equal(edm.euler_step(x, edm.denoised(v, x, s), s, s_next), fx["out.prev_sample"])
    assert math.isclose(s, float(fx["out.sigmas.25"][i]))
    # guard: the σ of the next step (the official scheduler does not advance its step index by itself)
    assert (
        rel_err(
            edm.euler_step(x, edm.denoised(v, x, s_next), s_next, float(sig[i + 2])), fx["out.prev_sample"]
        )
        > BROKEN
    )


def test_fixtures_record_their_official_source():
    for name in ("weights", "attention", "training", "sampler", "sampler_weighted", "scheduler"):
        meta = load_fixture(GROUP, name).meta
        assert meta["official_repo"] == "jeanne-wang/svd_keyframe_interpolation"
        assert meta["official_commit"].startswith("61fd2bf")
