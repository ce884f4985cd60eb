"""The evaluator end to end: values against a direct computation, inputs (folders, shards, manifests),
outputs, skips and errors, resume from the feature cache, independence from batch size and cache
state, a 2-process run, the registry, and the Hydra configs (one defaults source)."""

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import with_tests_on_path
from eval_helpers import direct_metrics, eval_cfg, moving_video, write_set

from i2vlab.evaluation import DEFAULTS, METRICS, Evaluator, NothingScoredError, load_clip
from i2vlab.evaluation.inputs import collect_videos
from i2vlab.metrics import MissingWeightsError
from i2vlab.utils.video_io import write_video

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
ALL = ["fvd", "kvd", "fid", "pic", "clip_temp", "clip_first_frame", "clip_image", "clip_text", "flow_score",
       "warping_error", "lpips", "psnr", "ssim", "dover"]  # fmt: skip


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_set(root / "real", 6, num_frames=6, seed=0)
    write_set(root / "gen", 6, num_frames=6, seed=0, noise=0.1)
    return root


def _decoded(folder: Path, cfg: dict) -> dict:
    refs, _ = collect_videos(str(folder))
    return {r.key: load_clip(r, cfg["num_frames"], 1, 0, cfg["resolution"]) for r in refs}


def test_end_to_end_values_equal_a_direct_computation(sets, tmp_path):
    """Every metric through the whole evaluator (decoding workers, cache, batched fixed-size calls, ordered
    updates) equals the metric computed directly from the decoded clips, one video per extractor call."""
    cfg = eval_cfg(tmp_path, generated=str(sets / "gen"), real=str(sets / "real"), metrics=ALL, plots=True,
                   num_workers=1, protocol={"columns": [{"metric": "dover"}, {"metric": "fvd"}],
                                            "published": {"rows": {"Paper": {"fvd": 123.4}}}})  # fmt: skip
    ev = Evaluator(cfg)
    res = ev.run()
    c = ev.cfg
    gen, real = _decoded(sets / "gen", c), _decoded(sets / "real", c)
    prompts = {k: f"prompt number {int(k[1:])}" for k in gen}
    ref = direct_metrics(ev, gen, real, prompts)
    assert set(ref) == set(ALL) - {"dover"}
    for m, want in ref.items():
        got = res["metrics"][m]["value"]
        # features come from other batch shapes (float32 round-off ~1e-7); FVD/FID subtract traces larger
        # than their value, KVD sums kernel terms of both signs: looser relative tolerances there;
        # measured: FVD 1.0e-6, KVD 2.1e-6, FID 3.8e-7, LPIPS 1.7e-7, the others <= 2e-16
        tol = {"fvd": 2e-5, "kvd": 2e-5, "fid": 1e-5}.get(m, 1e-6)
        assert got == pytest.approx(want, rel=tol, abs=1e-9), (m, got, want)
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
    assert saved["metrics"]["fvd"]["n_fake"] == 6 and saved["metrics"]["fid"]["n_fake"] == 24
    assert saved["metrics"]["fid"]["trace"].startswith("sample space")  # 24 frames < 2048-d
    assert saved["metrics"]["dover"]["value"] is None and "not computed" in saved["metrics"]["dover"]["error"]
    assert not saved["comparable"] and any("random-init" in n for n in saved["notes"])
    assert saved["extractors"]["i3d"]["weights_hash"].startswith("random-init")
    assert saved["config"]["num_frames"] == 4 and saved["git_revision"]
    assert res["condition_image_sources"] == {"real_first_frame": 6}
    md = (out / "results.md").read_text()
    assert "NOT COMPARABLE" in md and "| Paper | n/a | 123.4000 |" in md and "not computed" in md
    rows = (out / "per_video.csv").read_text().splitlines()
    assert len(rows) == 1 + 12 and "lpips" in rows[0]
    import csv

    from i2vlab.metrics import functional as Fm

    v00 = next(
        r
        for r in csv.DictReader(open(out / "per_video.csv"))
        if r["key"] == "v00" and r["role"] == "generated"
    )
    assert float(v00["psnr"]) == pytest.approx(
        float(Fm.psnr_per_frame(gen["v00"], real["v00"]).mean()), rel=1e-12
    )


