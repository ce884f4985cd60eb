#!/usr/bin/env python
"""Parity fixtures for Generative Inbetweening, made by running the official code.

Official code: a checkout of ``jeanne-wang/svd_keyframe_interpolation`` (``--official PATH`` or
``$I2VLAB_OFFICIAL_INBETWEEN``; the fixtures were made at commit 61fd2bf). It pins diffusers 0.27;
its attention processors (``attn_ctrl/attention_control.py``), its pipeline
(``custom_diffusers/pipelines/pipeline_frame_interpolation_with_noise_injection.py``) and its
Euler scheduler (``custom_diffusers/schedulers/scheduling_euler_discrete.py``) run unchanged on this
project's diffusers 0.42 once ``tensor2vid`` (removed from diffusers, used only when the output is
not latent) is given a stub. No extra packages are needed.

Usage::

    OMP_NUM_THREADS=1 python scripts/parity/inbetween.py --official /path/to/svd_keyframe_interpolation

writes ``tests/fixtures/parity/inbetween/`` (``--out`` to change), about 3.5 MB, in ~15 s:

- ``weights``: the tiny networks, every parameter seeded and non-zero (``randomize_``), stored in
  float16 (the values; all runs use them in float64): two ``UNetSpatioTemporalConditionModel``
  (``unet_a`` = the forward / reference / original model, ``unet_b`` = a fine-tuned model with
  other weights), an ``AutoencoderKLTemporalDecoder``, two ``CLIPVisionModelWithProjection``
  (16 px input for the pipeline, which does not resize tensors; 224 px for training, which does).
- ``attention`` (float64): the official ``AttentionStoreProcessor`` on ``unet_a`` and
  ``AttentionFlipCtrlProcessor`` on ``unet_b`` (registered with the official
  ``register_temporal_self_attention_control`` / ``..._flip_control``), one reference pass then one
  flip pass, batch 2: every stored map per layer (the maps the flip pass used are checked here to
  be their 180° rotations), both UNet outputs.
- ``training`` (float64): one step of ``train_reverse_motion_with_attnflip.py`` (lines 385-466),
  reproduced by calling its components in its order (the script itself needs accelerate, datasets,
  argparse and a dataset folder): its processors on ``ref_unet`` (= ``unet_a``) and on the trainable
  UNet (``unet_a`` whose temporal ``attn1.to_v`` / ``to_out.0`` weights are ``unet_b``'s, as after
  some fine-tuning), CLIP / VAE conditioning, noise augmentation, σ, EDM loss, backward. Records
  the inputs (clip, latents, noise, augmentation noise, σ), the loss per sample and the gradients
  of every trainable weight.
- ``sampler`` (float64): the official pipeline ``__call__`` with its scheduler, ``output_type="latent"``,
  4 steps, noise re-injection 2 x on the first 2 steps, CFG (batch 2 -> 4), both for equal weights and
  ``weighted_average``: the augmentation noise and every re-injection noise it drew (recorded from
  ``randn_tensor``), the latents after every step (``callback_on_step_end``) and the final latents.
- ``scheduler`` (float32): the official Euler scheduler with SVD's scheduler config: σ tables and
  timesteps for 4 / 25 / 50 steps, ``init_noise_sigma``, one ``scale_model_input`` and ``step``.

Stand-in (official side): its ``CLIPImageProcessor`` call is replaced by the same normalisation written
out in the input's dtype (transformers 5 returns float32, which would cap the float64 comparison); ours
normalises with the processor's mean / std itself. The official training script's CLIP input size
(224) is kept; the pipeline's tensor path does not resize.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    FIXTURES,
    add_official_args,
    official_checkout,
    official_commit,
    on_path,
    prefixed,
    randomize_,
    save_fixture,
)

ENV = "I2VLAB_OFFICIAL_INBETWEEN"
REPO = "jeanne-wang/svd_keyframe_interpolation"
GENERATOR = "scripts/parity/inbetween.py"

F, HW = 4, 16  # frames, pixel size (latents 8 x 8)
UNET_CONFIG = {
    "sample_size": 8,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal"],
    "up_block_types": ["CrossAttnUpBlockSpatioTemporal"],
    "block_out_channels": [32],
    "layers_per_block": 1,
    "cross_attention_dim": 16,
    "num_attention_heads": [2],
    "addition_time_embed_dim": 4,
    "projection_class_embeddings_input_dim": 12,
    "num_frames": F,
}
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "block_out_channels": [32, 32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "sample_size": HW,
    "scaling_factor": 0.18215,
}
CLIP_BASE = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 16,
}
CLIP16_CONFIG = {**CLIP_BASE, "image_size": HW, "patch_size": 8}
CLIP224_CONFIG = {**CLIP_BASE, "image_size": 224, "patch_size": 16}
#: stabilityai/stable-video-diffusion-img2vid(-xt) scheduler/scheduler_config.json
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "interpolation_type": "linear",
    "prediction_type": "v_prediction",
    "sigma_min": 0.002,
    "sigma_max": 700.0,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "timestep_type": "continuous",
    "use_karras_sigmas": True,
}
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
TEMPORAL_V_OUT = (
    "temporal_transformer_blocks.0.attn1.to_v.weight",
    "temporal_transformer_blocks.0.attn1.to_out.0.weight",
)
SAMPLER = {"num_inference_steps": 4, "noise_injection_steps": 2, "noise_injection_ratio": 0.5}


# ----------------------------------------------------------------------------------------------
# official imports
# ----------------------------------------------------------------------------------------------
def import_official(root: Path):
    """The official modules (diffusers 0.42 lacks ``tensor2vid``: a stub, unused for latent output)."""
    import diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion as svd_pipe

    if not hasattr(svd_pipe, "tensor2vid"):

        def tensor2vid(*args, **kwargs):
            raise NotImplementedError("tensor2vid stub: run the official pipeline with output_type='latent'")

        svd_pipe.tensor2vid = tensor2vid
    with on_path(root):
        import attn_ctrl.attention_control as attn_ctrl
        import custom_diffusers.pipelines.pipeline_frame_interpolation_with_noise_injection as pipe_mod
        import custom_diffusers.schedulers.scheduling_euler_discrete as sched_mod
    return attn_ctrl, pipe_mod, sched_mod


class NormalizeOnly:
    """Stand-in for ``CLIPImageProcessor(images=x, do_normalize=True, do_resize=False, do_rescale=False,
    do_center_crop=False)`` on a tensor: ``(x - mean) / std`` in the input's dtype."""

    image_mean, image_std = IMAGE_MEAN, IMAGE_STD

    def __call__(self, images, return_tensors="pt", **kwargs):
        from transformers import BatchFeature

        assert kwargs.get("do_normalize", True) and not kwargs.get("do_resize", False)
        x = images
        mean = torch.tensor(self.image_mean, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.image_std, dtype=x.dtype).view(1, -1, 1, 1)
        return BatchFeature({"pixel_values": (x - mean) / std})


