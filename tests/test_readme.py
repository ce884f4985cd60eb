"""Every command the README prints, run as printed (plus tiny overrides for time and paths).

Each command line of the README's ``bash`` blocks is either run here or listed in
:data:`NOT_RUN` with the reason; a new README command without a rule fails
``test_every_readme_command_has_a_rule``. Commands run in a temporary working directory, so
relative paths in them (``runs/s1``, ``outputs/my_run``) land there.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

README = ROOT / "README.md"


def readme_commands() -> list[str]:
    """Command lines of the README's bash blocks (continuations joined, comments dropped)."""
    text = README.read_text()
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                out.append(re.sub(r"\s+", " ", line))
    return out


#: commands that cannot run in the suite, with the reason (each still has to be in the README)
NOT_RUN = {
    "make demo": "installs and runs scripts/demo.py, which test_demo runs",
    "make test": "the suite itself",
    "torchrun --nnodes=4 --nproc_per_node=8 --rdzv_endpoint=$MASTER:29500 train.py ... trainer=ddp trainer.devices=8 trainer.num_nodes=4": "a template (`...`) for 4 nodes",
    "srun python train.py ... trainer=ddp trainer.devices=8 trainer.num_nodes=4": "a template (`...`) for SLURM",
}

#: appended to toy training commands: a couple of CPU steps
TINY = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "data.num_workers=0",
    "method.validation.num_samples=0",
    "callbacks.model_checkpoint.every_n_train_steps=2",
]


def _run(cmd: str, cwd: Path, extra: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    args = shlex.split(cmd)
    assert args[0] == "python", cmd
    script = ROOT / args[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, str(script), *args[2:], *extra],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _needs_weights(cmd: str) -> bool:
    return "/models/" in cmd or not any(t in cmd for t in ("experiment=smoke", "experiment=toy_"))


def test_every_readme_command_has_a_rule():
    cmds = readme_commands()
    assert len(cmds) >= 10
    for c in cmds:
        assert c in NOT_RUN or c.startswith("python "), f"README command without a test rule: {c}"
    for c in NOT_RUN:
        assert c in cmds, f"NOT_RUN lists a command the README no longer has: {c}"


@pytest.mark.slow
def test_readme_toy_training_commands_run_as_printed(tmp_path, toy_data):
    cmds = [c for c in readme_commands() if c.startswith("python train.py") and not _needs_weights(c)]
    assert any("-m " in c for c in cmds) and any("hparams_search=lr_sweep" in c for c in cmds)
    ran = 0
    for i, cmd in enumerate(cmds):
        extra = [*TINY, f"paths.data_dir={toy_data}"]
        sweep = " -m " in f" {cmd} " or "hparams_search=" in cmd
        if sweep:  # the default sweep dir (outputs/<task>/multiruns/<time>) under a temporary root
            extra.append(f"paths.log_dir={tmp_path / 'outputs'}")
        elif "hydra.run.dir=" not in cmd:
            extra.append(f"hydra.run.dir={tmp_path / f'run{i}'}")
        if "ckpt_path=last" in cmd:
            extra[0] = "trainer.max_steps=3"  # continue the run the previous command stopped
        p = _run(cmd, tmp_path, extra)
        out = p.stdout + p.stderr
        assert p.returncode == 0, f"{cmd}\n{out[-4000:]}"
        if sweep:
            assert "sweep summary" in out and "| job | overrides | status | val/loss |" in out, out[-3000:]
        ran += 1
    assert (tmp_path / "runs" / "s2" / "export" / "trainable.safetensors").is_file()  # stage 2 from stage 1
    assert ran == len(cmds)


def test_readme_real_weight_commands_fail_at_once_naming_the_key_to_set(tmp_path):
    cmds = [c for c in readme_commands() if c.startswith("python train.py") and _needs_weights(c)]
    assert len(cmds) >= 3
    for cmd in cmds:
        p = _run(cmd, tmp_path, [f"hydra.run.dir={tmp_path / 'w'}"], timeout=120)
        err = p.stderr
        assert p.returncode == 2, f"{cmd}\n{p.stdout[-2000:]}\n{err[-3000:]}"
        assert err.startswith("error: ") and "Traceback" not in err, err[-3000:]
        assert re.search(r"backbone\.[a-z0-9_]+=", err), err  # names the key a user sets
        assert "mismatched input" not in err  # the shard pattern parses
    real = next(c for c in cmds if "/models/stable-diffusion-v1-5" in c)
    p = _run(real, tmp_path, [f"hydra.run.dir={tmp_path / 'w2'}"], timeout=120)
    assert "backbone.pretrained='/models/stable-diffusion-v1-5' does not exist" in p.stderr
    assert (
        "unet" in p.stderr and "huggingface.co/stable-diffusion-v1-5" in p.stderr
    )  # layout, where published


def test_the_readme_shard_pattern_reaches_the_data_module_as_one_string(tmp_path):
    """The README's brace pattern parses in bash + Hydra and is expanded by the data module."""
    line = next(c for c in readme_commands() if "data.train_shards=" in c)
    arg = next(a for a in shlex.split(line) if a.startswith("data.train_shards="))
    from conftest import compose_train

    pattern = arg.split("=", 1)[1].strip("'").replace("/data/webvid/shards", str(tmp_path))
    cfg = compose_train(["experiment=smoke", "data=webvid", f"data.train_shards='{pattern}'"], tmp_path)
    assert cfg.data.train_shards == pattern
    from i2vlab.data.shards import ShardsNotFoundError, list_shards

    with pytest.raises(ShardsNotFoundError, match=r"0 of 5000 shards found; first missing: .*000000\.tar"):
        list_shards(cfg.data.train_shards)


def test_default_sweep_dir_resolves_without_a_hydra_runtime():
    """The multirun bug: hydra.sweep.dir resolved ${hydra:runtime.cwd} before Hydra set it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import i2vlab.utils.config  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=smoke"], return_hydra_config=True)
    sweep = OmegaConf.select(cfg, "hydra.sweep.dir")
    assert sweep.startswith(str(ROOT / "outputs" / "smoke" / "multiruns"))
    assert OmegaConf.select(cfg, "paths.data_dir") == str(ROOT / "data")  # not the working directory
