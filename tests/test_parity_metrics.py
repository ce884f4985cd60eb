"""Parity of the evaluator's metrics with their reference implementations.

Fixtures (``tests/fixtures/parity/metrics/``) were made by ``scripts/parity/metrics.py`` from TATS
(``tats/fvd``), cd-fvd, pytorch-fid, torch-fidelity, torchmetrics, StyleGAN-V (``src/metrics``),
VQAssessment/DOVER and EvalCrafter (``metrics/Scores_with_CLIP``, ``metrics/RAFT``); each ``.json``
records the repository and commit. Large networks are not stored: their seeded random weights are
rebuilt here with the generator's procedure (``randomize_`` / ``random_state_dict`` of
``scripts/parity/common.py``) and checked against the stored digest. Inputs go through *our*
extractors and converters; tolerances are the fidelity docs' (float32 1e-5, float64 1e-10) unless a
test says why not.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from parity_helpers import assert_rel_close, load_fixture, rel_err

from i2vlab.metrics import (
    CLIPFirstFrameConsistency,
    CLIPTemporalConsistency,
    CLIPTextSimilarity,
    FlowScore,
    FrechetVideoDistance,
    KernelVideoDistance,
    WarpingError,
    build_extractor,
    frechet_distance,
    gaussian_stats,
    polynomial_mmd,
    polynomial_mmd_subsets,
)
from i2vlab.metrics import functional as Fm
from i2vlab.metrics.extractors.clip import CLIPExtractor
from i2vlab.metrics.extractors.dover import DOVERExtractor, rescale_scores
from i2vlab.metrics.extractors.i3d import I3DExtractor
from i2vlab.metrics.extractors.inception import InceptionExtractor

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("parity_common", ROOT / "scripts" / "parity" / "common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

G = "metrics"


def _u8_video(x: torch.Tensor) -> torch.Tensor:
    """stored uint8 ``... h w c`` -> ours: ``... c h w`` in [-1, 1]."""
    return x.movedim(-1, -3).float() / 127.5 - 1


def _seeded(module, fx, **kw):
    common.randomize_(module, fx.config["seed"], gain=fx.config.get("gain", 1.0), **kw)
    assert common.state_dict_digest(module.state_dict()) == fx.meta["weights_digest"], (
        "seeded weights drifted"
    )
    return module


# ---------------------------------------------------------------------------------------------- I3D
@pytest.fixture(scope="module")
def i3d():
    fx = load_fixture(G, "i3d")
    ex = I3DExtractor(None)
    _seeded(ex.net, fx)
    return fx, ex, ex(_u8_video(fx["in.videos"]))


def test_i3d_features_match_tats(i3d):
    """TATS preprocess + InceptionI3d (float32) on 4 clips = our extractor (squash resize, bn_eps auto)."""
    fx, ex, feats = i3d
    assert_rel_close(feats, fx["out.tats_f32"], what="I3D logits (float32)")  # measured: 0 (bit-identical)
    assert ex.bn_eps == 1e-5 and ex.settings()["bn_eps"] == 1e-5


def test_i3d_network_matches_tats_float64(i3d):
    fx, ex, _ = i3d
    ex.net.double()
    try:
        feats = ex(_u8_video(fx["in.videos"][:1]))
    finally:
        ex.net.float()
    assert feats.dtype == torch.float64
    assert_rel_close(feats, fx["out.tats_f64"][:1], what="I3D logits (float64)")  # measured: 0


def test_i3d_tf_bn_eps_does_not_match_tats_weights(i3d):
    """The old default (eps 1e-3, the TF graph's) is off by ~0.6 % on the TATS state dict; it stays an option
    and is part of the feature-cache key."""
    fx, ex, _ = i3d
    old = I3DExtractor(None, bn_eps=1e-3)
    old.net.load_state_dict(ex.net.state_dict())
    err = rel_err(old(_u8_video(fx["in.videos"][:1])), fx["out.tats_f32"][:1])
    assert err > 1e-3, err  # measured 6.0e-3
    assert old.settings()["bn_eps"] == 1e-3 and old.signature() != ex.signature()


def test_fvd_kvd_end_to_end_match_cdfvd_and_tats(i3d):
    """Our features -> the evaluator's FVD (styleganv variant: 1/N) = cd-fvd ``compute_fvd`` on the same clips."""
    fx, ex, feats = i3d
    fvd = FrechetVideoDistance(ddof=0)
    fvd.update(real=True, features=feats[:2])
    fvd.update(real=False, features=feats[2:])
    value = fvd.compute().item()
    ref = fx["out.cdfvd_fvd"].item()
    # 2 clips per set: rank-1 covariances, tr √(Σ1Σ2) = |d1·d2|/4 exactly (d = difference of the two clips)
    f = feats.double().numpy()
    d1, d2, dm = f[0] - f[1], f[2] - f[3], f[:2].mean(0) - f[2:].mean(0)
    exact = dm @ dm + d1 @ d1 / 4 + d2 @ d2 / 4 - abs(d1 @ d2) / 2
    assert value == pytest.approx(exact, rel=1e-10)
    # cd-fvd's scipy sqrtm on the singular product is off by ~5e-7 relative: measured 5.5e-7
    assert abs(value - ref) / ref < 1e-6, (value, ref)


# ----------------------------------------------------------------------------------------- Inception
@pytest.fixture(scope="module")
def inception():
    fx = load_fixture(G, "inception")
    exs = {m: InceptionExtractor(None, resize_mode=m) for m in ("squash", "tf1_squash")}
    _seeded(exs["squash"].net, fx)
    exs["tf1_squash"].net = exs["squash"].net  # one network, two preprocessings
    return fx, exs


@pytest.mark.parametrize("name", ["big", "small"])
def test_inception_squash_matches_pytorch_fid_float64(inception, name):
    fx, exs = inception
    ex = exs["squash"]
    ex.net.double()
    try:
        f = ex(fx[f"in.{name}"].float() / 127.5 - 1)
    finally:
        ex.net.float()
    assert_rel_close(f, fx[f"out.pytorch_fid.{name}.f64"], what="pool3 vs pytorch-fid")  # measured 5e-16


@pytest.mark.parametrize("name", ["big", "small"])
def test_inception_tf1_squash_matches_torch_fidelity(inception, name):
    fx, exs = inception
    ex = exs["tf1_squash"]
    x = fx[f"in.{name}"].float() / 127.5 - 1
    assert_rel_close(ex(x), fx[f"out.fidelity.{name}.32"], what="float32")  # measured 0
    ex.net.double()
    try:
        f64 = ex(x)
    finally:
        ex.net.float()
    assert_rel_close(f64, fx[f"out.fidelity.{name}.64"], what="float64")  # measured 0


def test_tf1_squash_equals_torchmetrics_only_without_antialias(inception):
    """torchmetrics' FID extractor equals torch-fidelity (our ``tf1_squash``) with ``antialias=False``; its
    default ``antialias=True`` differs for images larger than 299 px (here 320x336)."""
    fx, exs = inception
    f = exs["tf1_squash"](fx["in.big"].float() / 127.5 - 1)
    assert_rel_close(f, fx["out.torchmetrics_antialias_false.big.f32"])  # measured 0
    assert rel_err(f, fx["out.torchmetrics_antialias_true.big.f32"]) > 1e-3  # measured 1.8e-3


def test_docs_do_not_claim_tf1_squash_equals_torchmetrics_default():
    """Every place that relates ``tf1_squash`` to torchmetrics states the ``antialias=False`` condition."""
    files = [
        ROOT / "src/i2vlab/metrics/extractors/inception.py",
        ROOT / "docs/evaluation.md",
        ROOT / "conf/eval/base.yaml",
    ]
    for p in files:
        lines = p.read_text().splitlines()
        for i, line in enumerate(lines):
            if "torchmetrics" in line and ("tf1_squash" in line or "torch-fidelity" in line):
                window = " ".join(lines[max(0, i - 2) : i + 3])
                assert "antialias=False" in window, f"{p.name}:{i + 1}: {line.strip()}"


# ----------------------------------------------------------------------------------------- distances
@pytest.fixture(scope="module")
def dist():
    return load_fixture(G, "distances")


def _nuclear_fd(x: np.ndarray, y: np.ndarray, ddof: int) -> float:
    """Exact FD when N < d: tr √(Σx Σy) = ‖Xc Ycᵀ‖_* / √(nx ny) (an N x N problem, well conditioned)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    nx, ny = len(x) - ddof, len(y) - ddof
    nuc = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt(nx * ny)
    dm = x.mean(0) - y.mean(0)
    return float(dm @ dm + (xc**2).sum() / nx + (yc**2).sum() / ny - 2 * nuc)


def test_fvd_matches_stylegan_v_full_rank(dist):
    """StyleGAN-V compute_fvd (FeatureStats 1/N, sqrtm) on 256 x 64 features; also through the streaming metric."""
    real, fake = dist["in.fullrank.real"], dist["in.fullrank.fake"]
    ref = dist["out.fullrank.stylegan_v_fvd"]
    ours = frechet_distance(*gaussian_stats(real, ddof=0), *gaussian_stats(fake, ddof=0))
    assert_rel_close(torch.tensor(ours, dtype=torch.float64), ref)  # measured 1.8e-15
    m = FrechetVideoDistance(num_features=64, ddof=0)
    for chunk in (slice(0, 100), slice(100, 256)):
        m.update(real=True, features=real[chunk])
        m.update(real=False, features=fake[chunk])
    assert_rel_close(m.compute(), ref)  # measured 3e-15


def test_fvd_rank_deficient_is_exact_and_close_to_stylegan_v(dist):
    """64 x 400 (N < d, singular covariances): ours equals the exact value; StyleGAN-V's ``sqrtm`` of the
    singular product carries round-off (measured 4.9e-8 relative), so it is compared at 1e-7."""
    real, fake = dist["in.lowrank.real"], dist["in.lowrank.fake"]
    ours = frechet_distance(*gaussian_stats(real, ddof=0), *gaussian_stats(fake, ddof=0))
    assert ours == pytest.approx(_nuclear_fd(real.numpy(), fake.numpy(), 0), rel=1e-10)  # measured 0
    ref = dist["out.lowrank.stylegan_v_fvd"].item()
    assert abs(ours - ref) / ref < 1e-7, (ours, ref)


@pytest.mark.parametrize("name", ["lowrank", "fullrank"])
def test_fvd_tats_convention(dist, name):
    """TATS frechet_distance (float32 cov 1/(N-1) + tf-gan SVD) is reproduced by the float32 options; our
    float64 default is the accurate value (TATS's float32 round-off: measured 5.5e-7 / 2.8e-7)."""
    real, fake = dist[f"in.{name}.real"], dist[f"in.{name}.fake"]
    ref = dist[f"out.{name}.tats_fvd"]
    s32 = frechet_distance(
        *gaussian_stats(fake, ddof=1, dtype="float32"),
        *gaussian_stats(real, ddof=1, dtype="float32"),
        method="tfgan_svd",
        dtype="float32",
    )
    assert_rel_close(torch.tensor(s32), ref.float())  # measured 0 (bit-identical)
    exact = _nuclear_fd(fake.numpy(), real.numpy(), 1)
    assert frechet_distance(*gaussian_stats(fake), *gaussian_stats(real)) == pytest.approx(exact, rel=1e-10)
    s64 = frechet_distance(*gaussian_stats(fake), *gaussian_stats(real), method="tfgan_svd", dtype="float64")
    assert s64 == pytest.approx(exact, rel=1e-10)  # the tf-gan method itself is fine in float64
    assert abs(exact - ref.item()) / exact < 2e-6


@pytest.mark.parametrize("name", ["lowrank", "fullrank"])
def test_kvd_matches_tats_polynomial_mmd(dist, name):
    real, fake = dist[f"in.{name}.real"], dist[f"in.{name}.fake"]
    assert_rel_close(
        torch.tensor(polynomial_mmd(fake, real, dtype="float32")), dist[f"out.{name}.tats_kvd_f32"].float()
    )  # measured 0
    assert_rel_close(
        torch.tensor(polynomial_mmd(fake, real), dtype=torch.float64), dist[f"out.{name}.tats_kvd_f64"]
    )
    m = KernelVideoDistance(num_subsets=2, subset_size=16)
    m.update(real=True, features=real)
    m.update(real=False, features=fake)
    assert_rel_close(
        torch.tensor(m.compute()["single"], dtype=torch.float64), dist[f"out.{name}.tats_kvd_f64"]
    )


@pytest.mark.parametrize("name", ["lowrank", "fullrank"])
def test_kid_matches_stylegan_v(dist, name):
    """StyleGAN-V compute_kid (x1000, float32 features and sums, np.random subsets, generated set first)."""
    real, fake = dist[f"in.{name}.real"], dist[f"in.{name}.fake"]
    kc = dist.config["kid"]
    ref = dist[f"out.{name}.stylegan_v_kid"] / 1000
    kw = {"num_subsets": kc["num_subsets"], "subset_size": kc["max_subset_size"], "seed": kc["seed"]}
    mean32, _, m = polynomial_mmd_subsets(real, fake, sampling="stylegan", dtype="float32", **kw)
    assert m == kc["max_subset_size"]
    assert_rel_close(torch.tensor(mean32), ref.float())  # measured 0
    mean64, _, _ = polynomial_mmd_subsets(real, fake, sampling="stylegan", **kw)
    assert abs(mean64 - ref.item()) / ref.item() < 2e-6  # their float32 sums: measured 7e-7 / 1e-7


# --------------------------------------------------------------------------------------------- DOVER
@pytest.fixture(scope="module")
def dover():
    fx = load_fixture(G, "dover")
    c = fx.config
    ex = DOVERExtractor(None, tiny=c["tiny"], seed=c["view_seed"], **c["views"])
    common.randomize_(ex.net, c["seed"])
    assert common.state_dict_digest(ex.net.state_dict()) == fx.meta["weights_digest"]
    return fx, ex


@pytest.mark.parametrize("key", ["v0", "v1"])  # v1 (40x48) takes upstream's upsampling fallback
def test_dover_views_and_maps_match_upstream(dover, key):
    fx, ex = dover
    a, t = ex.views(_u8_video(fx[f"in.{key}"]))
    with torch.no_grad():
        ma, mt = ex.net(a, t)
        assert_rel_close(ma, fx[f"out.{key}.aesthetic_map"])  # measured 0
        assert_rel_close(mt, fx[f"out.{key}.technical_map"])  # measured 0
        ex.net.double()
        try:
            ma, mt = ex.net(a.double(), t.double())
        finally:
            ex.net.float()
    assert_rel_close(ma, fx[f"out.{key}.aesthetic_map_f64"])  # measured 0
    assert_rel_close(mt, fx[f"out.{key}.technical_map_f64"])  # measured 0


@pytest.mark.parametrize("key", ["v0", "v1"])
def test_dover_scores_match_evalcrafter(dover, key):
    fx, ex = dover
    raw = ex(_u8_video(fx[f"in.{key}"])[None])[0]
    assert_rel_close(raw, fx[f"out.{key}.raw"].float())  # float32 mean order (np.mean vs torch): 7e-8
    r = rescale_scores(raw[:1].double(), raw[1:].double(), "evalcrafter")
    fused = torch.cat([r["aesthetic"], r["technical"], r["overall"]])
    assert_rel_close(fused, fx[f"out.{key}.fused"].float())  # measured 3e-8


# ---------------------------------------------------------------------------------------------- CLIP
@pytest.fixture(scope="module")
def clip():
    fx = load_fixture(G, "clip")
    c = fx.config
    ex = CLIPExtractor(None, convention="evalcrafter_raw", tiny=c["tiny"], seed=0)
    _seeded(ex.model, fx)
    return fx, ex


@pytest.mark.parametrize("key", ["big", "small"])  # 262x270 (downsampled to 224) and 96x120 (upsampled)
def test_clip_metrics_match_evalcrafter(clip, key):
    """CLIPTemp / first-frame (face) consistency / CLIP-SIM with ``evalcrafter_raw`` = EvalCrafter's functions.
    An antialiased resize (the old code) is off by 2.8e-3 / 9.4e-3 / 4.0e-2 on the 262x270 video."""
    fx, ex = clip
    v = _u8_video(fx[f"in.{key}"])[None]
    for metric, ref in (
        (CLIPTemporalConsistency(ex), "clip_temp"),
        (CLIPFirstFrameConsistency(ex), "face_consistency"),
    ):
        metric.update(v)
        assert_rel_close(metric.compute(), fx[f"out.{key}.{ref}"].float(), what=ref)  # measured <= 1e-7
    m = CLIPTextSimilarity(ex)
    m.update([fx.config["prompts"][key]], v)
    assert_rel_close(
        m.compute(), fx[f"out.{key}.clip_score"].float(), what="clip_score"
    )  # measured <= 2.5e-7


def test_clip_text_frames_use_evalcrafter_opencv_resize(clip):
    """CLIP-SIM frames go through cv2.resize on uint8 (calculate_clip_score), the others through a float
    bilinear resize (calculate_clip_temp_score): the two differ, and both are in the cache key."""
    fx, ex = clip
    v = _u8_video(fx["in.big"])
    assert ex.text_frames_differ
    assert rel_err(ex.embed_images(v, for_text=True), ex.embed_images(v)) > 1e-4
    assert "cv2.resize" in str(ex.settings()["resize"]) and "no antialias" in str(ex.settings()["resize"])


# ---------------------------------------------------------------------------------------------- flow
class _MemoNet(torch.nn.Module):
    """Caches the wrapped RAFT's output per input (the compat/default variants below share most flows)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.cache = net, {}

    def forward(self, a, b, num_flow_updates=12):
        key = (tuple(a.shape), a.numpy().tobytes(), b.numpy().tobytes(), num_flow_updates)
        if key not in self.cache:
            self.cache[key] = self.net(a, b, num_flow_updates=num_flow_updates)
        return self.cache[key]


@pytest.fixture(scope="module")
def raft():
    """EvalCrafter's RAFT weights layout (``module.``-prefixed princeton-vl keys, as raft-things.pth) rebuilt
    from the stored spec, loaded through our converter."""
    fx = load_fixture(G, "flow")
    sd = common.random_state_dict(fx.meta["raft_spec"], fx.config["seed"], fx.config["gain"])
    for k in ("update_block.flow_head.conv2.weight", "update_block.flow_head.conv2.bias"):
        sd[k] = sd[k] * fx.config["flow_head_scale"]
    assert common.state_dict_digest(sd) == fx.meta["weights_digest"]
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / "raft-things.pth"
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
        ex = build_extractor("raft", weights_path=str(path))
    assert ex.weights_format == "princeton-vl (converted)"
    ex.net = _MemoNet(ex.net)
    return fx, ex


def test_raft_converted_weights_match_evalcrafter_raft(raft):
    fx, ex = raft
    v = Fm.pad_to_multiple(_u8_video(fx["in.mid"][:2]), 8)
    flow = ex(v[:1], v[1:])
    # two float32 implementations of 20 GRU iterations (princeton-vl core vs torchvision): measured 5.4e-7
    assert_rel_close(flow, fx["out.mid.flow01"])


def test_raft_small_converted_weights_match_evalcrafter_raft_small(raft):
    """raft-small.pth layout (bottleneck encoders, one ConvGRU, no mask head) -> torchvision raft_small."""
    fx, _ = raft
    sd = common.random_state_dict(fx.meta["raft_small_spec"], fx.config["seed"] + 1, fx.config["gain"])
    for k in ("update_block.flow_head.conv2.weight", "update_block.flow_head.conv2.bias"):
        sd[k] = sd[k] * fx.config["flow_head_scale"]
    assert common.state_dict_digest(sd) == fx.meta["small_weights_digest"]
    with tempfile.TemporaryDirectory() as td:
        torch.save({f"module.{k}": v for k, v in sd.items()}, Path(td) / "raft-small.pth")
        ex = build_extractor("raft", weights_path=str(Path(td) / "raft-small.pth"), variant="raft_small")
    v = Fm.pad_to_multiple(_u8_video(fx["in.mid"][:2]), 8)
    assert_rel_close(ex(v[:1], v[1:]), fx["out.mid.flow01_small"])


def test_flow_score_matches_evalcrafter_with_compat_flag(raft):
    fx, ex = raft
    v, ref = _u8_video(fx["in.mid"]), fx["out.mid.flow_score"]
    compat = FlowScore(ex, evalcrafter_compat={"pad_no_crop": True})
    compat.update(v[None])
    assert_rel_close(compat.compute(), ref.float())  # measured 1.4e-9
    default = FlowScore(ex)  # the mean over the frame's own pixels (padding cropped)
    default.update(v[None])
    assert rel_err(default.compute(), ref) > 1e-3  # measured 4.6e-2 (130x138 padded to 136x144)


def test_warping_error_matches_evalcrafter_with_compat_flags(raft):
    fx, ex = raft
    v, ref = _u8_video(load_fixture(G, "clip")["in.big"]), fx["out.big.warping_error"]
    compat = WarpingError(ex, evalcrafter_compat={"pad_no_crop": True, "double_rescale": True})
    compat.update(v[None])
    assert_rel_close(compat.compute(), ref.float())  # measured 4.1e-8
    for flags, measured in (
        ({}, 4.6e-2),
        ({"pad_no_crop": True}, 5.8e-2),
        ({"double_rescale": True}, 7.9e-3),
    ):
        m = WarpingError(ex, evalcrafter_compat=flags)
        m.update(v[None])
        assert rel_err(m.compute(), ref) > 1e-3, (flags, measured)
