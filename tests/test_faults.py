"""Fault injection: corrupt checkpoints, crafted pickles, keys that escape their folder, kills during
validation, preemption signals, non-finite losses, bad configs. Each fault is survived or named."""

from __future__ import annotations

import csv
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_train, with_tests_on_path

from i2vlab.training import RunDirectoryNotEmpty, resolve_ckpt_path, train
from i2vlab.training.checkpoints import (
    AtomicCheckpointIO,
    clean_leftovers,
    find_resume_checkpoint,
    verify_checkpoint,
)
from i2vlab.utils.safe_load import CorruptFileError, UnsafeCheckpointError, UnsafePathError, safe_child
from i2vlab.utils.validate import ConfigError

COMMON = [
    "experiment=smoke",
    "data.num_workers=0",
    "method.validation.num_samples=0",
    "callbacks.model_checkpoint.every_n_train_steps=2",
    "trainer.val_check_interval=2",
    "trainer.max_steps=4",
]


def _run_train(args: list[str], run: Path, data: Path, timeout: int = 300, extra_env: dict | None = None):
    env = with_tests_on_path({"OMP_NUM_THREADS": "1", **(extra_env or {})})
    return subprocess.run(
        [sys.executable, "train.py", *args, f"paths.data_dir={data}", f"hydra.run.dir={run}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, toy_data) -> Path:
    """A finished 4-step smoke run with checkpoints at steps 2 and 4 (+ last)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train(compose_train(COMMON, run, toy_data))
    return run


class _Marker:
    """Unpickling this creates a file: evidence that a loader ran code from a checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _evil_ckpt(path: Path, marker: Path, like: Path | None = None) -> Path:
    ckpt = torch.load(like, weights_only=True) if like else {"state_dict": {}}
    ckpt["payload"] = _Marker(marker)
    torch.save(ckpt, path)
    return path


# -- checkpoint corruption -------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "zeroed", "garbage", "empty", "bitflip"])
def test_a_damaged_last_ckpt_falls_back_to_the_newest_valid_checkpoint(trained, tmp_path, damage, caplog):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    last = run / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    if damage == "truncated":
        last.write_bytes(data[: len(data) // 2])
    elif damage == "zeroed":
        last.write_bytes(bytes(len(data)))
    elif damage == "garbage":
        last.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        last.write_bytes(b"")
    else:  # one flipped byte inside a tensor: torch still loads it, the checksum does not match
        b = bytearray(data)
        b[len(b) // 2] ^= 0xFF
        last.write_bytes(bytes(b))
    assert verify_checkpoint(last) is not None
    chosen = resolve_ckpt_path("last", run)
    assert Path(chosen).name == "step0000004.ckpt"
    assert "last.ckpt" in caplog.text and "step0000004.ckpt" in caplog.text


def test_resume_from_a_damaged_last_ckpt_continues_from_the_fallback(trained, tmp_path, toy_data):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"\0" * 100)
    (run / "checkpoints" / "step0000004.ckpt").write_bytes(b"garbage")  # the newest one too
    metrics = train(compose_train([*COMMON, "trainer.max_steps=6", "ckpt_path=last"], run, toy_data))
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ck["global_step"] == 6 and "val/loss" in metrics
    assert verify_checkpoint(run / "checkpoints" / "last.ckpt") is None


def test_no_valid_checkpoint_at_all_is_a_clear_error(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    (tmp_path / "checkpoints" / "step0000002.ckpt").write_bytes(b"x" * 10)
    with pytest.raises(FileNotFoundError, match="no usable checkpoint.*empty file"):
        find_resume_checkpoint(tmp_path / "checkpoints" / "last.ckpt")


def test_failed_checkpoint_write_leaves_no_temporary_file_and_keeps_the_old_one(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"a": torch.ones(3)}, "global_step": 1}, tmp_path / "c.ckpt")
    with pytest.raises((TypeError, pickle.PicklingError)):
        io.save_checkpoint({"bad": (x for x in range(3))}, tmp_path / "c.ckpt")  # cannot be pickled
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt", "c.ckpt.sha256"]
    assert torch.equal(torch.load(tmp_path / "c.ckpt", weights_only=True)["state_dict"]["a"], torch.ones(3))
    assert verify_checkpoint(tmp_path / "c.ckpt") is None


def test_leftover_temporary_files_of_killed_writers_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    (tmp_path / f".last.ckpt.tmp-{pid}").write_bytes(b"")
    (tmp_path / f".step0000002.ckpt.sha256.tmp-{pid}").write_bytes(b"{}")
    alive = tmp_path / f".last.ckpt.tmp-{os.getppid()}"  # a live writer's file stays
    alive.write_bytes(b"")
    (tmp_path / "step0000002.ckpt").write_bytes(b"keep")
    removed = clean_leftovers(tmp_path)
    assert len(removed) == 2 and alive.exists() and (tmp_path / "step0000002.ckpt").exists()


# -- pickles never run ------------------------------------------------------------------------------------
def test_crafted_pickles_never_run_through_any_loading_entry_point(trained, tmp_path, toy_data):
    from i2vlab.pipelines import load_pipeline
    from i2vlab.training.state import load_weights_file

    marker = tmp_path / "PWNED"
    evil = _evil_ckpt(tmp_path / "evil.ckpt", marker, like=trained / "checkpoints" / "last.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="Convert it once to safetensors"):
        load_weights_file(evil)  # init_from
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.copy(evil, run / "checkpoints" / "last.ckpt")
    (run / "checkpoints" / "last.ckpt.sha256").unlink()
    with pytest.raises(UnsafeCheckpointError):
        load_pipeline(run / "checkpoints" / "last.ckpt")  # sample.py, evaluate.py's generate step
    proc = subprocess.run(
        [
            sys.executable,
            "scripts/sample.py",
            "--run",
            str(run / "checkpoints" / "last.ckpt"),
            "--prompt",
            "x",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "holds Python objects" in proc.stderr and "Traceback" not in proc.stderr
    # training resume: the damaged (refused) last.ckpt falls back to a valid step checkpoint
    chosen = resolve_ckpt_path("last", run)
    assert Path(chosen).name == "step0000004.ckpt"
    # init_from through train.py
    p = _run_train([*COMMON, "trainer.max_steps=1", f"init_from={evil}"], tmp_path / "init", toy_data)
    assert p.returncode == 2 and "holds Python objects" in p.stderr and "Traceback" not in p.stderr
    legacy = tmp_path / "legacy.pth"
    with open(legacy, "wb") as f:
        pickle.dump({"x": _Marker(marker)}, f)
    with pytest.raises(CorruptFileError):
        load_weights_file(legacy)
    assert not marker.exists()


def test_crafted_official_checkpoints_never_run_code_unless_trusted(tmp_path):
    """DynamiCrafter's official-checkpoint loader (backbone builders, convert script) and the gate
    plot read pickles with the safe loader; only the explicit trust switch unpickles objects."""
    from i2vlab.models.dynamicrafter import build_resampler, load_official_checkpoint

    marker = tmp_path / "PWNED"
    weights = {
        "state_dict": {
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.alpha": torch.ones(1)
        }
    }
    evil = tmp_path / "model.ckpt"
    torch.save({**weights, "payload": _Marker(marker)}, evil)
    with pytest.raises(UnsafeCheckpointError, match="backbone.trust_checkpoint=true"):
        load_official_checkpoint(str(evil))
    with pytest.raises(UnsafeCheckpointError):
        build_resampler("backbone.image_proj_model", {}, pretrained=str(evil))
    for script, args in [
        ("scripts/convert_dynamicrafter.py", ["--ckpt", str(evil), "--out", str(tmp_path / "conv")]),
        ("scripts/plot_lambda.py", [str(evil), "--out", str(tmp_path / "lambda.png")]),
    ]:
        proc = subprocess.run(
            [sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode != 0 and "holds Python objects" in proc.stderr, (script, proc.stderr[-2000:])
        assert not marker.exists(), script
    assert not (tmp_path / "conv").exists() and not (tmp_path / "lambda.png").exists()
    # a file of tensors only loads without trust, and the trust switch does what it says
    plain = tmp_path / "plain.ckpt"
    torch.save(weights, plain)
    assert list(load_official_checkpoint(str(plain))) == list(weights["state_dict"])
    out = load_official_checkpoint(str(evil), trust=True)
    assert marker.exists() and list(out) == list(weights["state_dict"])


# -- keys that become paths --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key", ["../escaped", "../../x", "/abs/path", "a/../../b", "~/home", "", "..", "a\x00b"]
)
def test_keys_that_would_leave_their_folder_are_refused(tmp_path, key):
    with pytest.raises(UnsafePathError):
        safe_child(tmp_path / "out", key, ".mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_keys_inside_the_folder_are_allowed_and_symlink_escapes_are_not(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert safe_child(root, "clip_001", ".mp4") == root.resolve() / "clip_001.mp4"
    assert safe_child(root, "class/clip", ".mp4") == root.resolve() / "class/clip.mp4"
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError, match="symlink"):
        safe_child(root, "link/x", ".mp4")


# -- runs --------------------------------------------------------------------------------------------------
def test_a_run_directory_with_a_run_is_refused_unless_resumed_or_overwritten(trained, tmp_path, toy_data):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "csv" / "version_0" / "metrics.csv").read_text()
    with pytest.raises(RunDirectoryNotEmpty, match="ckpt_path=last.*overwrite=true"):
        train(compose_train(COMMON, run, toy_data))
    assert (run / "csv" / "version_0" / "metrics.csv").read_text() == before  # nothing touched
    train(compose_train([*COMMON, "overwrite=true", "trainer.max_steps=2"], run, toy_data))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert not (run / "checkpoints" / "step0000004.ckpt").exists()  # the old run's files are gone


def test_killed_during_validation_the_validation_is_redone_on_resume(tmp_path, toy_data):
    run = tmp_path / "run"
    args = [*COMMON, "+callbacks.killer._target_=killer.KillInValidation", "+callbacks.killer.step=4"]
    p = _run_train(args, run, toy_data)
    assert p.returncode == -9, p.stderr[-2000:]
    # the step-4 checkpoint waits for its validation: the newest checkpoint is step 2's
    assert not (run / "checkpoints" / "step0000004.ckpt").exists()
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    train(compose_train([*COMMON, "ckpt_path=last"], run, toy_data))
    rows = list(csv.DictReader(open(run / "csv" / "version_0" / "metrics.csv")))
    val_steps = sorted({int(r["step"]) for r in rows if r.get("val/loss")})
    assert val_steps == [1, 3]  # Lightning's step column: validations after steps 2 and 4


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGUSR1"])
def test_preemption_signal_writes_a_checkpoint_and_exits_cleanly(tmp_path, toy_data, sig):
    run = tmp_path / "run"
    args = [
        *COMMON,
        "trainer.max_steps=50",
        "callbacks.model_checkpoint.every_n_train_steps=100",
        "trainer.val_check_interval=100",
        "+callbacks.signal._target_=killer.SignalAtStep",
        "+callbacks.signal.step=3",
        f"+callbacks.signal.signal={sig}",
    ]
    p = _run_train(args, run, toy_data)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "ckpt_path=last" in out and "Traceback" not in out
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert 3 <= ck["global_step"] <= 4
    assert not (run / "export").exists()  # not mistaken for a finished run
    train(compose_train([*COMMON, "trainer.max_steps=6", "ckpt_path=last"], run, toy_data))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6


def test_non_finite_loss_is_skipped_then_stops_naming_step_and_keys(tmp_path, toy_data):
    from i2vlab.training import instantiate_model

    cfg = compose_train(["experiment=smoke", "++method.max_nonfinite_steps=2"], tmp_path, toy_data)
    model = instantiate_model(cfg)
    model.configure_trainable()
    batch = {
        "video": torch.full((1, 8, 3, 32, 32), float("nan")),
        "caption": ["nan clip"],
        "key": ["bad-clip-0007"],
    }
    assert model.training_step(batch, 0) is None  # skipped: no optimizer step
    assert model.training_step(batch, 1) is None
    with pytest.raises(FloatingPointError, match=r"step 0, batch keys \['bad-clip-0007'\]"):
        model.training_step(batch, 2)
    model.nonfinite_loss = "stop"
    model._nonfinite_in_a_row = 0
    with pytest.raises(FloatingPointError, match="nonfinite_loss=stop"):
        model.training_step(batch, 0)


def test_out_of_memory_names_the_batch_and_the_memory_switches(tmp_path, toy_data, monkeypatch):
    import pytorch_lightning as pl

    from i2vlab.training import OutOfMemoryHelp

    def boom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(pl.Trainer, "fit", boom)
    with pytest.raises(OutOfMemoryHelp) as e:
        train(compose_train(COMMON, tmp_path / "run", toy_data))
    msg = str(e.value)
    assert "data.batch_size=2" in msg and "data.num_frames=8" in msg and "gradient_checkpointing" in msg


# -- bad configs --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, key",
    [
        ("data.batch_size=abc", "data.batch_size"),
        ("data.num_frames=0", "data.num_frames"),
        ("trainer.max_steps=abc", "trainer.max_steps"),
        ("optimizer.lr=fast", "optimizer.lr"),
        ("data.frame_stride=[3,1]", "data.frame_stride"),
        ("data.resolution=[30,32]", "data.resolution"),
    ],
)
def test_bad_values_fail_before_anything_is_built_naming_the_key(
    tmp_path, toy_data, override, key, monkeypatch
):
    import i2vlab.training.run as training

    def never(*a, **k):
        raise AssertionError("a model was built before the config was checked")

    monkeypatch.setattr(training, "instantiate_model", never)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        train(compose_train(["experiment=smoke", override], tmp_path, toy_data))


def test_incompatible_method_and_backbone_name_the_backbones_that_fit(tmp_path, toy_data):
    with pytest.raises(ConfigError, match=r"backbone=tiny_svd.*tiny_i2v_adapter"):
        train(compose_train(["experiment=toy_i2v_adapter", "backbone=tiny_svd"], tmp_path, toy_data))


def test_a_missing_mandatory_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.train_shards is required"):
        train(compose_train(["experiment=smoke", "data=webvid"], tmp_path))


@pytest.mark.slow
def test_data_fault_counts_are_summed_over_ranks_and_kept_in_the_checkpoint(tmp_path, toy_data):
    """Two DDP ranks read a shard set with corrupt videos: the logged and checkpointed count is the
    sum of what both ranks skipped (each rank logs its own skips), not one rank's count."""
    import shutil

    import webdataset as wds

    from i2vlab.data.shards import make_sample

    data = tmp_path / "data"
    shutil.copytree(toy_data / "toy" / "val", data / "toy" / "val")
    (data / "toy" / "train").mkdir(parents=True)
    good = list(wds.WebDataset(str(toy_data / "toy" / "train" / "shard-000000.tar"), shardshuffle=False))
    for k in range(2):  # every shard alternates a good and a corrupt video: both ranks meet some
        with wds.TarWriter(str(data / "toy" / "train" / f"shard-{k:06d}.tar")) as sink:
            for i, g in enumerate(good):
                sink.write({k2: v for k2, v in g.items() if not k2.startswith("__") or k2 == "__key__"})
                sink.write(make_sample(f"bad{k}x{i}", b"\x00" * 500, "corrupt", {}))
    args = [
        "experiment=smoke",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "trainer.max_steps=4",
        "trainer.val_check_interval=100",
        "trainer.log_every_n_steps=1",
        "data.num_workers=0",
        "data.batch_size=1",
        "method.validation.num_samples=0",
        "callbacks.model_checkpoint.every_n_train_steps=4",
    ]
    p = _run_train(args, tmp_path / "run", data, timeout=600)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    skipped = out.count("skipping unreadable video")  # both ranks' own warnings
    ck = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    total = ck["VideoDataModule"]["health"]["corrupt"]
    rows = list(csv.DictReader(open(tmp_path / "run" / "csv" / "version_0" / "metrics.csv")))
    logged = max(float(r["data/corrupt"]) for r in rows if r.get("data/corrupt"))
    print("corrupt skipped / checkpointed / logged:", skipped, total, logged)
    assert skipped >= 6 and total == skipped == int(logged), (skipped, total, logged)
