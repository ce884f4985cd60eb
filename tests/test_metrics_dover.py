"""DOVER (DoverVQA): architecture and official key layout, weight loading, view sampling, rescaling,
and the I2V-Adapter protocol wiring. Tiny nets of the same classes; full size only on the meta device."""

import json
import math
from pathlib import Path

import pytest
import torch
from eval_helpers import eval_cfg, write_set

from i2vlab.evaluation import Evaluator
from i2vlab.metrics import DOVERScores, MissingWeightsError, build_extractor
from i2vlab.metrics.extractors.dover import (
    RESCALE,
    DOVERExtractor,
    DOVERNet,
    frame_indices,
    rescale_scores,
    spatial_fragments,
)

TINY = {
    "swin": {"embed_dim": 8, "depths": [2, 2, 1, 1], "num_heads": [1, 2, 2, 2]},
    "convnext": {"dims": [8, 16, 16, 32], "depths": [1, 3, 1, 1]},
    "head_hidden": 8,
}
TINY_VIEWS = {"technical": {"fsize": 8, "clip_len": 4}, "aesthetic": {"size": 32, "clip_len": 4, "t_frag": 4}}
TINY_DOVER = {"tiny": TINY, **TINY_VIEWS}


def tiny_extractor(weights=None, seed=0):
    return DOVERExtractor(weights, tiny=TINY, seed=seed, **TINY_VIEWS)


def test_full_size_matches_official_layout():
    with torch.device("meta"):
        net = DOVERNet()
    sd = net.state_dict()
    # DOVER (Swin-T GRPB + ConvNeXt-T 3D + two heads): 56.2M parameters (README: DOVER-Mobile's 9.86M is 5.7x less)
    assert sum(p.numel() for p in net.parameters()) == 56_218_302
    shapes = {
        "technical_backbone.patch_embed.proj.weight": (96, 3, 2, 4, 4),
        "technical_backbone.layers.0.blocks.1.attn.fragment_position_bias_table": (15 * 13 * 13, 3),
        "technical_backbone.layers.2.blocks.5.attn.relative_position_bias_table": (2535, 12),
        "technical_backbone.layers.0.blocks.0.attn.relative_position_index": (8 * 7 * 7, 8 * 7 * 7),
        "technical_backbone.layers.2.downsample.reduction.weight": (768, 1536),
        "technical_backbone.norm.weight": (768,),
        "aesthetic_backbone.downsample_layers.0.0.weight": (96, 3, 2, 4, 4),
        "aesthetic_backbone.downsample_layers.3.1.weight": (768, 384, 1, 2, 2),
        "aesthetic_backbone.stages.2.4.dwconv.weight": (384, 1, 3, 7, 7),  # inflate '131': j=4 -> 3
        "aesthetic_backbone.stages.2.5.dwconv.weight": (384, 1, 1, 7, 7),
        "aesthetic_backbone.stages.3.2.gamma": (768,),
        "aesthetic_backbone.norm.weight": (768,),
        "technical_head.fc_hid.weight": (64, 768, 1, 1, 1),
        "aesthetic_head.fc_last.bias": (1,),
    }
    for k, s in shapes.items():
        assert tuple(sd[k].shape) == s, k
    assert not any("layers.3" in k and "fragment" in k for k in sd)  # frag_biases (1, 1, 1, 0)
    assert {k.split(".")[0] for k in sd} == {
        "technical_backbone",
        "aesthetic_backbone",
        "technical_head",
        "aesthetic_head",
    }


def test_tiny_model_gives_finite_scores_that_depend_on_the_video():
    ex = tiny_extractor()
    g = torch.Generator().manual_seed(0)
    v = torch.rand(2, 6, 3, 40, 48, generator=g) * 2 - 1
    out = ex(v)
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])
    assert torch.equal(ex(v), out)  # fixed view offsets: deterministic
    a, t = ex.views(v[0])
    assert a.shape == (1, 3, 4, 32, 32) and t.shape == (3, 3, 4, 56, 56)


