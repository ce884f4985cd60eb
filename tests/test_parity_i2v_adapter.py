"""I2V-Adapter against the official code (KwaiVGI/I2V-Adapter, run on diffusers 0.11.1).

The fixtures in ``tests/fixtures/parity/i2v_adapter/`` were made by ``scripts/parity/i2v_adapter.py``:
the official modules with tiny configs and seeded non-zero weights (zero-initialised layers
included). Here the official weights go through this project's converter
(``i2vlab.models.i2v_adapter.convert_official_unet``) into diffusers' ``UNetMotionModel`` with this
project's processors and GroupNorm option, and the outputs are compared (relative Frobenius error;
float64 <= 1e-10, float32 <= 1e-5). Nothing here needs the official code, a network or a GPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers import UNetMotionModel
from diffusers.models.attention_processor import Attention, IPAdapterAttnProcessor2_0
from parity_helpers import assert_rel_close, load_fixture, rel_err
from safetensors.torch import save_file

from i2vlab.diffusion.schedules import build_noise_scheduler
from i2vlab.models.animatediff_norm import FrameCount, set_groupnorm_mode
from i2vlab.models.content_adapter import install_content_adapter, ip_adapter_file_tensors
from i2vlab.models.i2v_adapter import (
    FirstFrameAttnProcessor,
    convert_official_unet,
    export_official_adapter,
    install_i2v_adapter,
    official_key_to_ours,
    to_official_unet_state_dict,
)
from i2vlab.pipelines.i2v_adapter import initial_latents, sample_i2v

GROUP = "i2v_adapter"


@pytest.fixture(scope="module")
def unet_fx():
    return load_fixture(GROUP, "unet")


@pytest.fixture(scope="module")
def resampler_fx():
    return load_fixture(GROUP, "resampler")


def resampler_config(fx) -> dict:
    """Our ``IPAdapterPlusImageProjection`` kwargs for the official ``Resampler`` kwargs of a fixture."""
    k = fx.config["kwargs"]
    return {
        "embed_dims": k["embedding_dim"],
        "output_dims": k["output_dim"],
        "hidden_dims": k["dim"],
        "depth": k["depth"],
        "dim_head": k["dim_head"],
        "heads": k["heads"],
        "num_queries": k["num_queries"],
        "ffn_ratio": k["ff_mult"],
    }


def our_unet(
    unet_fx, resampler_fx, groupnorm="animatediff_v1", dtype=torch.float64, ip_file=None
) -> UNetMotionModel:
    """This project's UNet for the fixture's config, loaded with the official weights via the converter
    (``ip_file``: the content adapter from a published-format file, else random-init Resampler)."""
    unet = UNetMotionModel(**unet_fx.config["ours"])
    if ip_file is None:
        install_content_adapter(unet, image_proj=resampler_config(resampler_fx))
    else:
        install_content_adapter(unet, pretrained=str(ip_file))
    install_i2v_adapter(unet)
    set_groupnorm_mode(unet, groupnorm)
    conv = convert_official_unet(unet_fx.group("official."), unet.state_dict())
    assert conv.names() | {k for k in unet.state_dict() if k.startswith("encoder_hid_proj.")} == set(
        unet.state_dict()
    )
    sd = {**conv.unet, **conv.adapter_names(), **({} if ip_file else conv.ip)}
    unet.load_state_dict(sd, strict=False)
    return unet.to(dtype).eval()


def tokens_direct(unet: UNetMotionModel) -> UNetMotionModel:
    """Feed the UNet the image *tokens* (the Resampler output), as the official UNet takes them; the
    Resampler is compared on its own (``test_resampler_matches_official``)."""
    unet.encoder_hid_proj.image_projection_layers[0] = torch.nn.Identity()
    return unet


def published_ip_adapter(unet_fx, resampler_fx, unet, path):
    """A published-format IP-Adapter file: the fixture's Resampler + the UNet fixture's k/v."""
    conv = convert_official_unet(unet_fx.group("official."), unet.state_dict())
    save_file(ip_adapter_file_tensors(resampler_fx.group("official.image_proj."), conv.ip, unet), str(path))
    return path


# ----------------------------------------------------------------------------------------------
# attention layers
# ----------------------------------------------------------------------------------------------
def _converted(official: dict, layer: str) -> dict:
    """Official layer keys through the converter (on a block path), back to layer-relative names."""
    prefix = f"down_blocks.0.attentions.0.transformer_blocks.0.{layer}."
    return {official_key_to_ours(prefix + k)[len(prefix) :]: v for k, v in official.items()}


def test_first_frame_attention_matches_official_mixed_causal_attention():
    fx = load_fixture(GROUP, "attention")
    cfg = fx.config["ff"]
    attn = Attention(query_dim=cfg["query_dim"], heads=cfg["heads"], dim_head=cfg["dim_head"], bias=False)
    frames = FrameCount()
    attn.set_processor(FirstFrameAttnProcessor(attn, frames))
    attn.load_state_dict(_converted(fx.group("ff.official."), "attn1"), strict=True)
    attn = attn.double().eval()
    frames.num_frames = cfg["num_frames"]
    with torch.no_grad():
        out = attn(fx["ff.in.hidden_states"])
    assert_rel_close(out, fx["ff.out"], what="first-frame attention")


def test_ip_adapter_attention_matches_official():
    fx = load_fixture(GROUP, "attention")
    cfg = fx.config["ip"]
    attn = Attention(
        query_dim=cfg["query_dim"],
        cross_attention_dim=cfg["cross_attention_dim"],
        heads=cfg["heads"],
        dim_head=cfg["dim_head"],
        bias=False,
    )
    attn.set_processor(
        IPAdapterAttnProcessor2_0(
            hidden_size=cfg["query_dim"],
            cross_attention_dim=cfg["cross_attention_dim"],
            num_tokens=(cfg["image_tokens"],),
        )
    )
    attn.load_state_dict(_converted(fx.group("ip.official."), "attn2"), strict=True)
    attn = attn.double().eval()
    ctx, n = fx["ip.in.encoder_hidden_states"], cfg["text_tokens"]
    with torch.no_grad():
        out = attn(fx["ip.in.hidden_states"], encoder_hidden_states=(ctx[:, :n], [ctx[:, n:]]))
    assert_rel_close(out, fx["ip.out"], what="IP-Adapter cross-attention")


def test_resampler_matches_official(unet_fx, resampler_fx, tmp_path):
    """The official Resampler's state dict (as ip-adapter-plus_sd15.bin stores it) loaded through our
    content adapter (diffusers' IP-Adapter loader) gives the official tokens (float32: the official
    softmax is float32 whatever the input)."""
    unet = UNetMotionModel(**unet_fx.config["ours"])
    path = published_ip_adapter(
        unet_fx, resampler_fx, our_unet(unet_fx, resampler_fx), tmp_path / "ip.safetensors"
    )
    install_content_adapter(unet, pretrained=str(path))
    with torch.no_grad():
        out = unet.encoder_hid_proj([resampler_fx["in.clip_hidden"][:, None]])[0][:, 0]
    assert_rel_close(out, resampler_fx["out"], what="Resampler")


# ----------------------------------------------------------------------------------------------
# the whole UNet
# ----------------------------------------------------------------------------------------------
def _run(unet, fx) -> torch.Tensor:
    x, f = fx["in.sample"], fx["in.sample"].shape[2]
    with torch.no_grad():
        return unet(
            x,
            fx["in.timesteps"],
            encoder_hidden_states=fx["in.text"].repeat_interleave(f, 0),
            added_cond_kwargs={"image_embeds": [fx["in.image_tokens"][:, None]]},
        ).sample


def test_unet_matches_official_in_official_norm_mode(unet_fx, resampler_fx):
    """SD1.5 blocks + AnimateDiff v1 motion modules + IP-Adapter k/v + first-frame branch, with the
    release's GroupNorm semantics (use_inflated_groupnorm: false)."""
    unet = tokens_direct(our_unet(unet_fx, resampler_fx, "animatediff_v1"))
    assert_rel_close(_run(unet, unet_fx), unet_fx["out.v1"], what="UNet (animatediff_v1)")


