"""Shared fixtures: repository paths, toy shards built once per session, config composition."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# One BLAS/OpenMP thread per test process: tiny models on 2 shared cores run many times faster than
# with oversubscribed threads (pytest-xdist already runs one process per core). Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
sys.path.insert(0, str(ROOT / "scripts"))
# subprocesses (train.py, scripts) import this checkout's package, whatever the environment has installed
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p
)


def with_tests_on_path(env: dict | None = None) -> dict:
    """``os.environ`` (+ ``env``) with ``tests/`` also importable (test-only callbacks such as ``killer``)."""
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), full.get("PYTHONPATH", "")])
    return full


@pytest.fixture(autouse=True)
def one_thread():
    """Every test runs on one torch thread (also bitwise-reproducible CPU reductions) and gives the
    thread count back, whatever a test or a library it calls set."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    """``<tmp>/toy/{train,val}/*.tar``: 16 + 4 toy videos of 24 frames at 64 px (built once)."""
    from i2vlab.data.toy import write_toy_shards

    root = tmp_path_factory.mktemp("data")
    write_toy_shards(root / "toy", num_videos=16, num_val=4, frames=24, size=64, per_shard=8, progress=False)
    return root


def compose_train(overrides: list[str], output_dir: Path | str, data_dir: Path | str | None = None):
    """Compose conf/train.yaml like train.py would, with the run paths pinned (no Hydra runtime)."""
    from hydra import compose, initialize_config_dir

    import i2vlab.utils.config  # noqa: F401

    paths = [f"paths.output_dir={output_dir}", f"paths.root_dir={ROOT}"]
    if data_dir is not None:
        paths.append(f"paths.data_dir={data_dir}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides) + paths)


def run_script(args: list[str], cwd: Path | None = None, timeout: int = 300, env: dict | None = None):
    """Run a repo script with this interpreter; raise with its output on failure."""
    import subprocess

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.run(
        [sys.executable, *args],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc
