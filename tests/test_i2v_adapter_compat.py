"""I2V-Adapter compatibility paths with tiny models: personalised (DreamBooth-style) SD1.5 UNet,
SD1.5 LoRA, ControlNet, and the IP-Adapter content adapter loaded from a checkpoint file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from i2vlab.models.i2v_adapter import i2v_adapter_processors

REPO = Path(__file__).resolve().parents[1]
F = 4
KW = {"num_frames": F, "seed": 3, "num_inference_steps": 2, "color_match_frames": False}


def build(tmp: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=toy_i2v_adapter",
                f"paths.output_dir={tmp}",
                f"paths.root_dir={REPO}",
                f"paths.data_dir={tmp}/data",
                *overrides,
            ],
        )
    torch.manual_seed(0)
    m = instantiate(cfg.method, _convert_="partial")
    m.configure_trainable()
    with torch.no_grad():  # a "trained" adapter
        for p in i2v_adapter_processors(m.unet).values():
            torch.nn.init.normal_(p.to_out_ff.weight, std=0.2)
    return m.eval()


@pytest.fixture
def module(tmp_path):
    return build(tmp_path)


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def tiny_unet2d(seed: int = 1) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=2,
    )


def test_personalized_unet_replaces_spatial_weights_only(module, image, tmp_path):
    from safetensors.torch import save_file

    unet2d = tiny_unet2d()
    path = tmp_path / "dreambooth_unet.safetensors"
    save_file({k: v.contiguous() for k, v in unet2d.state_dict().items()}, str(path))
    before = {k: v.clone() for k, v in module.unet.state_dict().items()}
    ref = module.sample(["a ball"], image, **KW)
    out = module.sample(["a ball"], image, personalized_unet=str(path), **KW)
    after = module.unet.state_dict()
    sd2d = unet2d.state_dict()
    for k, v in after.items():
        if k in sd2d:
            assert torch.equal(v, sd2d[k]), k
        else:  # motion modules, content adapter, first-frame projections are kept
            assert torch.equal(v, before[k]), k
    assert any("motion_modules" in k for k in after if k not in sd2d)
    assert any("to_out_ff" in k for k in after if k not in sd2d)
    assert not torch.equal(out, ref)
    # a diffusers UNet folder works too, and reset_query copies the new to_q into to_q_ff
    unet2d_b = tiny_unet2d(seed=2)
    unet2d_b.save_pretrained(tmp_path / "db")
    from i2vlab.models.i2v_adapter import load_personalized_unet

    load_personalized_unet(module.unet, tmp_path / "db", reset_query=True)
    for name, p in i2v_adapter_processors(module.unet).items():
        assert torch.equal(p.to_q_ff.weight, unet2d_b.state_dict()[name[: -len("processor")] + "to_q.weight"])
    with pytest.raises(FileNotFoundError, match="personalized_unet"):
        load_personalized_unet(module.unet, tmp_path / "missing.safetensors")


def test_lora_loads_through_peft_and_changes_the_sample(module, image, tmp_path):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet2d = tiny_unet2d()
    unet2d.add_adapter(
        LoraConfig(
            r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
        )
    )
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet2d))
    StableDiffusionPipeline.save_lora_weights(
        tmp_path / "lora", unet_lora_layers=layers, safe_serialization=True
    )
    trainable = list(module.configure_trainable())
    ref = module.sample(["a ball"], image, **KW)
    out = module.sample(["a ball"], image, lora=str(tmp_path / "lora"), lora_scale=1.0, **KW)
    assert not torch.equal(out, ref)
    names = [n for n, _ in module.named_parameters()]
    assert any(".attn1.to_q.lora_A." in n for n in names)
    assert not any("to_q_ff.lora" in n for n in names)  # the first-frame projections are not LoRA targets
    assert [n for n, p in module.named_parameters() if p.requires_grad] == trainable
    # same call again: idempotent, same result
    again = module.sample(["a ball"], image, lora=str(tmp_path / "lora"), lora_scale=1.0, **KW)
    assert torch.equal(again, out)


def test_controlnet_per_frame_conditioning(module, image, tmp_path):
    from i2vlab.pipelines.i2v_adapter import sample_i2v
    from i2vlab.utils.video_io import write_video

    torch.manual_seed(4)
    cn = ControlNetModel(
        in_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=32,
        attention_head_dim=2,
        conditioning_embedding_out_channels=(8, 16),
    ).eval()
    with torch.no_grad():  # ControlNet's zero convolutions start at zero: give them weights
        for p in cn.controlnet_down_blocks.parameters():
            torch.nn.init.normal_(p, std=0.1)
        for p in cn.controlnet_mid_block.parameters():
            torch.nn.init.normal_(p, std=0.1)
    control = torch.rand(1, F, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    kw = {k: v for k, v in KW.items() if k != "color_match_frames"}
    ref, lat_ref = sample_i2v(module, ["a ball"], image, return_latents=True, **kw)
    off = sample_i2v(
        module, ["a ball"], image, controlnet=cn, control_frames=control, controlnet_scale=0.0, **kw
    )
    on, lat_on = sample_i2v(
        module, ["a ball"], image, controlnet=cn, control_frames=control, return_latents=True, **kw
    )
    assert torch.equal(off, ref)  # zero conditioning scale: the residuals vanish
    assert not torch.equal(on, ref)
    assert torch.equal(lat_on[:, :, 0], lat_ref[:, :, 0])  # the first frame stays the clean image latent
    # through module.sample with a saved ControlNet folder and a control video file
    cn.save_pretrained(tmp_path / "controlnet")
    # (a 32x32 file: decord fails on 16x16 mp4s; frames are resized to the sample size)
    write_video(tmp_path / "control.mp4", torch.nn.functional.interpolate(control[0], size=(32, 32)) * 2 - 1)
    out = module.sample(
        ["a ball"],
        image,
        controlnet=str(tmp_path / "controlnet"),
        control_video=str(tmp_path / "control.mp4"),
        **KW,
    )
    assert out.shape == (1, F, 3, 16, 16) and not torch.equal(out, ref)


def _official_ip_adapter_plus(unet, image_proj: dict, seed: int = 0) -> dict:
    """A random IP-Adapter-Plus checkpoint with the published file's key names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    e, o, h = image_proj["embed_dims"], image_proj["output_dims"], image_proj["hidden_dims"]
    inner = image_proj["heads"] * image_proj["dim_head"]
    ff = int(h * image_proj["ffn_ratio"])
    proj = {
        "latents": r(1, image_proj["num_queries"], h),
        "proj_in.weight": r(h, e),
        "proj_in.bias": r(h),
        "proj_out.weight": r(o, h),
        "proj_out.bias": r(o),
        "norm_out.weight": 1 + r(o),
        "norm_out.bias": r(o),
    }
    for i in range(image_proj["depth"]):
        proj |= {
            f"layers.{i}.0.norm1.weight": 1 + r(h),
            f"layers.{i}.0.norm1.bias": r(h),
            f"layers.{i}.0.norm2.weight": 1 + r(h),
            f"layers.{i}.0.norm2.bias": r(h),
            f"layers.{i}.0.to_q.weight": r(inner, h),
            f"layers.{i}.0.to_kv.weight": r(2 * inner, h),
            f"layers.{i}.0.to_out.weight": r(h, inner),
            f"layers.{i}.1.0.weight": 1 + r(h),
            f"layers.{i}.1.0.bias": r(h),
            f"layers.{i}.1.1.weight": r(ff, h),
            f"layers.{i}.1.3.weight": r(h, ff),
        }
    ip, key_id = {}, 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor") and "motion_modules" not in name:
            attn = unet.get_submodule(name.rsplit(".", 1)[0])
            ip[f"{key_id}.to_k_ip.weight"] = r(attn.to_k.out_features, attn.to_k.in_features)
            ip[f"{key_id}.to_v_ip.weight"] = r(attn.to_v.out_features, attn.to_v.in_features)
            key_id += 2
    return {"image_proj": proj, "ip_adapter": ip}


