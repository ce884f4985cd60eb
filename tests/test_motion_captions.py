"""Motion-caption data tool (DynamiCrafter §5, "DCP") and the motion-control evaluation protocol:
rule-based filter / rewrite, shards in -> shards out, the pluggable text model (tiny random
transformers models built here, nothing downloaded), the case list and the eval config."""

from __future__ import annotations

import csv
import json
import tarfile
from pathlib import Path

import pytest
import torch

from i2vlab.data.motion_captions import (
    CATEGORIES,
    ModelMotionCaptioner,
    OutputExistsError,
    RuleBasedMotionCaptioner,
    TransformersMotionRewriter,
    build_prompt,
    gerund,
    motion_control_cases,
    parse_answer,
    process_shards,
    read_motions,
    third_person,
)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

CASES = [
    # caption, kept, motion caption, category
    ("Young woman doing push-ups on the beach at sunset, slow motion.", True, "woman doing push-ups", "human"),
    ("Aerial view of ocean waves crashing on the rocks, 4k", True, "waves crashing", "nature"),
    ("Happy golden retriever dog running across a green meadow", True, "dog running across green meadow", "animal"),
    ("dog running across a big green meadow", True, "dog running", "animal"),
    ("Beautiful sunset over the mountains, landscape background", False, "", None),
    ("Businessman working on laptop in modern office", False, "", None),
    ("Woman at the swimming pool", False, "", None),
    ("Smiling woman looking at camera", False, "", None),
    ("Sea waves on the beach", False, "", None),
    ("Close up of hands typing on keyboard", True, "hands typing", "human"),
    ("Camera pans across the city skyline at night", True, "camera panning across city skyline", "camera"),
    ("Timelapse of clouds moving in the blue sky", True, "clouds moving", "nature"),
    ("Man waves hand at the camera", True, "man waving hand", "human"),
    ("Group of people dancing at a party", True, "group of people dancing", "human"),
    ("Little girl running and jumping in the park", True, "girl running and jumping", "human"),
    ("Two men playing guitar on stage", True, "two men playing guitar", "human"),
    ("Red sports car driving fast on a mountain road", True, "car driving fast", "vehicle"),
    ("Water flows in the river", True, "water flowing", "nature"),
    ("tracking shot of a man walking through the forest", True, "man walking through forest", "human"),
    ("Portrait of a senior man talking to the camera", True, "man talking", "human"),
    ("Man turning around and walking away", True, "man turning around and walking away", "human"),
    ("a red circle moving left over a striped background", True, "circle moving left", "object"),
    ("a blue square zooming in over a checkered background", True, "square zooming in", "object"),
    ("Man doing", False, "", None),
    ("   ", False, "", None),
]  # fmt: skip


@pytest.mark.parametrize("caption,kept,motion,category", CASES)
def test_rules_keep_motion_captions_and_rewrite_them_motion_first(caption, kept, motion, category):
    d = RuleBasedMotionCaptioner()(caption)
    assert (d.keep, d.caption, d.category) == (kept, motion, category)
    assert d.source == "rules"
    assert d.reason == ("motion" if kept else ("empty" if not caption.strip() else "no_motion"))


def test_verb_forms():
    assert [gerund(v) for v in ("run", "dance", "ski", "tiptoe", "clap", "pan", "walk", "lie")] == [
        "running", "dancing", "skiing", "tiptoeing", "clapping", "panning", "walking", "lying",
    ]  # fmt: skip
    assert [third_person(v) for v in ("walk", "fly", "push", "do", "play")] == [
        "walks", "flies", "pushes", "does", "plays",
    ]  # fmt: skip


def test_categories_style_and_bad_options():
    human = RuleBasedMotionCaptioner(categories=["human"])
    assert human("Man waves hand").keep
    d = human("Dog running in the park")
    assert (d.keep, d.reason, d.category) == (False, "category", "animal")
    first = RuleBasedMotionCaptioner(style="motion_first")
    assert first("Young woman doing push-ups on the beach").caption == (
        "woman doing push-ups. Young woman doing push-ups on the beach"
    )
    with pytest.raises(ValueError, match="unknown categories"):
        RuleBasedMotionCaptioner(categories=["people"])
    with pytest.raises(ValueError, match="style"):
        RuleBasedMotionCaptioner(style="short")