def test_identical_sets_score_zero(sets, tmp_path):
    cfg = eval_cfg(tmp_path, generated=str(sets / "real"), real=str(sets / "real"),
                   metrics=["fvd", "fid", "warping_error", "lpips"])  # fmt: skip
    res = Evaluator(cfg).run()
    for m in ("fvd", "fid", "lpips"):
        assert res["metrics"][m]["value"] == pytest.approx(0, abs=1e-6), m


def test_missing_weights_fail_before_reading_videos(tmp_path):
    cfg = eval_cfg(tmp_path, generated=str(tmp_path / "does_not_exist"), allow_random_weights=False)
    with pytest.raises(MissingWeightsError, match="eval.extractors.i3d.weights_path"):
        Evaluator(cfg)


def test_rejected_videos_are_counted_and_scored_ones_are_not_called_skipped(sets, tmp_path, caplog):
    gen = tmp_path / "gen"
    write_set(gen, 3, num_frames=6, seed=0)
    (gen / "v90.mp4").write_bytes(b"not a video at all")
    write_video(gen / "v91.mp4", moving_video(2, 32, 32), fps=8)  # too short for 4 frames
    write_video(gen / "v02.mp4", moving_video(6, 48, 40), fps=8)  # other size than its ground truth
    cfg = eval_cfg(
        tmp_path, generated=str(gen), real=str(sets / "real"), metrics=["fvd", "psnr"], resolution=None
    )
    with caplog.at_level(logging.INFO, logger="i2vlab.evaluation"):
        res = Evaluator(cfg).run()
    n = res["n"]
    assert n["skipped"]["generated"] == {"unreadable": 1, "too_short": 1}
    assert n["partially_scored"] == {"paired_shape_mismatch": 1} and n["generated_scored"] == 3
    assert res["metrics"]["fvd"]["n_fake"] == 3 and res["metrics"]["psnr"]["n"] == 2
    assert any("v91" in m for m in n["skip_examples"]["too_short"])
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2 and not any("v02" in m for m in skipped)  # v02 was scored (FVD)
    assert any("v02 scored, but psnr not computed" in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="strict"):
        Evaluator({**cfg, "strict": True, "output_dir": str(tmp_path / "o2")}).run()


def test_condition_image_from_a_real_clip_of_another_size_or_a_broken_one(tmp_path):
    """auto: the paired real clip's first frame, resized to the generated clip's size (native resolution);
    when that real video is unreadable, the generated first frame, keyed as such in the cache."""
    write_set(tmp_path / "gen", 3, num_frames=6, size=(32, 32), noise=0.1)
    write_set(tmp_path / "real", 3, num_frames=6, size=(48, 40))
    (tmp_path / "real" / "v02.mp4").write_bytes(b"broken")
    base = {"generated": str(tmp_path / "gen"), "real": str(tmp_path / "real"), "resolution": None,
            "metrics": ["clip_image", "pic"]}  # fmt: skip
    res = Evaluator(eval_cfg(tmp_path, **base)).run()
    assert res["condition_image_sources"] == {"real_first_frame": 2, "generated_first_frame": 1}
    again = Evaluator(eval_cfg(tmp_path, **base, output_dir=str(tmp_path / "o2"))).run()  # from the cache
    assert again["cache"]["misses"] == 0 and again["metrics"] == res["metrics"]
    gen_only = Evaluator(eval_cfg(tmp_path, **{**base, "real": None}, max_videos=3, cache_dir=None,
                                  condition_image="generated_first_frame", output_dir=str(tmp_path / "o3"))).run()  # fmt: skip
    import csv

    rows = {r["key"]: r for r in csv.DictReader(open(tmp_path / "out" / "per_video.csv"))}
    ref = {r["key"]: r for r in csv.DictReader(open(tmp_path / "o3" / "per_video.csv"))}
    assert (
        rows["v02"]["clip_image"] == ref["v02"]["clip_image"]
        and rows["v00"]["clip_image"] != ref["v00"]["clip_image"]
    )
    assert gen_only["condition_image_sources"] == {"generated_first_frame": 3}


