"""Generate-then-score: one sampling call per video seeded by (seed, key), so videos are identical
whatever else is generated and after a killed-and-resumed generation; keys cannot leave the output folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import FakeGenerator, eval_cfg, moving_video, write_set

import i2vlab.evaluation.generate as G
from i2vlab.evaluation import Evaluator
from i2vlab.utils.safe_load import UnsafePathError
from i2vlab.utils.seeding import derive_seed

TESTS = Path(__file__).resolve().parent


def _files(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def cond_image(tmp_path):
    from PIL import Image

    img = tmp_path / "cond.png"
    Image.fromarray(((moving_video(1, 32, 32)[0].permute(1, 2, 0) + 1) * 127.5).byte().numpy()).save(img)
    return img


def _plist(tmp_path: Path, keys, image=None, name="prompts.csv") -> Path:
    p = tmp_path / name
    p.write_text("key,prompt,image\n" + "\n".join(f"{k},prompt {k},{image or ''}" for k in keys))
    return p


def test_generate_then_score_one_call_per_video_seeded_by_key(tmp_path, monkeypatch, cond_image):
    import i2vlab.pipelines

    gen, seen = FakeGenerator(), {}

    def fake_load(path):
        seen["path"] = path
        return gen  # a pipeline: gen(prompts, images=..., num_frames=..., seed=..., **opts)

    monkeypatch.setattr(i2vlab.pipelines, "load_pipeline", fake_load)  # load_generator's one call
    write_set(tmp_path / "real", 3, num_frames=6)
    cfg = eval_cfg(tmp_path, real=str(tmp_path / "real"), metrics=["fvd", "clip_image"], condition_image="manifest",
                   generate={"checkpoint": "/runs/x", "prompts": str(_plist(tmp_path, ["s0", "s1", "s2"], cond_image)),
                             "num_frames": 5, "seed": 7, "kwargs": {"guidance_scale": 2.0}})  # fmt: skip
    res = Evaluator(cfg).run()
    assert seen["path"] == "/runs/x"
    assert [c["prompts"] for c in gen.calls] == [["prompt s0"], ["prompt s1"], ["prompt s2"]]
    assert [c["seed"] for c in gen.calls] == [derive_seed(7, k) for k in ("s0", "s1", "s2")]
    assert gen.calls[0]["images"] == (1, 3, 32, 32) and gen.calls[0]["num_frames"] == 5
    assert gen.calls[0]["opts"] == {"guidance_scale": 2.0}
    out = tmp_path / "out" / "generated"
    assert sorted(p.name for p in out.glob("*.mp4")) == ["s0.mp4", "s1.mp4", "s2.mp4"]
    assert json.loads((out / "generation.json").read_text())["seeding"] == "derive_seed(seed, key)"
    assert res["n"]["generated_scored"] == 3 and res["condition_image_sources"] == {"image_file": 3}
    assert res["metrics"]["fvd"]["value"] is not None


def _generate(tmp_path, out, keys, gen, name="prompts.csv", **over):
    cfg = {"checkpoint": "x", "prompts": str(_plist(tmp_path, keys, name=name)), "num_frames": 6, "seed": 3,
           "fps": 8.0, "kwargs": {}, **over}  # fmt: skip
    return G.generate_videos(cfg, out, None)


def test_videos_do_not_depend_on_what_else_is_generated(tmp_path, monkeypatch):
    gens = []
    monkeypatch.setattr(G, "load_generator", lambda path: gens.append(FakeGenerator()) or gens[-1])
    _generate(tmp_path, tmp_path / "a", ["k0", "k1", "k2"], None)
    _generate(tmp_path, tmp_path / "b", ["k2", "k9", "k0"], None, name="other.csv")
    for k in ("k0", "k2"):
        assert (tmp_path / "a/generated" / f"{k}.mp4").read_bytes() == (
            tmp_path / "b/generated" / f"{k}.mp4"
        ).read_bytes()
    assert (tmp_path / "a/generated/k0.mp4").read_bytes() != (tmp_path / "a/generated/k1.mp4").read_bytes()


_CHILD = """
import sys, json
sys.path.insert(0, {tests!r})
from eval_helpers import FakeGenerator
import i2vlab.evaluation.generate as G
G.load_generator = lambda path: FakeGenerator(kill_at=3)
G.generate_videos(json.loads({cfg!r}), {out!r}, None)
"""


def test_killed_generation_resumes_to_identical_videos(tmp_path, monkeypatch):
    keys = [f"v{i}" for i in range(5)]
    plist = _plist(tmp_path, keys)
    cfg = {"checkpoint": "x", "prompts": str(plist), "num_frames": 6, "seed": 11, "fps": 8.0, "kwargs": {}}
    clean = FakeGenerator()
    monkeypatch.setattr(G, "load_generator", lambda path: clean)
    G.generate_videos(cfg, tmp_path / "clean", None)
    # the same generation in a process that is SIGKILLed while sampling its third video
    code = _CHILD.format(tests=str(TESTS), cfg=json.dumps(cfg), out=str(tmp_path / "run"))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr[-2000:]
    done = sorted(p.name for p in (tmp_path / "run/generated").glob("*.mp4"))
    assert done == ["v0.mp4", "v1.mp4"]  # two written whole, the third never written
    resumed = FakeGenerator()
    monkeypatch.setattr(G, "load_generator", lambda path: resumed)
    G.generate_videos(cfg, tmp_path / "run", None)
    assert [c["prompts"] for c in resumed.calls] == [["prompt v2"], ["prompt v3"], ["prompt v4"]]
    for k in keys:
        a, b = (tmp_path / d / "generated" / f"{k}.mp4" for d in ("clean", "run"))
        assert a.read_bytes() == b.read_bytes(), k
    with pytest.raises(G.GenerationMismatchError, match="other settings"):
        G.generate_videos({**cfg, "seed": 12}, tmp_path / "run", None)


@pytest.mark.parametrize("key", ["../../escaped", "/tmp/abs_escaped", "a/../../b", "..", "sub/../../x"])
def test_keys_that_would_leave_the_output_folder_are_refused(tmp_path, monkeypatch, key):
    """Every key is checked before anything is sampled or written; no file appears outside the output root."""
    loaded = []
    monkeypatch.setattr(G, "load_generator", lambda path: loaded.append(path) or FakeGenerator())
    plist = tmp_path / "in" / "p.jsonl"
    plist.parent.mkdir()
    plist.write_text(
        json.dumps({"key": "ok", "prompt": "p"}) + "\n" + json.dumps({"key": key, "prompt": "p"})
    )
    before = _files(tmp_path)
    cfg = eval_cfg(
        tmp_path, metrics=["psnr"], generate={"checkpoint": "x", "prompts": str(plist), "num_frames": 4}
    )
    with pytest.raises((UnsafePathError, ValueError)):
        Evaluator(cfg).run()
    assert loaded == []
    new = _files(tmp_path) - before
    assert all(str(p).startswith("out") for p in new), new  # at most the (empty) output root itself
    assert not Path("/tmp/abs_escaped.mp4").exists() and not (tmp_path.parent / "escaped.mp4").exists()


def test_evaluator_writes_only_inside_its_output_root_and_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(G, "load_generator", lambda path: FakeGenerator())
    write_set(tmp_path / "real", 3, num_frames=6)
    before = _files(tmp_path)
    cfg = eval_cfg(tmp_path, real=str(tmp_path / "real"), metrics=["fvd", "psnr"], plots=True,
                   generate={"checkpoint": "x", "prompts": str(_plist(tmp_path, ["v00", "v01", "sub/v02"])),
                             "num_frames": 6})  # fmt: skip
    before |= {Path("prompts.csv")}
    cwd = os.getcwd()
    Evaluator(cfg).run()
    new = _files(tmp_path) - before
    assert new and all(str(p).startswith(("out/", "cache/")) for p in new), sorted(new)
    assert (tmp_path / "out/generated/sub/v02.mp4").is_file()  # a sub-folder inside the root is fine
    assert os.getcwd() == cwd


def test_evaluate_py_refuses_an_escaping_key_before_loading_anything(tmp_path):
    """The entry point: exit 2 with the key named, nothing written outside the run folder."""
    plist = tmp_path / "in" / "p.csv"
    plist.parent.mkdir()
    plist.write_text("key,prompt\nfine,p\n../../../escaped,p\n")
    before = _files(tmp_path)
    root = TESTS.parent
    r = subprocess.run(
        [sys.executable, str(root / "evaluate.py"), "eval=smoke", f"hydra.run.dir={tmp_path / 'run'}",
         "eval.generate.checkpoint=/nonexistent/run", f"eval.generate.prompts={plist}", "eval.cache_dir=null"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "../../../escaped" in r.stderr and "outside" in r.stderr and "Traceback" not in r.stderr
    new = _files(tmp_path) - before
    assert all(str(p).startswith("run/") for p in new), new
