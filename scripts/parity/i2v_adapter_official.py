"""Official side of the I2V-Adapter parity fixtures; started by ``scripts/parity/i2v_adapter.py``.

Runs in its own process because the official code (KwaiVGI/I2V-Adapter) needs diffusers 0.11.1,
which cannot share a process with the project's diffusers. It imports, from a checkout of the
official repository: ``src/models/unet.py`` (``UNet3DConditionModel``: SD1.5 blocks, AnimateDiff v1
motion modules, ``MixedCausalAttention2D`` first-frame branch, ``IPAdapterAttention``),
``src/models/ip_adapter.py`` (``Resampler``) and ``src/pipelines/pipeline_i2v_adapter.py``
(``I2VIPAdapterPipeline``), builds them with tiny configs, fills every parameter with seeded
non-zero values (``common.randomize_``), runs them and writes the fixtures.

What is not official here, and why:

- ``huggingface_hub`` gets the ``cached_download`` / ``HfFolder`` names diffusers 0.11.1 imports
  (removed from current huggingface_hub; nothing downloads);
- ``transformers`` is hidden while diffusers 0.11.1 runs its import-time feature checks (its
  transformers-based pipelines do not import against transformers 5; none of them is used);
- ``imageio`` is a stub module (the pipeline imports it, never calls it);
- the pipeline's tokenizer, text encoder and VAE are stand-ins: the text encoder returns fixed
  prompt embeddings (recorded in the fixture), the VAE decoder is never looked at (the fixture
  records the latents through the pipeline's ``callback``); the CLIP image encoder is replaced by
  recorded hidden states (the Resampler input) or by recorded image tokens (the Resampler output);
- the positional-encoding buffers (``pos_encoder.pe``) keep their sinusoid values, as in the
  release (``randomize_(..., buffers=False)``); they are not weights;
- the Frame Similarity Prior draws its mask from the pipeline's ``generator`` and its noise from
  the global RNG (``torch.randn_like``): both draws are recorded by wrapping ``torch.rand`` /
  ``torch.randn_like`` for the duration of the call, and written to the fixture.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import randomize_, save_fixture  # noqa: E402

REPO = "KwaiVGI/I2V-Adapter"
GENERATOR = "scripts/parity/i2v_adapter.py"

#: tiny official UNet: 2 levels, motion modules v1 (Vanilla, 2 Temporal_Self, PE max_len 24) at
#: every level, no mid-block motion module, first-frame branch and IP-Adapter k/v on every block
TINY_UNET = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
    "block_out_channels": [32, 32],  # the official motion module hard-codes GroupNorm(32)
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "cross_attention_dim": 8,
    "attention_head_dim": 2,  # diffusers-0.11 naming: the number of heads
}
#: configs/inference/infer.yaml ``unet_additional_kwargs`` (heads scaled down)
INFER_KWARGS = {
    "unet_use_cross_frame_attention": "mixed_cross",
    "unet_use_temporal_attention": False,
    "use_motion_module": True,
    "unet_use_ipadapter": True,
    "motion_module_resolutions": [1, 2, 4, 8],
    "motion_module_mid_block": False,
    "motion_module_decoder_only": False,
    "motion_module_type": "Vanilla",
    "motion_module_kwargs": {
        "num_attention_heads": 2,
        "num_transformer_block": 1,
        "attention_block_types": ["Temporal_Self", "Temporal_Self"],
        "temporal_position_encoding": True,
        "temporal_position_encoding_max_len": 24,
        "temporal_attention_dim_div": 1,
    },
}
#: the same UNet as diffusers' UNetMotionModel config (what the tests build)
OURS_UNET = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlockMotion", "DownBlockMotion"],
    "up_block_types": ["UpBlockMotion", "CrossAttnUpBlockMotion"],
    "block_out_channels": [32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "cross_attention_dim": 8,
    "num_attention_heads": 2,
    "motion_max_seq_length": 24,
    "motion_num_attention_heads": 2,
    "use_motion_mid_block": False,
}
#: Resampler of ip-adapter-plus (inference.py: dim 768, depth 4, dim_head 64, heads 12, 16 queries,
#: ff_mult 4), scaled down; dim_head 64 and depth 4 are what diffusers' IP-Adapter loader assumes
TINY_RESAMPLER = {
    "dim": 16,
    "depth": 4,
    "dim_head": 64,
    "heads": 1,
    "num_queries": 16,
    "embedding_dim": 12,
    "output_dim": 8,
    "ff_mult": 4,
}
#: the SD1.5 UNet config (``stable-diffusion-v1-5/unet/config.json``) that ``from_pretrained_ip`` reads
SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "CrossAttnDownBlock3D",
        "DownBlock3D",
    ],
    "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "center_input_sample": False,
}


def import_official(official: Path, diffusers011: Path) -> types.SimpleNamespace:
    import huggingface_hub as hub

    if not hasattr(hub, "cached_download"):
        hub.cached_download = hub.hf_hub_download
    if not hasattr(hub, "HfFolder"):

        class HfFolder:
            @staticmethod
            def get_token():
                return None

        hub.HfFolder = HfFolder
    sys.path[:0] = [str(diffusers011), str(official)]
    saved = sys.modules.get("transformers", None)
    had = "transformers" in sys.modules
    sys.modules["transformers"] = None  # find_spec -> None: diffusers 0.11 sees no transformers
    try:
        diffusers = importlib.import_module("diffusers")
    finally:
        if had:
            sys.modules["transformers"] = saved
        else:
            del sys.modules["transformers"]
    if not diffusers.__version__.startswith("0.11."):
        raise SystemExit(f"expected diffusers 0.11.x from {diffusers011}, got {diffusers.__version__}")
    sys.modules.setdefault("imageio", types.ModuleType("imageio"))
    from diffusers import DDIMScheduler
    from src.models.attention import IPAdapterAttention, MixedCausalAttention2D
    from src.models.ip_adapter import Resampler
    from src.models.unet import UNet3DConditionModel
    from src.pipelines.pipeline_i2v_adapter import I2VIPAdapterPipeline

    return types.SimpleNamespace(
        diffusers=diffusers,
        DDIMScheduler=DDIMScheduler,
        IPAdapterAttention=IPAdapterAttention,
        MixedCausalAttention2D=MixedCausalAttention2D,
        Resampler=Resampler,
        UNet3DConditionModel=UNet3DConditionModel,
        I2VIPAdapterPipeline=I2VIPAdapterPipeline,
    )


def randn(*shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def official_unet(ns, inflated: bool = False):
    return ns.UNet3DConditionModel(**TINY_UNET, **INFER_KWARGS, use_inflated_groupnorm=inflated)


# ----------------------------------------------------------------------------------------------
# fixtures
# ----------------------------------------------------------------------------------------------
def fx_attention(ns, out: Path, commit: str) -> None:
    """MixedCausalAttention2D (first-frame branch) and IPAdapterAttention, float64."""
    ff = ns.MixedCausalAttention2D(query_dim=16, heads=2, dim_head=8, dropout=0.0, bias=False)
    randomize_(ff, seed=11)
    ff = ff.double().eval()
    f = 3
    x = randn(2 * f, 10, 16, seed=12)
    with torch.no_grad():
        y = ff(x, video_length=f)
    ip = ns.IPAdapterAttention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8, bias=False)
    randomize_(ip, seed=13)
    ip = ip.double().eval()
    xi = randn(4, 10, 16, seed=14)
    ctx = randn(
        4, 5 + 16, 12, seed=15
    )  # 5 text tokens + 16 image tokens (hard-coded 16 in the official code)
    with torch.no_grad():
        yi = ip(xi, encoder_hidden_states=ctx)
    tensors = {
        **{f"ff.official.{k}": v for k, v in ff.state_dict().items()},
        "ff.in.hidden_states": x,
        "ff.out": y,
        **{f"ip.official.{k}": v for k, v in ip.state_dict().items()},
        "ip.in.hidden_states": xi,
        "ip.in.encoder_hidden_states": ctx,
        "ip.out": yi,
    }
    save_fixture(
        out,
        "attention",
        tensors,
        repo=REPO,
        commit=commit,
        generator=GENERATOR,
        config={
            "ff": {
                "class": "src/models/attention.py MixedCausalAttention2D",
                "query_dim": 16,
                "heads": 2,
                "dim_head": 8,
                "num_frames": f,
            },
            "ip": {
                "class": "src/models/attention.py IPAdapterAttention",
                "query_dim": 16,
                "cross_attention_dim": 12,
                "heads": 2,
                "dim_head": 8,
                "text_tokens": 5,
                "image_tokens": 16,
            },
            "dtype": "float64",
        },
        notes="ff.in.hidden_states: (b f) n c with b=2, f=3; ip: text tokens then 16 image tokens.",
    )


def fx_resampler(ns, out: Path, commit: str) -> torch.nn.Module:
    """The IP-Adapter-Plus Resampler, float32 (its softmax runs in float32 whatever the input dtype)."""
    r = ns.Resampler(**TINY_RESAMPLER)
    randomize_(r, seed=21)
    r = r.float().eval()
    x = randn(2, 7, TINY_RESAMPLER["embedding_dim"], seed=22, dtype=torch.float32)
    with torch.no_grad():
        y = r(x)
    save_fixture(
        out,
        "resampler",
        {**{f"official.image_proj.{k}": v for k, v in r.state_dict().items()}, "in.clip_hidden": x, "out": y},
        repo=REPO,
        commit=commit,
        generator=GENERATOR,
        config={"class": "src/models/ip_adapter.py Resampler", "kwargs": TINY_RESAMPLER, "dtype": "float32"},
        notes="official.image_proj.* is the state dict as ip-adapter-plus_sd15.bin stores it under image_proj. "
        "float32: PerceiverAttention computes its softmax in float32 for any input dtype.",
    )
    return r


def fx_unet(ns, out: Path, commit: str) -> dict:
    """The whole tiny official UNet (v1 norms) and the same weights with use_inflated_groupnorm=True."""
    unet = official_unet(ns)
    randomize_(unet, seed=31, buffers=False)
    sd = {k: v.clone() for k, v in unet.state_dict().items()}  # float32 values, stored as such (exact)
    unet = unet.double().eval()
    b, f = 2, 4
    sample = randn(b, 4, f, 8, 8, seed=32)
    t = torch.tensor([37, 911])
    text = randn(b, 6, TINY_UNET["cross_attention_dim"], seed=33)
    tokens = randn(b, 16, TINY_UNET["cross_attention_dim"], seed=34)
    with torch.no_grad():
        y = unet(sample, t, encoder_hidden_states=torch.cat([text, tokens], dim=1)).sample
        infl = official_unet(ns, inflated=True).double().eval()
        infl.load_state_dict({k: v.double() for k, v in sd.items()}, strict=True)
        y_infl = infl(sample, t, encoder_hidden_states=torch.cat([text, tokens], dim=1)).sample
    save_fixture(
        out,
        "unet",
        {
            **{f"official.{k}": v for k, v in sd.items()},
            "in.sample": sample,
            "in.timesteps": t,
            "in.text": text,
            "in.image_tokens": tokens,
            "out.v1": y,
            "out.inflated": y_infl,
        },
        repo=REPO,
        commit=commit,
        generator=GENERATOR,
        config={
            "class": "src/models/unet.py UNet3DConditionModel",
            "official_kwargs": {**TINY_UNET, **INFER_KWARGS},
            "ours": OURS_UNET,
            "dtype": "float64",
        },
        notes="official.* is the official UNet's state dict (its key layout), float32 values; the UNet ran in "
        "float64 (the weights cast exactly). out.v1: use_inflated_groupnorm=False "
        "(the I2V-Adapter release); out.inflated: the same weights with use_inflated_groupnorm=True. The UNet "
        "context is [text; image tokens] (the Resampler output), as the official pipeline builds it.",
    )
    return sd


class _Ids:
    def __init__(self, ids: torch.Tensor) -> None:
        self.input_ids = ids
        self.attention_mask = torch.ones_like(ids)


class StandinTokenizer:
    """Prompt -> one id per known prompt (what the stand-in text encoder looks up)."""

    model_max_length = 6

    def __init__(self, prompts: list[str]) -> None:
        self.prompts = prompts

    def __call__(self, prompt, padding=None, max_length=None, truncation=None, return_tensors=None):
        prompt = [prompt] if isinstance(prompt, str) else list(prompt)
        return _Ids(torch.tensor([[self.prompts.index(p)] for p in prompt]))


class StandinTextEncoder:
    def __init__(self, table: torch.Tensor) -> None:
        self.table = table  # (n_prompts, L, d)
        self.config = types.SimpleNamespace()

    def __call__(self, ids, attention_mask=None):
        return (self.table[ids[:, 0]],)


class StandinVAE:
    """Only ``config.block_out_channels`` (scale factor 8) and a ``decode`` that is never looked at."""

    def __init__(self) -> None:
        self.config = types.SimpleNamespace(block_out_channels=[1, 1, 1, 1])

    def decode(self, z):
        return types.SimpleNamespace(sample=torch.zeros(z.shape[0], 3, 1, 1, dtype=z.dtype))

    def enable_slicing(self):
        pass


@contextlib.contextmanager
def record_draws(log: dict):
    """Wrap ``torch.rand`` (FSP mask, drawn from the pipeline's generator) and ``torch.randn_like`` (FSP
    noise, global RNG): call through, keep what they returned."""
    rand, randn_like = torch.rand, torch.randn_like

    def _rand(*a, **k):
        out = rand(*a, **k)
        log.setdefault("rand", []).append(out.clone())
        return out

    def _randn_like(*a, **k):
        out = randn_like(*a, **k)
        log.setdefault("randn_like", []).append(out.clone())
        return out

    torch.rand, torch.randn_like = _rand, _randn_like
    try:
        yield log
    finally:
        torch.rand, torch.randn_like = rand, randn_like


def run_pipeline(ns, unet, tokens, neg_tokens, dtype, steps: int = 4, seed: int = 41) -> dict:
    """``I2VIPAdapterPipeline.__call__`` as inference.py calls it (repeat_latents, gaussian_blur, CFG)."""
    f, h, w = 16, 8, 10  # downgrade_input only handles 16 frames; a non-square latent catches h/w mix-ups
    d = TINY_UNET["cross_attention_dim"]
    prompts = ["a prompt", "a negative prompt"]
    table = randn(2, StandinTokenizer.model_max_length, d, seed=seed + 1, dtype=dtype)
    z1 = randn(1, 4, 1, h, w, seed=seed + 2, dtype=dtype)
    sched = ns.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear")
    pipe = ns.I2VIPAdapterPipeline(
        vae=StandinVAE(),
        text_encoder=StandinTextEncoder(table),
        tokenizer=StandinTokenizer(prompts),
        unet=unet,
        scheduler=sched,
    )
    pipe.set_progress_bar_config(disable=True)
    calls, steps_seen = [], []
    hook = unet.register_forward_hook(lambda m, a, k, o: calls.append((a[0].clone(), a[1])), with_kwargs=True)
    draws: dict = {}
    torch.manual_seed(seed + 3)  # the FSP noise comes from the global RNG
    try:
        with record_draws(draws), torch.no_grad():
            pipe(
                prompt=prompts[0],
                negative_prompt=prompts[1],
                generator=torch.Generator().manual_seed(seed),
                latents=z1,
                video_length=f,
                height=h * 8,
                width=w * 8,
                num_inference_steps=steps,
                guidance_scale=7.5,
                noise_mode="iid",
                repeat_latents=True,
                gaussian_blur=True,
                cond_image_embeds=tokens,
                un_cond_image_embeds=neg_tokens,
                callback=lambda i, t, lat: steps_seen.append(lat.clone()),
                callback_steps=1,
            )
    finally:
        hook.remove()
    (u,) = draws["rand"]
    (noise,) = draws["randn_like"]
    return {
        "in.prompt_embeds": table[:1],
        "in.negative_prompt_embeds": table[1:],
        "in.first_frame_latents": z1[:, :, 0],
        "in.fsp_uniform": u,  # downgrade_input: mask = (u >= 0.5) keeps the un-blurred latent
        "in.noise": noise,
        "out.timesteps": torch.stack([torch.as_tensor(t) for _, t in calls]).long(),
        "out.start_latents": calls[0][0][:1],  # the first UNet input (uncond half): the FSP start
        "out.step_latents": torch.stack(steps_seen),
        "out.latents": steps_seen[-1],
    }


def fx_sampling(ns, out: Path, commit: str, unet_sd: dict, resampler: torch.nn.Module) -> None:
    unet = official_unet(ns)
    unet.load_state_dict(unet_sd, strict=True)
    unet = unet.double().eval()
    d = TINY_UNET["cross_attention_dim"]
    tokens, neg_tokens = randn(1, 16, d, seed=51), randn(1, 16, d, seed=52)
    rec = run_pipeline(ns, unet, tokens, neg_tokens, torch.float64)
    save_fixture(
        out,
        "sampling",
        {**rec, "in.image_tokens": tokens, "in.negative_image_tokens": neg_tokens},
        repo=REPO,
        commit=commit,
        generator=GENERATOR,
        config={
            "pipeline": "src/pipelines/pipeline_i2v_adapter.py I2VIPAdapterPipeline.__call__",
            "unet_weights": "unet fixture (official.*)",
            "num_inference_steps": 4,
            "guidance_scale": 7.5,
            "video_length": 16,
            "latent_size": [8, 10],
            "scheduler": "DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule=linear); the "
            "pipeline forces steps_offset=1, clip_sample=False",
            "call": "repeat_latents=True, gaussian_blur=True, noise_mode=iid (as inference.py)",
            "dtype": "float64",
        },
        notes="The UNet context is [text; image tokens]; the tokens are given directly (the Resampler output). "
        "in.fsp_uniform / in.noise are the draws of the official call (torch.rand with the pipeline's "
        "generator; torch.randn_like from the global RNG); the official keep-mask is in.fsp_uniform >= 0.5. "
        "out.start_latents = the first UNet input (FSP start); out.step_latents[i] = latents after step i.",
    )
    # float32, end to end through the Resampler (as inference.py: Resampler(CLIP hidden states))
    unet32 = official_unet(ns)
    unet32.load_state_dict(unet_sd, strict=True)
    unet32 = unet32.float().eval()
    e = TINY_RESAMPLER["embedding_dim"]
    clip, neg_clip = (
        randn(1, 7, e, seed=53, dtype=torch.float32),
        randn(1, 7, e, seed=54, dtype=torch.float32),
    )
    with torch.no_grad():
        tok32, neg32 = resampler(clip), resampler(neg_clip)
    rec32 = run_pipeline(ns, unet32, tok32, neg32, torch.float32)
    save_fixture(
        out,
        "sampling_f32",
        {**rec32, "in.clip_hidden": clip, "in.negative_clip_hidden": neg_clip},
        repo=REPO,
        commit=commit,
        generator=GENERATOR,
        config={
            "pipeline": "src/pipelines/pipeline_i2v_adapter.py I2VIPAdapterPipeline.__call__",
            "unet_weights": "unet fixture (official.*), cast to float32",
            "resampler_weights": "resampler fixture (official.image_proj.*)",
            "num_inference_steps": 4,
            "guidance_scale": 7.5,
            "video_length": 16,
            "latent_size": [8, 10],
            "dtype": "float32",
        },
        notes="As the sampling fixture, in float32 and with the image tokens computed by the official Resampler "
        "from in.clip_hidden / in.negative_clip_hidden (stand-ins for CLIP hidden_states[-2]).",
    )


def fx_keys(ns, out: Path, commit: str) -> None:
    """Names and shapes of the full-size official UNet (SD1.5 config + configs/inference/infer.yaml)."""
    kwargs = json.loads(json.dumps(INFER_KWARGS))
    kwargs["motion_module_kwargs"]["num_attention_heads"] = 8
    with torch.device("meta"):
        unet = ns.UNet3DConditionModel(**SD15_UNET, **kwargs)
    keys = {k: list(v.shape) for k, v in unet.state_dict().items()}
    save_fixture(
        out,
        "official_unet_sd15_keys",
        {},
        repo=REPO,
        commit=commit,
        generator=GENERATOR,
        config={"class": "src/models/unet.py UNet3DConditionModel", "kwargs": {**SD15_UNET, **kwargs}},
        notes="No tensors: extra.keys lists every state-dict key of the full-size official UNet with its shape "
        "(built on the meta device), i.e. what animatediff_v15_v1_ipplus.pth + i2v_module.pth must fill.",
        extra={"keys": keys},
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, type=Path)
    ap.add_argument("--diffusers011", required=True, type=Path)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    ns = import_official(a.official, a.diffusers011)
    fx_attention(ns, a.out, a.commit)
    resampler = fx_resampler(ns, a.out, a.commit)
    sd = fx_unet(ns, a.out, a.commit)
    fx_sampling(ns, a.out, a.commit, sd, resampler)
    fx_keys(ns, a.out, a.commit)


if __name__ == "__main__":
    main()