def test_unet_matches_official_inflated_groupnorm(unet_fx, resampler_fx):
    unet = tokens_direct(our_unet(unet_fx, resampler_fx, "inflated"))
    assert_rel_close(_run(unet, unet_fx), unet_fx["out.inflated"], what="UNet (inflated)")


def test_diffusers_norms_differ_from_the_release(unet_fx, resampler_fx):
    """Regression guard (defect: diffusers' GroupNorm semantics were the only ones): with diffusers'
    own norms the same weights are far from the official output (27 % on this fixture)."""
    unet = tokens_direct(our_unet(unet_fx, resampler_fx, "diffusers"))
    assert rel_err(_run(unet, unet_fx), unet_fx["out.v1"]) > 0.05


def test_official_norm_mode_under_gradient_checkpointing(unet_fx, resampler_fx):
    unet = tokens_direct(our_unet(unet_fx, resampler_fx, "animatediff_v1")).train()
    unet.enable_gradient_checkpointing()
    x = unet_fx["in.sample"].clone().requires_grad_(True)
    f = x.shape[2]
    out = unet(
        x,
        unet_fx["in.timesteps"],
        encoder_hidden_states=unet_fx["in.text"].repeat_interleave(f, 0),
        added_cond_kwargs={"image_embeds": [unet_fx["in.image_tokens"][:, None]]},
    ).sample
    assert_rel_close(out.detach(), unet_fx["out.v1"], what="UNet under checkpointing")
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_export_to_official_layout_round_trips_exactly(unet_fx, resampler_fx):
    """ours -> official layout gives back exactly the official state dict the fixture's outputs were
    computed with: the official modules fed the exported keys produce what ours produce."""
    unet = our_unet(unet_fx, resampler_fx, dtype=torch.float32)
    official = unet_fx.group("official.")
    exported = to_official_unet_state_dict(unet.state_dict())
    assert set(exported) == set(official)
    assert all(torch.equal(exported[k], official[k]) for k in official)
    from i2vlab.models.i2v_adapter import i2v_adapter_state_dict

    branch = export_official_adapter(i2v_adapter_state_dict(unet))
    assert set(branch) == {k for k in official if "_ff." in k}
    assert all(torch.equal(branch[k], official[k]) for k in branch)


