"""I2V-Adapter: first-frame attention, training objective, FSP sampling, export/reload, parameter count."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from diffusers import UNetMotionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from i2vlab.methods.i2v_adapter import I2VAdapter
from i2vlab.models.i2v_adapter import (
    FirstFrameAttnProcessor,
    convert_official_adapter,
    i2v_adapter_processors,
    install_i2v_adapter,
    spatial_self_attention_names,
)
from i2vlab.pipelines.i2v_adapter import degrade, fsp_start_index, gaussian_blur, initial_latents, sample_i2v

REPO = Path(__file__).resolve().parents[1]
F = 4  # frames in these tests


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


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return compose_cfg(tmp_path_factory.mktemp("i2v"))


@pytest.fixture(scope="module")
def module(cfg):
    return build(cfg)


def batch(b: int = 2, f: int = F, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.rand(b, f, 3, 16, 16, generator=g) * 2 - 1,
        "caption": ["a red ball", "blue square"][:b],
    }


def unet_inputs(unet, b=2, f=F, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, f, 8, 8, generator=g)
    ehs = torch.randn(b * f, 7, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([10, 700][:b]), ehs


# ----------------------------------------------------------------------------------------------
# the first-frame attention branch
# ----------------------------------------------------------------------------------------------
def test_adapted_unet_equals_stock_unet_at_init(cfg):
    torch.manual_seed(0)
    stock = UNetMotionModel(**OmegaConf.to_container(cfg.backbone.unet.config)).eval()
    adapted = copy.deepcopy(stock)
    procs = install_i2v_adapter(adapted)
    # every spatial attn1 (down, mid, up), no motion-module attention
    assert set(procs) == set(spatial_self_attention_names(stock))
    assert any(k.startswith("mid_block") for k in procs) and any(k.startswith("up_blocks") for k in procs)
    assert not any("motion_modules" in k for k in procs)
    x, t, ehs = unet_inputs(stock)
    with torch.no_grad():
        assert torch.equal(stock(x, t, ehs).sample, adapted(x, t, ehs).sample)
    for name, p in procs.items():
        attn = adapted.get_submodule(name.rsplit(".", 1)[0])
        assert torch.equal(p.to_q_ff.weight, attn.to_q.weight) and p.to_q_ff.bias is None
        assert p.to_out_ff.bias is not None
        assert not p.to_out_ff.weight.any() and not p.to_out_ff.bias.any()


def test_full_module_unet_equals_unet_without_first_frame_branch(module):
    """With the content adapter installed too: removing the new processors changes nothing at init."""
    stock = copy.deepcopy(module.unet)
    stock.set_attn_processor(
        {
            k: (AttnProcessor2_0() if isinstance(p, FirstFrameAttnProcessor) else p)
            for k, p in stock.attn_processors.items()
        }
    )
    x, t, ehs = unet_inputs(stock)
    img = {"added_cond_kwargs": {"image_embeds": [torch.randn(2, 1, 17, 32)]}}
    with torch.no_grad():
        assert torch.equal(stock(x, t, ehs, **img).sample, module.unet(x, t, ehs, **img).sample)


def _reference_attn(attn, proc, x, f):
    """Naive maths of the paper: softmax(QK^T/sqrt d)V + first-frame branch with repeated frame-0 K, V."""
    h = attn.heads

    def split(t):
        return t.view(t.shape[0], t.shape[1], h, -1).transpose(1, 2)

    def att(q, k, v):
        w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        return (w @ v).transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    k, v = attn.to_k(x), attn.to_v(x)
    k0 = k.view(-1, f, *k.shape[1:])[:, [0] * f].reshape(k.shape)
    v0 = v.view(-1, f, *v.shape[1:])[:, [0] * f].reshape(v.shape)
    a = att(split(attn.to_q(x)), split(k), split(v))
    a1 = att(split(proc.to_q_ff(x)), split(k0), split(v0))
    return attn.to_out[0](a) + proc.to_out_ff(a1)


def test_processor_computes_first_frame_attention(cfg):
    torch.manual_seed(0)
    unet = UNetMotionModel(**OmegaConf.to_container(cfg.backbone.unet.config)).eval()
    procs = install_i2v_adapter(unet)
    name, proc = next(iter(procs.items()))
    attn = unet.get_submodule(name.rsplit(".", 1)[0])
    with torch.no_grad():
        torch.nn.init.normal_(proc.to_q_ff.weight, std=0.2)
        torch.nn.init.normal_(proc.to_out_ff.weight, std=0.2)
        torch.nn.init.normal_(proc.to_out_ff.bias, std=0.2)
        c = attn.to_q.in_features
        x = torch.randn(2 * F, 10, c)
        proc.frames.num_frames = F
        out = attn(x)
        ref = _reference_attn(attn, proc, x, F)
        assert torch.allclose(out, ref, atol=1e-5)
        # the new branch reads frame 0 only: changing frame 0 of a clip changes every frame of it,
        # changing frame 2 changes only frame 2 (the plain self-attention is per frame)
        y = x.clone()
        y[2] += 1.0
        d = (attn(y) - out).abs().amax(dim=(1, 2))
        assert d[2] > 0 and torch.all(d[[0, 1, 3, 4, 5, 6, 7]] == 0)
        y = x.clone()
        y[0] += 1.0
        d = (attn(y) - out).abs().amax(dim=(1, 2))
        assert torch.all(d[:F] > 0) and torch.all(d[F:] == 0)


# ----------------------------------------------------------------------------------------------
# training objective
# ----------------------------------------------------------------------------------------------
def test_gradients_reach_only_the_new_projections(cfg):
    m = build(cfg)
    m.train()
    names = m.configure_trainable()
    layers = len(i2v_adapter_processors(m.unet))
    assert len(names) == 3 * layers and all(".attn1.processor.to_" in n and "_ff." in n for n in names)
    with torch.no_grad():  # a non-zero output projection, so that to_q_ff receives gradient too
        for p in i2v_adapter_processors(m.unet).values():
            torch.nn.init.normal_(p.to_out_ff.weight, std=0.1)
    loss, _ = m.compute_loss(batch(), torch.Generator().manual_seed(0))
    loss.mean().backward()
    for n, p in m.named_parameters():
        if n in names:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None and not p.requires_grad, n


class _Capture:
    def __init__(self):
        self.samples = []

    def __call__(self, mod, args, kwargs):
        self.samples.append((args[0] if args else kwargs["sample"]).detach().clone())


def test_frame0_is_the_clean_latent_in_training(module):
    b = batch()
    cap = _Capture()
    h = module.unet.register_forward_pre_hook(cap, with_kwargs=True)
    try:
        t = torch.tensor([999, 500])
        module.compute_loss(b, torch.Generator().manual_seed(3), levels=t)
    finally:
        h.remove()
    latents = module.encode_video(b["video"], torch.Generator().manual_seed(3))  # the same first draw
    noisy = cap.samples[0]
    assert torch.equal(noisy[:, :, 0], latents[:, :, 0])  # bit-identical, not sqrt(alpha_bar)-scaled
    scaled = module.noise_scheduler.add_noise(latents, torch.zeros_like(latents), t)
    assert not torch.allclose(noisy[:, :, 0], scaled[:, :, 0])
    assert (noisy[:, :, 1:] - latents[:, :, 1:]).abs().mean() > 0.5  # the other frames are noised


class Perturbed(I2VAdapter):
    """The real method, with its prediction changed on one frame (to probe the loss mask)."""

    frame: int | None = None

    def denoise(self, noisy, timesteps, cond):
        pred = super().denoise(noisy, timesteps, cond)
        if self.frame is not None:
            pred = pred.clone()
            pred[:, :, self.frame] += 100.0
        return pred


def test_all_frames_share_the_timestep_and_loss_excludes_frame0(cfg):
    torch.manual_seed(0)
    parts = instantiate(cfg.method, _partial_=True, _convert_="partial")
    m = Perturbed(*parts.args, **parts.keywords)
    m.eval()
    t = torch.tensor([300, 800])

    def loss():
        return m.compute_loss(batch(), torch.Generator().manual_seed(5), levels=t)[0]

    base = loss()
    m.frame = 0
    assert torch.equal(loss(), base)
    m.frame = 2
    assert torch.all(loss() > base + 100)
    m.frame = None
    # UNetMotionModel embeds one timestep per clip and repeats it over frames
    cap = _Capture()
    h = m.unet.time_proj.register_forward_pre_hook(lambda mod, args: cap.samples.append(args[0].clone()))
    try:
        loss()
    finally:
        h.remove()
    assert torch.equal(cap.samples[0], t)
    mask = m.loss_mask(torch.zeros(2, 4, F, 2, 2), {})
    assert mask[:, 0].eq(0).all() and mask[:, 1:].eq(1).all()


# ----------------------------------------------------------------------------------------------
# Frame Similarity Prior and sampling
# ----------------------------------------------------------------------------------------------
def _ddim(module, steps=25):
    from diffusers import DDIMScheduler

    from i2vlab.diffusion.schedules import sampling_scheduler

    s = sampling_scheduler(module.noise_scheduler, DDIMScheduler, clip_sample=False)
    s.set_timesteps(steps)
    return s


def test_fsp_start_step_t0(module):
    s = _ddim(module)
    assert int(s.timesteps[0]) == 961  # 25 "leading" steps + offset 1: the official t0
    assert fsp_start_index(s.timesteps, None, 1000) == 0
    i = fsp_start_index(s.timesteps, 0.5, 1000)
    assert int(s.timesteps[i]) == 481 and int(s.timesteps[i - 1]) == 521
    z1 = torch.randn(1, 4, 8, 8)
    for t0 in (None, 0.5, 0.2):
        g = torch.Generator().manual_seed(0)
        lat, start = initial_latents(z1, F, s, g, fsp=True, fsp_t0=t0, fsp_p=1.0)
        t = s.timesteps[start]
        a = s.alphas_cumprod[t]
        noise = torch.randn((1, 4, F, 8, 8), generator=torch.Generator().manual_seed(0))
        expect = a.sqrt() * z1[:, :, None].expand(-1, -1, F, -1, -1) + (1 - a).sqrt() * noise
        assert torch.allclose(lat[:, :, 1:], expect[:, :, 1:], atol=1e-6)
        assert torch.equal(lat[:, :, 0], z1)
    # a later start keeps more of the image: the latents move toward z1 as t0 falls
    errs = []
    for t0 in (None, 0.5, 0.2):
        lat, _ = initial_latents(z1, F, s, torch.Generator().manual_seed(0), fsp=True, fsp_t0=t0, fsp_p=1.0)
        errs.append((lat[:, :, 1:] - z1[:, :, None]).pow(2).mean())
    assert errs[0] > errs[1] > errs[2]
    with pytest.raises(ValueError):
        fsp_start_index(s.timesteps, 1.5, 1000)


def test_fsp_keep_probability_p_and_blur():
    torch.manual_seed(0)
    z = torch.randn(2, 4, 6, 16, 16)
    blur = gaussian_blur(z.transpose(1, 2), 9, 18.0).transpose(1, 2)
    assert blur.std() < 0.5 * z.std()  # sigma 18 over 9 pixels: close to a box filter
    for p in (0.0, 0.3, 0.5, 1.0):
        d = degrade(z, p, torch.Generator().manual_seed(1))
        assert torch.equal(d[:, :, 0], z[:, :, 0])  # frame 0 is never degraded
        kept = (d[:, :, 1:] == z[:, :, 1:]).float().mean()
        blurred = (d[:, :, 1:] == blur[:, :, 1:]).float().mean()
        assert abs(kept - p) < 0.03 and abs(kept + blurred - 1) < 1e-6
    # p changes the initial latents
    s = _ddim_standalone()
    z1 = torch.randn(1, 4, 16, 16)
    a, _ = initial_latents(z1, F, s, torch.Generator().manual_seed(0), fsp_p=0.0)
    b, _ = initial_latents(z1, F, s, torch.Generator().manual_seed(0), fsp_p=1.0)
    assert not torch.allclose(a[:, :, 1:], b[:, :, 1:]) and torch.equal(a[:, :, 0], b[:, :, 0])


def _ddim_standalone():
    from diffusers import DDIMScheduler

    s = DDIMScheduler(
        beta_schedule="linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, clip_sample=False
    )
    s.set_timesteps(25)
    return s


@pytest.mark.parametrize("fsp", [True, False])
def test_frame0_stays_clean_at_every_sampling_step(module, fsp):
    images = batch(1)["video"][:, 0]
    cap = _Capture()
    h = module.unet.register_forward_pre_hook(cap, with_kwargs=True)
    try:
        video, latents = sample_i2v(
            module,
            ["a red ball"],
            images,
            num_frames=F,
            seed=7,
            num_inference_steps=5,
            guidance_scale=7.5,
            fsp=fsp,
            fsp_t0=0.5 if fsp else None,
            return_latents=True,
        )
    finally:
        h.remove()
    z1 = module.encode_image(images, generator=torch.Generator().manual_seed(7))
    assert len(cap.samples) == (3 if fsp else 5)  # t0 = 0.5 skips the two noisiest of 5 steps (801, 601)
    for x in cap.samples:  # (2b c f h w): uncond and cond halves
        assert torch.equal(x[0, :, 0], z1[0]) and torch.equal(x[1, :, 0], z1[0])
    assert torch.equal(latents[:, :, 0], z1)
    assert video.shape == (1, F, 3, 16, 16) and video.min() >= -1 and video.max() <= 1
    assert torch.allclose(video[:, 0], module.decode_latents(z1[:, :, None])[:, 0], atol=1e-5)


def test_color_match_changes_only_ab_statistics(module):
    """Frame 0 is untouched; in every later frame the lightness L (CIELAB) is kept (up to the uint8
    round trip) while the a/b statistics move onto frame 0's."""
    import cv2
    import numpy as np

    from i2vlab.pipelines.i2v_adapter import color_match

    g = torch.Generator().manual_seed(0)
    v = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    v[1:, 0] = v[1:, 0] * 0.3 + 0.6  # reddish later frames
    out = color_match(v)

    def lab(x):
        u8 = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2LAB).astype(np.float64) for f in u8])

    before, after = lab(v), lab(out)
    assert torch.allclose(out[0], v[0], atol=1 / 127)
    # L kept: per-pixel lightness moves by at most the rounding of the LAB -> RGB -> LAB round trip
    dl = np.abs(after[1:, ..., 0] - before[1:, ..., 0])
    assert dl.mean() < 1.5 and np.abs(after[1:, ..., 0].mean() - before[1:, ..., 0].mean()) < 1.0
    for ch in (1, 2):  # a/b: the gap to frame 0's mean and spread shrinks at least by half
        ref_mean, ref_std = before[0, ..., ch].mean(), before[0, ..., ch].std()
        for f in (1, 2):
            gap_before = abs(before[f, ..., ch].mean() - ref_mean) + abs(before[f, ..., ch].std() - ref_std)
            gap_after = abs(after[f, ..., ch].mean() - ref_mean) + abs(after[f, ..., ch].std() - ref_std)
            assert gap_after < 0.5 * gap_before, (ch, f, gap_before, gap_after)