def test_weights_load_from_official_key_layout(tmp_path):
    src = tiny_extractor(seed=1)
    # official DOVER.pth: a plain state dict "technical_backbone....", "aesthetic_head...." (also with a
    # DataParallel "module." prefix, which is stripped)
    sd = {k: v.clone() for k, v in src.net.state_dict().items()}
    assert "technical_backbone.layers.0.blocks.0.attn.relative_position_index" in sd
    torch.save(sd, tmp_path / "DOVER.pth")
    torch.save({"module." + k: v for k, v in sd.items()}, tmp_path / "DOVER_dp.pth")
    v = torch.rand(1, 5, 3, 36, 36, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ref = src(v)
    for name in ("DOVER.pth", "DOVER_dp.pth"):
        ex = build_extractor("dover", weights_path=str(tmp_path / name), tiny=TINY, **TINY_VIEWS)
        assert ex.comparable and torch.equal(ex(v), ref)
    assert not torch.equal(tiny_extractor(seed=2)(v), ref)
    sd.pop("aesthetic_head.fc_last.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(RuntimeError, match="missing 1 keys.*unexpected 1"):
        build_extractor("dover", weights_path=str(tmp_path / "bad.pth"), tiny=TINY, **TINY_VIEWS)


def test_missing_weights_name_the_config_key(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"eval\.extractors\.dover\.weights_path.*DOVER\.pth"):
        build_extractor("dover", weights_path=None)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        build_extractor("dover", weights_path=str(tmp_path / "nope.pth"))
    ex = build_extractor("dover", allow_random_weights=True, **TINY_DOVER)
    assert not ex.comparable and ex.weights_hash.startswith("random-init")


def test_fragments_are_7x7_cells_of_32px_from_their_grid_cells():
    t, h, w = 64, 300, 400  # 2 groups of aligned=32 frames
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    video = torch.stack(
        [
            yy.float()[None].expand(t, h, w),
            xx.float()[None].expand(t, h, w),
            torch.arange(t).float()[:, None, None].expand(t, h, w),
        ]
    )  # c t h w: each pixel holds its own (y, x, t)
    out, org = spatial_fragments(video, 7, 32, 32, torch.Generator().manual_seed(0), return_origins=True)
    assert out.shape == (3, 64, 224, 224) and org.shape == (2, 7, 7, 2)
    cell_h, cell_w = h // 7, w // 7
    for g in range(2):
        for i in range(7):
            for j in range(7):
                frag = out[:, g * 32 : (g + 1) * 32, i * 32 : (i + 1) * 32, j * 32 : (j + 1) * 32]
                y0, x0 = int(frag[0, 0, 0, 0]), int(frag[1, 0, 0, 0])
                assert (y0, x0) == tuple(org[g, i, j].tolist())
                # a contiguous 32x32 crop lying inside grid cell (i, j)
                assert torch.equal(frag[0, 0], (y0 + torch.arange(32)).float()[:, None].expand(32, 32))
                assert torch.equal(frag[1, 0], (x0 + torch.arange(32)).float()[None].expand(32, 32))
                assert i * cell_h <= y0 and y0 + 32 <= (i + 1) * cell_h
                assert j * cell_w <= x0 and x0 + 32 <= (j + 1) * cell_w
                assert torch.equal(frag[2, :, 0, 0], torch.arange(g * 32, (g + 1) * 32).float())
    # offsets differ between cells (random inside each cell), and the same seed gives the same views
    assert len({tuple(o) for o in org.reshape(-1, 2).tolist()}) > 40
    assert torch.equal(spatial_fragments(video, 7, 32, 32, torch.Generator().manual_seed(0)), out)
    # small frames: upsampled so that 7x7 fragments of 32 px fit
    small = spatial_fragments(torch.full((3, 32, 64, 80), 100.0), 7, 32, 32, torch.Generator())
    assert small.shape == (3, 32, 224, 224) and (small == 100).all()


def test_frame_indices_follow_dover_samplers():
    g = torch.Generator().manual_seed(0)
    # technical: 3 segments x 32 frames at interval 2, wrapped; a 16-frame clip has no random offset
    ti = frame_indices(16, 32, 3, 2, g)
    assert ti.shape == (96,) and torch.equal(ti[:32], (torch.arange(32) * 2) % 16)
    assert torch.equal(ti[32:64], (torch.arange(32) * 2 + 5) % 16)
    # aesthetic: 32 segments x 1 frame; a 16-frame clip gives frame 0 repeated (as upstream)
    assert torch.equal(frame_indices(16, 1, 32, 2, g), torch.zeros(32, dtype=torch.long))
    ai = frame_indices(320, 1, 32, 2, g)
    assert torch.all((ai >= torch.arange(32) * 10) & (ai < torch.arange(32) * 10 + 8))


def test_rescaling_constants():
    a, t = torch.tensor([0.1253, 0.2]), torch.tensor([-0.0758, 0.0873])
    r = rescale_scores(a, t, "evalcrafter")
    assert r["technical"][0] == pytest.approx(50) and r["aesthetic"][0] == pytest.approx(50)
    tp, ap = (0.0873 + 0.0758) / 0.0129, (0.2 - 0.1253) / 0.0318
    assert r["technical"][1] == pytest.approx(100 / (1 + math.exp(-tp)))
    assert r["aesthetic"][1] == pytest.approx(100 / (1 + math.exp(-ap)))
    assert r["overall"][1] == pytest.approx(100 / (1 + math.exp(-(0.6104 * tp + 0.3896 * ap))))
    u = rescale_scores(torch.tensor(-0.08285), torch.tensor(0.1107), "upstream")
    assert float(u["overall"]) == pytest.approx(50)
    assert RESCALE["upstream"]["t_std"] == 0.07355 and RESCALE["upstream"]["a_std"] == 0.03774
    m = DOVERScores(score="technical_raw")
    m.update(values=torch.tensor([[0.2, 0.0873], [0.1253, -0.0758]]))
    res = m.compute()
    assert res["value"] == res["dover_vqa"] == pytest.approx((0.0873 - 0.0758) / 2)
    # EvalCrafter averages the per-video sigmoid scores, not the sigmoid of the mean
    assert res["dover_technical"] == pytest.approx((float(r["technical"][1]) + 50) / 2)
    with pytest.raises(ValueError, match="eval.dover.score"):
        DOVERScores(score="nope")


def test_i2v_adapter_protocol_reports_dover_when_configured(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        ia = OmegaConf.to_container(compose("evaluate", overrides=["eval=i2v_adapter"]).eval)
    assert "dover" in ia["metrics"] and ia["extractors"]["dover"]["weights_path"] is None
    assert ia["extractors"]["dover"]["technical"] == {
        "fragments": 7, "fsize": 32, "clip_len": 32, "frame_interval": 2, "num_clips": 3,
    }  # fmt: skip
    write_set(tmp_path / "gen", 3, num_frames=6, size=(32, 32))
    common = {
        "protocol": ia["protocol"],
        "metrics": ["dover", "clip_temp"],
        "dover": ia["dover"],
        "generated": str(tmp_path / "gen"),
        "resolution": None,
    }
    # no weights path -> "not computed", the other metrics still run
    cfg = eval_cfg(tmp_path / "a", **common)
    cfg["extractors"] = {**cfg["extractors"], "dover": {"weights_path": None}}
    res = Evaluator(cfg).run()
    assert res["metrics"]["dover"]["value"] is None
    assert "not computed" in res["metrics"]["dover"]["error"]
    assert "eval.extractors.dover.weights_path" in res["metrics"]["dover"]["error"]
    assert res["metrics"]["clip_temp"]["value"] is not None
    # configured (tiny random-init net, allow_random_weights=true in the test config)
    cfg = eval_cfg(tmp_path / "b", **common)
    cfg["extractors"] = {**cfg["extractors"], "dover": TINY_DOVER}
    res = Evaluator(cfg).run()
    d = res["metrics"]["dover"]
    assert (
        d["n"] == 3 and d["score"] == "technical_raw" and d["value"] == d["dover_vqa"] == d["technical_raw"]
    )
    for k in ("dover_technical", "dover_aesthetic", "dover_overall"):
        assert 0 < d[k] < 100
    assert d["rescale_constants"] == RESCALE["evalcrafter"] and not res["comparable"]
    out = Path(cfg["output_dir"])
    md = (out / "results.md").read_text()
    assert "I2V-Adapter SD1.5" in md and "0.0873" in md
    rows = (out / "per_video.csv").read_text().splitlines()
    assert "dover_overall" in rows[0] and len(rows) == 4
    saved = json.loads((out / "results.json").read_text())
    assert saved["extractors"]["dover"]["technical"]["fragments"] == 7
    # missing weights with a path that does not exist -> fails at build time naming the key
    cfg = eval_cfg(tmp_path / "c", **common, allow_random_weights=False)
    cfg["extractors"] = {"dover": {"weights_path": str(tmp_path / "missing.pth")}}
    cfg["metrics"] = ["dover"]
    with pytest.raises(MissingWeightsError, match="eval.extractors.dover.weights_path"):
        Evaluator(cfg)
