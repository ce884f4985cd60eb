"""The evaluator end to end: inputs (folders, shards, manifests), outputs, skips and errors,
resume from the feature cache, a 2-process run, and the Hydra configs."""

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from eval_helpers import eval_cfg, moving_video, write_set

from i2vlab.evaluation import DEFAULTS, Evaluator
from i2vlab.metrics import MissingWeightsError
from i2vlab.utils.video_io import write_video

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_set(root / "real", 6, num_frames=6, seed=0)
    write_set(root / "gen", 6, num_frames=6, seed=0, noise=0.1)
    return root


def test_end_to_end_all_metrics_and_outputs(sets, tmp_path):
    metrics = [
        "fvd",
        "kvd",
        "fid",
        "pic",
        "clip_temp",
        "clip_first_frame",
        "clip_image",
        "clip_text",
        "flow_score",
        "warping_error",
        "lpips",
        "psnr",
        "ssim",
        "dover",
    ]
    cfg = eval_cfg(
        tmp_path,
        generated=str(sets / "gen"),
        real=str(sets / "real"),
        metrics=metrics,
        plots=True,
        protocol={
            "columns": [{"metric": "dover"}, {"metric": "fvd"}],
            "published": {"rows": {"Paper": {"fvd": 123.4}}},
        },
    )
    res = Evaluator(cfg).run()
    out = Path(cfg["output_dir"])
    for f in (
        "results.json",
        "results.md",
        "per_video.csv",
        "per_frame_consistency.png",
        "flow_over_time.png",
    ):
        assert (out / f).exists(), f
    saved = json.loads((out / "results.json").read_text())
    assert saved["n"]["generated_scored"] == 6 and saved["n"]["real_scored"] == 6
    assert not saved["comparable"] and any("random-init" in n for n in saved["notes"])
    assert saved["metrics"]["fvd"]["n_fake"] == 6 and saved["metrics"]["fid"]["n_fake"] == 24
    assert saved["metrics"]["dover"]["value"] is None and "not computed" in saved["metrics"]["dover"]["error"]
    assert saved["extractors"]["i3d"]["weights_hash"].startswith("random-init")
    assert saved["config"]["num_frames"] == 4 and "git_revision" in saved
    for m in metrics[:-1]:
        assert res["metrics"][m]["value"] is not None, m
    assert res["condition_image_sources"] == {"real_first_frame": 6}
    md = (out / "results.md").read_text()
    assert "NOT COMPARABLE" in md and "| Paper | n/a | 123.4000 |" in md and "not computed" in md
    csv_lines = (out / "per_video.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + 12 and "lpips" in csv_lines[0]
    assert 0.0 < res["metrics"]["psnr"]["value"] < 60


def test_identical_sets_score_zero(sets, tmp_path):
    cfg = eval_cfg(
        tmp_path,
        generated=str(sets / "real"),
        real=str(sets / "real"),
        metrics=["fvd", "warping_error", "lpips"],
    )
    res = Evaluator(cfg).run()
    assert res["metrics"]["fvd"]["value"] == pytest.approx(0, abs=1e-6)
    assert res["metrics"]["lpips"]["value"] == pytest.approx(0, abs=1e-6)


def test_missing_weights_fail_before_reading_videos(tmp_path):
    cfg = eval_cfg(tmp_path, generated=str(tmp_path / "does_not_exist"), allow_random_weights=False)
    with pytest.raises(MissingWeightsError, match="eval.extractors.i3d.weights_path"):
        Evaluator(cfg)


def test_unreadable_short_and_mismatched_videos_are_counted(sets, tmp_path):
    gen = tmp_path / "gen"
    write_set(gen, 3, num_frames=6, seed=0)
    (gen / "v90.mp4").write_bytes(b"not a video at all")
    write_video(gen / "v91.mp4", moving_video(2, 32, 32), fps=8)  # too short for 4 frames
    write_video(gen / "v02.mp4", moving_video(6, 48, 40), fps=8)  # other size than its ground truth
    cfg = eval_cfg(
        tmp_path, generated=str(gen), real=str(sets / "real"), metrics=["fvd", "psnr"], resolution=None
    )
    res = Evaluator(cfg).run()
    sk = res["n"]["skipped"]["generated"]
    assert sk["unreadable"] == 1 and sk["too_short"] == 1 and sk["paired_shape_mismatch"] == 1
    assert res["metrics"]["fvd"]["n_fake"] == 3 and res["metrics"]["psnr"]["n"] == 2
    assert any("v91" in m for m in res["n"]["skip_examples"]["too_short"])
    with pytest.raises(RuntimeError, match="strict"):
        Evaluator({**cfg, "strict": True, "output_dir": str(tmp_path / "o2")}).run()


def test_too_few_videos_gives_clear_error(sets, tmp_path):
    cfg = eval_cfg(
        tmp_path, generated=str(sets / "gen"), real=str(sets / "real"), max_videos=1, metrics=["fvd"]
    )
    res = Evaluator(cfg).run()
    assert res["metrics"]["fvd"]["value"] is None and "need at least" in res["metrics"]["fvd"]["error"]


def test_shards_and_manifest_inputs(sets, tmp_path):
    import webdataset as wds

    shard = tmp_path / "real-000000.tar"
    with wds.TarWriter(str(shard)) as w:
        for i in range(4):
            w.write(
                {
                    "__key__": f"v{i:02d}",
                    "mp4": (sets / "real" / f"v{i:02d}.mp4").read_bytes(),
                    "txt": f"caption {i}",
                }
            )
    cfg = eval_cfg(
        tmp_path,
        generated=str(sets / "gen"),
        real=str(shard),
        metrics=["fvd", "psnr", "clip_text"],
        max_videos=4,
    )
    res = Evaluator(cfg).run()
    assert res["n"]["real_scored"] == 4 and res["metrics"]["psnr"]["n"] == 4
    man = tmp_path / "m.jsonl"
    rows = [
        {
            "generated": str(sets / "gen" / f"v{i:02d}.mp4"),
            "real": str(sets / "real" / f"v{i:02d}.mp4"),
            "prompt": "a prompt",
        }
        for i in range(3)
    ]
    man.write_text("\n".join(json.dumps(r) for r in rows))
    cfg2 = eval_cfg(
        tmp_path, manifest=str(man), metrics=["fvd", "psnr", "clip_text"], output_dir=str(tmp_path / "o2")
    )
    res2 = Evaluator(cfg2).run()
    assert res2["n"]["generated_scored"] == 3 and res2["n"]["real_scored"] == 3
    assert res2["metrics"]["clip_text"]["n"] == 3
    # same generated clips, same features -> the pairing-independent PSNR of v00..v02 agrees
    assert res2["metrics"]["psnr"]["n"] == 3


class _Killed(Exception):
    pass


def test_killed_run_resumes_from_cache_with_identical_results(sets, tmp_path):
    metrics = ["fvd", "kvd", "pic", "flow_score"]
    clean = Evaluator(
        eval_cfg(
            tmp_path,
            generated=str(sets / "gen"),
            real=str(sets / "real"),
            metrics=metrics,
            cache_dir=None,
            output_dir=str(tmp_path / "clean"),
        )
    ).run()
    cfg = eval_cfg(tmp_path, generated=str(sets / "gen"), real=str(sets / "real"), metrics=metrics)
    ev = Evaluator(cfg)

    def die(i):
        if i == 1:
            raise _Killed

    ev.on_batch_end = die
    with pytest.raises(_Killed):
        ev.run()
    assert ev.cache.misses > 0
    ev2 = Evaluator(cfg)
    calls = {"n": 0}
    i3d = ev2.extractors["i3d"]
    orig = i3d.forward

    def counting(x):
        calls["n"] += x.shape[0]
        return orig(x)

    i3d.forward = counting
    res = ev2.run()
    assert ev2.cache.hits >= 2 * 2  # the first two batches of 2 generated videos were cached
    assert calls["n"] == 12 - 4  # 6 generated + 6 real clips, 4 of them extracted before the kill
    for m in metrics:
        assert res["metrics"][m]["value"] == pytest.approx(clean["metrics"][m]["value"], rel=1e-9, abs=1e-12)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank, world, port, cfg, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        res = Evaluator(cfg).run()
        if rank == 0:
            Path(out).write_text(
                json.dumps(
                    {m: v["value"] for m, v in res["metrics"].items()}
                    | {
                        "n": res["n"]["generated_scored"],
                        "world": res["world_size"],
                        "hits": res["cache"]["hits"],
                    }
                )
            )
    finally:
        dist.destroy_process_group()


def test_two_process_run_equals_single_process(sets, tmp_path):
    # Both runs share one feature cache, so they see bit-identical features (float32 extraction in
    # other batch shapes differs at ~1e-7); what is compared is the split, the gathering and the
    # torchmetrics reduction across ranks.
    metrics = ["fvd", "kvd", "psnr", "clip_temp"]
    base = dict(
        generated=str(sets / "gen"),
        real=str(sets / "real"),
        metrics=metrics,
        cache_dir=str(tmp_path / "cache"),
        max_videos=5,
    )
    single = Evaluator(eval_cfg(tmp_path, **base, output_dir=str(tmp_path / "one"))).run()
    assert single["cache"]["hits"] == 0
    out = tmp_path / "two.json"
    cfg = eval_cfg(tmp_path, **base, output_dir=str(tmp_path / "two"))
    mp.spawn(_dist_worker, args=(2, _free_port(), cfg, str(out)), nprocs=2, join=True)
    two = json.loads(out.read_text())
    assert two["world"] == 2 and two["n"] == 5 and two["hits"] > 0
    for m in metrics:
        # float64 sums added in another order; FVD subtracts traces ~1e3x larger than its value
        tol = 1e-6 if m == "fvd" else 1e-9
        assert two[m] == pytest.approx(single["metrics"][m]["value"], rel=tol, abs=1e-12), m
    rows = (tmp_path / "two" / "per_video.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 + 6


def test_hydra_configs_compose_and_base_matches_defaults():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = OmegaConf.to_container(compose("evaluate", overrides=["eval=base"]).eval)

        def keys(d, prefix=""):
            out = set()
            for k, v in d.items():
                if isinstance(v, dict) and k not in ("protocol", "tiny", "kwargs"):
                    out |= keys(v, f"{prefix}{k}.")
                else:
                    out.add(prefix + k)
            return out

        assert keys(base) == keys(DEFAULTS)
        for name in (
            "smoke",
            "dynamicrafter_ucf101",
            "dynamicrafter_msrvtt",
            "i2v_adapter",
            "inbetween_davis",
            "inbetween_pexels",
        ):
            e = OmegaConf.to_container(compose("evaluate", overrides=[f"eval={name}"]).eval, resolve=True)
            assert e["name"] == name
            assert keys(e) == keys(DEFAULTS), name
            for col in e["protocol"].get("columns", []):
                assert col["metric"] in e["metrics"], (name, col)
        dc = OmegaConf.to_container(compose("evaluate", overrides=["eval=dynamicrafter_ucf101"]).eval)
        assert (
            dc["num_frames"],
            dc["real_frame_stride"],
            dc["resolution"],
            dc["protocol"]["num_samples"],
        ) == (16, 3, [256, 256], 2048)
        ia = OmegaConf.to_container(compose("evaluate", overrides=["eval=i2v_adapter"]).eval)
        assert ia["protocol"]["published"]["rows"]["I2V-Adapter SD1.5"]["clip_temp"] == 0.9379


@pytest.mark.slow
def test_evaluate_py_smoke_cli(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            str(root / "evaluate.py"),
            "eval=smoke",
            f"hydra.run.dir={out}",
            f"eval.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["n"]["generated_scored"] == 6 and all(v["value"] is not None for v in res["metrics"].values())
    assert (out / "results.md").exists() and (out / "per_video.csv").exists()


class _RecordingMethod(torch.nn.Module):
    """Test double for the module returned by i2vlab.sampling.load_method: records its calls and
    returns moving textures, so the generate-then-score plumbing is checked without training."""

    calls: list = []

    def sample(self, prompts, images, num_frames, seed, **kw):
        self.calls.append(
            (list(prompts), None if images is None else tuple(images.shape), num_frames, seed, kw)
        )
        return torch.stack(
            [moving_video(num_frames, 32, 32, dx=1, seed=seed + i) for i in range(len(prompts))]
        )


def test_generate_then_score(sets, tmp_path, monkeypatch):
    import i2vlab.sampling

    seen = {}

    def fake_load(path):
        seen["path"] = path
        return _RecordingMethod()

    monkeypatch.setattr(i2vlab.sampling, "load_method", fake_load)
    from PIL import Image

    img = tmp_path / "cond.png"
    Image.fromarray(((moving_video(1, 32, 32)[0].permute(1, 2, 0) + 1) * 127.5).byte().numpy()).save(img)
    plist = tmp_path / "prompts.csv"
    plist.write_text("key,prompt,image\n" + "\n".join(f"s{i},prompt {i},{img}" for i in range(3)))
    _RecordingMethod.calls = []
    cfg = eval_cfg(
        tmp_path,
        real=str(sets / "real"),
        metrics=["fvd", "clip_image"],
        condition_image="manifest",
        generate={
            "checkpoint": "/runs/x",
            "prompts": str(plist),
            "num_frames": 5,
            "batch_size": 2,
            "kwargs": {"guidance_scale": 2.0},
        },
    )
    res = Evaluator(cfg).run()
    assert seen["path"] == "/runs/x"
    assert [c[0] for c in _RecordingMethod.calls] == [["prompt 0", "prompt 1"], ["prompt 2"]]
    assert _RecordingMethod.calls[0][1] == (2, 3, 32, 32) and _RecordingMethod.calls[0][2] == 5
    assert _RecordingMethod.calls[0][4] == {"guidance_scale": 2.0}
    assert sorted(p.name for p in (tmp_path / "out" / "generated").glob("*.mp4")) == [
        "s0.mp4",
        "s1.mp4",
        "s2.mp4",
    ]
    assert res["n"]["generated_scored"] == 3 and res["condition_image_sources"] == {"image_file": 3}
    assert res["metrics"]["fvd"]["value"] is not None