def test_parse_answer_checks_the_model_output():
    assert parse_answer(" woman doing push-ups | human\nCaption: x") == ("woman doing push-ups", "human")
    assert parse_answer("Dog running.") == ("dog running", None)
    assert parse_answer("none") == ("none", None)
    for bad in ("", "\n", "<unk> 12 !!", "man | people", " ".join(["word"] * 11), "man running | "):
        assert parse_answer(bad) is None or parse_answer(bad) == ("man running", None), bad
    assert parse_answer("man | people") is None  # unknown category
    assert parse_answer(" ".join(["word"] * 11)) is None  # too long


def test_model_captioner_uses_checked_answers_and_falls_back_to_the_rules():
    answers = {
        "Man waves hand at the camera": "man waving hand | human",
        "Dog running in the park": "garbage ### 42",
        "Red car driving on a road": "none",
        "Beautiful sunset over the sea": "sun setting | nature",
        "A cat jumping on a sofa": "cat jumping",
    }
    calls = []

    def generate(caps):
        calls.append(list(caps))
        return [answers[c] for c in caps]

    caps = list(answers)
    out = ModelMotionCaptioner(generate).batch(caps)
    # filter="rules": the sunset (no motion for the rules) is never asked
    assert calls == [[c for c in caps if c != "Beautiful sunset over the sea"]]
    by = dict(zip(caps, out))
    assert (by[caps[0]].caption, by[caps[0]].source, by[caps[0]].category) == (
        "man waving hand",
        "model",
        "human",
    )
    assert (by[caps[1]].caption, by[caps[1]].source) == ("dog running", "rules_fallback")
    assert by[caps[1]].model_output == "garbage ### 42"
    assert (by[caps[2]].keep, by[caps[2]].source) == (True, "rules_fallback")  # rules saw a motion
    assert (by[caps[3]].keep, by[caps[3]].reason) == (False, "no_motion")
    assert (by[caps[4]].caption, by[caps[4]].category) == ("cat jumping", "animal")  # category from the rules

    calls.clear()
    out = ModelMotionCaptioner(generate, filter="model").batch(caps)
    assert calls == [caps]
    by = dict(zip(caps, out))
    assert (by[caps[2]].keep, by[caps[2]].reason, by[caps[2]].source) == (False, "model_none", "model")
    assert (by[caps[3]].keep, by[caps[3]].caption, by[caps[3]].source) == (True, "sun setting", "model")

    only_human = ModelMotionCaptioner(
        generate, RuleBasedMotionCaptioner(categories=["human"]), filter="model"
    )
    kept = [d.caption for d in only_human.batch(caps) if d.keep]
    assert kept == ["man waving hand"]
    with pytest.raises(RuntimeError, match="answers"):
        ModelMotionCaptioner(lambda c: [])(caps[0])


# ----------------------------------------------------------------------------------------------
# shards
# ----------------------------------------------------------------------------------------------
def _write_shard(path: Path, samples: list[dict]) -> None:
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)


def _read_tar(path: Path) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


@pytest.fixture
def caption_shards(tmp_path):
    from i2vlab.data.toy import make_toy_video
    from i2vlab.utils.video_io import encode_mp4

    v = make_toy_video(3, num_frames=4, height=32, width=32)
    mp4 = encode_mp4(v.frames, fps=v.fps)
    caps = [c for c, *_ in CASES[:12]]
    a = [{"__key__": f"a{i:02d}", "mp4": mp4, "txt": c, "json": json.dumps({"fps": 8, "i": i})}
         for i, c in enumerate(caps[:6])]  # fmt: skip
    b = [{"__key__": f"b{i:02d}", "mp4": mp4 + bytes([i]), "txt": c, "json": json.dumps({"fps": 8})}
         for i, c in enumerate(caps[6:])]  # fmt: skip
    b.append({"__key__": "b_bad", "mp4": mp4, "txt": b"Man \xff waving hand", "json": "{not json"})
    b.append({"__key__": "b_nocap", "mp4": mp4, "json": "{}"})
    _write_shard(tmp_path / "in" / "shard-000000.tar", a)
    _write_shard(tmp_path / "in" / "shard-000001.tar", b)
    # a shard without any motion caption: no output shard
    _write_shard(
        tmp_path / "in" / "shard-000002.tar", [{"__key__": "c0", "mp4": mp4, "txt": "Sunset", "json": "{}"}]
    )
    (tmp_path / "in" / "shard-000003.tar").write_bytes(b"not a tar at all" * 100)
    return tmp_path / "in", {s["__key__"]: s for s in a + b}


