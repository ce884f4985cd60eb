#!/usr/bin/env python
"""Parity fixtures for DynamiCrafter, made by running the official LVDM code.

Official code: a checkout of ``Doubiiu/DynamiCrafter`` (``--official PATH`` or
``$I2VLAB_OFFICIAL_DYNAMICRAFTER``; the fixtures were made at commit c453369). Its UNet
(``lvdm/modules/networks/openaimodel3d.py``), Resampler (``lvdm/modules/encoders/resampler.py``),
DDIM samplers (``lvdm/models/samplers/ddim.py``, ``ddim_multiplecond.py``), ``LatentVisualDiffusion``
(``lvdm/models/ddpm3d.py``) and ``image_guided_synthesis`` (``scripts/evaluation/inference.py``) import
on this project's stack as they are; ``xformers`` is absent (the code falls back to its plain
attention), ``open_clip`` / ``kornia`` are never imported (the encoders are stand-ins, below). Extra
packages: ``kornia`` for the ``clip_preprocess`` fixture only (the official CLIP preprocessing
resizes with it; made with 0.7.0: ``pip install --no-deps --target DIR kornia==0.7.0`` and
``PYTHONPATH=DIR``); ``opencv-python``, ``omegaconf``, ``pytorch_lightning`` come with the project.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/kornia-0.7.0 \
        python scripts/parity/dynamicrafter.py --official /path/to/DynamiCrafter [--only NAME ...]

writes ``tests/fixtures/parity/dynamicrafter/`` (``--out`` to change), about 2.5 MB:

- ``weights``: a tiny official UNet (every parameter seeded and non-zero: ``random_state_dict`` over
  its ``state_dict_spec``, float64; the spec, seed and a digest are stored, the tests rebuild the
  weights from them) in two configs: ``unet256`` (the 256 config: learnable gate
  ``alpha``, fs condition, default_fs 3) and ``unet512`` (the 512/1024 config: fixed gate, fps
  condition, default_fs 24; the same weights without ``alpha``); ``channel_mult`` [1, 1, 2],
  ``num_res_blocks`` 1, attention at downsample 1 and 2 (not at 4: as the full model's last level),
  ``num_head_channels`` 8 (4 heads at width 32, 8 in the middle block), ``init_attn`` (8 heads),
  ``use_linear``, 32 GroupNorm groups (hard-coded in LVDM), context width 32 with LVDM's hard-coded
  77 text + 16 image tokens per frame. A tiny ``Resampler`` (``video_length`` 4, 16 queries per
  frame). The stand-in encoders.
- ``unet`` (float64): each UNet on 2 clips, timesteps (37, 811): 16 frames with per-frame image tokens
  and fs given; 8 frames with per-frame tokens and fs None (``default_fs``; 256) or with 256 image
  tokens that do not match 8 x 16, so every frame sees the whole context (512).
- ``resampler`` (float64): the Resampler on CLIP-like tokens.
- ``clip_preprocess`` (float64): ``FrozenOpenCLIPImageEmbedderV2.preprocess`` (kornia bicubic resize
  to 224 with its Gaussian antialias, CLIP mean / std) of seeded images of 256 x 256, 320 x 512
  (shrink), 160 x 160 (enlarge), 100 x 300; the inputs are rebuilt from their seeds (digests
  stored), the outputs stored at every 8th pixel plus the 2 outermost rows / columns.
- ``schedule``: LVDM's DDIM timesteps (``make_ddim_timesteps``, uniform and uniform_trailing, 10 / 16 /
  25 / 30 / 50 steps), cumulative alphas (with and without zero-terminal SNR) and dynamic-rescale
  tables (0.7, 0.3), in float64 as LVDM computes them before storing float32 buffers.
- ``sampler_*`` (float64): ``image_guided_synthesis`` end to end (conditions from the stand-in encoders
  and the Resampler, then ``DDIMSampler`` / ``DDIMSampler_multicond``), eta = 1, 2 clips of 4 frames:
  ``sampler_256`` (eps, uniform, CFG 7.5, 10 steps), ``sampler_256_multicond`` (s_txt 7.5, s_img 3,
  16 steps = 17 LVDM steps, as 16 does not divide 1000), ``sampler_512`` (v, zero-terminal SNR, uniform_trailing, guidance rescale
  0.7, dynamic rescale 0.7, 10 steps), ``sampler_1024_multicond`` (as 512 with base_scale 0.3, s_img 2,
  16 steps), ``sampler_512_interp`` (512 with ``interp``: start and end keyframes, 10 steps). The
  initial noise and every step's noise (LVDM draws them from the global RNG with
  ``torch.randn`` / ``noise_like``) are drawn beforehand, served to the official code in its order and
  stored, so our sampler can be fed the same.
- ``loss_*`` (float32, the official code as it runs): ``LatentVisualDiffusion.shared_step`` on a batch
  (``get_batch_input``: caption / image dropout, conditioning frame, concat latent, fs; ``forward``:
  timestep, dynamic rescale; ``p_losses``: noise, target, loss): ``loss_256`` (eps, rand_cond_frame,
  4 clips whose dropout draws hit text-only, both, image-only, none), ``loss_512`` (v, zero-terminal
  SNR, dynamic rescale 0.7, fps condition), ``loss_interp`` (512 + interp_mode). Its random draws
  (``torch.rand``, ``random.randint``, ``torch.randint``, ``torch.randn_like``) are replayed from
  stored values; the UNet inputs and outputs are recorded too.

Made in float64 where it runs: LVDM's ``GroupNormSpecific`` and the Resampler's softmax call
``.float()`` (which would cast float64 to float32): during the float64 runs ``Tensor.float`` leaves
float64 tensors alone (the same maths in float64); the schedule buffers (``torch.tensor(...,
dtype=float32)`` in ``register_schedule``) are made float64 the same way, and the default dtype is
float64 (``torch.full`` in the sampler), and the UNet's ``dtype`` attribute (its forward casts the
input to it) is float64. The sampler's ``register_buffer`` moves tensors to CUDA: it
is replaced by a plain ``setattr``.

Stand-ins (identical functions on both sides, their weights stored): first stage = pixel subsampling
to 4 channels (``x[:, :, ::2, ::2]`` and ``x[:, :1, 1::2, 1::2]``, scale factor 1 for the float64
sampler runs, 0.18215 for the loss runs); text = an embedding table looked up by
``1 + ord(c) % 63`` per character, padded with 0 to 77 tokens; image = CLIP normalisation (no resize:
the images are the CLIP input size) then a 4 x 4 patch convolution and a class token (17 tokens of
width 24). All stored values are float16-exact, so every float32 cast on our side is lossless.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import random
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    FIXTURES,
    add_official_args,
    official_checkout,
    official_commit,
    on_path,
    random_state_dict,
    save_fixture,
    state_dict_digest,
    state_dict_spec,
)

ENV = "I2VLAB_OFFICIAL_DYNAMICRAFTER"
REPO = "Doubiiu/DynamiCrafter"
GENERATOR = "scripts/parity/dynamicrafter.py"

TXT, TOK = 77, 16  # hard-coded in openaimodel3d.forward ("77 + t*16") and CrossAttention
CTX = 32  # context width
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

UNET_COMMON = dict(
    in_channels=8,
    model_channels=32,
    out_channels=4,
    num_res_blocks=1,
    attention_resolutions=[1, 2],
    channel_mult=[1, 1, 2],
    dropout=0.0,
    num_head_channels=8,
    transformer_depth=1,
    context_dim=CTX,
    use_linear=True,
    use_checkpoint=False,
    temporal_conv=True,
    temporal_attention=True,
    temporal_selfatt_only=True,
    use_relative_position=False,
    use_causal_attention=False,
    temporal_length=16,
    addition_attention=True,
    image_cross_attention=True,
    fs_condition=True,
)
UNETS = {
    "unet256": {**UNET_COMMON, "image_cross_attention_scale_learnable": True, "default_fs": 3},
    "unet512": {**UNET_COMMON, "image_cross_attention_scale_learnable": False, "default_fs": 24},
}
RESAMPLER = dict(
    dim=32,
    depth=2,
    dim_head=8,
    heads=4,
    num_queries=TOK,
    embedding_dim=24,
    output_dim=CTX,
    ff_mult=2,
    video_length=4,
)
F_SAMPLE, HW = 4, 16  # frames and pixel size of the sampler / loss runs (latents 8 x 8)
VOCAB, PATCH = 64, 4
UNET_SEED, RESAMPLER_SEED = 101, 201


def ours_unet_config(official: dict) -> dict:
    """Our :class:`DynamiCrafterUNet3DModel` config for an official ``UNetModel`` config."""
    mult, mc = official["channel_mult"], official["model_channels"]
    attn, ds = [], 1
    for _ in mult:
        attn.append(ds in official["attention_resolutions"])
        ds *= 2
    return {
        "in_channels": official["in_channels"],
        "out_channels": official["out_channels"],
        "block_out_channels": [m * mc for m in mult],
        "down_block_types": ["CrossAttnDownBlock3D" if a else "DownBlock3D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(attn)],
        "layers_per_block": official["num_res_blocks"],
        "attention_head_dim": official["num_head_channels"],
        "cross_attention_dim": official["context_dim"],
        "norm_num_groups": 32,
        "dropout": official["dropout"],
        "init_attention_heads": 8 if official["addition_attention"] else 0,
        "fps_condition": official["fs_condition"],
        "default_fs": official["default_fs"],
        "image_cross_attention": official["image_cross_attention"],
        "image_cross_attention_scale": 1.0,
        "image_cross_attention_scale_learnable": official["image_cross_attention_scale_learnable"],
        "text_context_len": TXT,
        "image_tokens_per_frame": TOK,
        "temporal_length": official["temporal_length"],
    }


# ----------------------------------------------------------------------------------------------
# running the official code
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def float64_official() -> Iterator[None]:
    """``Tensor.float()`` keeps float64 tensors, ``torch.tensor(..., dtype=float32)`` in
    ``ddpm3d.register_schedule`` / ``__init__`` (via its ``partial``) makes float64, default dtype float64."""
    import lvdm.models.ddpm3d as ddpm3d

    orig_float, orig_partial, orig_default = torch.Tensor.float, ddpm3d.partial, torch.get_default_dtype()

    def keep64(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else orig_float(self, *args, **kwargs)

    def partial64(func, *args, **kwargs):
        if func is torch.tensor and kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        return functools.partial(func, *args, **kwargs)

    torch.Tensor.float, ddpm3d.partial = keep64, partial64
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.Tensor.float, ddpm3d.partial = orig_float, orig_partial
        torch.set_default_dtype(orig_default)


@contextlib.contextmanager
def replay(**queues: list) -> Iterator[dict]:
    """Serve the official code's global-RNG draws from ``queues`` (``rand``, ``randint``, ``randn``,
    ``randn_like``, ``py_randint``), each call popping the next value; fails on an unexpected call or
    a value left over."""
    orig = {k: getattr(torch, k) for k in ("rand", "randint", "randn", "randn_like")}
    orig_py = random.randint
    calls: dict[str, int] = {}

    def server(name):
        def fn(*args, **kwargs):
            if name not in queues or not queues[name]:
                raise AssertionError(f"unexpected official draw torch.{name}{args}")
            calls[name] = calls.get(name, 0) + 1
            v = queues[name].pop(0)
            return v.clone() if torch.is_tensor(v) else v

        return fn

    for k in orig:
        setattr(torch, k, server(k))
    random.randint = server("py_randint")
    try:
        yield calls
    finally:
        for k, v in orig.items():
            setattr(torch, k, v)
        random.randint = orig_py
    left = {k: len(v) for k, v in queues.items() if v}
    if left:
        raise AssertionError(f"official code drew fewer values than served: {left}")


def import_official(root: Path) -> types.SimpleNamespace:
    with on_path(root):
        from lvdm.models import ddpm3d
        from lvdm.models.samplers import ddim, ddim_multiplecond
        from lvdm.models.utils_diffusion import (
            make_beta_schedule,
            make_ddim_timesteps,
            rescale_zero_terminal_snr,
        )
        from lvdm.modules.encoders.resampler import Resampler
        from lvdm.modules.networks.openaimodel3d import UNetModel

        spec = importlib.util.spec_from_file_location(
            "dc_inference", root / "scripts/evaluation/inference.py"
        )
        inference = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(inference)
    for mod in (ddim, ddim_multiplecond):  # its register_buffer moves every tensor to CUDA
        mod.DDIMSampler.register_buffer = lambda self, name, attr: setattr(self, name, attr)
    return types.SimpleNamespace(
        ddpm3d=ddpm3d,
        UNetModel=UNetModel,
        Resampler=Resampler,
        inference=inference,
        make_ddim_timesteps=make_ddim_timesteps,
        make_beta_schedule=make_beta_schedule,
        rescale_zero_terminal_snr=rescale_zero_terminal_snr,
    )


def f16(t: torch.Tensor) -> torch.Tensor:
    """Values rounded to float16 (kept in float64): exact in every float dtype."""
    return t.half().double()


def seeded(shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return f16(torch.randn(shape, generator=g, dtype=torch.float64) * scale)


# ----------------------------------------------------------------------------------------------
# stand-in encoders (official interfaces); the tests write the same functions for ours
# ----------------------------------------------------------------------------------------------
def caption_ids(text: str, length: int = TXT) -> list[int]:
    ids = [1 + ord(c) % (VOCAB - 1) for c in text][:length]
    return ids + [0] * (length - len(ids))


class StandInFirstStage(nn.Module):
    """``encode``: pixel subsampling to 4 latent channels (a tensor, as LVDM's encoders may return)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("dummy", torch.zeros(1))

    def encode(self, x):
        return torch.cat([x[:, :, ::2, ::2], x[:, :1, 1::2, 1::2]], dim=1)

    def decode(self, z, **kwargs):
        return z[:, :3].repeat_interleave(2, -1).repeat_interleave(2, -2)


class StandInText(nn.Module):
    """``encode(list of captions)``: embedding table looked up by :func:`caption_ids`."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(seeded((VOCAB, CTX), 7001))

    def encode(self, texts):
        ids = torch.tensor([caption_ids(t) for t in texts], device=self.table.device)
        return self.table[ids]


class StandInImage(nn.Module):
    """``forward(images b c h w in [-1, 1])``: CLIP normalisation, then class token + 4 x 4 patches."""

    def __init__(self) -> None:
        super().__init__()
        width = RESAMPLER["embedding_dim"]
        self.patch = nn.Conv2d(3, width, PATCH, stride=PATCH)
        self.cls = nn.Parameter(seeded((width,), 7002, 0.1))
        with torch.no_grad():
            self.patch.weight.copy_(seeded(self.patch.weight.shape, 7003, 0.2))
            self.patch.bias.copy_(seeded(self.patch.bias.shape, 7004, 0.1))

    def forward(self, img):
        x = (img + 1.0) / 2.0  # the official preprocess without its resize, float32 mean / std buffers
        mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).to(x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=torch.float32).to(x.dtype).view(1, 3, 1, 1)
        x = self.patch((x - mean) / std).flatten(2).transpose(1, 2)
        cls = self.cls.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1)


def standins_module() -> None:
    mod = types.ModuleType("dynamicrafter_standins")
    mod.FirstStage, mod.Text, mod.Image = StandInFirstStage, StandInText, StandInImage
    sys.modules["dynamicrafter_standins"] = mod


def build_official_model(off, style: str, weights: dict, scale_factor: float, **overrides):
    """``LatentVisualDiffusion`` of a config style (``256`` / ``512`` / ``1024``) with the tiny UNet,
    the tiny Resampler and the stand-ins, loaded with ``weights``."""
    from omegaconf import OmegaConf

    unet = "unet256" if style == "256" else "unet512"
    kw = dict(
        timesteps=1000,
        linear_start=0.00085,
        linear_end=0.012,
        num_timesteps_cond=1,
        conditioning_key="hybrid",
        first_stage_key="video",
        cond_stage_key="caption",
        cond_stage_trainable=False,
        channels=4,
        image_size=[HW // 2, HW // 2],
        scale_by_std=False,
        scale_factor=scale_factor,
        use_ema=False,
        uncond_type="empty_seq",
        uncond_prob=0.05,
        rand_cond_frame=True,
        perframe_ae=True,
    )
    if style == "256":
        kw.update(parameterization="eps", fps_condition_type="fs")
    else:
        kw.update(
            parameterization="v",
            rescale_betas_zero_snr=True,
            use_dynamic_rescale=True,
            base_scale=0.7 if style == "512" else 0.3,
            fps_condition_type="fps",
        )
    kw.update(overrides)
    cfg = OmegaConf.create(
        {
            "unet_config": {"target": "lvdm.modules.networks.openaimodel3d.UNetModel", "params": UNETS[unet]},
            "first_stage_config": {"target": "dynamicrafter_standins.FirstStage"},
            "cond_stage_config": {"target": "dynamicrafter_standins.Text"},
            "img_cond_stage_config": {"target": "dynamicrafter_standins.Image"},
            "image_proj_stage_config": {
                "target": "lvdm.modules.encoders.resampler.Resampler",
                "params": RESAMPLER,
            },
        }
    )
    model = off.ddpm3d.LatentVisualDiffusion(**cfg, **kw)
    model.model.diffusion_model.load_state_dict(weights[unet])
    model.image_proj_model.load_state_dict(weights["resampler"])
    model.cond_stage_model.load_state_dict(weights["text"])
    model.embedder.load_state_dict(weights["image"])
    return model.eval()


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------
def make_weights(off) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Seeded state dicts (``random_state_dict`` over the official modules' ``state_dict_spec``, float64:
    the tests rebuild them from the stored spec and seed) and the stand-in encoders."""
    specs = {
        "unet256": (state_dict_spec(off.UNetModel(**UNETS["unet256"]).double()), UNET_SEED),
        "resampler": (state_dict_spec(off.Resampler(**RESAMPLER).double()), RESAMPLER_SEED),
    }
    out = {k: random_state_dict(spec, seed) for k, (spec, seed) in specs.items()}
    # the 512 UNet has the same layers without the gates: the same weights, without alpha
    out["unet512"] = {k: v for k, v in out["unet256"].items() if not k.endswith("attn2.alpha")}
    off.UNetModel(**UNETS["unet512"]).load_state_dict(out["unet512"])  # strict: nothing else differs
    out["text"], out["image"] = StandInText().state_dict(), StandInImage().state_dict()
    meta = {
        "specs": {
            k: {"seed": seed, "digest": state_dict_digest(out[k]), "spec": spec}
            for k, (spec, seed) in specs.items()
        }
    }
    return out, meta


def make_unet(off, weights) -> tuple[dict, dict]:
    tensors, cases = {}, {}
    t = torch.tensor([37, 811])
    for name, cfg in UNETS.items():
        with float64_official():
            net = off.UNetModel(**cfg)
        net.load_state_dict(weights[name])
        net = net.double().eval()
        net.dtype = torch.float64  # forward casts its input to this attribute (float32 unless use_fp16)
        runs = [("f16", 16, 16 * TOK, torch.tensor([3, 5]) if name == "unet256" else torch.tensor([24, 10]))]
        runs.append(
            ("f8", 8, 8 * TOK, None)
            if name == "unet256"
            else ("f8_shared", 8, 16 * TOK, torch.tensor([8, 30]))
        )
        for case, f, n_img, fs in runs:
            seed = 1000 + 10 * len(cases)
            x = seeded((2, 8, f, 8, 8), seed)
            ctx = seeded((2, TXT + n_img, CTX), seed + 1)
            with float64_official(), torch.no_grad():
                out = net(x, t, context=ctx, fs=fs)
            key = f"{name}.{case}"
            tensors.update({f"in.{key}.x": x.half(), f"in.{key}.context": ctx.half(), f"out.{key}": out})
            if fs is not None:
                tensors[f"in.{key}.fs"] = fs
            cases[key] = {
                "unet": name,
                "frames": f,
                "image_tokens": n_img,
                "fs": None if fs is None else fs.tolist(),
            }
    tensors["in.timesteps"] = t
    return tensors, {"cases": cases}


def make_resampler(off, weights) -> tuple[dict, dict]:
    with float64_official():
        net = off.Resampler(**RESAMPLER)
    net.load_state_dict(weights["resampler"])
    net = net.double().eval()
    x = seeded((2, 17, RESAMPLER["embedding_dim"]), 3001)
    with float64_official(), torch.no_grad():
        out = net(x)
    return {"in.x": x.half(), "out": out}, {}


def make_schedule(off) -> tuple[dict, dict]:
    tensors = {}
    for n in (3, 10, 16, 25, 30, 50):
        for method in ("uniform", "uniform_trailing"):
            ts = off.make_ddim_timesteps(method, n, 1000, verbose=False)
            tensors[f"timesteps.{method}.{n}"] = torch.as_tensor(np.ascontiguousarray(ts), dtype=torch.long)
    for zsnr in (False, True):
        betas = off.make_beta_schedule("linear", 1000, linear_start=0.00085, linear_end=0.012)
        if zsnr:
            betas = off.rescale_zero_terminal_snr(betas)
        tensors[f"alphas_cumprod.{'zsnr' if zsnr else 'plain'}"] = torch.tensor(
            np.cumprod(1.0 - betas, axis=0)
        )
    for base in (0.7, 0.3):
        with float64_official():
            m = build_official_model(off, "512" if base == 0.7 else "1024", WEIGHTS, 1.0)
        tensors[f"scale_arr.{base}"] = m.scale_arr.clone()
    return tensors, {"note": "uniform at 3 steps indexes t = 1000 (the official sampler fails there)"}


PREPROCESS_SIZES = [(256, 256), (320, 512), (160, 160), (100, 300)]


def preprocess_input(hw: tuple[int, int], seed: int) -> torch.Tensor:
    """The preprocessing test images (too large to store): seeded uniform [-1, 1], float16-exact."""
    g = torch.Generator().manual_seed(seed)
    return f16(torch.rand((1, 3, *hw), generator=g, dtype=torch.float64) * 2 - 1)


def preprocess_sample(x: torch.Tensor) -> torch.Tensor:
    """What is stored of a 224 x 224 preprocessed image: every 8th pixel, and the 2 outermost rows
    and columns (where the blur's reflect padding acts), concatenated."""
    parts = [x[..., ::8, ::8], x[..., :2, :], x[..., -2:, :], x[..., :2], x[..., -2:]]
    return torch.cat([p.flatten() for p in parts])


def make_clip_preprocess(root: Path) -> tuple[dict, dict]:
    """``FrozenOpenCLIPImageEmbedderV2.preprocess`` (kornia resize to 224 with antialias, CLIP mean /
    std) on seeded images, float64. Needs kornia importable (e.g. ``pip install --no-deps --target
    DIR kornia==0.7.0`` and ``PYTHONPATH=DIR``); ``open_clip`` is only imported, never used (stub)."""
    sys.modules.setdefault("open_clip", types.ModuleType("open_clip"))
    try:
        import kornia
    except ImportError as e:
        raise SystemExit(
            "the clip_preprocess fixture needs kornia: pip install --no-deps --target DIR kornia==0.7.0, "
            "then PYTHONPATH=DIR (or skip it with --only ...)"
        ) from e
    with on_path(root):
        from lvdm.modules.encoders.condition import FrozenOpenCLIPImageEmbedderV2
    me = types.SimpleNamespace(
        antialias=True, mean=torch.Tensor(list(CLIP_MEAN)), std=torch.Tensor(list(CLIP_STD))
    )  # the attributes __init__ sets (without loading OpenCLIP)
    tensors, digests = {}, {}
    for i, hw in enumerate(PREPROCESS_SIZES):
        x = preprocess_input(hw, 6000 + i)
        digests[f"{hw[0]}x{hw[1]}"] = state_dict_digest({"x": x})
        out = FrozenOpenCLIPImageEmbedderV2.preprocess(me, x)
        assert out.dtype == torch.float64 and out.shape[-2:] == (224, 224)
        tensors[f"out.{hw[0]}x{hw[1]}"] = preprocess_sample(out)
    return tensors, {
        "sizes": PREPROCESS_SIZES,
        "input_seeds": [6000 + i for i in range(len(PREPROCESS_SIZES))],
        "input_digests": digests,
        "kornia": kornia.__version__,
    }


SAMPLERS = {
    "sampler_256": dict(
        style="256", steps=10, guidance=7.5, cfg_img=None, multicond=False, rescale=0.0, fs=3
    ),
    "sampler_256_multicond": dict(
        style="256", steps=16, guidance=7.5, cfg_img=3.0, multicond=True, rescale=0.0, fs=5
    ),
    "sampler_512": dict(
        style="512", steps=10, guidance=7.5, cfg_img=None, multicond=False, rescale=0.7, fs=24
    ),
    "sampler_1024_multicond": dict(
        style="1024", steps=16, guidance=7.5, cfg_img=2.0, multicond=True, rescale=0.7, fs=10
    ),
    "sampler_512_interp": dict(
        style="512", steps=10, guidance=7.5, cfg_img=None, multicond=False, rescale=0.7, fs=5, interp=True
    ),
}
PROMPTS = ["a red circle moves right", "waves"]


def make_sampler(off, name: str, spec: dict) -> tuple[dict, dict]:
    spacing = "uniform" if spec["style"] == "256" else "uniform_trailing"
    with float64_official():
        model = build_official_model(off, spec["style"], WEIGHTS, 1.0).double()
    model.model.diffusion_model.dtype = torch.float64  # forward casts its input to this attribute
    n_steps = len(off.make_ddim_timesteps(spacing, spec["steps"], 1000, verbose=False))
    b, f, h = len(PROMPTS), F_SAMPLE, HW // 2
    seed = 4000 + 100 * list(SAMPLERS).index(name)
    interp = spec.get("interp", False)
    images = seeded((b, 3, HW, HW), seed, 0.5).clamp(-1, 1)
    x_T = seeded((b, 4, f, h, h), seed + 1)
    noise = [seeded((b, 4, f, h, h), seed + 2 + i) for i in range(n_steps)]
    videos = images[:, :, None].repeat(1, 1, f, 1, 1)
    extra = {}
    if interp:  # as inference.py: the start image on the first half of the frames, the end image after
        last = seeded((b, 3, HW, HW), seed + 99, 0.5).clamp(-1, 1)
        videos[:, :, f // 2 :] = last[:, :, None]
        extra["in.last_images"] = last.half()
    seen = []
    decode = model.decode_first_stage
    model.decode_first_stage = lambda z, **kw: seen.append(z.clone()) or decode(z, **kw)
    with float64_official(), torch.no_grad(), replay(randn=[x_T, *noise]):
        off.inference.image_guided_synthesis(
            model,
            list(PROMPTS),
            videos,
            [b, 4, f, h, h],
            n_samples=1,
            ddim_steps=spec["steps"],
            ddim_eta=1.0,
            unconditional_guidance_scale=spec["guidance"],
            cfg_img=spec["cfg_img"],
            fs=spec["fs"],
            text_input=True,
            multiple_cond_cfg=spec["multicond"],
            interp=interp,
            timestep_spacing=spacing,
            guidance_rescale=spec["rescale"],
        )
    (latents,) = seen
    tensors = {
        "in.images": images.half(),
        "in.x_T": x_T.half(),
        **{f"in.noise.{i}": n.half() for i, n in enumerate(noise)},
        "out.latents": latents,
        **extra,
    }
    return tensors, {
        "call": {
            **spec,
            "prompts": PROMPTS,
            "frames": f,
            "eta": 1.0,
            "spacing": spacing,
            "lvdm_steps": n_steps,
        }
    }


LOSSES = {
    "loss_256": dict(
        style="256",
        overrides={},
        r=[0.02, 0.07, 0.12, 0.6],
        cond_frame=2,
        t=[10, 500, 999, 250],
        stride=[3, 1, 5, 2],
        fps=[24.0, 30.0, 25.0, 8.0],
    ),
    "loss_512": dict(
        style="512", overrides={}, r=[0.5, 0.03], cond_frame=1, t=[120, 700], stride=[2, 4], fps=[24.0, 30.0]
    ),
    "loss_interp": dict(
        style="512",
        overrides={"interp_mode": True, "rand_cond_frame": False},
        r=[0.9, 0.11],
        cond_frame=None,
        t=[300, 999],
        stride=[1, 3],
        fps=[24.0, 24.0],
    ),
}
CAPTIONS = ["a red circle", "two squares", "zoom in", "rain on glass"]


def make_loss(off, name: str, spec: dict) -> tuple[dict, dict]:
    model = build_official_model(off, spec["style"], WEIGHTS, 0.18215, **spec["overrides"]).float()
    b, f = len(spec["r"]), F_SAMPLE
    seed = 5000 + 100 * list(LOSSES).index(name)
    video = seeded((b, 3, f, HW, HW), seed, 0.5).clamp(-1, 1).float()  # official layout b c t h w
    noise = seeded((b, 4, f, HW // 2, HW // 2), seed + 1).float()
    r = torch.tensor(spec["r"], dtype=torch.float32)
    t = torch.tensor(spec["t"])
    stride = torch.tensor(spec["stride"])
    fps = torch.tensor(spec["fps"])
    fps_clip = torch.div(fps, stride, rounding_mode="floor")  # lvdm/data/webvid.py: fps_ori // frame_stride
    batch = {
        "video": video,
        "caption": list(CAPTIONS[:b]),
        "frame_stride": stride,
        "fps": fps_clip,
    }
    calls = []
    apply = model.apply_model

    def spy(x_noisy, tt, cond, **kwargs):
        out = apply(x_noisy, tt, cond, **kwargs)
        calls.append((x_noisy, tt, cond, kwargs, out))
        return out

    model.apply_model = spy
    queues = {"rand": [r], "randint": [t], "randn_like": [noise]}
    if spec["cond_frame"] is not None:
        queues["py_randint"] = [spec["cond_frame"]]
    with torch.no_grad(), replay(**queues):
        loss, logs = model.shared_step(batch, random_uncond=True)
    ((x_noisy, tt, cond, kwargs, out),) = calls
    assert torch.equal(tt, t)
    tensors = {
        "in.video": video.half(),
        "in.noise": noise.half(),
        "in.r": r,
        "in.t": t,
        "in.frame_stride": stride,
        "in.fps": fps,
        "out.x_noisy": x_noisy,
        "out.context": cond["c_crossattn"][0],
        "out.concat": cond["c_concat"][0],
        "out.fs": kwargs["fs"],
        "out.model_output": out,
        "out.loss": loss.reshape(1),
    }
    call = {
        "style": spec["style"],
        "overrides": spec["overrides"],
        "captions": CAPTIONS[:b],
        "cond_frame": spec["cond_frame"],
        "uncond_prob": 0.05,
        "scale_factor": 0.18215,
        "frames": f,
    }
    return tensors, {"call": call, "dtype": "float32"}


WEIGHTS: dict = {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_official_args(parser, ENV, REPO)
    parser.add_argument("--only", nargs="*", default=None, help="fixture names to write (default: all)")
    args = parser.parse_args(argv)
    root = official_checkout(args.official, ENV, REPO)
    commit = official_commit(root, args.official_commit)
    out_dir = args.out or FIXTURES / "dynamicrafter"
    torch.set_num_threads(1)
    off = import_official(root)
    standins_module()
    weights, weights_meta = make_weights(off)
    WEIGHTS.update(weights)
    configs = {
        "official_unets": UNETS,
        "ours_unets": {k: ours_unet_config(v) for k, v in UNETS.items()},
        "resampler": RESAMPLER,
        "standins": {
            "vocab": VOCAB,
            "patch": PATCH,
            "text_len": TXT,
            "clip_mean": CLIP_MEAN,
            "clip_std": CLIP_STD,
        },
    }
    common = {"repo": REPO, "commit": commit, "generator": GENERATOR, "config": configs}
    want = set(args.only) if args.only else None

    def write(name, tensors, notes, extra=None):
        if want is None or name in want:
            save_fixture(out_dir, name, tensors, notes=notes, extra=extra, **common)

    standins = {f"{k}.{n}": v for k in ("text", "image") for n, v in WEIGHTS[k].items()}
    write(
        "weights",
        standins,
        "UNet / Resampler: random_state_dict(spec, seed) (float64; spec, seed and digest stored here); "
        "unet512 = unet256 without the attn2.alpha gates. Tensors: the stand-in encoders (float16-exact)",
        weights_meta,
    )
    t, m = make_unet(off, WEIGHTS)
    write("unet", t, "openaimodel3d.UNetModel.forward in float64", m)
    t, m = make_resampler(off, WEIGHTS)
    write("resampler", t, "resampler.Resampler.forward in float64", m)
    t, m = make_schedule(off)
    write("schedule", t, "make_ddim_timesteps, make_beta_schedule + rescale_zero_terminal_snr, scale_arr", m)
    if want is None or "clip_preprocess" in want:
        t, m = make_clip_preprocess(root)
        write("clip_preprocess", t, "condition.py FrozenOpenCLIPImageEmbedderV2.preprocess in float64", m)
    for name, spec in SAMPLERS.items():
        if want is None or name in want:
            t, m = make_sampler(off, name, spec)
            write(name, t, "scripts/evaluation/inference.py image_guided_synthesis in float64 (latents)", m)
    for name, spec in LOSSES.items():
        if want is None or name in want:
            t, m = make_loss(off, name, spec)
            write(name, t, "ddpm3d.LatentVisualDiffusion.shared_step in float32", m)


if __name__ == "__main__":
    main()
