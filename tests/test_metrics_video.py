"""Per-video metrics' invariances and the extractors' weights policy / loading code."""

import pytest
import torch
from eval_helpers import TINY_EXTRACTORS, moving_video

from i2vlab.metrics import (
    CLIPFirstFrameConsistency,
    CLIPTemporalConsistency,
    FlowScore,
    FrechetInceptionDistanceFrames,
    FrechetVideoDistance,
    KernelVideoDistance,
    MissingWeightsError,
    PerceptualInputConformity,
    VideoPSNR,
    VideoSSIM,
    WarpingError,
    build_extractor,
)
from i2vlab.metrics import functional as Fm


@pytest.fixture(scope="module")
def dis():
    return build_extractor("opencv_flow", method="dis")


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_known_shift_gives_expected_flow_magnitude(method):
    flow = build_extractor("opencv_flow", method=method)
    v = moving_video(3, 64, 64, dx=3)
    fl = flow(v[:1], v[1:2])[0]
    inner = fl[:, 12:-12, 12:-12]  # away from the wrap-around seam
    assert inner[0].mean().item() == pytest.approx(3.0, abs=0.1)
    assert inner[1].abs().mean().item() < 0.1
    mags = Fm.flow_magnitudes(v[:, :, 12:-12, 12:-12], flow)
    assert mags.shape == (2,) and mags.mean().item() == pytest.approx(3.0, abs=0.15)


def test_static_video_flow_score_zero(dis):
    v = moving_video(4, 48, 48, dx=0)
    m = FlowScore(dis)
    m.update(v[None])
    assert m.compute().item() == pytest.approx(0.0, abs=1e-3)


def test_warping_error_zero_for_static_video_and_small_for_translation(dis):
    static = moving_video(4, 64, 64)
    m = WarpingError(dis)
    m.update(static[None])
    assert m.compute().item() == pytest.approx(0.0, abs=1e-8)
    moving = moving_video(4, 64, 64, dx=2)
    err = Fm.warping_errors(moving, dis, downsample=1.0)
    # unwarped error of the same pairs (3 channels over pixels), for scale
    x = (moving + 1) / 2
    raw = ((x[1:] - x[:-1]) ** 2).sum(1).flatten(1).mean(1)
    assert (err < 0.1 * raw).all()


def test_warp_identity_and_known_shift():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float64).view(2, 3, 8, 8)
    assert torch.allclose(Fm.warp(x, torch.zeros(2, 2, 8, 8, dtype=torch.float64)), x)
    flow = torch.zeros(2, 2, 8, 8, dtype=torch.float64)
    flow[:, 0] = 1.0  # sample one pixel to the right
    out = Fm.warp(x, flow)
    assert torch.allclose(out[..., :-1], x[..., 1:])
    assert torch.allclose(out[..., -1], x[..., -1])  # border clamp


def test_occlusion_mask_flags_inconsistent_flow():
    fw = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    bw = torch.zeros_like(fw)
    assert not Fm.occlusion_mask(fw, bw).any()
    bw[:, 0, 2, 2] = 5.0  # backward flow disagrees at one pixel
    occ = Fm.occlusion_mask(fw, bw)
    assert occ[0, 2, 2] and occ.sum() == 1
    fw2 = torch.zeros_like(fw)
    fw2[:, 0, :, 3:] = 4.0  # motion boundary between columns 2 and 3
    assert Fm.occlusion_mask(fw2, -fw2)[0, :, 2].all()


def test_pic_and_clip_consistency_of_static_video_is_one():
    ds = build_extractor("dreamsim", allow_random_weights=True, **TINY_EXTRACTORS["dreamsim"])
    clip = build_extractor("clip", allow_random_weights=True, **TINY_EXTRACTORS["clip"])
    v = moving_video(4, 32, 32)[None]
    pic = PerceptualInputConformity(ds)
    pic.update(v[:, 0], v)
    assert pic.compute().item() == pytest.approx(1.0, abs=1e-6)
    for cls in (CLIPTemporalConsistency, CLIPFirstFrameConsistency):
        m = cls(clip)
        m.update(v)
        assert m.compute().item() == pytest.approx(1.0, abs=1e-6)
    moving = moving_video(4, 32, 32, dx=5)[None]
    pic2 = PerceptualInputConformity(ds)
    pic2.update(moving[:, 0], moving)
    assert pic2.compute().item() < 1.0


