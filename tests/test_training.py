"""The shared core on the tiny AnimateDiff backbone: configs, trainable selection, export, resume,
DDP, multirun, loggers, parameter reports, weight-loading errors."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import CONF, ROOT, compose_train, run_script, with_tests_on_path
from omegaconf import OmegaConf

from i2vlab.training import instantiate_model, train

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
FAST = [
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "data.num_workers=0",
    "callbacks.model_checkpoint.every_n_train_steps=1",
    "method.validation.num_samples=0",
]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_config_composes(name, tmp_path):
    """Every recipe composes, resolves and instantiates: the model on the meta device (full-size
    architectures, no weights read) and the data module, so a wrong class path or argument name
    fails here, not on a cluster."""
    import hydra

    from i2vlab.models.loading import build_on_meta

    cfg = compose_train([f"experiment={name}"], tmp_path)
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert container["method"]["_target_"].startswith("i2vlab.methods.")
    assert container["data"]["_target_"].startswith("i2vlab.data.")
    assert container["trainer"]["_target_"] == "pytorch_lightning.Trainer"
    with build_on_meta():
        model = instantiate_model(cfg)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert type(model).__name__ == container["method"]["_target_"].rsplit(".", 1)[1]
    for key in ("train_shards", "val_shards"):  # full-size recipes leave the shard paths to the user
        if key in cfg.data.keys() and OmegaConf.is_missing(cfg.data, key):
            cfg.data[key] = str(tmp_path / "shards" / "shard-{000000..000003}.tar")
    dm = hydra.utils.instantiate(cfg.data, _recursive_=False)
    assert type(dm).__name__ == container["data"]["_target_"].rsplit(".", 1)[1]


def _toy_batch(dm_cfg_overrides=None):
    from i2vlab.data.toy import make_toy_video
    from i2vlab.utils.video_io import from_uint8_frames

    vids = [make_toy_video(s, num_frames=8, height=32, width=32) for s in (1, 2)]
    return {
        "video": torch.stack([from_uint8_frames(v.frames) for v in vids]),
        "caption": [v.caption for v in vids],
    }


def test_only_configured_parameters_get_gradients_and_sit_in_the_optimizer(tmp_path):
    cfg = compose_train(["experiment=smoke"], tmp_path)
    model = instantiate_model(cfg)
    names = model.configure_trainable()
    assert names and all(".motion_modules." in n for n in names)
    loss, _ = model.compute_loss(_toy_batch(), model.step_generator())
    loss.mean().backward()
    for n, p in model.named_parameters():
        if n in names:
            assert p.requires_grad
        else:
            assert not p.requires_grad and p.grad is None, n
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n in names
    )
    opt = model.configure_optimizers()["optimizer"]
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for n, p in model.named_parameters() if n in names}


def test_bad_trainable_pattern_is_a_clear_error(tmp_path):
    cfg = compose_train(["experiment=smoke", "method.trainable=[unet.no_such_layer.*]"], tmp_path)
    model = instantiate_model(cfg)
    with pytest.raises(ValueError, match="method.trainable"):
        model.configure_trainable()


def test_missing_weights_fail_early_naming_the_config_key(tmp_path):
    from i2vlab.models.loading import WeightsNotFoundError

    cfg = compose_train(["experiment=smoke", f"backbone.vae.pretrained={tmp_path}/no_vae"], tmp_path)
    with pytest.raises(Exception) as e:
        instantiate_model(cfg)
    err = e.value
    while err.__cause__ is not None and not isinstance(err, WeightsNotFoundError):
        err = err.__cause__
    assert isinstance(err, WeightsNotFoundError) and "`backbone.vae.pretrained=" in str(err)


def test_weights_load_from_a_local_pretrained_folder(tmp_path):
    """The from_pretrained path, on small components this test saves itself."""
    cfg = compose_train(["experiment=smoke"], tmp_path)
    model = instantiate_model(cfg)
    model.vae.save_pretrained(tmp_path / "sd" / "vae")
    model.text_encoder.save_pretrained(tmp_path / "sd" / "text_encoder")
    cfg2 = compose_train(
        [
            "experiment=smoke",
            f"backbone.vae.pretrained={tmp_path}/sd",
            "+backbone.vae.subfolder=vae",
            f"backbone.text_encoder.pretrained={tmp_path}/sd",
            "+backbone.text_encoder.subfolder=text_encoder",
        ],
        tmp_path,
    )
    torch.manual_seed(123)  # different random init: equality below comes from the loaded weights
    model2 = instantiate_model(cfg2)
    for a, b in zip(model.vae.state_dict().values(), model2.vae.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(model.text_encoder.state_dict().values(), model2.text_encoder.state_dict().values()):
        assert torch.equal(a, b)


def test_smoke_training_writes_checkpoints_samples_metrics_and_export(tmp_path, toy_data):
    cfg = compose_train(
        [
            "experiment=smoke",
            "data.num_workers=0",
            "trainer.max_steps=4",
            "trainer.val_check_interval=4",
            "callbacks.model_checkpoint.every_n_train_steps=2",
        ],
        tmp_path,
        toy_data,
    )
    metrics = train(cfg)
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "checkpoints" / "step0000004.ckpt").is_file()
    samples = list((tmp_path / "samples").glob("*.mp4"))
    assert len(samples) == 1
    from i2vlab.utils.video_io import read_video

    frames, _ = read_video(samples[0])
    assert frames.shape == (8, 32, 32, 3)
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    assert any(r.get("train/loss") for r in rows) and any(r.get("perf/samples_per_sec") for r in rows)
    assert any(r.get("lr") for r in rows) and any(float(r.get("perf/peak_mem_gb") or 0) > 0 for r in rows)
    assert any(r.get("val/loss") for r in rows) and any(r.get("val/loss_stratum03") for r in rows)
    assert "val/loss" in metrics
    assert (tmp_path / "export" / "trainable.safetensors").is_file()
    assert (tmp_path / "export" / "config.yaml").is_file()
    import json

    from safetensors import safe_open

    from i2vlab.utils.config import git_revision

    info = [json.loads(line) for line in (tmp_path / "run_info.jsonl").read_text().splitlines()]
    assert len(info) == 1 and info[0]["git_revision"] == git_revision() and info[0]["resumed_from"] is None
    with safe_open(str(tmp_path / "export" / "trainable.safetensors"), "pt") as f:
        assert f.metadata()["method"] == "AnimateDiffT2V" and f.metadata()["git_revision"] == git_revision()


def test_exported_trainable_weights_load_into_a_fresh_model(tmp_path, toy_data):
    from safetensors.torch import load_file

    cfg = compose_train(["experiment=smoke", *FAST, "optimizer.lr=1e-2"], tmp_path, toy_data)
    train(cfg)
    export = tmp_path / "export" / "trainable.safetensors"
    tensors = load_file(str(export))
    fresh = instantiate_model(cfg)
    names = fresh.configure_trainable()
    assert set(tensors) == set(names)  # only trainable weights are exported
    before = {n: p.detach().clone() for n, p in fresh.named_parameters() if n in tensors}
    fresh.load_trainable(export)
    own = dict(fresh.named_parameters())
    assert all(torch.equal(own[n], tensors[n]) for n in tensors)
    assert any(not torch.equal(before[n], tensors[n]) for n in tensors)  # training changed them
    # the inference loader rebuilds the run's pipeline (no Lightning) and reproduces the trained weights
    from i2vlab.pipelines import load_pipeline

    loaded = load_pipeline(tmp_path)
    own = loaded.named_tensors()
    assert all(torch.equal(own[n], tensors[n]) for n in tensors)
    with pytest.raises(RuntimeError, match="do not match"):
        fresh.load_trainable(_write_partial(tmp_path, tensors))


def _write_partial(tmp_path: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    part = dict(list(tensors.items())[: len(tensors) // 2])
    save_file(part, str(tmp_path / "partial.safetensors"))
    return tmp_path / "partial.safetensors"


def _trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_resume_continues_from_step_n_with_the_same_optimizer_state(tmp_path, toy_data):
    """Stop after 3 steps, resume with ckpt_path=last to 6: same weights as an uninterrupted 6-step run."""
    common = [
        "experiment=smoke",
        "data.num_workers=1",
        "method.validation.num_samples=0",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "trainer.val_check_interval=100",
        "method.ema={decay: 0.9}",
    ]
    full = compose_train([*common, "trainer.max_steps=6"], tmp_path / "full", toy_data)
    train(full)
    ref = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)

    part = compose_train([*common, "trainer.max_steps=3"], tmp_path / "resumed", toy_data)
    train(part)
    ck3 = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ck3["global_step"] == 3 and "ema" in ck3 and "rng" in ck3
    resumed = compose_train(
        [*common, "trainer.max_steps=6", "ckpt_path=last"], tmp_path / "resumed", toy_data
    )
    train(resumed)
    got = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert got["global_step"] == 6
    # the resumed optimizer started from the saved state (step counts continue from 3)
    st = next(iter(got["optimizer_states"][0]["state"].values()))
    assert int(st["step"]) == 6
    for k, v in ref["state_dict"].items():
        assert torch.allclose(got["state_dict"][k], v, atol=1e-6), k
    for a, b in zip(ref["ema"]["shadow_params"], got["ema"]["shadow_params"]):
        assert torch.allclose(a, b, atol=1e-6)
    rows = list(csv.DictReader(open(tmp_path / "resumed" / "csv" / "version_0" / "metrics.csv")))
    steps = sorted({int(r["step"]) for r in rows if r.get("train/loss")})
    assert steps == list(range(6))  # one CSV, steps 0..5, logged across both runs


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_on_the_same_trajectory(tmp_path, toy_data):
    """SIGKILL a training process when step 4 begins; ckpt_path=last continues from step 3 and ends
    with the same weights as an uninterrupted run."""
    import subprocess
    import sys

    common = [
        "experiment=smoke",
        "data.num_workers=1",
        "method.validation.num_samples=0",
        "callbacks.model_checkpoint.every_n_train_steps=1",
        "trainer.val_check_interval=100",
        "trainer.max_steps=6",
    ]
    run = tmp_path / "killed"
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            *common,
            f"paths.data_dir={toy_data}",
            f"hydra.run.dir={run}",
            "+callbacks.killer._target_=killer.KillAtStep",
            "+callbacks.killer.step=3",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=with_tests_on_path({"OMP_NUM_THREADS": "1"}),
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    assert not (run / "export").exists()  # it really died mid-run
    train(compose_train([*common, "ckpt_path=last"], run, toy_data))
    train(compose_train(common, tmp_path / "full", toy_data))
    got = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    ref = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    assert got["global_step"] == ref["global_step"] == 6
    for k, v in ref["state_dict"].items():
        assert torch.equal(got["state_dict"][k], v), k


def test_resume_without_a_checkpoint_is_an_error(tmp_path, toy_data):
    cfg = compose_train(["experiment=smoke", "ckpt_path=last"], tmp_path, toy_data)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(cfg)


def test_init_from_copies_matching_weights(tmp_path, toy_data):
    cfg = compose_train(["experiment=smoke", *FAST, "optimizer.lr=1e-2"], tmp_path / "a", toy_data)
    train(cfg)
    cfg2 = compose_train(
        ["experiment=smoke", f"init_from={tmp_path}/a/export/trainable.safetensors"], tmp_path / "b"
    )
    m = instantiate_model(cfg2)
    fresh = {k: v.detach().clone() for k, v in m.state_dict().items()}
    loaded = m.init_from(cfg2.init_from)
    assert set(loaded) == set(m.configure_trainable())
    from safetensors.torch import load_file

    saved = load_file(f"{tmp_path}/a/export/trainable.safetensors")
    now = m.state_dict()
    changed = 0
    for k in loaded:  # the values are the trained ones, not only the names
        torch.testing.assert_close(now[k], saved[k].to(now[k].dtype), rtol=0, atol=0)
        changed += int(not torch.equal(now[k], fresh[k]))
    assert changed > 0  # training at lr 1e-2 moved them away from the fresh init
    for k in set(now) - set(loaded):  # everything else is left as it was built
        torch.testing.assert_close(now[k], fresh[k], rtol=0, atol=0)


def test_atomic_checkpoint_io_never_leaves_a_partial_file(tmp_path):
    from i2vlab.training.checkpoints import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    io.save_checkpoint({"a": torch.ones(3)}, tmp_path / "c.ckpt")

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.save_checkpoint({"a": torch.zeros(3), "b": Boom()}, tmp_path / "c.ckpt")
    assert torch.equal(torch.load(tmp_path / "c.ckpt")["a"], torch.ones(3))  # old file intact


def test_param_report_full_size_on_meta_device():
    proc = run_script(
        ["scripts/param_report.py", "backbone=sd15_animatediff", "method=animatediff", "+meta=true"]
    )
    last = proc.stdout.strip().splitlines()[-1]
    # SD1.5 UNet (859,520,964) + AnimateDiff v1-5-2 motion modules (453,209,280); VAE; CLIP-L text
    assert last == "trainable=453209280 frozen=1066235307"
    assert "meta device" in proc.stdout


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path, toy_data):
    out = tmp_path / "ddp"
    proc = run_script(
        [
            "train.py",
            "experiment=smoke",
            "trainer=ddp",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "trainer.precision=32-true",
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "data.num_workers=0",
            "method.validation.num_samples=0",
            f"paths.data_dir={toy_data}",
            f"hydra.run.dir={out}",
        ],
        timeout=400,
    )
    log = proc.stdout + proc.stderr
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log  # two gloo processes joined
    ck = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ck["global_step"] == 2
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.startswith("train_ddp")) == []
    # one run directory: both ranks logged into it, none elsewhere
    assert (out / "csv" / "version_0" / "metrics.csv").is_file()
    assert (out / "export" / "trainable.safetensors").is_file()


@pytest.mark.slow
def test_multirun_writes_one_directory_per_job(tmp_path, toy_data):
    sweep = tmp_path / "sweep"
    run_script(
        [
            "train.py",
            "-m",
            "experiment=smoke",
            "optimizer.lr=1e-4,2e-4",
            "trainer.max_steps=1",
            "trainer.val_check_interval=1",
            "data.num_workers=0",
            "method.validation.num_samples=0",
            f"paths.data_dir={toy_data}",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=400,
    )
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    lrs = [OmegaConf.load(sweep / j / ".hydra" / "config.yaml").optimizer.lr for j in jobs]
    assert lrs == [1e-4, 2e-4]
    for j in jobs:
        assert (sweep / j / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_wandb_offline_and_tensorboard_loggers_resume_the_same_run(tmp_path, toy_data):
    import wandb

    from i2vlab.utils.config import run_id

    common = [
        "experiment=smoke",
        "logger=all",
        "data.num_workers=0",
        "method.validation.num_samples=0",
        "trainer.val_check_interval=100",
    ]
    train(compose_train([*common, "trainer.max_steps=2"], tmp_path, toy_data))
    wandb.finish()
    train(compose_train([*common, "trainer.max_steps=3", "ckpt_path=last"], tmp_path, toy_data))
    wandb.finish()
    runs = [p.name for p in (tmp_path / "wandb").iterdir() if p.name.startswith("offline-run")]
    ids = {r.rsplit("-", 1)[-1] for r in runs}
    assert len(runs) == 2 and ids == {run_id(str(tmp_path))}  # two sessions of one wandb run
    events = list((tmp_path / "tensorboard" / "version_0").glob("events.*"))
    assert len(events) >= 1 and not (tmp_path / "tensorboard" / "version_1").exists()


def test_csv_metrics_continue_across_resume_with_validation_rows(tmp_path, toy_data):
    common = [
        "experiment=smoke",
        "data.num_workers=0",
        "method.validation.num_samples=0",
        "trainer.val_check_interval=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
    ]
    train(compose_train([*common, "trainer.max_steps=2"], tmp_path, toy_data))
    train(compose_train([*common, "trainer.max_steps=4", "ckpt_path=last"], tmp_path, toy_data))
    rows = list(csv.DictReader(open(tmp_path / "csv" / "version_0" / "metrics.csv")))
    assert sorted({int(r["step"]) for r in rows if r.get("train/loss")}) == [0, 1, 2, 3]
    assert len([r for r in rows if r.get("val/loss")]) == 2  # one validation per session, both kept


def test_prediction_targets_and_zero_terminal_snr_come_from_diffusers():
    from diffusers import DDPMScheduler

    from i2vlab.diffusion.schedules import build_noise_scheduler, stratified_timesteps, training_target

    cfg = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    eps = build_noise_scheduler(config=cfg)
    v = build_noise_scheduler(
        config=cfg, prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing"
    )
    x, n = torch.randn(2, 4, 3, 8, 8), torch.randn(2, 4, 3, 8, 8)
    t = torch.tensor([10, 900])
    assert torch.equal(training_target(eps, x, n, t), n)
    a = v.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1, 1)
    s = (1 - v.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1, 1)
    assert torch.allclose(training_target(v, x, n, t), a * n - s * x, atol=1e-6)  # v = α ε − σ x0
    assert v.alphas_cumprod[-1] < 1e-6 < eps.alphas_cumprod[-1]  # zero terminal SNR
    assert isinstance(v, DDPMScheduler) and v.config.timestep_spacing == "trailing"
    ts = stratified_timesteps(10)
    assert ts.tolist() == [50, 150, 250, 350, 450, 550, 650, 750, 850, 950]


def test_sample_script_writes_videos_and_captions_from_a_run(tmp_path, toy_data):
    import sample

    from i2vlab.utils.video_io import read_video

    train(compose_train(["experiment=smoke", *FAST], tmp_path / "run", toy_data))
    out = tmp_path / "s" / "v.mp4"
    paths = sample.main(
        [
            "--run",
            str(tmp_path / "run"),
            "--prompt",
            "a red circle moving left",
            "--prompt",
            "a blue square",
            "--num-frames",
            "6",
            "--out",
            str(out),
            "--gif",
            "--set",
            "num_inference_steps=3",
            "guidance_scale=2.0",
        ]
    )
    assert [p.name for p in paths] == ["v_0.mp4", "v_0.gif", "v_1.mp4", "v_1.gif"]
    frames, _ = read_video(paths[0])
    assert frames.shape == (6, 32, 32, 3)
    assert (tmp_path / "s" / "v_1.txt").read_text() == "a blue square"
    # same seed -> same video; the guidance scale given with --set reaches the sampler
    again = sample.main(
        [
            "--run",
            str(tmp_path / "run"),
            "--prompt",
            "a red circle moving left",
            "--num-frames",
            "6",
            "--out",
            str(tmp_path / "s2.mp4"),
            "--set",
            "num_inference_steps=3",
            "guidance_scale=2.0",
        ]
    )
    assert (read_video(again[0])[0] == frames).all()
    other = sample.main(
        [
            "--run",
            str(tmp_path / "run"),
            "--prompt",
            "a red circle moving left",
            "--num-frames",
            "6",
            "--out",
            str(tmp_path / "s3.mp4"),
            "--set",
            "num_inference_steps=3",
            "guidance_scale=9.0",
        ]
    )
    assert not (read_video(other[0])[0] == frames).all()


def test_memory_switches_gradient_checkpointing_bf16_frozen_parts_and_ema_export(tmp_path, toy_data):
    cfg = compose_train(
        [
            "experiment=smoke",
            *FAST,
            "method.gradient_checkpointing=true",
            "method.frozen_dtype=bf16",
            "method.ema={decay: 0.5}",
        ],
        tmp_path,
        toy_data,
    )
    train(cfg)
    model = instantiate_model(cfg)
    model.setup("fit")
    assert model.unet.is_gradient_checkpointing
    assert next(model.vae.parameters()).dtype == torch.bfloat16
    assert next(model.text_encoder.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    loss, _ = model.compute_loss(_toy_batch(), model.step_generator())
    loss.mean().backward()  # trains through checkpointed blocks with bf16 frozen encoders
    assert all(p.grad is not None for p in model.trainable_parameters())
    from safetensors.torch import load_file

    raw = load_file(str(tmp_path / "export" / "trainable.safetensors"))
    ema = load_file(str(tmp_path / "export" / "trainable_ema.safetensors"))
    assert set(raw) == set(ema) and any(not torch.equal(raw[k], ema[k]) for k in raw)
