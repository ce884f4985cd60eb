"""Shared helpers for the evaluator tests: tiny extractor configs, small videos on disk, and a direct
computation of every metric (decode, run the extractors one video at a time, apply the formulas)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from i2vlab.utils.video_io import write_video

TINY_VIT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
            "image_size": 32, "patch_size": 8}  # fmt: skip
TINY_EXTRACTORS = {
    "i3d": {"input_size": 64, "width": 0.125},
    "inception": {"input_size": 75},
    "clip": {"tiny": {"vision": TINY_VIT, "text": {**{k: v for k, v in TINY_VIT.items() if k not in ("image_size", "patch_size")},
                                                    "vocab_size": 300}, "projection_dim": 16}},
    "dreamsim": {"tiny": TINY_VIT},
}  # fmt: skip


def textured_frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture (uint8 h w 3) that optical flow can track."""
    import cv2

    g = np.random.default_rng(seed)
    x = g.random((h // 4 + 2, w // 4 + 2, 3)).astype(np.float32)
    x = cv2.resize(x, (w + 8, h + 8), interpolation=cv2.INTER_CUBIC)
    x = cv2.GaussianBlur(x, (0, 0), 1.0)
    x = (x - x.min()) / (x.max() - x.min())
    return (x[:h, :w] * 255).astype(np.uint8)


def moving_video(num_frames: int, h: int, w: int, dx: int = 0, dy: int = 0, seed: int = 0) -> torch.Tensor:
    """``f c h w`` in [-1, 1]: one texture translated by (dx, dy) pixels per frame (wrap-around)."""
    base = textured_frame(h, w, seed)
    frames = [np.roll(base, (t * dy, t * dx), axis=(0, 1)) for t in range(num_frames)]
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1


def write_set(
    folder: Path,
    n: int,
    num_frames: int = 6,
    size=(32, 32),
    seed: int = 0,
    noise: float = 0.0,
    fmt: str = "mp4",
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        v = moving_video(num_frames, *size, dx=1 + i % 2, dy=i % 3, seed=seed + i)
        if noise:
            v = (
                v + noise * torch.randn(v.shape, generator=torch.Generator().manual_seed(seed * 100 + i))
            ).clamp(-1, 1)
        out.append(write_video(folder / f"v{i:02d}.{fmt}", v, fps=8))
        (folder / f"v{i:02d}.txt").write_text(f"prompt number {i}")
    return out


def eval_cfg(tmp_path: Path, **over) -> dict:
    cfg = {
        "name": "test",
        "metrics": ["fvd", "kvd", "fid"],
        "num_frames": 4,
        "resolution": [32, 32],
        "batch_size": 2,
        "allow_random_weights": True,
        "cache_dir": str(tmp_path / "cache"),
        "output_dir": str(tmp_path / "out"),
        "plots": False,
        "kvd": {"num_subsets": 5, "subset_size": 1000},
        "extractors": TINY_EXTRACTORS,
    }
    cfg.update(over)
    return cfg


def direct_metrics(ev, gen: dict, real: dict, prompts: dict) -> dict:
    """Every metric of ``ev.cfg['metrics']`` computed directly from the decoded clips (``gen`` / ``real``:
    key -> ``f c h w``; condition image = the real clip's first frame), one video per extractor call,
    with the public formulas -- the reference the evaluator's batched, cached pipeline must reproduce."""
    from i2vlab.metrics import frechet_distance, gaussian_stats, polynomial_mmd
    from i2vlab.metrics import functional as Fm

    c, ex, out = ev.cfg, ev.extractors, {}
    keys = sorted(gen)
    per = {m: [] for m in c["metrics"]}
    for k in keys:
        v, t = gen[k], real.get(k)
        img = t[0]
        if "pic" in per:
            e = ex["dreamsim"].embed(torch.cat([img[None], v]))
            per["pic"].append(Fm.pic_per_frame(e[0], e[1:]).mean())
        if any(m.startswith("clip") for m in per):
            e = ex["clip"].embed_images(torch.cat([img[None], v]))
            terms = {
                "clip_temp": Fm.clip_adjacent(e[1:]),
                "clip_first_frame": Fm.clip_first_frame(e[1:]),
                "clip_image": Fm.clip_image_frames(e[0], e[1:]),
            }
            if "clip_text" in per:
                terms["clip_text"] = (
                    Fm.cosine(ex["clip"].embed_text([prompts[k]]), e[1:]) * c["clip_text"]["scale"]
                )
            for m, val in terms.items():
                if m in per:
                    per[m].append(val.mean())
        if "flow_score" in per:
            per["flow_score"].append(Fm.flow_magnitudes(v, ex["flow"]).mean())
        if "warping_error" in per:
            per["warping_error"].append(
                Fm.warping_errors(v, ex["flow"], c["warping_error"]["downsample"]).mean()
            )
        if "psnr" in per:
            per["psnr"].append(Fm.psnr_per_frame(v, t).mean())
        if "ssim" in per:
            per["ssim"].append(Fm.ssim_per_frame(v, t).mean())
        if "lpips" in per:
            per["lpips"].append(ex["lpips"](v, t).double().mean())
    for m, vals in per.items():
        if vals:
            out[m] = float(torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in vals]).mean())
    if "fvd" in per or "kvd" in per:
        fi = torch.stack([ex["i3d"](gen[k][None])[0] for k in keys]).double()
        ri = torch.stack([ex["i3d"](real[k][None])[0] for k in sorted(real)]).double()
        out["fvd"] = frechet_distance(*gaussian_stats(ri, ddof=0), *gaussian_stats(fi, ddof=0))
        out["kvd"] = polynomial_mmd(ri, fi)
    if "fid" in per:
        fp = torch.cat([ex["inception"](gen[k]) for k in keys]).double()
        rp = torch.cat([ex["inception"](real[k]) for k in sorted(real)]).double()
        out["fid"] = frechet_distance(*gaussian_stats(rp, ddof=1), *gaussian_stats(fp, ddof=1))
    return {m: out[m] for m in c["metrics"] if m in out}


class FakeGenerator:
    """Stands in for a trained pipeline (``gen(prompts, images, num_frames, seed, **opts)``): a video that is
    a function of the seed only, the calls recorded; ``kill_at``: SIGKILL this process on that call (a
    generation killed mid-run)."""

    def __init__(self, kill_at: int | None = None, size=(32, 32)):
        self.calls, self.kill_at, self.size = [], kill_at, size

    def __call__(self, prompts, images=None, num_frames=None, seed=0, **opts):
        self.calls.append({"prompts": list(prompts), "images": None if images is None else tuple(images.shape),
                           "num_frames": num_frames, "seed": seed, "opts": opts})  # fmt: skip
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        g = torch.Generator().manual_seed(seed)
        base = moving_video(num_frames, *self.size, dx=1, seed=int(torch.randint(0, 1000, (1,), generator=g)))
        return (
            (base + 0.1 * torch.randn(base.shape, generator=g))
            .clamp(-1, 1)[None]
            .repeat(len(prompts), 1, 1, 1, 1)
        )