def test_too_few_videos_gives_clear_error(sets, tmp_path):
    cfg = eval_cfg(
        tmp_path, generated=str(sets / "gen"), real=str(sets / "real"), max_videos=1, metrics=["fvd"]
    )
    res = Evaluator(cfg).run()
    assert res["metrics"]["fvd"]["value"] is None and "need at least" in res["metrics"]["fvd"]["error"]


def test_nothing_scored_is_an_error_naming_the_reason(sets, tmp_path):
    gen = tmp_path / "bad"
    gen.mkdir()
    for i in range(3):
        (gen / f"x{i}.mp4").write_bytes(b"garbage")
    cfg = eval_cfg(tmp_path, generated=str(gen), real=str(sets / "real"), metrics=["fvd"])
    with pytest.raises(NothingScoredError, match=r"all 3 listed were rejected \(unreadable: 3"):
        Evaluator(cfg).run()
    saved = json.loads((Path(cfg["output_dir"]) / "results.json").read_text())  # still written, for diagnosis
    assert saved["n"]["skipped"]["generated"] == {"unreadable": 3}


def test_shards_and_manifest_inputs(sets, tmp_path):
    """The same videos as shard members, files and manifest rows give the same values; shard captions are
    the prompts; manifest pairing drives the paired metrics."""
    import webdataset as wds

    shard = tmp_path / "real-000000.tar"
    with wds.TarWriter(str(shard)) as w:
        for i in range(4):
            w.write({"__key__": f"v{i:02d}", "mp4": (sets / "real" / f"v{i:02d}.mp4").read_bytes(),
                     "txt": f"caption {i}"})  # fmt: skip
    metrics = ["fvd", "psnr", "clip_text"]
    common = {"generated": str(sets / "gen"), "metrics": metrics, "max_videos": 4, "cache_dir": None}
    ev = Evaluator(eval_cfg(tmp_path, **common, real=str(shard), output_dir=str(tmp_path / "o1")))
    res = ev.run()
    real_dir = tmp_path / "real4"
    real_dir.mkdir()
    for i in range(4):
        (real_dir / f"v{i:02d}.mp4").write_bytes((sets / "real" / f"v{i:02d}.mp4").read_bytes())
        (real_dir / f"v{i:02d}.txt").write_text(f"caption {i}")
    res_dir = Evaluator(
        eval_cfg(tmp_path, **common, real=str(real_dir), output_dir=str(tmp_path / "o2"))
    ).run()
    assert res["n"]["real_scored"] == 4 and res["metrics"]["psnr"]["n"] == 4
    for m in metrics:  # same bytes, same deterministic features: the same bits
        assert res["metrics"][m]["value"] == res_dir["metrics"][m]["value"], m
    gen, real = _decoded(sets / "gen", ev.cfg), _decoded(real_dir, ev.cfg)
    gen = {k: gen[k] for k in sorted(gen)[:4]}
    ref = direct_metrics(ev, gen, real, {k: f"caption {int(k[1:])}" for k in gen})  # shard captions win
    assert res["metrics"]["clip_text"]["value"] == pytest.approx(ref["clip_text"], rel=1e-5)
    assert res["metrics"]["psnr"]["value"] == pytest.approx(ref["psnr"], rel=1e-9)
    man = tmp_path / "m.jsonl"
    pairs = [(0, 0), (1, 2), (2, 1)]  # generated v01 paired with real v02, ...
    man.write_text("\n".join(json.dumps({"generated": str(sets / "gen" / f"v{g:02d}.mp4"),
                                         "real": str(sets / "real" / f"v{r:02d}.mp4"), "prompt": "a prompt"})
                             for g, r in pairs))  # fmt: skip
    ev3 = Evaluator(eval_cfg(tmp_path, manifest=str(man), metrics=metrics, output_dir=str(tmp_path / "o3")))
    res3 = ev3.run()
    assert res3["n"]["generated_scored"] == 3 and res3["n"]["real_scored"] == 3
    allgen, allreal = _decoded(sets / "gen", ev3.cfg), _decoded(sets / "real", ev3.cfg)
    from i2vlab.metrics import functional as Fm

    psnr = [float(Fm.psnr_per_frame(allgen[f"v{g:02d}"], allreal[f"v{r:02d}"]).mean()) for g, r in pairs]
    assert res3["metrics"]["psnr"]["value"] == pytest.approx(sum(psnr) / 3, rel=1e-9)
    import csv

    rows = {
        r["key"]: r
        for r in csv.DictReader(open(tmp_path / "o3" / "per_video.csv"))
        if r["role"] == "generated"
    }
    assert float(rows["v01"]["psnr"]) == pytest.approx(psnr[1], rel=1e-12)