def test_process_shards_writes_motion_shards_and_reports(caption_shards, tmp_path):
    src, samples = caption_shards
    out = tmp_path / "out"
    rep = process_shards(str(src), out)
    expect_kept = (
        {f"a{i:02d}" for i, c in enumerate(CASES[:6]) if c[1]}
        | {f"b{i:02d}" for i, c in enumerate(CASES[6:12]) if c[1]}
        | {"b_bad"}
    )
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    got = {**_read_tar(out / "shard-000000.tar"), **_read_tar(out / "shard-000001.tar")}
    assert set(got) == expect_kept
    rules = RuleBasedMotionCaptioner()
    for key, members in got.items():
        assert set(members) == {"mp4", "txt", "json"}
        assert members["mp4"] == samples[key]["mp4"]  # video bytes untouched
        meta = json.loads(members["json"])
        orig = samples[key]["txt"]
        orig = orig.decode("utf-8", errors="replace") if isinstance(orig, bytes) else orig
        assert members["txt"].decode() == rules(orig).caption == meta["motion_caption"]
        assert meta["original_caption"] == orig and meta["motion_source"] == "rules"
        assert meta["motion_category"] in CATEGORIES
        if key.startswith("a"):
            assert meta["fps"] == 8 and meta["i"] == int(key[1:])  # metadata kept
    assert json.loads(got["b_bad"]["json"])["bad_meta"] is True
    assert rep.clips == 15 and rep.kept == len(expect_kept) and rep.shards_written == 2
    no_motion = sum(not kept for _, kept, *_ in CASES[:12]) + 1  # + "Sunset"
    assert rep.dropped == {"no_motion": no_motion, "empty": 1}  # empty: the clip without a caption
    assert rep.data_faults == {"bad_caption": 1, "missing_caption": 1, "bad_shard": 1}
    assert sum(rep.categories.values()) == rep.kept and rep.sources == {"rules": rep.kept}
    assert json.loads((out / "report.json").read_text())["kept"] == rep.kept
    rows = list(csv.DictReader(open(out / "captions.csv")))
    assert len(rows) == 15 and {r["key"] for r in rows if r["kept"] == "1"} == expect_kept
    # the new shards read back through the training data path
    from i2vlab.data.health import DataHealth
    from i2vlab.data.shards import list_shards
    from i2vlab.data.tarstream import shard_samples
    from i2vlab.utils.video_io import open_video

    h = DataHealth()
    back = [s for u in list_shards(str(out)) for s in shard_samples(u, h)]
    assert len(back) == len(expect_kept) and not any(h.snapshot().values())
    assert len(open_video(back[0]["mp4"])) == 4

    with pytest.raises(OutputExistsError, match="--overwrite"):
        process_shards(str(src), out)
    rep2 = process_shards(
        str(src), out, RuleBasedMotionCaptioner(categories=["human"]), overwrite=True, limit=6
    )
    assert rep2.clips == 6 and set(rep2.categories) == {"human"}
    assert rep2.dropped.get("category", 0) >= 1