# ----------------------------------------------------------------------------------------------
# networks
# ----------------------------------------------------------------------------------------------
def fp16_values(module: torch.nn.Module) -> torch.nn.Module:
    """Round every parameter to a float16 value (what the fixture stores), keep it in float64."""
    with torch.no_grad():
        for p in module.parameters():
            h = p.half()
            p.copy_(torch.where(h == 0, torch.full_like(h, 1e-3), h).double())  # no underflow to zero
    zeros = [n for n, p in module.named_parameters() if (p == 0).any()]
    assert not zeros, f"zeros after float16 rounding: {zeros[:3]}"
    return module


def build_networks() -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    nets = {
        "unet_a": UNetSpatioTemporalConditionModel(**UNET_CONFIG),
        "unet_b": UNetSpatioTemporalConditionModel(**UNET_CONFIG),
        "vae": AutoencoderKLTemporalDecoder(**VAE_CONFIG),
        "clip16": CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP16_CONFIG)),
        "clip224": CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP224_CONFIG)),
    }
    for seed, net in enumerate(nets.values(), start=1):
        net.double()
        randomize_(net, seed=100 + seed)
        fp16_values(net).eval()
        net.requires_grad_(False)
    return nets


def trained_unet(nets) -> torch.nn.Module:
    """``unet_a`` with ``unet_b``'s temporal attn1 to_v / to_out.0 weights (a fine-tuned state)."""
    unet = copy.deepcopy(nets["unet_a"])
    sd_b = nets["unet_b"].state_dict()
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith(TEMPORAL_V_OUT):
                p.copy_(sd_b[name])
    return unet


def temporal_layer_order(unet, run) -> list[str]:
    """Names of the temporal self-attention modules in the order they run (the official store's order)."""
    order, hooks = [], []
    for name, mod in unet.named_modules():
        if name.endswith("temporal_transformer_blocks.0.attn1"):
            hooks.append(mod.register_forward_pre_hook(lambda m, a, n=name: order.append(n)))
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return order