def test_identical_sets_give_zero_fvd_kvd_fid():
    i3d = build_extractor("i3d", allow_random_weights=True, **TINY_EXTRACTORS["i3d"])
    vids = torch.stack([moving_video(8, 32, 32, dx=i % 3, dy=i % 2, seed=i) for i in range(5)])
    fvd = FrechetVideoDistance(i3d)
    fvd.update(vids, real=True)
    fvd.update(vids, real=False)
    assert fvd.compute().item() == pytest.approx(0.0, abs=1e-6)
    kvd = KernelVideoDistance(i3d, num_subsets=3)
    kvd.update(vids, real=True)
    kvd.update(vids, real=False)
    assert kvd.compute()["single"] <= 1e-9
    other = FrechetVideoDistance(i3d)
    other.update(vids, real=True)
    other.update(-vids, real=False)
    assert other.compute().item() > 1e-3
    fid = FrechetInceptionDistanceFrames(num_features=400)  # FID state over frame features
    frames = i3d(vids)  # any per-frame features: FID's class is the streaming FD over b*f rows
    fid.update(real=True, features=frames)
    fid.update(real=False, features=frames)
    assert fid.compute().item() == pytest.approx(0.0, abs=1e-6)


def test_psnr_ssim_identical_and_known_noise():
    v = moving_video(3, 32, 32)[None]
    s = VideoSSIM()
    s.update(v, v)
    assert s.compute().item() == pytest.approx(1.0, abs=1e-6)
    x = (v + 1) / 2
    noisy01 = (x + 0.1).clamp(max=1.0)  # MSE known exactly where not clipped
    exact = 10 * torch.log10(1 / ((noisy01 - x) ** 2).mean())
    p = VideoPSNR()
    p.update(noisy01 * 2 - 1, v)
    assert p.compute().item() == pytest.approx(exact.item(), rel=1e-5)


def test_missing_weights_fail_with_config_key_and_source(tmp_path):
    for name, key, where in [
        ("i3d", "eval.extractors.i3d.weights_path", "i3d_torchscript.pt"),
        ("inception", "eval.extractors.inception.weights_path", "pt_inception"),
        ("clip", "eval.extractors.clip.weights_path", "clip-vit-base-patch32"),
        ("dreamsim", "eval.extractors.dreamsim.weights_path", "dreamsim_ensemble_checkpoint"),
        ("raft", "eval.extractors.flow.weights_path", "raft"),
        ("lpips", "eval.extractors.lpips.weights_path", "alexnet"),
    ]:
        with pytest.raises(MissingWeightsError) as e:
            build_extractor(name)
        assert key in str(e.value) and where in str(e.value) and "allow_random_weights" in str(e.value)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        build_extractor("i3d", weights_path=str(tmp_path / "nope.pt"))


def test_i3d_state_dict_roundtrip_and_mismatch(tmp_path):
    src = build_extractor("i3d", allow_random_weights=True, seed=3, **TINY_EXTRACTORS["i3d"])
    ck = tmp_path / "i3d.pt"
    torch.save(src.net.state_dict(), ck)
    loaded = build_extractor("i3d", weights_path=str(ck), **TINY_EXTRACTORS["i3d"])
    assert loaded.comparable and not src.comparable
    assert len(loaded.weights_hash) == 16
    v = moving_video(8, 32, 32, dx=1)[None]
    assert torch.allclose(loaded(v), src(v), atol=1e-6)
    assert {"Conv3d_1a_7x7.conv3d.weight", "Mixed_5c.b3b.bn.running_var", "logits.conv3d.bias"} <= set(
        src.net.state_dict()
    )
    bad = tmp_path / "bad.pt"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(RuntimeError, match="do not match"):
        build_extractor("i3d", weights_path=str(bad), **TINY_EXTRACTORS["i3d"])