def test_cli_filter_show_and_cases(caption_shards, tmp_path, capsys):
    import motion_captions as cli

    src, _ = caption_shards
    assert cli.main(["filter", "--shards", str(src), "--out", str(tmp_path / "o"), "--quiet",
                     "--categories", "human,animal"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "15 clips in 4 shards -> kept" in printed and "bad_shard" in printed
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert set(rep["categories"]) <= {"human", "animal"} and rep["dropped"]["category"] >= 1
    assert cli.main(["show", "Happy dog running across a green meadow, 4k"]) == 0
    shown = json.loads(capsys.readouterr().out.splitlines()[0])
    assert shown["caption"] == "dog running across green meadow" and shown["category"] == "animal"
    with pytest.raises(SystemExit):
        cli.main(["show", "x", "--categories", "people"])
    with pytest.raises(SystemExit):
        cli.main(["show", "x", "--rewriter", "model"])  # needs --model
    with pytest.raises(SystemExit) as e:  # a missing model folder: named, exit 2
        cli.main(["show", "x", "--rewriter", "model", "--model", str(tmp_path / "no_model")])
    assert e.value.code == 2 and "--model" in capsys.readouterr().err

    from PIL import Image

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("man1", "woman1"):
        Image.new("RGB", (16, 16), (100, 50, 20)).save(imgs / f"{name}.png")
    (imgs / "notes.txt").write_text("not an image")
    (tmp_path / "subjects.csv").write_text("image,subject\nwoman1,a woman\n")
    out = tmp_path / "cases.csv"
    cli.main(["cases", "--images", str(imgs), "--out", str(out), "--subjects", str(tmp_path / "subjects.csv"),
              "--subject", "a man"])  # fmt: skip
    rows = list(csv.DictReader(open(out)))
    motions = read_motions(CONF / "eval" / "motion_control" / "motions.txt")
    assert len(motions) == 8 and len(rows) == 2 * 8
    assert rows[0] == {"key": "man1__00", "image": str((imgs / "man1.png").resolve()),
                       "prompt": "A man waving hands", "motion": "{subject} waving hands"}  # fmt: skip
    assert rows[9]["prompt"] == "A woman clapping"
    assert "16 cases (2 images x 8 motions)" in capsys.readouterr().out


def test_motion_control_cases_cross_images_and_motions():
    rows = motion_control_cases(["/x/a.png", "/x/b.jpg"], ["{subject} clapping", "waving"], {"b": "a girl"})
    assert [r["prompt"] for r in rows] == ["A person clapping", "Waving", "A girl clapping", "Waving"]
    assert [r["key"] for r in rows] == ["a__00", "a__01", "b__00", "b__01"]


# ----------------------------------------------------------------------------------------------
# a tiny random transformers model (built here, nothing downloaded)
# ----------------------------------------------------------------------------------------------
def _tiny_text_model(folder: Path, kind: str) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
        T5Config,
        T5ForConditionalGeneration,
    )

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<pad>", "<unk>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator([build_prompt(c) for c, *_ in CASES], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
    )
    torch.manual_seed(0)
    n = len(fast)
    ids = {"pad_token_id": fast.pad_token_id, "eos_token_id": fast.eos_token_id}
    if kind == "causal":
        cfg = GPT2Config(vocab_size=n, n_positions=2048, n_embd=16, n_layer=1, n_head=2,
                         bos_token_id=fast.eos_token_id, **ids)  # fmt: skip
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = T5Config(vocab_size=n, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                       decoder_start_token_id=fast.pad_token_id, **ids)  # fmt: skip
        model = T5ForConditionalGeneration(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger random weights than the init: answers that depend on the caption
        for prm in model.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 2.0)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_tiny_random_transformers_model_rewrites_shards(kind, caption_shards, tmp_path):
    import motion_captions as cli

    model_dir = _tiny_text_model(tmp_path / f"tiny_{kind}", kind)
    src, _ = caption_shards
    rw = TransformersMotionRewriter(model_dir, max_new_tokens=6, batch_size=4)
    assert rw.seq2seq == (kind == "seq2seq")
    caps = [c for c, kept, *_ in CASES if kept][:6]
    batched = rw(caps)
    one_by_one = [rw([c])[0] for c in caps]
    assert len(set(batched)) > 1  # the answers depend on the caption (else the next check is empty)
    assert batched == one_by_one  # padding does not change an answer
    assert len(batched) == 6 and all(isinstance(a, str) for a in batched)

    out = tmp_path / f"out_{kind}"
    args = ["filter", "--shards", str(src), "--out", str(out), "--quiet", "--rewriter", "model",
            "--model", str(model_dir), "--batch-size", "4", "--max-new-tokens", "6"]  # fmt: skip
    assert cli.main(args) == 0
    rows = list(csv.DictReader(open(out / "captions.csv")))
    asked = [r for r in rows if r["kept"] == "1"]
    assert asked and all(r["source"] in ("model", "rules_fallback") for r in asked)
    rules = RuleBasedMotionCaptioner()
    for r in asked:  # every kept clip: a checked model answer, or the rules' rewrite
        parsed = parse_answer(r["model_output"])
        if r["source"] == "model":
            assert parsed is not None and r["caption"] == parsed[0]
        else:
            assert r["caption"] == rules(r["original"]).caption
    rep = json.loads((out / "report.json").read_text())
    assert sum(rep["sources"].values()) == rep["kept"] == len(asked)
    # deterministic: the same run again gives the same captions
    assert cli.main([*args, "--overwrite"]) == 0
    assert list(csv.DictReader(open(out / "captions.csv"))) == rows


# ----------------------------------------------------------------------------------------------
# the evaluation protocol
# ----------------------------------------------------------------------------------------------
def _protocol(overrides=()):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("evaluate", overrides=["eval=dynamicrafter_motion_control", *overrides])
    return OmegaConf.to_container(cfg.eval, resolve=True)


def test_motion_control_protocol_config():
    from i2vlab.evaluation.evaluator import DEFAULTS

    e = _protocol()

    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            if isinstance(v, dict) and k not in ("protocol", "tiny", "kwargs"):
                out |= keys(v, f"{prefix}{k}.")
            else:
                out.add(prefix + k)
        return out

    assert keys(e) == keys(DEFAULTS)  # no key the evaluator does not know
    assert e["name"] == "dynamicrafter_motion_control"
    assert e["metrics"][0] == "clip_text" and e["clip_text"]["scale"] == 1.0
    assert all(c["metric"] in e["metrics"] for c in e["protocol"]["columns"])
    assert e["protocol"]["published"]["rows"] == {
        "DynamiCrafter": {"clip_text": 0.17},
        "DynamiCrafter_DCP": {"clip_text": 0.19},
    }
    assert (e["num_frames"], e["generate"]["num_frames"], e["resolution"]) == (16, 16, [256, 256])
    assert e["condition_image"] == "manifest" and e["protocol"]["num_samples"] == 40


def test_motion_control_protocol_scores_clip_sim_of_prompt_and_video(tmp_path):
    """The protocol end to end on pre-sampled videos (manifest) with a tiny random CLIP."""
    from eval_helpers import TINY_EXTRACTORS, moving_video
    from PIL import Image

    from i2vlab.evaluation import Evaluator
    from i2vlab.utils.video_io import write_video

    rows = motion_control_cases([tmp_path / "p1.png", tmp_path / "p2.png"], read_motions(
        CONF / "eval" / "motion_control" / "motions.txt")[:2])  # fmt: skip
    for i, name in enumerate(("p1", "p2")):
        frame = ((moving_video(1, 32, 32, seed=i)[0].permute(1, 2, 0) + 1) * 127.5).byte().numpy()
        Image.fromarray(frame).save(tmp_path / f"{name}.png")
    lines = ["key,generated,image,prompt"]
    for j, r in enumerate(rows):
        path = write_video(tmp_path / "gen" / f"{r['key']}.mp4", moving_video(6, 32, 32, dx=1, seed=j), fps=8)
        lines.append(f"{r['key']},{path},{r['image']},{r['prompt']}")
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    cfg = _protocol(
        [
            f"eval.manifest={tmp_path / 'manifest.csv'}",
            "eval.allow_random_weights=true",
            "eval.num_frames=4",
            "eval.resolution=[32,32]",
            f"eval.output_dir={tmp_path / 'out'}",
            "eval.cache_dir=null",
            "eval.plots=false",
            "eval.batch_size=2",
        ]  # fmt: skip
    )
    cfg["extractors"]["clip"]["tiny"] = TINY_EXTRACTORS["clip"]["tiny"]
    res = Evaluator(cfg).run()
    assert res["n"]["generated_scored"] == 4
    v = res["metrics"]["clip_text"]["value"]
    assert v is not None and -1.0 <= v <= 1.0
    assert res["metrics"]["clip_image"]["value"] is not None and res["metrics"]["flow_score"]["value"] > 0
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| DynamiCrafter | 0.1700 |" in md and "| DynamiCrafter_DCP | 0.1900 |" in md
    assert "NOT COMPARABLE" in md
