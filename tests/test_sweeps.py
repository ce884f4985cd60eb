"""Sweeps that scale: Optuna searches (hparams_search=optuna*), the submitit launchers
(hydra/launcher=local runs here; hydra/launcher=slurm is checked down to the sbatch script), the
sweep summary under both, and which method controls the optimised val/loss can see."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, compose_train
from omegaconf import OmegaConf

TINY = [
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "data.num_workers=0",
    "method.validation.num_samples=0",
]

SEARCHES = {
    # hparams_search -> a toy experiment it is meant for
    "optuna": "smoke",
    "optuna_i2v_adapter": "toy_i2v_adapter",
    "optuna_dynamicrafter": "toy_dynamicrafter_stage3",
    "optuna_dynamicrafter_stage1": "toy_dynamicrafter_stage1",
    "optuna_inbetween": "toy_inbetween",
}


def _compose(overrides, tmp_path):
    from hydra import compose, initialize_config_dir

    import i2vlab.utils.config  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(
            "train", overrides=[*overrides, f"paths.output_dir={tmp_path}"], return_hydra_config=True
        )


@pytest.mark.parametrize("search,experiment", sorted(SEARCHES.items()))
def test_optuna_searches_compose_and_name_existing_keys(search, experiment, tmp_path):
    cfg = _compose([f"experiment={experiment}", f"hparams_search={search}"], tmp_path)
    sw = cfg.hydra.sweeper
    assert sw._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.optimized_metric == "val/loss"
    assert str(sw.direction) in ("minimize", "Direction.minimize") and sw.sampler.seed == cfg.seed
    assert sw.params["optimizer.lr"] == "tag(log, interval(1e-5, 1e-3))"
    for key in sw.params:  # a typo would make every trial fail to compose
        assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", (search, key)
    assert "sweep_summary" in cfg.hydra.callbacks  # the summary table ends Optuna sweeps too
    controls = {
        "optuna": set(),
        "optuna_i2v_adapter": {"method.adapter.copy_query"},
        "optuna_dynamicrafter": {"backbone.unet.config.image_cross_attention_scale_learnable"},
        "optuna_dynamicrafter_stage1": {"backbone.unet.image_cross_attention.scale_learnable"},
        "optuna_inbetween": set(),
    }[search]
    assert set(sw.params) == {"optimizer.lr", *controls}
    for key in controls:
        assert sw.params[key] == "choice(true, false)"


def _run_train(args, tmp_path, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    p = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-6000:]
    return out


def _summary_rows(sweep: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted(sweep.glob("*/job_result.json"))]


@pytest.mark.slow
def test_optuna_toy_sweep_of_three_trials_reports_its_best(tmp_path, toy_data):
    sweep = tmp_path / "sweep"
    out = _run_train(
        ["experiment=smoke", "hparams_search=optuna", "hydra.sweeper.n_trials=3", *TINY,
         f"paths.data_dir={toy_data}", f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )  # fmt: skip
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]
    rows = _summary_rows(sweep)
    values = [r["value"] for r in rows]
    assert len(rows) == 3 and all(
        r["status"] == "COMPLETED" and math.isfinite(v) for r, v in zip(rows, values)
    )
    lrs = [OmegaConf.load(sweep / str(r["job"]) / ".hydra" / "config.yaml").optimizer.lr for r in rows]
    assert len(set(lrs)) == 3 and all(1e-5 <= lr <= 1e-3 for lr in lrs)  # three proposals, log-interval
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(values))
    assert best["best_params"]["optimizer.lr"] == pytest.approx(lrs[values.index(min(values))])
    assert "Best parameters: {'optimizer.lr'" in out and f"Best value: {best['best_value']}" in out
    # the sweep summary (Hydra callback) works with the Optuna sweeper: best first
    assert "sweep summary (3 jobs, val/loss, best first; minimize)" in out
    table = (sweep / "summary.md").read_text().splitlines()
    assert f"| {values.index(min(values))} | optimizer.lr=" in table[4]
    assert "setup plugin alembic" not in out  # optuna's import noise kept off the console


@pytest.mark.slow
def test_a_diverged_trial_is_recorded_as_failed_and_the_search_goes_on(tmp_path, toy_data):
    """A NaN val/loss used to abort the whole Optuna study (the sweeper hands the NaN to a failed
    trial, which Optuna refuses); train.py now reports it as missing."""
    sweep = tmp_path / "sweep"
    out = _run_train(
        ["-m", "experiment=smoke", "hparams_search=optuna", "optimizer.lr=choice(1e30,1e-4)",
         "hydra.sweeper.n_trials=2", *TINY, f"paths.data_dir={toy_data}", f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )  # fmt: skip
    rows = {
        OmegaConf.load(sweep / str(r["job"]) / ".hydra" / "config.yaml").optimizer.lr: r
        for r in _summary_rows(sweep)
    }
    assert set(rows) == {1e30, 1e-4}, "the seeded TPE start proposes both values"
    assert rows[1e30]["value"] is None and rows[1e-4]["value"] is not None
    assert "val/loss is nan: reported as missing" in out and "Failed experiment" in out
    assert "Best parameters: {'optimizer.lr': 0.0001}" in out and "sweep summary (2 jobs" in out


def _job_ids(sweep: Path) -> list[str]:
    return sorted(
        str(OmegaConf.load(d / ".hydra" / "hydra.yaml").hydra.job.id)
        for d in sweep.iterdir()
        if d.name.isdigit()
    )


@pytest.mark.slow
def test_submitit_local_launcher_runs_each_job_in_its_own_process(tmp_path, toy_data):
    sweep = tmp_path / "sweep"
    out = _run_train(
        ["-m", "experiment=smoke", "hydra/launcher=local", "optimizer.lr=1e-4,2e-4", *TINY,
         f"paths.data_dir={toy_data}", f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )  # fmt: skip
    assert "Submitit 'local' sweep output dir" in out
    ids = _job_ids(sweep)
    assert len(ids) == 2 and all(i.isdigit() for i in ids)  # submitit job ids (local: the pid)
    assert str(os.getpid()) not in ids
    for i in ids:  # submitit's own job folders: its logs and the pickled result of each job
        folder = sweep / ".submitit" / i
        assert (folder / f"{i}_0_log.out").is_file() and (folder / f"{i}_0_result.pkl").is_file()
    rows = _summary_rows(sweep)
    assert [r["status"] for r in rows] == ["COMPLETED", "COMPLETED"] and all(r["value"] for r in rows)
    for j in ("0", "1"):
        assert (sweep / j / "checkpoints" / "last.ckpt").is_file()
    assert "sweep summary (2 jobs, val/loss" in out


@pytest.mark.slow
def test_optuna_trials_in_parallel_through_the_submitit_launcher(tmp_path, toy_data):
    """hydra.sweeper.n_jobs trials form one batch, launched together (an array on SLURM)."""
    sweep = tmp_path / "sweep"
    out = _run_train(
        ["experiment=smoke", "hparams_search=optuna", "hydra/launcher=local", "hydra.sweeper.n_trials=2",
         "hydra.sweeper.n_jobs=2", *TINY, f"paths.data_dir={toy_data}", f"hydra.sweep.dir={sweep}"],
        tmp_path,
    )  # fmt: skip
    assert out.count("Submitit 'local' sweep output dir") == 1  # one batch of two trials
    assert len(_job_ids(sweep)) == 2 and "Best value:" in out and "sweep summary (2 jobs" in out


def _fake_slurm_bin(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("srun", "sbatch", "sacct", "scancel"):
        f = folder / name
        f.write_text("#!/bin/sh\nexit 1\n")
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return folder


def test_slurm_launcher_config_makes_a_valid_sbatch_script(tmp_path, monkeypatch):
    """hydra/launcher=slurm through submitit's own SLURM executor, as hydra-submitit-launcher 1.2.0
    builds it (its launch(): max_num_timeout at init, base keys as they are, the others slurm_-
    prefixed), down to the sbatch text; unknown keys would raise here. No cluster is contacted."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cfg = _compose(
        ["experiment=i2v_adapter_webvid256", "trainer=ddp", "trainer.devices=8", "hydra/launcher=slurm",
         "hydra.launcher.gpus_per_node=8", "hydra.launcher.partition=gpu", f"hydra.sweep.dir={tmp_path}"],
        tmp_path,
    )  # fmt: skip
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_").endswith("SlurmLauncher")
    assert params["tasks_per_node"] == 8 == cfg.trainer.devices  # one task per GPU for Lightning
    monkeypatch.setenv("PATH", f"{_fake_slurm_bin(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    ex = submitit.AutoExecutor(
        cluster="slurm",
        folder=params.pop("submitit_folder"),
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    ex.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    text = ex._executor._make_submission_file_text("python -u -m submitit.core._submit X", "uid")
    for line in (
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --nodes=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=1440",
        "#SBATCH --signal=USR1@300",  # training checkpoints on SIGUSR1 (submitit's USR2 would not)
        "export OMP_NUM_THREADS=8",
        "srun --unbuffered",
    ):
        assert line in text, (line, text)
    assert "USR2" not in text


def _val_loss(overrides, tmp_path, toy_data) -> float:
    from i2vlab.training import train

    metrics = train(compose_train([*overrides, *TINY], tmp_path, toy_data))
    return metrics["val/loss"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment,key,a,b,seen",
    [
        ("toy_i2v_adapter", "method.adapter.copy_query", "true", "false", True),
        ("toy_dynamicrafter_stage3", "backbone.unet.config.image_cross_attention_scale_learnable", "true", "false", True),
        ("toy_i2v_adapter", "method.sampling.fsp_p", "0.1", "0.9", False),
        ("toy_inbetween", "method.sampling.noise_injection_steps", "1", "5", False),
    ],
)  # fmt: skip
def test_which_method_controls_val_loss_can_see(experiment, key, a, b, seen, tmp_path, toy_data):
    """The searched controls change val/loss; the sampling-only ones (FSP p, re-injection count)
    leave it bit-identical, so a val/loss search over them would be a search over nothing."""
    va = _val_loss([f"experiment={experiment}", f"{key}={a}"], tmp_path / "a", toy_data)
    vb = _val_loss([f"experiment={experiment}", f"{key}={b}"], tmp_path / "b", toy_data)
    assert math.isfinite(va) and math.isfinite(vb)
    assert (va != vb) == seen, (va, vb)
