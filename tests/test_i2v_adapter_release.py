"""The official I2V-Adapter release -> this project (and back), on files written here in the official layouts.

The tensors come from the parity fixtures (``tests/fixtures/parity/i2v_adapter/``: the official tiny
``UNet3DConditionModel`` and ``Resampler`` with seeded weights), written as the release ships them:
``animatediff_v15_v1_ipplus.pth`` (SD + motion modules + IP-Adapter k/v), ``i2v_module.pth`` (the
first-frame branch), ``ip-adapter-plus_sd15.bin`` ({image_proj, ip_adapter}). The converted folder is
loaded through the backbone config and sampled; the result is compared with the official pipeline's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from parity_helpers import assert_rel_close, load_fixture

from i2vlab.models.i2v_adapter import (
    convert_release,
    i2v_adapter_processors,
    load_personalized_unet,
    to_official_unet_state_dict,
)
from i2vlab.pipelines.i2v_adapter import sample_i2v

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import convert_i2v_adapter  # noqa: E402

#: tiny_i2v_adapter shaped like the fixtures' official UNet and Resampler
TINY = [
    "backbone.unet.config.block_out_channels=[32,32]",
    "backbone.unet.config.norm_num_groups=32",
    "backbone.unet.config.cross_attention_dim=8",
    "backbone.unet.config.sample_size=8",
    "backbone.content_adapter.image_proj.embed_dims=12",
    "backbone.content_adapter.image_proj.output_dims=8",
    "backbone.content_adapter.image_proj.hidden_dims=16",
    "backbone.content_adapter.image_proj.num_queries=16",
    "backbone.content_adapter.image_proj.heads=1",
]


def compose_cfg(tmp: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "experiment=toy_i2v_adapter",
                f"paths.output_dir={tmp}",
                f"paths.root_dir={REPO}",
                f"paths.data_dir={tmp}/data",
                *overrides,
            ],
        )


def build(cfg):
    torch.manual_seed(0)
    m = instantiate(cfg.method, _convert_="partial")
    m.configure_trainable()
    return m.eval()


def official_files(tmp: Path, *, stale_query: bool = False) -> dict[str, Path]:
    """The release's three files, in its layouts, from the fixtures' official tensors."""
    unet = load_fixture("i2v_adapter", "unet").group("official.")
    resampler = load_fixture("i2v_adapter", "resampler").group("official.image_proj.")
    combined = {k: v for k, v in unet.items() if "_ff." not in k}
    if stale_query:  # from_pretrained_ip overwrites any to_q_ff in this file with to_q
        k = next(k for k in unet if k.endswith("attn1.to_q_ff.weight"))
        combined[k] = torch.full_like(unet[k], 7.0)
    branch = {k: v for k, v in unet.items() if "_ff." in k}
    # ip-adapter-plus_sd15.bin numbers the k/v 1, 3, 5, ... over attn2 (down, up, mid)
    attn2 = sorted(
        {k.rsplit(".attn2.", 1)[0] for k in unet if ".attn2.to_k_ip." in k},
        key=lambda b: (0 if b.startswith("down") else 1 if b.startswith("up") else 2, b),
    )
    ip = {}
    for i, b in enumerate(attn2):
        for p in ("to_k_ip", "to_v_ip"):
            ip[f"{2 * i + 1}.{p}.weight"] = unet[f"{b}.attn2.{p}.weight"]
    paths = {
        "unet": tmp / "stable-diffusion-v1-5" / "unet" / "animatediff_v15_v1_ipplus.pth",
        "i2v": tmp / "I2V-Adapter" / "i2v_module.pth",
        "ip": tmp / "IP-Adapter" / "models" / "ip-adapter-plus_sd15.bin",
    }
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    torch.save(combined, paths["unet"])
    torch.save(branch, paths["i2v"])
    torch.save({"image_proj": resampler, "ip_adapter": ip}, paths["ip"])
    return paths


def test_release_converts_into_a_folder_the_backbone_loads_and_samples_as_official(tmp_path):
    files = official_files(tmp_path, stale_query=True)
    out = tmp_path / "converted"
    convert_i2v_adapter.main(
        [
            "release",
            "--unet-ckpt",
            str(files["unet"]),
            "--i2v-module",
            str(files["i2v"]),
            "--ip-adapter",
            str(files["ip"]),
            "--out",
            str(out),
            "--set",
            "backbone=tiny_i2v_adapter",
            *TINY,
            "--write-config",
            f"paths.output_dir={tmp_path}",
        ]
    )
    report = json.loads((out / "conversion.json").read_text())
    # every key of every file accounted for
    combined = torch.load(files["unet"], weights_only=True)
    branch = torch.load(files["i2v"], weights_only=True)
    ip = torch.load(files["ip"], weights_only=True)
    acc = report["accounting"]
    assert set(acc["unet_ckpt"]) == set(combined)
    assert set(acc["i2v_module"]) == set(branch)
    assert set(acc["ip_adapter"]) == {f"{g}.{k}" for g, d in ip.items() for k in d}
    assert all(v.startswith("dropped") for k, v in acc["ip_adapter"].items() if k.startswith("ip_adapter."))
    assert not any(v.startswith("dropped") for v in acc["unet_ckpt"].values())
    stale = next(k for k in combined if k.endswith("to_q_ff.weight"))
    assert (
        acc["unet_ckpt"][stale].startswith("overwritten by to_q") and "i2v_module" in acc["unet_ckpt"][stale]
    )
    # the folder loads through the backbone config with the printed overrides
    cfg = compose_cfg(tmp_path, *TINY, *report["overrides"])
    m = build(cfg)
    official = load_fixture("i2v_adapter", "unet").group("official.")
    exported = to_official_unet_state_dict(m.unet.state_dict())
    assert set(exported) == set(official) and all(torch.equal(exported[k], official[k]) for k in official)
    # the written config makes the folder a "run": exporting its whole UNet gives back the official files
    back = tmp_path / "back.pth"
    convert_i2v_adapter.main(
        ["export", "--run", str(out / "i2v_adapter.safetensors"), "--full-unet", "--out", str(back)]
    )
    back = torch.load(back, weights_only=True)
    assert set(back) == set(official) and all(torch.equal(back[k], official[k]) for k in official)
    # ... and samples as the official pipeline does (float32, Resampler from the IP-Adapter file)
    fx = load_fixture("i2v_adapter", "sampling_f32")
    out_latents = sample_i2v(
        m,
        ["a prompt"],
        None,
        num_frames=fx.config["video_length"],
        num_inference_steps=fx.config["num_inference_steps"],
        guidance_scale=fx.config["guidance_scale"],
        prompt_embeds=fx["in.prompt_embeds"],
        negative_prompt_embeds=fx["in.negative_prompt_embeds"],
        image_embeds=fx["in.clip_hidden"],
        negative_image_embeds=fx["in.negative_clip_hidden"],
        first_frame_latents=fx["in.first_frame_latents"],
        noise=fx["in.noise"],
        fsp_mask=(fx["in.fsp_uniform"] >= 0.5).float(),
        output_type="latent",
    )
    assert_rel_close(out_latents, fx["out.latents"], what="release -> our pipeline vs official pipeline")


def test_release_query_comes_from_the_branch_checkpoint_else_from_to_q(tmp_path):
    """What the official loading order gives: from_pretrained_ip sets to_q_ff <- to_q (over anything in
    the UNet checkpoint), then load_weights(i2v_module_path) loads the branch over it."""
    files = official_files(tmp_path, stale_query=True)
    cfg = compose_cfg(tmp_path, *TINY)
    target = build(cfg).unet
    combined = torch.load(files["unet"], weights_only=True)
    branch = torch.load(files["i2v"], weights_only=True)
    dropped = next(k for k in branch if k.endswith("to_q_ff.weight"))
    partial = {k: v for k, v in branch.items() if k != dropped}
    conv = convert_release(combined, target, i2v_module=partial)
    for k, v in branch.items():
        ours = f"unet.{k.replace('.attn1.', '.attn1.processor.')}"
        expect = combined[k.replace("to_q_ff", "to_q")] if k == dropped else v
        assert torch.equal(conv.adapter[ours], expect), k
    assert any("copy of to_q" in n for n in conv.notes)
    # without the branch checkpoint the release has no trained branch: refused, not zero-filled
    with pytest.raises(KeyError, match="i2v_module"):
        convert_release(combined, target)


def test_unknown_official_keys_fail_loudly_unless_dropped(tmp_path):
    files = official_files(tmp_path)
    target = build(compose_cfg(tmp_path, *TINY)).unet
    combined = torch.load(files["unet"], weights_only=True)
    branch = torch.load(files["i2v"], weights_only=True)
    odd = {**combined, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k_ff.weight": torch.ones(1)}
    with pytest.raises(KeyError, match="to_k_ff"):
        convert_release(odd, target, i2v_module=branch)
    conv = convert_release(odd, target, i2v_module=branch, drop=[r".*\.to_k_ff\.weight"])
    assert conv.accounting["unet_ckpt"][
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k_ff.weight"
    ].startswith("dropped")
    short = {k: v for k, v in combined.items() if "conv_out" not in k}
    with pytest.raises(KeyError, match="conv_out"):
        convert_release(short, target, i2v_module=branch)
    bad = {**combined, "conv_out.bias": torch.zeros(5)}
    with pytest.raises(ValueError, match="shape"):
        convert_release(bad, target, i2v_module=branch)


def test_personalized_unet_accepts_the_official_combined_checkpoint(tmp_path):
    """Regression: the release's combined UNet file raised KeyError (official key layout)."""
    files = official_files(tmp_path)
    m = build(compose_cfg(tmp_path, *TINY))
    before = {k: v.clone() for k, v in m.unet.state_dict().items() if "_ff." in k}
    loaded = load_personalized_unet(m.unet, files["unet"])
    official = load_fixture("i2v_adapter", "unet").group("official.")
    own = to_official_unet_state_dict(m.unet.state_dict())
    assert all(torch.equal(own[k], official[k]) for k in official if "_ff." not in k)
    assert all(torch.equal(v, m.unet.state_dict()[k]) for k, v in before.items())  # the branch is kept
    dup_pe = sum(k.endswith("attention_blocks.1.pos_encoder.pe") for k in official)  # one per block in ours
    assert len(loaded) == len(official) - dup_pe - sum("_ff." in k for k in official)  # no branch in the file


def test_full_size_release_key_accounting_on_meta():
    """All 1326 keys of the full-size official UNet (SD1.5 686 + motion 560 + IP k/v 32 + branch 48,
    as built from the official code) map onto the full-size config, names and shapes."""
    sys.path.insert(0, str(REPO / "scripts"))
    keys = load_fixture("i2v_adapter", "official_unet_sd15_keys").meta["keys"]
    assert len(keys) == 1326
    meta = {k: torch.empty(s, device="meta") for k, s in keys.items()}
    _, model = convert_i2v_adapter.meta_model([])
    target = model.unet
    assert len(i2v_adapter_processors(target)) == 16
    conv = convert_release(
        {k: v for k, v in meta.items() if "_ff." not in k},
        target,
        i2v_module={k: v for k, v in meta.items() if "_ff." in k},
    )
    acc = {**conv.accounting["unet_ckpt"], **conv.accounting["i2v_module"]}
    assert set(acc) == set(keys) and not any(v.startswith("dropped") for v in acc.values())
    assert (len(conv.unet), len(conv.ip), len(conv.adapter)) == (686 + 560 - 20, 32, 48)
    own = target.state_dict()
    assert all(tuple(v.shape) == tuple(own[k].shape) for k, v in conv.unet.items())