def test_clip_text_scale_is_applied(sets, tmp_path):
    """eval.clip_text.scale multiplies CLIP-SIM (it was silently ignored: the evaluator fed precomputed
    values that bypassed the metric's scale)."""
    base = {
        "generated": str(sets / "gen"),
        "real": str(sets / "real"),
        "metrics": ["clip_text"],
        "max_videos": 3,
    }
    one = Evaluator(eval_cfg(tmp_path, **base, output_dir=str(tmp_path / "a"))).run()
    hundred = Evaluator(
        eval_cfg(tmp_path, **base, clip_text={"scale": 100.0}, output_dir=str(tmp_path / "b"))
    ).run()
    assert hundred["metrics"]["clip_text"]["value"] == pytest.approx(
        100 * one["metrics"]["clip_text"]["value"]
    )


class _Killed(Exception):
    pass


def test_killed_run_resumes_from_cache_with_identical_results(sets, tmp_path):
    metrics = ["fvd", "kvd", "pic", "flow_score"]
    from eval_helpers import TINY_EXTRACTORS

    small = {"i3d": {**TINY_EXTRACTORS["i3d"], "forward_batch": 2}, "dreamsim": {**TINY_EXTRACTORS["dreamsim"],
             "forward_batch": 5}, "flow": {"forward_batch": 3}}  # one call per batch of 2 videos  # fmt: skip
    base = {"generated": str(sets / "gen"), "real": str(sets / "real"), "metrics": metrics,
            "extractors": {**TINY_EXTRACTORS, **small}}  # fmt: skip
    clean = Evaluator(eval_cfg(tmp_path, **base, cache_dir=None, output_dir=str(tmp_path / "clean"))).run()
    cfg = eval_cfg(tmp_path, **base)
    ev = Evaluator(cfg)

    def die(i):
        if i == 2:  # after 3 decoding batches of 2: the 6 generated videos' features are in the cache
            raise _Killed

    ev.on_batch_end = die
    with pytest.raises(_Killed):
        ev.run()
    ev2 = Evaluator(cfg)
    calls = {"n": 0}
    i3d = ev2.extractors["i3d"]
    orig = i3d.forward

    def counting(x):
        calls["n"] += 1
        return orig(x)

    i3d.forward = counting
    res = ev2.run()
    assert res["cache"]["hits"] == 6 * 3 and res["cache"]["events"]["absent"] == 6  # 6 real x i3d
    assert calls["n"] == 3  # only the 6 real clips, 2 per call
    for m in metrics:
        assert res["metrics"][m]["value"] == clean["metrics"][m]["value"], m  # bit-identical


