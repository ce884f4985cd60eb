"""The published toy models (assets/toy) have learned the toy world.

Each test loads a published model through its backbone config (conf/backbone/toy_*.yaml, the way
training and the demo load it) and checks a learned behaviour against the issue's thresholds, on the
toy validation videos (which no model trained on):

- the VAE reconstructs them at >= 25 dB PSNR;
- I2V-Adapter and DynamiCrafter samples keep the conditioning frame (frame 0 >= 25 dB PSNR against the
  input image) and move (mean optical flow > 0.5 px, OpenCV DIS at 64x64; the real clips: ~1.5 px);
- a trained first-frame branch lowers the I2V-Adapter loss on held-out clips by a clear margin
  against the untrained branch (its initialisation: to_q_ff = to_q, to_out_ff = 0);
- Generative Inbetweening samples reproduce both keyframes (>= 25 dB);
- ``scripts/demo.py`` runs end to end (slow: three training processes).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_train

ASSETS = ROOT / "assets" / "toy"
pytestmark = pytest.mark.skipif(not (ASSETS / "vae").is_dir(), reason="assets/toy is not published")


def _demo():
    import demo  # scripts/demo.py (conftest puts scripts/ on sys.path)

    return demo


@pytest.fixture(scope="module")
def val_clips(toy_data) -> dict[int, list[dict]]:
    """The toy validation clips as the data module decodes them: 8 frames at stride 1 and 2."""
    d = _demo()
    return {s: d.toy_clips(toy_data / "toy" / "val", 8, s) for s in (1, 2)}


def _module(experiment: str, tmp_path: Path, overrides: tuple[str, ...] = ()):
    from i2vlab.training import instantiate_model

    torch.manual_seed(0)
    cfg = compose_train([f"experiment={experiment}", *overrides], tmp_path)
    module = instantiate_model(cfg)
    module.configure_trainable()
    return module.eval()


def test_published_vae_reconstructs_toy_val(toy_data):
    d = _demo()
    clips = d.toy_clips(toy_data / "toy" / "val", num_frames=24, stride=1)
    assert len(clips) == 4
    value = d.vae_psnr(ASSETS / "vae", clips)
    assert value >= 25.0, f"toy VAE reconstruction PSNR {value:.2f} dB < 25"


def test_toy_i2v_adapter_keeps_frame0_and_moves(tmp_path, val_clips):
    d = _demo()
    module = _module("demo_i2v_adapter", tmp_path)
    clips = val_clips[1][:2]
    videos = d.sample_method(module, "i2v_adapter", clips, seed=0, steps=None)
    n = d.method_numbers("i2v_adapter", clips, videos)
    assert n["frame0_psnr"] >= 25.0, n
    assert n["flow"] > 0.5, n


@torch.no_grad()
def test_trained_first_frame_branch_lowers_held_out_loss(tmp_path, val_clips):
    """Validation loss (frames 1..7, 10 stratified timesteps, fixed noise) on the held-out clips: the
    published branch against the untrained one (to_q_ff = to_q, to_out_ff = 0), same IP-Adapter."""
    from i2vlab.diffusion.schedules import stratified_timesteps
    from i2vlab.models.i2v_adapter import i2v_adapter_processors

    module = _module("demo_i2v_adapter", tmp_path)
    batch = {
        "video": torch.stack([c["video"] for c in val_clips[1]]),
        "caption": [c["caption"] for c in val_clips[1]],
    }

    def held_out_loss() -> float:
        losses = []
        for i, t in enumerate(stratified_timesteps(10).tolist()):
            g = torch.Generator().manual_seed(1000 + i)
            tt = torch.full((len(batch["caption"]),), t, dtype=torch.long)
            loss, _ = module.compute_loss(batch, g, timesteps=tt, train=False)
            losses.append(loss.mean())
        return float(torch.stack(losses).mean())

    trained = held_out_loss()
    for name, proc in i2v_adapter_processors(module.unet).items():  # back to the initialisation
        proc.to_q_ff.weight.copy_(module.unet.get_submodule(name.rsplit(".", 1)[0]).to_q.weight)
        proc.to_out_ff.weight.zero_()
        if proc.to_out_ff.bias is not None:
            proc.to_out_ff.bias.zero_()
    untrained = held_out_loss()
    assert trained <= 0.8 * untrained, f"trained branch {trained:.4f} vs untrained {untrained:.4f}"


def test_toy_dynamicrafter_keeps_frame0_and_moves(tmp_path, val_clips):
    d = _demo()
    module = _module("demo_dynamicrafter", tmp_path)
    clips = val_clips[1][:2]
    videos = d.sample_method(module, "dynamicrafter", clips, seed=0, steps=None)
    n = d.method_numbers("dynamicrafter", clips, videos)
    assert n["frame0_psnr"] >= 25.0, n
    assert n["flow"] > 0.5, n


def test_toy_inbetween_reproduces_both_keyframes(tmp_path, val_clips):
    from i2vlab.methods.base import load_matching

    d = _demo()
    module = _module("demo_inbetween", tmp_path)
    load_matching(module, ASSETS / "inbetween" / "trainable.safetensors")  # what init_from does
    clips = val_clips[2][:1]
    videos = d.sample_method(module, "inbetween", clips, seed=0, steps=None)
    n = d.method_numbers("inbetween", clips, videos)
    assert n["frame0_psnr"] >= 25.0 and n["last_psnr"] >= 25.0, n


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, toy_data):
    d = _demo()
    out = tmp_path / "demo"
    rc = d.main(
        [
            "--out",
            str(out),
            "--data",
            str(toy_data / "toy"),
            "--steps",
            "1",
            "--videos",
            "1",
            "--sample-steps",
            "4",
            "--no-eval",
            "--no-check",
        ]
    )
    assert rc == 0
    summary = (out / "summary.md").read_text()
    assert "VAE reconstruction PSNR" in summary and "Where everything went" in summary
    for m in d.METHODS:
        assert (out / m / "train" / "export" / "trainable.safetensors").is_file()
        assert (out / m / "samples" / f"{m}_0.mp4").is_file() and (
            out / m / "samples" / f"{m}_0.png"
        ).is_file()