def test_i3d_full_architecture_shapes():
    """The exact size of the published I3D as TATS builds it: songweige/TATS ``tats/fvd/pytorch_i3d.py``
    ``InceptionI3d(400, in_channels=3)`` (at commit 03bbce1) has 12,697,264 parameters, 14,617 buffer
    elements and 344 state-dict entries, with the same names and shapes as ours (counted once with the
    reference code; the state-dict layout itself is checked against the TATS weights' digest by the parity
    fixtures)."""
    with torch.device("meta"):
        from i2vlab.metrics.extractors.i3d import InceptionI3d

        net = InceptionI3d(400)
    assert sum(p.numel() for p in net.parameters()) == 12_697_264
    assert sum(b.numel() for b in net.buffers()) == 14_617
    sd = net.state_dict()
    assert len(sd) == 344
    assert tuple(sd["Conv3d_1a_7x7.conv3d.weight"].shape) == (64, 3, 7, 7, 7)
    assert tuple(sd["Mixed_4f.b1b.conv3d.weight"].shape) == (320, 160, 3, 3, 3)
    assert tuple(sd["logits.conv3d.weight"].shape) == (400, 1024, 1, 1, 1)
    assert net.logits.conv3d.out_channels == 400 and net.Mixed_5c.out_channels == 1024


def test_raft_and_lpips_load_local_weights(tmp_path):
    from torchvision.models import alexnet
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    ref = raft_small(weights=None).eval()
    torch.save(ref.state_dict(), tmp_path / "raft.pt")
    r = build_extractor(
        "raft", weights_path=str(tmp_path / "raft.pt"), variant="raft_small", num_flow_updates=2
    )
    a, b = moving_video(2, 128, 128, dx=2)[:1], moving_video(2, 128, 128, dx=2)[1:]
    with torch.no_grad():
        expect = ref(a, b, num_flow_updates=2)[-1]
    assert torch.allclose(r(a, b), expect, atol=1e-5)
    feats = {k: v for k, v in alexnet(weights=None).state_dict().items() if k.startswith("features.")}
    torch.save(feats, tmp_path / "alex.pt")
    lp = build_extractor("lpips", weights_path=str(tmp_path / "alex.pt"))
    assert torch.equal(lp.model.net.slice1._modules["0"].weight, feats["features.0.weight"])
    assert torch.equal(lp.model.net.slice5._modules["10"].weight, feats["features.10.weight"])
    assert lp(a, a).abs().max() < 1e-6 and lp(a, b).min() > 0


def test_i3d_bn_eps_follows_weights_origin_and_is_in_the_cache_key(tmp_path):
    auto = build_extractor("i3d", allow_random_weights=True, **TINY_EXTRACTORS["i3d"])
    tf = build_extractor("i3d", allow_random_weights=True, bn_eps=1e-3, **TINY_EXTRACTORS["i3d"])
    assert auto.net.Mixed_3b.b1b.bn.eps == 1e-5 and tf.net.Conv3d_1a_7x7.bn.eps == 1e-3
    assert auto.settings()["bn_eps"] == 1e-5 and auto.signature() != tf.signature()
    ck = tmp_path / "i3d.pt"
    torch.save(auto.net.state_dict(), ck)  # a TATS-layout state dict: eps 1e-5 by default
    assert build_extractor("i3d", weights_path=str(ck), **TINY_EXTRACTORS["i3d"]).bn_eps == 1e-5
    with pytest.raises(ValueError, match="bn_eps"):
        build_extractor("i3d", allow_random_weights=True, bn_eps=-1, **TINY_EXTRACTORS["i3d"])


