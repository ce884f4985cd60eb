"""End to end: ``train.py experiment=toy_inbetween`` on the toy shards (CPU), then
``scripts/sample.py`` turns two keyframes into in-between videos with the fine-tuned model, TRF and
the optical-flow baseline; the run also resumes from its checkpoint."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from i2vlab.utils.video_io import read_video

REPO = Path(__file__).resolve().parents[1]


def _sample_script():
    spec = importlib.util.spec_from_file_location("sample_script", REPO / "scripts" / "sample.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _train(run: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "train.py",
        "experiment=toy_inbetween",
        f"hydra.run.dir={run}",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "method.validation.sample_steps=2",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_toy_training_then_keyframe_sampling_with_all_three_methods(tmp_path):
    run = tmp_path / "run"
    res = _train(run)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "trainable=" in res.stdout
    assert (run / "export" / "trainable.safetensors").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "samples").glob("step*.mp4"))  # validation in-betweens
    rows = list(csv.DictReader(open(next((run / "csv").rglob("metrics.csv")))))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    assert any(r.get("val/loss") for r in rows)

    frames = np.zeros((2, 32, 32, 3), np.uint8)
    frames[0, 8:16, 2:10] = 255
    frames[1, 8:16, 20:28] = 255
    for i, name in enumerate(("a.png", "b.png")):
        Image.fromarray(frames[i]).save(tmp_path / name)
    sample = _sample_script()
    for method in ("ours", "trf", "flow"):
        out = tmp_path / f"{method}.mp4"
        paths = sample.main(
            [
                "--run",
                str(run),
                "--image",
                str(tmp_path / "a.png"),
                "--image",
                str(tmp_path / "b.png"),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--set",
                f"method={method}",
                "num_inference_steps=2",
                "noise_injection_steps=1",
            ]
        )
        assert paths == [out]
        video, _ = read_video(out)
        assert video.shape == (4, 32, 32, 3)
        if method == "flow":  # the keyframes come back at both ends (up to codec loss)
            assert np.abs(video[0].astype(int) - frames[0]).mean() < 12
            assert np.abs(video[-1].astype(int) - frames[1]).mean() < 12

    # resume from the checkpoint (frozen random-init weights, reference UNet included) to a new max_steps;
    # the CSV history continues: the 4 earlier steps kept, 2 new ones, no step twice
    res = _train(run, "ckpt_path=last", "trainer.max_steps=6")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = list(csv.DictReader(open(next((run / "csv").rglob("metrics.csv")))))
    steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert steps == sorted(set(steps)) and len(steps) == 6, steps
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6
    assert any(k.startswith("ref_unet.") for k in ckpt["state_dict"])