# ----------------------------------------------------------------------------------------------
# checkpoints: export / reload / convert
# ----------------------------------------------------------------------------------------------
def test_exported_adapter_reloads_and_reproduces_the_sample(cfg, tmp_path):
    m = build(cfg)
    with torch.no_grad():
        for p in i2v_adapter_processors(m.unet).values():
            torch.nn.init.normal_(p.to_out_ff.weight, std=0.3)
            torch.nn.init.normal_(p.to_q_ff.weight, std=0.3)
    path = m.export_trainable(tmp_path / "export" / "trainable.safetensors")
    from safetensors.torch import load_file

    names = set(load_file(str(path)))
    assert names == set(m.configure_trainable())  # only the new projections
    images = batch(1)["video"][:, 0]
    kw = {"num_frames": F, "seed": 3, "num_inference_steps": 3, "color_match_frames": False}
    ref = m.sample(["a ball"], images, **kw)
    fresh = build(cfg)  # same seed: the same random frozen backbone
    assert not torch.equal(fresh.sample(["a ball"], images, **kw), ref)
    fresh.load_trainable(path)
    assert torch.equal(fresh.sample(["a ball"], images, **kw), ref)
    other = build(compose_cfg(tmp_path, f"method.adapter.pretrained={path}"))
    assert torch.equal(other.sample(["a ball"], images, **kw), ref)