def test_evalcrafter_compat_flags_reach_the_metrics_and_the_cache_key(tmp_path, dis):
    from eval_helpers import eval_cfg

    from i2vlab.evaluation import Evaluator

    base = eval_cfg(tmp_path, metrics=["flow_score", "warping_error"], resolution=[30, 34])
    ev = Evaluator(base)
    on = Evaluator(
        {
            **base,
            "flow_score": {"evalcrafter_compat": {"pad_no_crop": True}},
            "warping_error": {"evalcrafter_compat": {"pad_no_crop": True, "double_rescale": True}},
        }
    )
    assert ev.metrics["warping_error"].compat == {"pad_no_crop": False, "double_rescale": False}
    assert on.metrics["warping_error"].compat == {"pad_no_crop": True, "double_rescale": True}
    assert on.metrics["flow_score"].compat == {"pad_no_crop": True}
    assert ev.features["flow"].signature() != on.features["flow"].signature()  # in the cache key
    with pytest.raises(ValueError, match=r"eval\.warping_error\.evalcrafter_compat\.crop"):
        Evaluator({**base, "warping_error": {"evalcrafter_compat": {"crop": True}}})
    with pytest.raises(ValueError, match="evalcrafter_compat: unknown"):
        WarpingError(dis, evalcrafter_compat={"crop": True})
    v = moving_video(3, 30, 34, dx=1)  # not a multiple of 8: the padding matters
    for flags in ({"pad_no_crop": True}, {"double_rescale": True}):
        assert not torch.allclose(Fm.warping_errors(v, dis, **flags), Fm.warping_errors(v, dis))
    assert not torch.allclose(Fm.flow_magnitudes(v, dis, pad_no_crop=True), Fm.flow_magnitudes(v, dis))


def test_princeton_raft_keys_convert_to_torchvision(tmp_path):
    """princeton-vl key names (DataParallel 'module.' prefix, the duplicated norm3 = downsample.1 entry)
    load into torchvision's raft_large; a corrupted duplicate is refused."""
    from torchvision.models.optical_flow import raft_large

    from i2vlab.metrics.extractors.flow import convert_princeton_raft, is_princeton_raft

    sd = {
        "module.fnet.conv1.weight": torch.ones(1),
        "module.cnet.norm1.running_var": torch.ones(1),
        "module.cnet.layer2.0.norm3.weight": torch.full((2,), 2.0),
        "module.cnet.layer2.0.downsample.1.weight": torch.full((2,), 2.0),
        "module.cnet.layer2.0.conv2.bias": torch.ones(1),
        "module.update_block.encoder.convc2.weight": torch.ones(1),
        "module.update_block.gru.convq2.bias": torch.ones(1),
        "module.update_block.mask.2.weight": torch.ones(1),
    }
    assert is_princeton_raft(sd) and not is_princeton_raft(raft_large(weights=None).state_dict())
    assert set(convert_princeton_raft(sd)) == {
        "feature_encoder.convnormrelu.0.weight",
        "context_encoder.convnormrelu.1.running_var",
        "context_encoder.layer2.0.downsample.1.weight",
        "context_encoder.layer2.0.convnormrelu2.0.bias",
        "update_block.motion_encoder.convcorr2.0.weight",
        "update_block.recurrent_block.convgru2.convq.bias",
        "mask_predictor.conv.weight",
    }
    sd["module.cnet.layer2.0.norm3.weight"] = torch.zeros(2)
    with pytest.raises(ValueError, match="differs"):
        convert_princeton_raft(sd)


def test_clip_standard_convention_is_the_hf_image_processor():
    """``standard`` = transformers' CLIPImageProcessor on the uint8 frames (the old hand-written resize rounded
    the long side, 262x270 -> 224x231 instead of 224x230, and was 18 % off in pixel values)."""
    from transformers import CLIPImageProcessor

    from i2vlab.metrics.extractors.clip import CLIPExtractor

    tiny = {
        **TINY_EXTRACTORS["clip"]["tiny"],
        "vision": {**TINY_EXTRACTORS["clip"]["tiny"]["vision"], "image_size": 224},
    }
    ex = CLIPExtractor(None, convention="standard", tiny=tiny)
    g = torch.Generator().manual_seed(0)
    for h, w in ((262, 270), (96, 120)):
        u8 = torch.randint(0, 256, (2, 3, h, w), generator=g, dtype=torch.uint8)
        ref = CLIPImageProcessor()(images=list(u8), return_tensors="pt")["pixel_values"]
        assert torch.equal(ex._prep(u8.float() / 127.5 - 1), ref)
    assert ex.settings()["resize"]["processor"] == "CLIPImageProcessor"