def test_content_adapter_loads_published_format_through_diffusers(tmp_path, image):
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from i2vlab.models.content_adapter import encode_clip_image

    base = build(tmp_path)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=toy_i2v_adapter",
                f"paths.output_dir={tmp_path}",
                f"paths.root_dir={REPO}",
                f"paths.data_dir={tmp_path}/data",
            ],
        )
    ip_cfg = OmegaConf.to_container(cfg.backbone.content_adapter.image_proj)
    sd = _official_ip_adapter_plus(base.unet, ip_cfg)
    flat = {f"{k}.{n}": v for k, d in sd.items() for n, v in d.items()}
    save_file(flat, str(tmp_path / "ip-adapter-plus.safetensors"))
    torch.save(sd, tmp_path / "ip-adapter-plus.bin")
    m = build(tmp_path, f"backbone.content_adapter.pretrained={tmp_path / 'ip-adapter-plus.safetensors'}")
    m_bin = build(tmp_path, f"backbone.content_adapter.pretrained={tmp_path / 'ip-adapter-plus.bin'}")
    own = m.unet.state_dict()
    assert torch.equal(own["encoder_hid_proj.image_projection_layers.0.latents"], sd["image_proj"]["latents"])
    k_ip = [k for k in own if k.endswith("attn2.processor.to_k_ip.0.weight")]
    assert k_ip and torch.equal(own[k_ip[0]], sd["ip_adapter"]["1.to_k_ip.weight"])
    assert all(torch.equal(v, m_bin.unet.state_dict()[k]) for k, v in own.items())
    # first-frame processors are installed after the IP-Adapter loader (which resets attn1 processors)
    assert len(i2v_adapter_processors(m.unet)) == len(i2v_adapter_processors(base.unet)) > 0
    # the image prompt reaches the UNet: different images, different predictions; frozen everywhere
    x = torch.randn(1, 4, F, 8, 8)
    ehs = torch.randn(F, 16, 32)
    e1 = encode_clip_image(m.image_encoder, image)[:, None]
    e0 = encode_clip_image(m.image_encoder, None, batch_size=1)[:, None]
    with torch.no_grad():
        y1 = m.unet(x, 500, ehs, added_cond_kwargs={"image_embeds": [e1]}).sample
        y0 = m.unet(x, 500, ehs, added_cond_kwargs={"image_embeds": [e0]}).sample
    assert not torch.allclose(y1, y0)
    assert not any(p.requires_grad for n, p in m.named_parameters() if "ip" in n or "encoder_hid_proj" in n)
    with pytest.raises(
        Exception, match="backbone.content_adapter.pretrained"
    ):  # WeightsNotFoundError via Hydra
        build(tmp_path, f"backbone.content_adapter.pretrained={tmp_path}/missing/ip.safetensors")