def test_results_do_not_depend_on_batch_size_or_cache_state(sets, tmp_path):
    """Bit-identical values whatever eval.batch_size and however the cache was filled (part of it by an
    earlier run over a subset with another batch size), and equal to a run without cache."""
    metrics = ["fvd", "kvd", "fid", "clip_temp", "clip_image", "warping_error", "lpips"]
    base = {"generated": str(sets / "gen"), "real": str(sets / "real"), "metrics": metrics}
    ref = Evaluator(
        eval_cfg(tmp_path, **base, batch_size=1, cache_dir=None, output_dir=str(tmp_path / "r"))
    ).run()
    cache = str(tmp_path / "shared")
    Evaluator(eval_cfg(tmp_path, **base, batch_size=1, max_videos=2, max_real_videos=3, cache_dir=cache,
                       output_dir=str(tmp_path / "part"))).run()  # fmt: skip
    mixed = Evaluator(
        eval_cfg(tmp_path, **base, batch_size=3, cache_dir=cache, output_dir=str(tmp_path / "m"))
    ).run()
    assert mixed["cache"]["hits"] > 0 and mixed["cache"]["events"]["absent"] > 0
    for m in metrics:
        assert mixed["metrics"][m]["value"] == ref["metrics"][m]["value"], m


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
            Path(out).write_text(json.dumps({m: v["value"] for m, v in res["metrics"].items()}
                                            | {"n": res["n"]["generated_scored"], "world": res["world_size"]}))  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_two_process_run_equals_single_process(sets, tmp_path):
    # No shared cache: fixed-shape extractor calls give the same features in both runs; what differs is the
    # split, the gathering and torchmetrics' reduction across ranks (float64 sums in another order).
    metrics = ["fvd", "kvd", "fid", "psnr", "clip_temp"]
    base = dict(generated=str(sets / "gen"), real=str(sets / "real"), metrics=metrics, max_videos=5)
    single = Evaluator(eval_cfg(tmp_path, **base, cache_dir=None, output_dir=str(tmp_path / "one"))).run()
    out = tmp_path / "two.json"
    cfg = eval_cfg(tmp_path, **base, cache_dir=str(tmp_path / "c2"), output_dir=str(tmp_path / "two"))
    mp.spawn(_dist_worker, args=(2, _free_port(), cfg, str(out)), nprocs=2, join=True)
    two = json.loads(out.read_text())
    assert two["world"] == 2 and two["n"] == 5
    for m in metrics:
        tol = 1e-9 if m in ("psnr", "clip_temp", "kvd") else 1e-7  # FD: traces ~1e3x its value
        assert two[m] == pytest.approx(single["metrics"][m]["value"], rel=tol, abs=1e-12), m
    rows = (tmp_path / "two" / "per_video.csv").read_text().splitlines()
    assert len(rows) == 1 + 5 + 6


def test_a_new_metric_is_one_registry_entry(sets, tmp_path, monkeypatch):
    """Adding a metric: one MetricSpec (here the mean flow magnitude of the first pair, on the flow feature)."""
    from i2vlab.evaluation.registry import MetricSpec, per_video
    from i2vlab.metrics import PerVideoMean

    spec = MetricSpec("first_pair_flow", "first-pair flow↑", "flow", lambda c: PerVideoMean(),
                      per_video(lambda f, c: f["flow"][:1]), curve_x0=1)  # fmt: skip
    monkeypatch.setitem(METRICS, spec.name, spec)
    cfg = eval_cfg(tmp_path, generated=str(sets / "gen"), metrics=["flow_score", "first_pair_flow"])
    res = Evaluator(cfg).run()
    ev = Evaluator(cfg)
    gen = _decoded(sets / "gen", ev.cfg)
    from i2vlab.metrics import functional as Fm

    want = sum(float(Fm.flow_magnitudes(v, ev.extractors["flow"])[0]) for v in gen.values()) / len(gen)
    assert res["metrics"]["first_pair_flow"]["value"] == pytest.approx(want, rel=1e-9)


def test_evaluation_imports_neither_lightning_nor_methods(sets, tmp_path):
    code = (
        "import sys, json; from i2vlab.evaluation import Evaluator; import i2vlab.metrics\n"
        f"cfg = json.loads({json.dumps(json.dumps(eval_cfg(tmp_path, generated=str(sets / 'gen'), metrics=['psnr', 'clip_temp'], real=str(sets / 'real'))))})\n"
        "Evaluator(cfg).run()\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning') or m.startswith(('i2vlab.methods', 'i2vlab.training', 'i2vlab.sampling'))]\n"
        "print(json.dumps(bad))"
    )  # fmt: skip
    env = with_tests_on_path()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == []


# ------------------------------------------------------------------------------------------- configs
def _compose(overrides, cwd=None):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=list(overrides), return_hydra_config=True)
        return OmegaConf.to_container(cfg.eval, resolve=True), cfg.hydra.run.dir