def smooth_video(b: int, seed: int) -> torch.Tensor:
    """(b f c h w) in [-1, 1], float64: a smooth random image drifting across frames."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 3, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
    big = torch.nn.functional.interpolate(base, size=(HW + F, HW + F), mode="bilinear", align_corners=False)
    frames = [big[:, :, t : t + HW, t : t + HW] for t in range(F)]
    return torch.stack(frames, 1).clamp(-1, 1).contiguous()


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------
def make_attention(attn_ctrl, nets):
    g = torch.Generator().manual_seed(7)
    b = 2
    unet_ref, unet_flip = copy.deepcopy(nets["unet_a"]), copy.deepcopy(nets["unet_b"])
    inp = {
        "ref_sample": torch.randn(b, F, 8, 8, 8, generator=g, dtype=torch.float64),
        "flip_sample": torch.randn(b, F, 8, 8, 8, generator=g, dtype=torch.float64),
        "ref_embeds": torch.randn(b, 1, 16, generator=g, dtype=torch.float64),
        "flip_embeds": torch.randn(b, 1, 16, generator=g, dtype=torch.float64),
        "timestep": torch.tensor(0.25 * torch.tensor(2.5, dtype=torch.float64).log().item()),
        "time_ids": torch.tensor([[6.0, 127.0, 0.02]], dtype=torch.float64).repeat(b, 1),
    }
    controller_ref = attn_ctrl.AttentionStore()
    attn_ctrl.register_temporal_self_attention_control(unet_ref, controller_ref)
    controller = attn_ctrl.AttentionStore()
    attn_ctrl.register_temporal_self_attention_flip_control(unet_flip, controller, controller_ref)

    def run_ref():
        return unet_ref(
            inp["ref_sample"],
            inp["timestep"],
            encoder_hidden_states=inp["ref_embeds"],
            added_time_ids=inp["time_ids"],
            return_dict=False,
        )[0]

    with torch.no_grad():
        held = []
        order = temporal_layer_order(unet_ref, lambda: held.append(run_ref()))
        ref_out = held[0]
        flip_out = unet_flip(
            inp["flip_sample"],
            inp["timestep"],
            encoder_hidden_states=inp["flip_embeds"],
            added_time_ids=inp["time_ids"],
            return_dict=False,
        )[0]
    out = {"ref": ref_out, "flip": flip_out}
    for place in ("down", "mid", "up"):
        for i, p in enumerate(controller_ref.attention_store[f"{place}_self"]):
            out[f"maps.{place}.{i}"] = p
        for i, p in enumerate(controller.attention_store[f"{place}_self"]):  # the rotated maps it used
            assert torch.equal(p, out[f"maps.{place}.{i}"].flip(-2, -1))
    tensors = {**prefixed("in.", inp), **prefixed("out.", out)}
    meta = {
        "weights": {"ref": "unet_a", "flip": "unet_b"},
        "layer_order": order,  # call order = official store order (down, mid, up lists)
        "dtype": "float64",
    }
    return tensors, meta


def make_training(attn_ctrl, nets):
    """Lines 385-466 of train_reverse_motion_with_attnflip.py, components called in its order."""
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import (
        _resize_with_antialiasing,
    )
    from einops import rearrange

    g = torch.Generator().manual_seed(11)
    b = 2
    vae, image_encoder, feature_extractor = nets["vae"], nets["clip224"], NormalizeOnly()
    weight_dtype = torch.float64
    unet = trained_unet(nets)  # the trainable UNet at some later step
    ref_unet = copy.deepcopy(nets["unet_a"])  # the frozen copy of the base (line 110)
    controller_ref = attn_ctrl.AttentionStore()
    attn_ctrl.register_temporal_self_attention_control(ref_unet, controller_ref)  # lines 113-114
    controller = attn_ctrl.AttentionStore()
    attn_ctrl.register_temporal_self_attention_flip_control(unet, controller, controller_ref)  # 116-117
    ref_unet.requires_grad_(False)
    unet.requires_grad_(False)
    for name, para in unet.named_parameters():  # lines 141-146
        para.requires_grad = name.endswith(TEMPORAL_V_OUT)
    unet.train()

    # the dataset (stable_video_dataset.py): pixel_values = the clip reversed, conditions = its last frame
    video = smooth_video(b, seed=3)  # forward in time
    batch = {"pixel_values": video.flip(1), "conditions": video[:, -1]}

    def _get_add_time_ids(dtype, batch_size, fps=6, motion_bucket_id=127, noise_aug_strength=0.02):
        add_time_ids = [fps, motion_bucket_id, noise_aug_strength]  # lines 342-357
        assert unet.config.addition_time_embed_dim * 3 == unet.add_embedding.linear_1.in_features
        return torch.tensor([add_time_ids], dtype=dtype).repeat(batch_size, 1)

    def compute_image_embeddings(image):  # lines 359-375
        image = _resize_with_antialiasing(image, (224, 224))
        image = (image + 1.0) / 2.0
        image = feature_extractor(
            images=image,
            do_normalize=True,
            do_center_crop=False,
            do_resize=False,
            do_rescale=False,
            return_tensors="pt",
        ).pixel_values
        image = image.to(dtype=weight_dtype)
        return image_encoder(image).image_embeds.unsqueeze(1)

    noise_aug_strength = 0.02
    num_frames = F
    encoder_hidden_states = compute_image_embeddings(batch["conditions"])  # 385
    encoder_hidden_states_ref = compute_image_embeddings(batch["pixel_values"][:, -1])  # 386
    noise = torch.randn(batch["conditions"].shape, generator=g, dtype=weight_dtype)  # 392 (randn_like)
    cond_noise = noise
    conditions = batch["conditions"] + noise_aug_strength * noise
    conditions_latent = vae.encode(conditions).latent_dist.mode()
    conditions_latent = conditions_latent.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
    conditions_ref = batch["pixel_values"][:, -1] + noise_aug_strength * noise  # 397
    conditions_latent_ref = vae.encode(conditions_ref).latent_dist.mode()
    conditions_latent_ref = conditions_latent_ref.unsqueeze(1).repeat(1, num_frames, 1, 1, 1)
    pixel_values = rearrange(batch["pixel_values"], "b f c h w -> (b f) c h w")  # 402-406
    dist = vae.encode(pixel_values).latent_dist
    eps = torch.randn(dist.mean.shape, generator=g, dtype=weight_dtype)  # latent_dist.sample()
    latents = (dist.mean + dist.std * eps) * vae.config.scaling_factor
    latents = rearrange(latents, "(b f) c h w -> b f c h w", f=num_frames)
    latents_ref = torch.flip(latents, dims=(1,))
    noise = torch.randn(latents.shape, generator=g, dtype=weight_dtype)  # 409 (randn_like)
    bsz = latents.shape[0]
    sigmas_in = torch.tensor([0.45, 3.2], dtype=weight_dtype)  # 419: given instead of rand_log_normal
    sigmas = sigmas_in[:, None, None, None, None]
    timesteps = torch.Tensor([0.25 * sigma.log() for sigma in sigmas])
    noisy_latents = latents + noise * sigmas  # 428-434
    noisy_latents_inp = noisy_latents / ((sigmas**2 + 1) ** 0.5)
    noisy_latents_inp = torch.cat([noisy_latents_inp, conditions_latent], dim=2)
    noisy_latents_ref = latents_ref + torch.flip(noise, dims=(1,)) * sigmas
    noisy_latents_ref_inp = noisy_latents_ref / ((sigmas**2 + 1) ** 0.5)
    noisy_latents_ref_inp = torch.cat([noisy_latents_ref_inp, conditions_latent_ref], dim=2)
    target = latents
    added_time_ids = _get_add_time_ids(encoder_hidden_states.dtype, bsz)  # 439-447
    ref_unet(
        noisy_latents_ref_inp.to(weight_dtype),
        timesteps.to(weight_dtype),
        encoder_hidden_states=encoder_hidden_states_ref,
        added_time_ids=added_time_ids,
        return_dict=False,
    )
    model_pred = unet(
        noisy_latents_inp,
        timesteps,
        encoder_hidden_states=encoder_hidden_states,
        added_time_ids=added_time_ids,
        return_dict=False,
    )[0]
    c_out = -sigmas / ((sigmas**2 + 1) ** 0.5)  # 449-460
    c_skip = 1 / (sigmas**2 + 1)
    denoised_latents = model_pred * c_out + c_skip * noisy_latents
    weighing = (1 + sigmas**2) * (sigmas**-2.0)
    # lines 455-459 cast to .float(), a no-op for the script's float32 tensors; dropped to stay in float64
    loss_per_sample = torch.mean(
        (weighing * (denoised_latents - target) ** 2).reshape(target.shape[0], -1), dim=1
    )
    loss = loss_per_sample.mean()
    loss.backward()  # 466
    grads = {n: p.grad.detach().clone() for n, p in unet.named_parameters() if p.requires_grad}
    assert len(grads) == 8 and all(gr.abs().sum() > 0 for gr in grads.values())
    tensors = {
        "in.video": video,
        "in.latents": latents.detach(),  # of the reversed clip, as the script computes them
        "in.noise": noise,
        "in.cond_noise": cond_noise,
        "in.sigma": sigmas_in,
        "out.loss": loss.detach(),
        "out.loss_per_sample": loss_per_sample.detach(),
        "out.model_pred": model_pred.detach(),
        "out.cond_embeds": encoder_hidden_states,
        "out.ref_embeds": encoder_hidden_states_ref,
        "out.cond_latents": conditions_latent[:, 0],
        "out.ref_latents": conditions_latent_ref[:, 0],
        **prefixed("out.grad.", grads),
    }
    meta = {
        "weights": {
            "ref_unet": "unet_a",
            "unet": "unet_a + unet_b's temporal attn1 to_v/to_out.0",
            "clip": "clip224",
        },
        "dtype": "float64",
        "lines": "train_reverse_motion_with_attnflip.py 110-146 (models, processors, trainable), 342-375 "
        "(time ids, CLIP), 385-466 (step)",
    }
    return tensors, meta


def make_sampler(pipe_mod, sched_mod, attn_ctrl, nets, weighted_average: bool):
    g = torch.Generator().manual_seed(21 + int(weighted_average))
    b = 2
    scheduler = sched_mod.EulerDiscreteScheduler(**SCHEDULER_CONFIG)
    pipe = pipe_mod.FrameInterpolationWithNoiseInjectionPipeline(
        vae=nets["vae"],
        image_encoder=nets["clip16"],
        unet=copy.deepcopy(nets["unet_a"]),
        scheduler=scheduler,
        feature_extractor=NormalizeOnly(),
    )
    # keyframe_interpolation.py: ori_unet is the pipeline's copy of the original UNet; the fine-tuned
    # weights are then loaded into pipe.unet, and the processors registered
    pipe.unet.load_state_dict(nets["unet_b"].state_dict())
    controller_ref = attn_ctrl.AttentionStore()
    attn_ctrl.register_temporal_self_attention_control(pipe.ori_unet, controller_ref)
    controller = attn_ctrl.AttentionStore()
    attn_ctrl.register_temporal_self_attention_flip_control(pipe.unet, controller, controller_ref)
    pipe.set_progress_bar_config(disable=True)

    v = smooth_video(b, seed=5)
    image1 = (v[:, 0] + 1) / 2  # tensors in [0, 1] (the pipeline's tensor input; CLIP input size)
    image2 = (v[:, -1] + 1) / 2
    latents = torch.randn(b, F, 4, 8, 8, generator=g, dtype=torch.float64)
    draws: list[tuple[bool, torch.Tensor]] = []
    orig = pipe_mod.randn_tensor

    def recording_randn(*args, **kwargs):
        t = orig(*args, **kwargs)
        draws.append((kwargs.get("generator") is not None, t.clone()))
        return t

    steps: list[torch.Tensor] = []

    def on_step(pipeline, i, t, kw):
        steps.append(kw["latents"].clone())
        return {}

    gen = torch.Generator().manual_seed(1234)
    torch.manual_seed(4321)  # the re-injection noise comes from the global RNG (recorded)
    pipe_mod.randn_tensor = recording_randn
    try:
        with torch.no_grad():
            out = pipe(
                image1,
                image2,
                height=HW,
                width=HW,
                num_frames=F,
                min_guidance_scale=1.0,
                max_guidance_scale=3.0,
                fps=7,
                motion_bucket_id=127,
                noise_aug_strength=0.02,
                generator=gen,
                latents=latents,
                output_type="latent",
                weighted_average=weighted_average,
                callback_on_step_end=on_step,
                return_dict=False,
                **SAMPLER,
            )
    finally:
        pipe_mod.randn_tensor = orig
    assert draws[0][0] and not any(d[0] for d in draws[1:])  # aug noise (generator), then injections
    n_inj = SAMPLER["noise_injection_steps"] * int(
        SAMPLER["num_inference_steps"] * SAMPLER["noise_injection_ratio"]
    )
    assert len(draws) == 1 + n_inj, len(draws)
    tensors = {
        "in.image1": image1,
        "in.image2": image2,
        "in.latents": latents,
        "in.cond_noise": draws[0][1],
        **{f"in.inject.{k}": d[1] for k, d in enumerate(draws[1:])},
        "out.latents": out,
        **{f"out.step.{i}": s for i, s in enumerate(steps)},
    }
    meta = {
        "weights": {"ori_unet": "unet_a", "unet": "unet_b", "image_encoder": "clip16"},
        "dtype": "float64",
        "call": {
            **SAMPLER,
            "min_guidance_scale": 1.0,
            "max_guidance_scale": 3.0,
            "fps": 7,
            "motion_bucket_id": 127,
            "noise_aug_strength": 0.02,
            "weighted_average": weighted_average,
            "output_type": "latent",
        },
    }
    return tensors, meta


def make_scheduler(sched_mod):
    sched = sched_mod.EulerDiscreteScheduler(**SCHEDULER_CONFIG)
    out = {}
    for n in (4, 25, 50):
        sched.set_timesteps(n)
        out[f"sigmas.{n}"] = sched.sigmas.clone()
        out[f"timesteps.{n}"] = sched.timesteps.clone()
        out[f"init_noise_sigma.{n}"] = torch.as_tensor(sched.init_noise_sigma).clone()
    g = torch.Generator().manual_seed(31)
    x = torch.randn(2, F, 4, 8, 8, generator=g)
    v = torch.randn(2, F, 4, 8, 8, generator=g)
    sched.set_timesteps(25)
    i = 7
    sched.set_begin_index(i)
    t = sched.timesteps[i]
    out["scaled"] = sched.scale_model_input(x, t)
    out["prev_sample"] = sched.step(v, t, x).prev_sample
    tensors = {"in.x": x, "in.v": v, **prefixed("out.", out)}
    return tensors, {"config": SCHEDULER_CONFIG, "step": {"num_inference_steps": 25, "index": i}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_official_args(parser, ENV, REPO)
    args = parser.parse_args(argv)
    root = official_checkout(args.official, ENV, REPO)
    commit = official_commit(root, args.official_commit)
    out_dir = args.out or FIXTURES / "inbetween"
    torch.set_num_threads(1)
    attn_ctrl, pipe_mod, sched_mod = import_official(root)
    nets = build_networks()
    configs = {
        "unet": UNET_CONFIG,
        "vae": VAE_CONFIG,
        "clip16": CLIP16_CONFIG,
        "clip224": CLIP224_CONFIG,
        "scheduler": SCHEDULER_CONFIG,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
    }
    common = {"repo": REPO, "commit": commit, "generator": GENERATOR}
    weights = {f"official.{k}.{n}": p.half() for k, net in nets.items() for n, p in net.state_dict().items()}
    save_fixture(
        out_dir,
        "weights",
        weights,
        config=configs,
        notes="randomize_ (seeds 101-105), values rounded to float16; used in float64 by every fixture",
        **common,
    )
    tensors, meta = make_attention(attn_ctrl, nets)
    save_fixture(
        out_dir,
        "attention",
        tensors,
        config=configs,
        notes="attn_ctrl/attention_control.py AttentionStoreProcessor (ref) then AttentionFlipCtrlProcessor",
        extra=meta,
        **common,
    )
    tensors, meta = make_training(attn_ctrl, nets)
    save_fixture(
        out_dir,
        "training",
        tensors,
        config=configs,
        notes="one step of train_reverse_motion_with_attnflip.py reproduced from its components",
        extra=meta,
        **common,
    )
    for wa in (False, True):
        tensors, meta = make_sampler(pipe_mod, sched_mod, attn_ctrl, nets, wa)
        save_fixture(
            out_dir,
            "sampler_weighted" if wa else "sampler",
            tensors,
            config=configs,
            notes="FrameInterpolationWithNoiseInjectionPipeline.__call__, output_type='latent'",
            extra=meta,
            **common,
        )
    tensors, meta = make_scheduler(sched_mod)
    save_fixture(
        out_dir,
        "scheduler",
        tensors,
        config=configs,
        notes="custom_diffusers/schedulers/scheduling_euler_discrete.py",
        extra=meta,
        **common,
    )


if __name__ == "__main__":
    main()
