"""I2V-Adapter training: the loss falls when only the first-frame projections train, and the toy
experiment runs end to end (train.py -> export -> scripts/sample.py -> mp4, FSP on and off)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_loss_falls_with_only_the_adapter_training(tmp_path):
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
    torch.manual_seed(0)
    m = instantiate(cfg.method, _convert_="partial")
    params = m.trainable_parameters()
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if not p.requires_grad}
    m.train()
    g = torch.Generator().manual_seed(0)
    # a moving square: frames 1.. depend on frame 0, which the first-frame branch can exploit
    video = torch.full((2, 4, 3, 16, 16), -0.6)
    for i in range(4):
        video[0, i, 0, 4:10, 2 + 2 * i : 8 + 2 * i] = 0.9
        video[1, i, 1, 2 + 2 * i : 8 + 2 * i, 5:11] = 0.9
    batch = {"video": video, "caption": ["red square moving right", "green square moving down"]}
    t = torch.tensor([250, 600])

    def loss():
        with torch.no_grad():
            return m.compute_loss(batch, torch.Generator().manual_seed(1), levels=t, train=False)[0].mean()

    start = loss()
    opt = torch.optim.AdamW(params, lr=3e-3)
    for _ in range(15):
        lo, _ = m.compute_loss(batch, g)
        opt.zero_grad()
        lo.mean().backward()
        opt.step()
    end = loss()
    assert end < start * 0.97, (float(start), float(end))
    # nothing else moved
    for n, p in m.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


@pytest.mark.slow
def test_toy_experiment_end_to_end(tmp_path):
    run = tmp_path / "run"
    subprocess.run(
        [
            sys.executable,
            "train.py",
            "experiment=toy_i2v_adapter",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "callbacks.model_checkpoint.every_n_train_steps=3",
            "method.validation.num_samples=0",
            "data.num_frames=4",
            f"paths.data_dir={tmp_path}/data",
            f"hydra.run.dir={run}",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert (run / "export" / "trainable.safetensors").is_file()
    from PIL import Image

    img = tmp_path / "first.png"
    Image.new("RGB", (48, 48), (200, 30, 30)).save(img)
    from i2vlab.utils.video_io import read_video

    for name, sets in [("fsp", ["fsp=true", "fsp_t0=0.8"]), ("nofsp", ["fsp=false"])]:
        out = tmp_path / f"{name}.mp4"
        subprocess.run(
            [
                sys.executable,
                "scripts/sample.py",
                "--run",
                str(run),
                "--image",
                str(img),
                "--prompt",
                "a red ball",
                "--num-frames",
                "4",
                "--out",
                str(out),
                "--set",
                "num_inference_steps=3",
                *sets,
            ],
            check=True,
            cwd=REPO,
            capture_output=True,
            text=True,
            env=ENV,
        )
        frames, _ = read_video(out)
        assert frames.shape[0] == 4
