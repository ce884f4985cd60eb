"""Command-line behaviour: thread defaults, sample.py checks before loading a model."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, compose_train
from PIL import Image


def test_thread_defaults_one_on_small_machines_and_respect_the_environment():
    from i2vlab.utils.runtime import default_num_threads

    assert default_num_threads(2) == 1 and default_num_threads(4) == 1
    assert default_num_threads(16) == 8 and default_num_threads(128) == 16
    code = "from i2vlab.utils.runtime import configure_threads; n = configure_threads(); import torch, os; print(n, torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "I2VLAB_NUM_THREADS")
    }
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    n = default_num_threads()
    assert out.stdout.split() == [str(n), str(n), str(n)]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**env, "OMP_NUM_THREADS": "3"},
        check=True,
    )
    n, torch_threads, env_threads = out.stdout.split()
    assert n == env_threads == "3" and int(torch_threads) == min(3, os.cpu_count())  # torch caps at the cores


def test_train_py_applies_the_thread_default_itself(tmp_path, toy_data):
    """No OMP_NUM_THREADS in the environment: train.py still runs with the small-machine default."""
    import json

    from i2vlab.utils.runtime import default_num_threads

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    p = subprocess.run(
        [
            sys.executable,
            "train.py",
            "experiment=smoke",
            "train=false",
            "export=false",
            f"paths.data_dir={toy_data}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads((tmp_path / "run" / "run_info.jsonl").read_text().splitlines()[-1])
    n = default_num_threads()
    assert info["omp_num_threads"] == str(n) and info["torch_threads"] == min(n, os.cpu_count())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, toy_data):
    """Tiny finished runs (config + checkpoint) of a one-image and a two-keyframe method, 0 steps."""
    from i2vlab.training import train

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, exp in (("i2v", "toy_i2v_adapter"), ("interp", "toy_dynamicrafter_interp"), ("t2v", "smoke")):
        cfg = compose_train([f"experiment={exp}", "train=false"], root / name, toy_data)
        train(cfg)
        (root / name / ".hydra").mkdir(exist_ok=True)
        from omegaconf import OmegaConf

        OmegaConf.save(cfg, root / name / ".hydra" / "config.yaml")
        out[name] = root / name
    return out


def _sample(args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sample.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize(
    "case, args, message",
    [
        ("i2v", ["--image", "missing.png", "--prompt", "x"], "--image missing.png: no such file"),
        ("i2v", ["--image", "notimage.png", "--prompt", "x"], "not a readable image"),
        ("i2v", ["--prompt", "x"], "needs one --image per --prompt"),
        (
            "interp",
            ["--image", "a.png", "--prompt", "x"],
            "two keyframes for one prompt: --image start.png --image end.png (or one image with --set loop=true)",
        ),
        ("t2v", ["--image", "a.png", "--prompt", "x"], "text-to-video: drop --image"),
    ],
)
def test_sample_py_checks_images_before_loading_a_model(runs, tmp_path, case, args, message):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notimage.png").write_text("not an image")
    p = _sample(["--run", str(runs[case]), *args], tmp_path)
    assert p.returncode != 0 and message in p.stderr, p.stderr[-2000:]
    assert "Traceback" not in p.stderr


def test_sample_py_loop_mode_with_one_image_is_accepted(runs, tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    p = _sample(
        [
            "--run",
            str(runs["interp"]),
            "--image",
            "a.png",
            "--prompt",
            "x",
            "--set",
            "loop=true",
            "num_inference_steps=2",
            "--out",
            str(tmp_path / "v.mp4"),
        ],
        tmp_path,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "v.mp4").is_file()