# ----------------------------------------------------------------------------------------------
# Frame Similarity Prior and the sampling loop
# ----------------------------------------------------------------------------------------------
def tiny_scheduler():
    """The training scheduler of conf/backbone/*i2v_adapter*.yaml (AnimateDiff's linear betas)."""
    return build_noise_scheduler(
        config={
            "num_train_timesteps": 1000,
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "linear",
            "prediction_type": "epsilon",
            "clip_sample": False,
            "steps_offset": 1,
        }
    )


def test_fsp_start_latents_match_official():
    """downgrade_input (mask, 9x9 / sigma 18 blur in latent space) + per-frame noising at the first
    DDIM step + the clean frame 0, with the official call's own draws."""
    from diffusers import DDIMScheduler

    fx = load_fixture(GROUP, "sampling")
    sched = DDIMScheduler.from_config(tiny_scheduler().config, clip_sample=False)
    sched.set_timesteps(fx.config["num_inference_steps"])
    assert torch.equal(sched.timesteps, fx["out.timesteps"])
    z1 = fx["in.first_frame_latents"]
    latents, start = initial_latents(
        z1,
        fx.config["video_length"],
        sched,
        torch.Generator(),
        noise=fx["in.noise"],
        fsp_mask=(fx["in.fsp_uniform"] >= 0.5).double(),
    )
    assert start == 0
    assert torch.equal(latents[:, :, 0], z1)
    assert_rel_close(latents, fx["out.start_latents"], what="FSP start latents")


def _namespace(unet) -> SimpleNamespace:
    """What ``sample_i2v`` needs of the method when every input is given precomputed."""
    return SimpleNamespace(device=torch.device("cpu"), unet=unet, noise_scheduler=tiny_scheduler())


def _sample(fx, unet, image_embeds, negative_image_embeds, mask_dtype) -> torch.Tensor:
    return sample_i2v(
        _namespace(unet),
        ["a prompt"],
        None,
        num_frames=fx.config["video_length"],
        num_inference_steps=fx.config["num_inference_steps"],
        guidance_scale=fx.config["guidance_scale"],
        prompt_embeds=fx["in.prompt_embeds"],
        negative_prompt_embeds=fx["in.negative_prompt_embeds"],
        image_embeds=image_embeds,
        negative_image_embeds=negative_image_embeds,
        first_frame_latents=fx["in.first_frame_latents"],
        noise=fx["in.noise"],
        fsp_mask=(fx["in.fsp_uniform"] >= 0.5).to(mask_dtype),
        output_type="latent",
    )


def test_sampling_loop_matches_official_pipeline(unet_fx, resampler_fx):
    """I2VIPAdapterPipeline.__call__ (FSP start, CFG 7.5 over text and image, DDIM on frames 1..15
    with frame 0 kept clean, 4 steps) vs sample_i2v, float64, image tokens given directly."""
    fx = load_fixture(GROUP, "sampling")
    unet = tokens_direct(our_unet(unet_fx, resampler_fx))
    out = _sample(fx, unet, fx["in.image_tokens"], fx["in.negative_image_tokens"], torch.float64)
    assert torch.equal(out[:, :, 0], fx["in.first_frame_latents"])
    assert_rel_close(out, fx["out.latents"], what="final latents")


def test_sampling_end_to_end_with_resampler_float32(unet_fx, resampler_fx, tmp_path):
    """The same call in float32, image tokens made by the Resampler (ours: loaded from a
    published-format IP-Adapter file through the content adapter)."""
    fx = load_fixture(GROUP, "sampling_f32")
    path = published_ip_adapter(
        unet_fx, resampler_fx, our_unet(unet_fx, resampler_fx), tmp_path / "ip.safetensors"
    )
    unet = our_unet(unet_fx, resampler_fx, dtype=torch.float32, ip_file=path)
    out = _sample(fx, unet, fx["in.clip_hidden"], fx["in.negative_clip_hidden"], torch.float32)
    assert_rel_close(out, fx["out.latents"], what="final latents (float32, Resampler)")