def test_converter_maps_official_first_frame_branch(cfg, tmp_path):
    """i2v_module.pth (the official first-frame-branch checkpoint) -> the adapter file. The official code
    loads it after from_pretrained_ip set to_q_ff <- to_q, so the file's own to_q_ff is what the release
    uses; a layer without one keeps the copy of to_q from the UNet checkpoint."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    m = build(cfg)
    procs = i2v_adapter_processors(m.unet)
    g = torch.Generator().manual_seed(0)
    branch, unet_ckpt, expect = {}, {}, {}
    for name, p in procs.items():
        block = name[: -len(".attn1.processor")]
        for k, param in [
            ("to_q_ff.weight", p.to_q_ff.weight),
            ("to_out_ff.weight", p.to_out_ff.weight),
            ("to_out_ff.bias", p.to_out_ff.bias),
        ]:
            v = torch.randn(param.shape, generator=g)
            branch[f"module.{block}.attn1.{k}"] = v
            expect[f"unet.{name}.{k}"] = v
        unet_ckpt[f"{block}.attn1.to_q.weight"] = torch.randn(p.to_q_ff.weight.shape, generator=g)
    conv = convert_official_adapter(branch)
    assert conv.keys() == expect.keys() and all(torch.equal(conv[k], expect[k]) for k in expect)
    # without to_q_ff in the file: the copy of to_q (needs the UNet checkpoint), as the official loader
    no_q = {k: v for k, v in branch.items() if "to_q_ff" not in k}
    with pytest.raises(KeyError, match="to_q"):
        convert_official_adapter(no_q)
    conv_q = convert_official_adapter(no_q, to_q_source=unet_ckpt)
    for k, v in conv_q.items():
        if k.endswith("to_q_ff.weight"):
            assert torch.equal(v, unet_ckpt[k[len("unet.") :].replace(".processor.to_q_ff", ".to_q")])
    # anything but the branch is refused (the whole release converts with `release`)
    with pytest.raises(KeyError, match="release"):
        convert_official_adapter({**branch, **unet_ckpt})
    # the script end to end (the earlier --src/--dst form still works), then load into the method
    src = tmp_path / "i2v_module.pth"
    torch.save({"state_dict": branch}, src)
    dst = tmp_path / "adapter.safetensors"
    subprocess.run(
        [sys.executable, str(REPO / "scripts/convert_i2v_adapter.py"), "--src", str(src), "--dst", str(dst)],
        check=True,
        cwd=REPO,
    )
    loaded = m.pipe.load_adapter(dst)
    assert set(loaded) == set(m.configure_trainable()) == set(load_file(str(dst)))
    for k, v in dict(m.named_parameters()).items():
        if k in expect:
            assert torch.equal(v, expect[k])
    # with a config beside it, the converted file is a "run" that load_method / scripts/sample.py accept
    dst2 = tmp_path / "conv" / "adapter.safetensors"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/convert_i2v_adapter.py"),
            "adapter",
            "--src",
            str(src),
            "--dst",
            str(dst2),
            "--write-config",
            "experiment=toy_i2v_adapter",
        ],
        check=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    from i2vlab.pipelines import load_pipeline

    loaded_m = load_pipeline(dst2)
    own = loaded_m.named_tensors()
    assert all(torch.equal(own[k], v) for k, v in expect.items())
    # and back: export to the official layout (what inference.py --i2v_module_path loads)
    back = tmp_path / "back.pth"
    sys.path.insert(0, str(REPO / "scripts"))
    import convert_i2v_adapter

    convert_i2v_adapter.main(["export", "--adapter", str(dst), "--out", str(back)])
    official = torch.load(str(back), weights_only=True)
    assert official.keys() == {k[len("module.") :] for k in branch}
    assert all(torch.equal(official[k[len("module.") :]], v) for k, v in branch.items())


def test_pickles_are_read_safely(tmp_path):
    """Official .pth/.bin files load with torch.load(weights_only=True); one that needs full
    unpickling is refused with a message that names --trust-checkpoint."""
    from i2vlab.models.i2v_adapter import read_checkpoint
    from i2vlab.utils.safe_load import UnsafeCheckpointError

    path = tmp_path / "odd.pth"
    torch.save({"state_dict": {"a": torch.ones(2)}, "extra": Path("x")}, path)
    with pytest.raises(UnsafeCheckpointError, match="--trust-checkpoint"):
        read_checkpoint(path)
    assert torch.equal(read_checkpoint(path, trust=True)["a"], torch.ones(2))


@pytest.mark.slow
def test_full_size_trainable_parameter_count_on_meta():
    import subprocess
    import sys

    out = (
        subprocess.run(
            [
                sys.executable,
                str(REPO / "scripts/param_report.py"),
                "backbone=sd15_animatediff_ipplus",
                "method=i2v_adapter",
                "+meta=true",
            ],
            check=True,
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        .stdout.strip()
        .splitlines()
    )
    assert out[-1].startswith("trainable=24793280 ")
    # 16 layers: 6 down, 1 mid, 9 up, 2C^2 + C each
    expect = sum(
        2 * c * c + c
        for c in [320] * 2 + [640] * 2 + [1280] * 2 + [1280] + [1280] * 3 + [640] * 3 + [320] * 3
    )
    assert expect == 24793280