def test_ip_adapter_file_from_the_backbone_config_trains_and_samples(tmp_path, image):
    """Regression (the full-size config loads its IP-Adapter from a file): diffusers' loader sets
    ``encoder_hid_dim_type`` as a config *attribute*; the method read it as an item, dropped the image
    embeddings, and every training step and sample died in the UNet with
    ``TypeError: argument of type 'NoneType' is not iterable``."""
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    from i2vlab.models.content_adapter import has_content_adapter

    base = build(tmp_path)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=toy_i2v_adapter", f"paths.output_dir={tmp_path}"])
    sd = _official_ip_adapter_plus(base.unet, OmegaConf.to_container(cfg.backbone.content_adapter.image_proj))
    path = tmp_path / "ip-adapter-plus.safetensors"
    save_file({f"{k}.{n}": v for k, d in sd.items() for n, v in d.items()}, str(path))
    m = build(tmp_path, f"backbone.content_adapter.pretrained={path}")
    assert m.unet.config.get("encoder_hid_dim_type") is None  # how diffusers leaves it: an attribute only
    assert has_content_adapter(m.unet)
    assert m.image_embeddings(image)["added_cond_kwargs"]["image_embeds"][0].shape[:2] == (1, 1)
    # a training step: loss, gradients on the adapter only, and the first frame's image reaches the UNet
    g = torch.Generator().manual_seed(0)
    video = torch.rand(1, F, 3, 16, 16, generator=g) * 2 - 1
    batch = {"video": video, "caption": ["a ball"]}
    m.train()
    loss, _ = m.compute_loss(batch, torch.Generator().manual_seed(1))
    loss.mean().backward()
    grads = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and grads <= set(m.configure_trainable())
    from i2vlab.models.content_adapter import set_content_scale

    with torch.no_grad():
        l1, _ = m.compute_loss(batch, torch.Generator().manual_seed(1), train=False)
        set_content_scale(m.unet, 0.0)  # image prompt off: the same step gives another loss
        l0, _ = m.compute_loss(batch, torch.Generator().manual_seed(1), train=False)
        set_content_scale(m.unet, 1.0)
    assert not torch.equal(l0, l1)
    # sampling through the method and the pipeline (CFG with the zero-image embedding)
    m.eval()
    out = m.sample(["a ball"], image, num_frames=F, seed=0, num_inference_steps=2, color_match_frames=False)
    assert out.shape == (1, F, 3, 16, 16) and torch.isfinite(out).all()