def _keys(d, prefix=""):
    out = set()
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("protocol", "tiny", "kwargs"):
            out |= _keys(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


def test_hydra_configs_compose_on_the_one_schema():
    base, _ = _compose(["eval=base"])
    assert base == DEFAULTS  # base.yaml holds no value of its own: the structured config is the source
    for name in ("smoke", "dynamicrafter_ucf101", "dynamicrafter_msrvtt", "i2v_adapter", "inbetween_davis",
                 "inbetween_pexels", "dynamicrafter_motion_control"):  # fmt: skip
        e, _ = _compose([f"eval={name}"])
        assert e["name"] == name and _keys(e) == _keys(DEFAULTS), name
        for col in e["protocol"].get("columns", []):
            assert col["metric"] in e["metrics"] and col["metric"] in METRICS, (name, col)
    dc, _ = _compose(["eval=dynamicrafter_ucf101"])
    assert (dc["num_frames"], dc["real_frame_stride"], dc["resolution"], dc["protocol"]["num_samples"]) == (
        16, 3, [256, 256], 2048)  # fmt: skip
    ia, _ = _compose(["eval=i2v_adapter"])
    assert ia["protocol"]["published"]["rows"]["I2V-Adapter SD1.5"]["clip_temp"] == 0.9379
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):  # a typo is an error, not a silently ignored key
        _compose(["eval=smoke", "eval.extractors.i3d.weigths_path=/x"])
    with pytest.raises(ValueError, match=r"eval\.num_frames"):
        Evaluator({"num_frames": "many", "output_dir": "/tmp/x"})


def test_default_paths_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    e, run_dir = _compose(["eval=smoke"])
    assert e["cache_dir"] == str(ROOT / "outputs" / "eval_cache" / "smoke")
    assert e["synthetic"]["toy_real"] == str(ROOT / "data" / "toy" / "val")
    assert run_dir.startswith(str(ROOT / "outputs" / "eval" / "smoke"))
    assert DEFAULTS["cache_dir"] == str(ROOT / "outputs" / "eval_cache")


def test_smoke_scores_given_videos_against_the_toy_shards(sets, tmp_path):
    """eval=smoke with eval.generated: the real set is the toy shards (eval.synthetic.toy_real), not six
    evaluator-made videos; without shards it falls back to the synthetic set and says so."""
    import webdataset as wds

    toy = tmp_path / "toy" / "val"
    toy.mkdir(parents=True)
    with wds.TarWriter(str(toy / "shard-000000.tar")) as w:
        for i in range(5):
            w.write({"__key__": f"t{i}", "mp4": (sets / "real" / f"v{i:02d}.mp4").read_bytes(), "txt": "x"})
    e, _ = _compose(["eval=smoke", f"eval.generated={sets / 'gen'}", f"eval.output_dir={tmp_path / 'out'}",
                     f"eval.cache_dir={tmp_path / 'c'}", f"eval.synthetic.toy_real={toy}", "eval.plots=false",
                     "eval.metrics=[fvd,psnr]", "eval.num_frames=4"])  # fmt: skip
    res = Evaluator(e).run()
    assert res["n"]["real_listed"] == 5 and res["n"]["generated_listed"] == 6
    e2 = {
        **e,
        "synthetic": {**e["synthetic"], "toy_real": str(tmp_path / "none")},
        "output_dir": str(tmp_path / "o2"),
    }
    res2 = Evaluator(e2).run()
    assert res2["n"]["real_listed"] == 6 and any("synthetic" in n for n in res2["notes"])


# ------------------------------------------------------------------------------------------- CLI
def _cli(args, cwd, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def test_evaluate_py_exits_2_naming_why_nothing_was_scored(tmp_path):
    gen = tmp_path / "bad"
    gen.mkdir()
    (gen / "a.mp4").write_bytes(b"garbage")
    r = _cli(["eval=smoke", f"eval.generated={gen}", f"hydra.run.dir={tmp_path / 'run'}", "eval.cache_dir=null",
              "eval.metrics=[clip_temp,dover]", "eval.plots=false"], tmp_path)  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "no generated video was scored" in r.stderr and "unreadable: 1" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_evaluate_py_smoke_cli(tmp_path):
    out = tmp_path / "run"
    r = _cli(["eval=smoke", f"hydra.run.dir={out}", f"eval.cache_dir={tmp_path / 'cache'}",
              "eval.extractors.dover.tiny=null"], tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["n"]["generated_scored"] == 6
    assert res["metrics"]["dover"]["value"] is None
    assert all(v["value"] is not None for m, v in res["metrics"].items() if m != "dover")
    log = r.stdout + r.stderr
    assert "dover" in log and "not computed: DoverVQA is not computed" in log  # why, on the console
    assert (out / "results.md").exists() and (out / "per_video.csv").exists()
