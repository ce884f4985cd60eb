"""Parity fixtures for the evaluator's metrics: run the reference implementations on seeded random
weights and shared inputs, and store inputs and outputs under ``tests/fixtures/parity/metrics/``
(``tests/test_parity_metrics.py`` compares our extractors, converters and distances against them).

Usage (one fixture group, or ``all``; about a minute on one CPU thread)::

    OMP_NUM_THREADS=1 python scripts/parity/metrics.py all
    OMP_NUM_THREADS=1 python scripts/parity/metrics.py i3d inception distances dover clip flow

The fixtures are deterministic: regenerating gives byte-identical ``.safetensors`` on the same stack.

What each group runs (the reference code is imported from checkouts outside this project, at
fixture-generation time only):

- ``i3d``: TATS ``tats/fvd/pytorch_i3d.py InceptionI3d`` (+ ``tats/fvd/fvd.py preprocess``) and cd-fvd
  0.1.1 (``cdfvd.cdfvd('i3d').compute_fvd``, its I3D copy and FeatureStats/sqrtm FVD) with one seeded
  random state dict (``randomize_`` on our ``InceptionI3d``; TATS layout = ours), on 4 uint8 clips;
- ``inception``: pytorch-fid 0.3.0 ``InceptionV3`` (``load_state_dict_from_url`` replaced by the seeded
  random state dict), torch-fidelity 0.4.0 ``FeatureExtractorInceptionV3`` (float32 and float64) and
  torchmetrics' ``NoTrainInceptionV3`` (``antialias=False`` and its default ``True``);
- ``distances``: StyleGAN-V ``src/metrics/frechet_video_distance.py compute_fvd`` and
  ``kernel_inception_distance.py compute_kid`` (only their feature loaders replaced: FeatureStats filled
  with stored features) and TATS ``tats/fvd/fvd.py frechet_distance`` / ``polynomial_mmd``;
- ``dover``: VQAssessment/DOVER modules (``SwinTransformer3D``, ``ConvNeXt3D``, ``VQAHead``, ``DOVER.forward``)
  at reduced width/depth (the constructors take them), views from its ``ViewDecompositionDataset`` with a
  stand-in for ``decord.VideoReader``, scores rescaled with EvalCrafter's ``fuse_results`` constants;
- ``clip``: EvalCrafter ``metrics/Scores_with_CLIP/Scores_with_CLIP.py`` ``calculate_clip_temp_score``,
  ``calculate_face_consistency_score``, ``calculate_clip_score`` with a stand-in for ``cv2.VideoCapture``
  and a tiny seeded ``transformers.CLIPModel``;
- ``flow``: EvalCrafter ``metrics/RAFT/optical_flow_scores.py`` ``calculate_flow_score`` and
  ``compute_video_warping_error`` with its RAFT (``metrics/RAFT/core``, full size, seeded random
  weights drawn from a stored state-dict spec) on CPU.

Environment (or the flags of the same name):

- ``I2VLAB_OFFICIAL_TATS`` (``--tats``): a checkout of songweige/TATS;
- ``I2VLAB_OFFICIAL_STYLEGANV`` (``--stylegan-v``): a checkout of universome/stylegan-v;
- ``I2VLAB_OFFICIAL_EVALCRAFTER`` (``--evalcrafter``): a checkout of evalcrafter/EvalCrafter;
- ``I2VLAB_OFFICIAL_DOVER`` (``--dover``): a checkout of VQAssessment/DOVER;
- ``I2VLAB_REFERENCE_SITE`` (``--site``): a folder made with ``pip install --no-deps --target <folder>
  pytorch-fid==0.3.0 torch-fidelity==0.4.0 cd-fvd==0.1.1 scikit-learn joblib threadpoolctl`` (never into
  the project venv);
- ``I2VLAB_REFERENCE_TIMM`` (``--timm-site``): a folder with ``pip install --no-deps --target <folder> timm``
  (DOVER's backbones import ``timm.models.layers``).

Commits are read from ``git rev-parse HEAD`` in a checkout or its ``COMMIT`` file (``--*-commit`` to
override). Everything runs on CPU with ``OMP_NUM_THREADS=1`` in a few minutes; the project's
``.venv`` (torch, torchvision, transformers, opencv, decord, numpy, scipy) is the environment.

Stand-ins (not the reference's maths, only its environment): ``cv2.VideoCapture`` /
``decord.VideoReader`` yield the stored frames; EvalCrafter's pinned torchvision 0.15.2 did not
antialias tensor ``Resize`` (``antialias=None``), so ``transforms.Resize`` is given ``antialias=False``
in the EvalCrafter and DOVER modules (torchvision 0.17+ default to True); FlowNet2's CUDA
``Resample2d`` (used by EvalCrafter's warping error) is replaced by a CPU gather that follows its
kernel (bilinear, pixel offsets, indices clamped to the border); ``.cuda()`` calls in
``warp_utils.detect_occlusion`` are no-ops; ``ipdb``, ``pycocoevalcap``, ``skvideo`` and the unused
``diffusers`` pipelines are empty modules; transformers 5's ``get_image_features`` /
``get_text_features`` return an output object, so the shared CLIP model is wrapped to return the
projected tensor as transformers 4 did.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    FIXTURES,
    official_checkout,
    official_commit,
    on_path,
    random_state_dict,
    randomize_,
    save_fixture,
    state_dict_digest,
    state_dict_spec,
)

GROUP = "metrics"
GEN = "scripts/parity/metrics.py"
REPOS = {
    "tats": ("I2VLAB_OFFICIAL_TATS", "songweige/TATS"),
    "stylegan_v": ("I2VLAB_OFFICIAL_STYLEGANV", "universome/stylegan-v"),
    "evalcrafter": ("I2VLAB_OFFICIAL_EVALCRAFTER", "evalcrafter/EvalCrafter"),
    "dover": ("I2VLAB_OFFICIAL_DOVER", "VQAssessment/DOVER"),
}

# seeds and sizes shared with tests/test_parity_metrics.py (which rebuilds the same weights)
I3D_SEED, I3D_GAIN = 1001, 1.4
INCEPTION_SEED, INCEPTION_GAIN = 1002, 1.4
DOVER_SEED, DOVER_VIEW_SEED = 1003, 7
CLIP_SEED, CLIP_GAIN = 1004, 4.0  # gain 4: frame embeddings differ (cos 0.84-0.93, not 0.999)
RAFT_SEED, RAFT_GAIN = 1005, 1.0
# random RAFTs give rough, large flows (all pixels "occluded" for the warping error): the last conv of the
# flow head is scaled down so the flows are ~0.3 px and 35-80 % of the pixels pass the occlusion check
RAFT_FLOW_HEAD_SCALE = 0.002
DOVER_TINY = {
    "swin": {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]},
    "convnext": {"depths": [2, 2, 3, 2], "dims": [16, 32, 64, 128]},
    "head_hidden": 16,
}
DOVER_VIEWS = {
    "technical": {"fragments": 2, "fsize": 32, "clip_len": 32, "frame_interval": 2, "num_clips": 2},
    "aesthetic": {"size": 64, "clip_len": 32, "t_frag": 32, "frame_interval": 2},
}
CLIP_TINY = {
    "vision": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
               "image_size": 224, "patch_size": 32},
    "text": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "vocab_size": 300},
    "projection_dim": 24,
}  # fmt: skip


def _texture_video(rng: np.random.Generator, f: int, h: int, w: int, shift=(2, 1)) -> np.ndarray:
    """uint8 ``f h w 3``: a smooth random texture drifting by ``shift`` px per frame, plus noise
    (flow networks and CLIP see structure; every pixel still differs between frames)."""
    import cv2

    base = rng.random((h // 6 + 3, w // 6 + 3, 3)).astype(np.float32)
    base = cv2.resize(base, (w + 8 * f, h + 8 * f), interpolation=cv2.INTER_CUBIC)
    out = []
    for t in range(f):
        dy, dx = t * shift[1], t * shift[0]
        fr = base[dy : dy + h, dx : dx + w]
        fr = fr + 0.03 * rng.standard_normal(fr.shape).astype(np.float32)
        out.append(np.clip((fr - base.min()) / (base.max() - base.min()) * 255, 0, 255).round())
    return np.stack(out).astype(np.uint8)


def _dist_version(site: Path, name: str) -> str:
    for d in site.glob("*.dist-info"):
        meta = importlib.metadata.PathDistribution(d)
        if meta.metadata["Name"].lower().replace("_", "-") == name:
            return meta.version
    raise SystemExit(f"{name} is not installed in {site}")


@contextlib.contextmanager
def stub_modules(**mods):
    """Put empty (or given) modules into ``sys.modules`` for the duration."""
    old = {k: sys.modules.get(k) for k in mods}
    for k, v in mods.items():
        sys.modules[k] = v if isinstance(v, types.ModuleType) else types.ModuleType(k)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def package_stub(name: str, path: Path) -> types.ModuleType:
    """A package ``name`` whose submodules come from ``path`` without running its ``__init__.py``
    (TATS's imports its whole training stack)."""
    pkg = types.ModuleType(name)
    pkg.__path__ = [str(path)]
    return pkg


def tats_fvd_module(tats: Path, site: Path):
    """``tats.fvd.fvd`` (and its ``pytorch_i3d``) imported from the checkout."""
    with on_path(tats, site), stub_modules(tats=package_stub("tats", tats / "tats")):
        for k in [k for k in sys.modules if k.startswith("tats.")]:
            del sys.modules[k]
        return importlib.import_module("tats.fvd.fvd")


# ---------------------------------------------------------------------------------------------- I3D
def gen_i3d(args) -> None:
    """TATS InceptionI3d (float32 pipeline with its ``preprocess``; float64 network) and cd-fvd's
    end-to-end FVD on the same seeded random weights and clips."""
    from i2vlab.metrics.extractors.i3d import InceptionI3d

    tats = official_checkout(args.tats, *REPOS["tats"])
    ours = randomize_(InceptionI3d(400).eval(), I3D_SEED, gain=I3D_GAIN)
    sd = ours.state_dict()
    rng = np.random.default_rng(11)
    videos = np.stack(
        [_texture_video(rng, 10, 40, 48, shift=(1 + i % 2, i % 3)) for i in range(4)]
    )  # b t h w c
    tats_fvd = tats_fvd_module(tats, Path(args.site))
    if True:
        net = tats_fvd.InceptionI3d(400, in_channels=3)
        net.load_state_dict(sd, strict=True)
        net.eval()
        with torch.no_grad():
            x32 = tats_fvd.preprocess(videos, tats_fvd.TARGET_RESOLUTION)
            out32 = net(x32)
            # float64: the same preprocessing maths in float64 (TATS's preprocess hard-codes float32)
            frames = torch.from_numpy(videos).double().flatten(0, 1).permute(0, 3, 1, 2)
            r = F.interpolate(frames, size=(224, 224), mode="bilinear", align_corners=False)
            x64 = (2.0 * r.view(4, 10, 3, 224, 224).transpose(1, 2) / 255.0 - 1).contiguous()
            out64 = net.double()(x64[:2])
    site = Path(args.site)
    with on_path(site), tempfile.TemporaryDirectory() as td:
        torch.save(sd, Path(td) / "i3d.pt")
        from cdfvd import fvd as cd_fvd

        ev = cd_fvd.cdfvd(
            "i3d", n_real="full", n_fake="full", ckpt_path=str(Path(td) / "i3d.pt"), device="cpu"
        )
        cd_value = ev.compute_fvd(videos[:2], videos[2:])
    tensors = {
        "in.videos": torch.from_numpy(videos),
        "out.tats_f32": out32,
        "out.tats_f64": out64,
        "out.cdfvd_fvd": torch.tensor(float(cd_value), dtype=torch.float64),
    }
    save_fixture(
        args.out,
        "i3d",
        tensors,
        repo=REPOS["tats"][1],
        commit=official_commit(tats, args.tats_commit),
        generator=GEN + " i3d",
        config={"seed": I3D_SEED, "gain": I3D_GAIN, "bn_eps": 1e-5, "real": [0, 1], "fake": [2, 3]},
        notes=(
            "weights: randomize_(i2vlab InceptionI3d(400), seed, gain) loaded strictly into TATS InceptionI3d "
            "(same key layout). out.tats_f32 = TATS net(TATS preprocess(videos)) in float32; out.tats_f64 = TATS "
            "net.double() on the first two clips resized with the same maths in float64; out.cdfvd_fvd = "
            f"cd-fvd {_dist_version(site, 'cd-fvd')} cdfvd('i3d').compute_fvd(videos[:2], videos[2:]) with the "
            "same state dict (its I3D copy, FeatureStats 1/N, scipy sqrtm)."
        ),
        extra={"weights_digest": state_dict_digest(sd), "also": {"cd-fvd": _dist_version(site, "cd-fvd")}},
    )


# ----------------------------------------------------------------------------------------- Inception
def gen_inception(args) -> None:
    """pytorch-fid / torch-fidelity / torchmetrics Inception pool3 features on the same weights."""
    from i2vlab.metrics.extractors.inception import fid_inception_v3

    site = Path(args.site)
    ours = randomize_(fid_inception_v3().eval(), INCEPTION_SEED, gain=INCEPTION_GAIN)
    sd = ours.state_dict()
    rng = np.random.default_rng(12)
    big = torch.from_numpy(_texture_video(rng, 1, 320, 336)).permute(0, 3, 1, 2).contiguous()  # downsampled
    small = torch.from_numpy(_texture_video(rng, 1, 40, 48)).permute(0, 3, 1, 2).contiguous()  # upsampled
    out = {"in.big": big, "in.small": small}
    with on_path(site), tempfile.TemporaryDirectory() as td:
        wpath = str(Path(td) / "inception.pth")
        torch.save(sd, wpath)
        import pytorch_fid.inception as pfi
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        pfi.load_state_dict_from_url = lambda *a, **k: dict(sd)  # the only download in pytorch-fid
        pf = pfi.InceptionV3([3], resize_input=True, normalize_input=True).eval().double()
        with torch.no_grad():
            for name, img in (("big", big), ("small", small)):
                out[f"out.pytorch_fid.{name}.f64"] = pf(img.double() / 255.0)[0].flatten(1)
                fe = FeatureExtractorInceptionV3(
                    "inception-v3-compat", ["2048"], feature_extractor_weights_path=wpath
                )
                out[f"out.fidelity.{name}.32"] = fe(img)[0]
                # float64: torch-fidelity 0.4.0 maps internal dtype "float64" to torch.float32 (torch_fidelity.helpers.
                # text_to_dtype), and casts the '2048' output to float32; so cast the module and take the
                # pool3 tensor before that cast with a hook on AvgPool.
                fe.double()
                fe.feature_extractor_internal_dtype = torch.float64
                pool: list[torch.Tensor] = []
                h = fe.AvgPool.register_forward_hook(lambda m, i, o, pool=pool: pool.append(o.flatten(1)))
                fe(img)
                h.remove()
                out[f"out.fidelity.{name}.64"] = pool[0]
            import torchmetrics.image.fid as tm_fid
            import torchmetrics.utilities.imports as tm_imports

            tm_imports._TORCH_FIDELITY_AVAILABLE = True  # torch-fidelity is importable from --site now
            NoTrainInceptionV3 = importlib.reload(tm_fid).NoTrainInceptionV3

            for aa in (False, True):
                tm = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=wpath,
                                        antialias=aa)  # fmt: skip
                out[f"out.torchmetrics_antialias_{str(aa).lower()}.big.f32"] = tm(big)[0].reshape(1, -1)
        versions = {n: _dist_version(site, n) for n in ("pytorch-fid", "torch-fidelity")}
    import torchmetrics

    versions["torchmetrics"] = torchmetrics.__version__
    save_fixture(
        args.out,
        "inception",
        out,
        repo="mseitzer/pytorch-fid (PyPI pytorch-fid), toshas/torch-fidelity (PyPI torch-fidelity)",
        commit=f"pytorch-fid {versions['pytorch-fid']}, torch-fidelity {versions['torch-fidelity']}",
        generator=GEN + " inception",
        config={"seed": INCEPTION_SEED, "gain": INCEPTION_GAIN},
        notes=(
            "weights: randomize_(i2vlab fid_inception_v3(), seed, gain) = the pt_inception-2015-12-05 key layout, "
            "given to pytorch-fid (its load_state_dict_from_url replaced), torch-fidelity and torchmetrics "
            "(feature_extractor_weights_path). pytorch_fid: InceptionV3([3]) in float64 on img/255; fidelity: "
            "FeatureExtractorInceptionV3 '2048' (uint8 in, TF1 resize inside) in float32, and in float64 (module cast "
            "with .double() and its internal dtype set to float64, because 0.4.0 maps 'float64' to float32; pool3 "
            "taken by a hook on AvgPool before the float32 cast of the output); "
            f"torchmetrics {versions['torchmetrics']} NoTrainInceptionV3 with antialias False / True (its default)."
        ),
        extra={"weights_digest": state_dict_digest(sd), "versions": versions},
    )


# ----------------------------------------------------------------------------------------- distances
def gen_distances(args) -> None:
    """StyleGAN-V compute_fvd / compute_kid and TATS frechet_distance / polynomial_mmd on stored features."""
    sgv = official_checkout(args.stylegan_v, *REPOS["stylegan_v"])
    tats = official_checkout(args.tats, *REPOS["tats"])
    g = torch.Generator().manual_seed(13)

    def feats(n, d, shift, scale):
        mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
        z = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix * scale + shift
        return z.float()

    sets = {
        # I3D-logit-like, N < d (rank-deficient covariances: the small-N regime, e.g. 50 videos)
        "lowrank": (feats(64, 400, 0.0, 3.0), feats(64, 400, 0.4, 3.3)),
        # N > d (full-rank covariances)
        "fullrank": (feats(256, 64, 0.0, 2.0), feats(256, 64, 0.25, 2.2)),
    }
    kid_cfg = {"num_subsets": 10, "max_subset_size": 48, "seed": 5}
    out = {}
    with on_path(sgv):
        ds = types.ModuleType("src.training.dataset")
        ds.video_to_image_dataset_kwargs = lambda kw: kw
        import src  # noqa: F401  (stylegan-v's package)

        sys.modules["src.training.dataset"] = ds
        from src.metrics import frechet_video_distance as sg_fvd
        from src.metrics import kernel_inception_distance as sg_kid
        from src.metrics import metric_utils as mu

        from src import dnnlib

        for name, (real, fake) in sets.items():

            def loader(
                *,
                rel_hi,
                capture_mean_cov=False,
                capture_all=False,
                max_items=None,
                real=real,
                fake=fake,
                **_,
            ):
                st = mu.FeatureStats(
                    capture_all=capture_all, capture_mean_cov=capture_mean_cov, max_items=max_items
                )
                st.append_torch(fake if rel_hi == 1 else real)  # rel_hi: 0 = real set, 1 = generated
                return st

            mu.compute_feature_stats_for_dataset = loader
            mu.compute_feature_stats_for_generator = loader
            mu.rewrite_opts_for_gen_dataset = lambda opts: opts
            opts = types.SimpleNamespace(
                dataset_kwargs=dnnlib.EasyDict(resolution=256), rank=0, generator_as_dataset=True
            )
            out[f"out.{name}.stylegan_v_fvd"] = torch.tensor(
                sg_fvd.compute_fvd(opts, max_real=None, num_gen=None, num_frames=16), dtype=torch.float64
            )
            np.random.seed(kid_cfg["seed"])
            out[f"out.{name}.stylegan_v_kid"] = torch.tensor(
                sg_kid.compute_kid(opts, None, None, kid_cfg["num_subsets"], kid_cfg["max_subset_size"]),
                dtype=torch.float64,
            )
            out[f"in.{name}.real"], out[f"in.{name}.fake"] = real, fake
    tats_fvd = tats_fvd_module(tats, Path(args.site))
    with on_path(Path(args.site)):
        for name, (real, fake) in sets.items():
            # as TATS's sample script calls them: frechet_distance(fake, real), polynomial_mmd(fake, real)
            out[f"out.{name}.tats_fvd"] = tats_fvd.frechet_distance(fake, real).double()
            out[f"out.{name}.tats_kvd_f32"] = torch.tensor(
                float(tats_fvd.polynomial_mmd(fake, real)), dtype=torch.float64
            )
            out[f"out.{name}.tats_kvd_f64"] = torch.tensor(
                float(tats_fvd.polynomial_mmd(fake.double().numpy(), real.double().numpy())),
                dtype=torch.float64,
            )
    save_fixture(
        args.out,
        "distances",
        out,
        repo=f"{REPOS['stylegan_v'][1]} + {REPOS['tats'][1]}",
        commit=f"stylegan-v {official_commit(sgv, args.stylegan_v_commit)}, TATS {official_commit(tats, args.tats_commit)}",
        generator=GEN + " distances",
        config={"kid": kid_cfg, "sklearn": _dist_version(Path(args.site), "scikit-learn")},
        notes=(
            "Features are float32 (as I3D/Inception give them). stylegan_v_fvd: compute_fvd with "
            "compute_feature_stats_for_dataset replaced by a FeatureStats(capture_mean_cov) filled with the "
            "features (1/N float64 stats, scipy sqrtm). stylegan_v_kid: compute_kid (num_subsets, max_subset_size) "
            "after np.random.seed(seed); it returns KIDx1000, float32 maths. tats_fvd: TATS frechet_distance(fake, "
            "real) in float32 (cov 1/(N-1), tf-gan SVD). tats_kvd_f32: polynomial_mmd(fake, real) on the float32 "
            "tensors (sklearn float32); tats_kvd_f64: on float64 arrays."
        ),
    )


# --------------------------------------------------------------------------------------------- DOVER
class _FrameReader:
    """Stand-in for ``decord.VideoReader`` (torch bridge): ``len`` and ``[i]`` -> ``h w 3`` uint8."""

    videos: dict[str, torch.Tensor] = {}

    def __init__(self, path, *args, **kwargs):
        self.frames = self.videos[str(path)]

    def __len__(self):
        return self.frames.shape[0]

    def __getitem__(self, i):
        return self.frames[int(i)]


@contextlib.contextmanager
def torchvision_015_resize():
    """torchvision 0.15.2 (EvalCrafter's pin; what DOVER ran with) did not antialias tensor ``Resize``
    (``antialias=None`` meant False for tensors); 0.17+ default to True."""
    import functools

    import torchvision.transforms as T

    orig = T.Resize
    T.Resize = functools.partial(orig, antialias=False)
    try:
        yield
    finally:
        T.Resize = orig


def gen_dover(args) -> None:
    """VQAssessment/DOVER at reduced width/depth: views (ViewDecompositionDataset), DOVER.forward,
    EvalCrafter's fuse_results, on the seeded random weights of our DOVERNet."""
    from i2vlab.metrics.extractors.dover import DOVERNet

    dover = official_checkout(args.dover, *REPOS["dover"])
    ours = randomize_(
        DOVERNet(DOVER_TINY["swin"], DOVER_TINY["convnext"], DOVER_TINY["head_hidden"]).eval(), DOVER_SEED
    )
    sd = ours.state_dict()
    rng = np.random.default_rng(14)
    videos = {"v0": _texture_video(rng, 16, 72, 90), "v1": _texture_video(rng, 16, 40, 48, shift=(1, 2))}
    _FrameReader.videos = {k: torch.from_numpy(v) for k, v in videos.items()}
    te, ae = DOVER_VIEWS["technical"], DOVER_VIEWS["aesthetic"]
    sample_types = {
        "technical": {"fragments_h": te["fragments"], "fragments_w": te["fragments"], "fsize_h": te["fsize"],
                      "fsize_w": te["fsize"], "aligned": te["clip_len"], "clip_len": te["clip_len"],
                      "frame_interval": te["frame_interval"], "num_clips": te["num_clips"]},
        "aesthetic": {"size_h": ae["size"], "size_w": ae["size"], "clip_len": ae["clip_len"],
                      "frame_interval": ae["frame_interval"], "t_frag": ae["t_frag"], "num_clips": 1},
    }  # fmt: skip
    with on_path(dover, Path(args.timm_site)), stub_modules(**{"skvideo": None, "skvideo.io": None}):
        from dover.datasets import dover_datasets as dd
        from dover.models.conv_backbone import ConvNeXt3D
        from dover.models.evaluator import DOVER
        from dover.models.head import VQAHead
        from dover.models.swin_backbone import SwinTransformer3D

        dd.VideoReader = _FrameReader
        sw, cn, hh = DOVER_TINY["swin"], DOVER_TINY["convnext"], DOVER_TINY["head_hidden"]
        # DOVER.__init__ builds only full-size backbones: assemble an instance with the same attributes
        net = object.__new__(DOVER)
        torch.nn.Module.__init__(net)
        net.backbone_preserve_keys, net.multi, net.layer = ["technical", "aesthetic"], False, -1
        net.technical_backbone = SwinTransformer3D(embed_dim=sw["embed_dim"], depths=sw["depths"],
                                                   num_heads=sw["num_heads"], window_size=(8, 7, 7),
                                                   frag_biases=[True, True, True, False])  # fmt: skip
        net.aesthetic_backbone = ConvNeXt3D(depths=cn["depths"], dims=cn["dims"])
        net.technical_head = VQAHead(in_channels=128, hidden_channels=hh)
        net.aesthetic_head = VQAHead(in_channels=128, hidden_channels=hh)
        net.load_state_dict(sd, strict=True)
        opt = {"anno_file": [{"filename": k, "label": -1} for k in videos], "data_prefix": "", "phase": "test",
               "sample_types": sample_types}  # fmt: skip
        with torchvision_015_resize():
            dataset = dd.ViewDecompositionDataset(opt)
            out = {}
            for i, key in enumerate(videos):
                torch.manual_seed(DOVER_VIEW_SEED)  # our extractor seeds its view RNG with the same value
                data = dataset[i]
                assert "technical" in data, f"DOVER dataset failed on {key}"
                video = {}
                # EvalCrafter's order: results[0] aesthetic, results[1] technical
                for k in ("aesthetic", "technical"):
                    v = data[k][None]
                    b, c, t, h, w = v.shape
                    n = data["num_clips"][k]
                    video[k] = (
                        v.reshape(b, c, n, t // n, h, w)
                        .permute(0, 2, 1, 3, 4, 5)
                        .reshape(b * n, c, t // n, h, w)
                    )
                with torch.no_grad():
                    maps = net(video, reduce_scores=False)
                    maps64 = net.double()({k: v.double() for k, v in video.items()})
                    net.float()
                results = [float(np.mean(m.cpu().numpy())) for m in maps]
                out[f"in.{key}"] = torch.from_numpy(videos[key])
                out[f"out.{key}.aesthetic_map"], out[f"out.{key}.technical_map"] = maps
                out[f"out.{key}.aesthetic_map_f64"], out[f"out.{key}.technical_map_f64"] = maps64
                out[f"out.{key}.raw"] = torch.tensor(results, dtype=torch.float64)  # [aesthetic, technical]
                # EvalCrafter metrics/DOVER/evaluate_a_set_of_videos.py fuse_results (its constants)
                t_, a_ = (results[1] + 0.0758) / 0.0129, (results[0] - 0.1253) / 0.0318
                x_ = t_ * 0.6104 + a_ * 0.3896
                out[f"out.{key}.fused"] = torch.tensor(
                    [100 / (1 + np.exp(-a_)), 100 / (1 + np.exp(-t_)), 100 / (1 + np.exp(-x_))],
                    dtype=torch.float64,
                )  # aesthetic, technical, overall (x 100 as EvalCrafter writes them)
    save_fixture(
        args.out,
        "dover",
        out,
        repo=REPOS["dover"][1],
        commit=official_commit(dover, args.dover_commit),
        generator=GEN + " dover",
        config={
            "seed": DOVER_SEED,
            "view_seed": DOVER_VIEW_SEED,
            "tiny": DOVER_TINY,
            "views": DOVER_VIEWS,
            "timm": _dist_version(Path(args.timm_site), "timm"),
        },  # fmt: skip
        notes=(
            "Reduced size (the upstream constructors take these arguments): SwinTransformer3D(embed_dim 16, depths "
            "2,2,2,2, heads 1,2,2,4, window (8,7,7), frag_biases 1,1,1,0), ConvNeXt3D(depths 2,2,3,2, dims "
            "16..128), VQAHead(128 -> 16 -> 1) x2, assembled as a DOVER (DOVER.__init__ only builds full-size "
            "backbones) with randomize_(our DOVERNet) loaded strictly. Views: ViewDecompositionDataset (dover.yml "
            "keys, reduced sizes) with decord.VideoReader replaced by the stored frames, torch.manual_seed(view_seed) "
            "before each video, torchvision Resize without antialias (0.15.2 behaviour). maps = DOVER.forward(views, "
            "reduce_scores=False) (aesthetic, technical); _f64: the same views cast to float64 through net.double(); "
            "raw = np.mean of each map; fused = EvalCrafter fuse_results (aesthetic, technical, overall) x 100. "
            "The evaluation code's reshape of clips and the fuse_results formula are re-typed from EvalCrafter's "
            "evaluate_a_set_of_videos.py (they sit under its __main__)."
        ),
        extra={"weights_digest": state_dict_digest(sd)},
    )


# ---------------------------------------------------------------------------------------------- CLIP
class _Capture:
    """Stand-in for ``cv2.VideoCapture``: yields the stored RGB frames as BGR, like a decoded mp4."""

    videos: dict[str, np.ndarray] = {}

    def __init__(self, path):
        self.frames, self.i = self.videos[str(path)], 0

    def isOpened(self):  # noqa: N802 (OpenCV's name)
        return self.i <= len(self.frames)

    def read(self):
        if self.i >= len(self.frames):
            self.i += 1
            return False, None
        self.i += 1
        return True, np.ascontiguousarray(self.frames[self.i - 1][:, :, ::-1])

    def release(self):
        self.i = len(self.frames) + 1


@contextlib.contextmanager
def fake_capture(videos: dict[str, np.ndarray]):
    import cv2

    orig = cv2.VideoCapture
    _Capture.videos = videos
    cv2.VideoCapture = _Capture
    try:
        yield
    finally:
        cv2.VideoCapture = orig


class _TensorCLIP:
    """The shared ``CLIPModel`` as EvalCrafter calls it (transformers 4: ``get_*_features`` return the
    projected tensor; transformers 5 returns an output object whose ``pooler_output`` is that tensor)."""

    def __init__(self, model):
        self.m = model

    def get_image_features(self, pixel_values):
        o = self.m.get_image_features(pixel_values=pixel_values)
        return o if isinstance(o, torch.Tensor) else o.pooler_output

    def get_text_features(self, input_ids):
        o = self.m.get_text_features(input_ids=input_ids)
        return o if isinstance(o, torch.Tensor) else o.pooler_output


def clip_videos() -> dict[str, np.ndarray]:
    """uint8 ``f h w 3`` videos shared by the clip and flow fixtures: 262x270 (larger than 224, not a
    multiple of 8; half size 131x135 >= 128 for RAFT) and 96x120 (smaller than 224)."""
    rng = np.random.default_rng(15)
    return {"big": _texture_video(rng, 3, 262, 270, shift=(3, 2)), "small": _texture_video(rng, 3, 96, 120)}


def gen_clip(args) -> None:
    """EvalCrafter CLIPTemp / face (first-frame) consistency / CLIP-SIM on a tiny seeded CLIPModel."""
    from i2vlab.metrics.extractors.clip import CLIPExtractor

    ec = official_checkout(args.evalcrafter, *REPOS["evalcrafter"])
    ex = CLIPExtractor(None, convention="evalcrafter_raw", tiny=CLIP_TINY, seed=0)
    randomize_(ex.model, CLIP_SEED, gain=CLIP_GAIN)
    sd = ex.model.state_dict()
    videos = clip_videos()
    prompts = {"big": "a red fox running through snow", "small": "waves at night"}
    pycoco = types.ModuleType("pycocoevalcap")
    stubs = {"ipdb": None, "pycocoevalcap": pycoco, "pycocoevalcap.cider": None, "pycocoevalcap.bleu": None,
             "pycocoevalcap.cider.cider": None, "pycocoevalcap.bleu.bleu": None, "diffusers": None}  # fmt: skip
    with on_path(ec / "metrics" / "Scores_with_CLIP"), stub_modules(**stubs):
        sys.modules["pycocoevalcap.cider.cider"].Cider = None
        sys.modules["pycocoevalcap.bleu.bleu"].Bleu = None
        sys.modules["diffusers"].StableDiffusionXLPipeline = None
        sc = importlib.import_module("Scores_with_CLIP")
        sc.device = "cpu"  # set in its __main__

        def tokenizer(text, **kw):  # EvalCrafter: tokenizer(text, return_tensors="pt", padding=True, ...)
            return ex.tokenizer([text])

        model = _TensorCLIP(ex.model)
        out = {}
        with fake_capture(videos), torchvision_015_resize():
            for k, v in videos.items():
                out[f"in.{k}"] = torch.from_numpy(v)
                out[f"out.{k}.clip_temp"] = torch.tensor(
                    sc.calculate_clip_temp_score(k, model), dtype=torch.float64
                )
                out[f"out.{k}.face_consistency"] = torch.tensor(
                    sc.calculate_face_consistency_score(k, model), dtype=torch.float64
                )
                out[f"out.{k}.clip_score"] = torch.tensor(
                    sc.calculate_clip_score(k, prompts[k], model, tokenizer), dtype=torch.float64
                )
        del sys.modules["Scores_with_CLIP"]
    save_fixture(
        args.out,
        "clip",
        out,
        repo=REPOS["evalcrafter"][1],
        commit=official_commit(ec, args.evalcrafter_commit),
        generator=GEN + " clip",
        config={"seed": CLIP_SEED, "gain": CLIP_GAIN, "tiny": CLIP_TINY, "prompts": prompts},
        notes=(
            "metrics/Scores_with_CLIP/Scores_with_CLIP.py calculate_clip_temp_score, calculate_face_consistency_score, "
            "calculate_clip_score(video, prompt, model, tokenizer) with cv2.VideoCapture yielding the stored frames "
            "(as BGR), transforms.Resize without antialias (torchvision 0.15.2, EvalCrafter's pin), device cpu. "
            "Model: i2vlab CLIPExtractor(None, tiny=...).model after randomize_(model, seed, gain) (a transformers "
            "CLIPModel), wrapped so get_image/text_features return tensors; tokenizer: that extractor's byte "
            "stand-in (random-weight runs have no vocabulary files)."
        ),
        extra={"weights_digest": state_dict_digest(sd)},
    )


# ---------------------------------------------------------------------------------------------- flow
def _resample2d_forward(input1, input2, output, kernel_size=1, bilinear=True):
    """CPU stand-in for FlowNet2's ``resample2d_cuda.forward`` (kernel_Resample2d_updateOutput,
    kernel_size 1): out(y, x) = bilinear sample of input1 at (x + dx, y + dy); alpha/beta from the
    unclamped position, the four indices clamped to the image; float accumulation in the kernel's order."""
    assert kernel_size == 1 and bilinear
    b, c, h, w = output.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    xf, yf = xs + input2[:, 0], ys + input2[:, 1]  # b h w
    alpha, beta = (xf - torch.floor(xf)).double(), (yf - torch.floor(yf)).double()
    xl = torch.floor(xf).long().clamp(0, w - 1)
    xr = (torch.floor(xf) + 1).long().clamp(0, w - 1)
    yt = torch.floor(yf).long().clamp(0, h - 1)
    yb = (torch.floor(yf) + 1).long().clamp(0, h - 1)
    flat = input1.reshape(b, c, -1)

    def at(yy, xx):
        idx = (yy * input1.shape[-1] + xx).reshape(b, 1, -1).expand(b, c, -1)
        return flat.gather(2, idx).reshape(b, c, h, w).double()

    val = torch.zeros(b, c, h, w, dtype=torch.float32)
    for wgt, y_, x_ in (((1 - alpha) * (1 - beta), yt, xl), (alpha * (1 - beta), yt, xr),
                        ((1 - alpha) * beta, yb, xl), (alpha * beta, yb, xr)):  # fmt: skip
        val = (val.double() + wgt[:, None] * at(y_, x_)).float()
    output.copy_(val)


@contextlib.contextmanager
def cuda_calls_are_noops():
    """``warp_utils.detect_occlusion`` moves tensors and its Resample2d module with ``.cuda()``."""
    t, m = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = t, m


def gen_flow(args) -> None:
    """EvalCrafter FlowScore and warping error with its RAFT (full size, seeded random weights)."""
    ec = official_checkout(args.evalcrafter, *REPOS["evalcrafter"])
    raft_dir = ec / "metrics" / "RAFT"
    # warping error on clip.safetensors' 262x270 video (half size >= 128 px, as RAFT needs); FlowScore (full
    # resolution, the costly part) on a 130x138 one; neither size is a multiple of 8
    videos = {"big": clip_videos()["big"], "mid": _texture_video(np.random.default_rng(16), 3, 130, 138)}
    r2d = types.ModuleType("resample2d_cuda")
    r2d.forward = _resample2d_forward
    with on_path(raft_dir / "core", raft_dir), stub_modules(ipdb=None, resample2d_cuda=r2d):
        for k in [
            k
            for k in sys.modules
            if k in ("utils", "raft", "corr", "update", "extractor") or k.startswith("utils.")
        ]:
            del sys.modules[k]
        ofs = importlib.import_module("optical_flow_scores")
        ofs.device = "cpu"  # set in its __main__
        raft = ofs.RAFT(
            argparse.Namespace(small=False, mixed_precision=False, alternate_corr=False, dropout=0)
        )
        spec = state_dict_spec(raft)
        sd = random_state_dict(spec, RAFT_SEED, RAFT_GAIN)
        for k in ("update_block.flow_head.conv2.weight", "update_block.flow_head.conv2.bias"):
            sd[k] = sd[k] * RAFT_FLOW_HEAD_SCALE
        raft.load_state_dict(sd, strict=True)
        raft.eval()
        out = {"in.mid": torch.from_numpy(videos["mid"])}
        with fake_capture(videos), cuda_calls_are_noops(), torch.no_grad():
            out["out.mid.flow_score"] = torch.tensor(
                float(ofs.calculate_flow_score("mid", raft)), dtype=torch.float64
            )
            out["out.big.warping_error"] = torch.tensor(
                float(ofs.compute_video_warping_error("big", raft)), dtype=torch.float64
            )
            # the flow network alone on the first pair (0-255 frames, padded as calculate_flow_score does)
            v = videos["mid"]
            i1 = torch.from_numpy(v[0]).permute(2, 0, 1).float()[None]
            i2 = torch.from_numpy(v[1]).permute(2, 0, 1).float()[None]
            padder = sys.modules["utils.utils"].InputPadder(i1.shape)
            _, flow_up = raft(*padder.pad(i1, i2), iters=20, test_mode=True)
            out["out.mid.flow01"] = flow_up
            # RAFT-small (raft-small.pth layout: bottleneck encoders without norm parameters, ConvGRU, no mask
            # head) on the same pair
            small = ofs.RAFT(
                argparse.Namespace(small=True, mixed_precision=False, alternate_corr=False, dropout=0)
            )
            small_spec = state_dict_spec(small)
            sd_small = random_state_dict(small_spec, RAFT_SEED + 1, RAFT_GAIN)
            for k in ("update_block.flow_head.conv2.weight", "update_block.flow_head.conv2.bias"):
                sd_small[k] = sd_small[k] * RAFT_FLOW_HEAD_SCALE
            small.load_state_dict(sd_small, strict=True)
            small.eval()
            _, flow_small = small(*padder.pad(i1, i2), iters=20, test_mode=True)
            out["out.mid.flow01_small"] = flow_small
    save_fixture(
        args.out,
        "flow",
        out,
        repo=REPOS["evalcrafter"][1],
        commit=official_commit(ec, args.evalcrafter_commit),
        generator=GEN + " flow",
        config={
            "seed": RAFT_SEED,
            "gain": RAFT_GAIN,
            "flow_head_scale": RAFT_FLOW_HEAD_SCALE,
            "inputs": {"flow_score": "in.mid", "warping_error": "clip.safetensors in.big"},
            "raft": "large (princeton-vl core, iters=20)",
        },  # fmt: skip
        notes=(
            "metrics/RAFT/optical_flow_scores.py calculate_flow_score and compute_video_warping_error(video, model) "
            "with cv2.VideoCapture yielding the stored frames, device cpu, its RAFT(args small=False) from "
            "metrics/RAFT/core with random_state_dict(spec, seed, gain) (spec stored below, princeton key layout "
            "incl. the duplicated norm3/downsample.1 registration), update_block.flow_head.conv2 weight and bias "
            "x flow_head_scale. FlowScore on in.mid, warping error on the 'big' video of clip.safetensors. FlowNet2's resample2d_cuda extension replaced "
            "by a CPU gather following its kernel; .cuda() calls no-ops. flow01: raft(InputPadder.pad(frame0, "
            "frame1), iters=20, test_mode=True)[1] on the 0-255 frames of in.mid; flow01_small: the same with "
            "RAFT(small=True) and random_state_dict(raft_small_spec, seed + 1, gain) (flow head scaled alike)."
        ),
        extra={
            "weights_digest": state_dict_digest(sd),
            "raft_spec": spec,
            "small_weights_digest": state_dict_digest(sd_small),
            "raft_small_spec": small_spec,
        },  # fmt: skip
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("groups", nargs="+", choices=["all", *GENERATORS])
    for key, (env, repo) in REPOS.items():
        flag = key.replace("_", "-")
        ap.add_argument(f"--{flag}", default=os.environ.get(env), help=f"checkout of {repo} (default ${env})")
        ap.add_argument(f"--{flag}-commit", default=None, help="commit of that checkout if it has no .git")
    ap.add_argument(
        "--site",
        default=os.environ.get("I2VLAB_REFERENCE_SITE"),
        help="folder with pytorch-fid, torch-fidelity, cd-fvd, scikit-learn (pip --no-deps --target)",
    )
    ap.add_argument(
        "--timm-site",
        default=os.environ.get("I2VLAB_REFERENCE_TIMM"),
        help="folder with timm (pip --no-deps --target), for DOVER",
    )
    ap.add_argument("--out", type=Path, default=FIXTURES / GROUP)
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    groups = list(GENERATORS) if "all" in args.groups else args.groups
    for gname in groups:
        print(f"== {gname}")
        GENERATORS[gname](args)


GENERATORS = {
    "i3d": gen_i3d,
    "inception": gen_inception,
    "distances": gen_distances,
    "dover": gen_dover,
    "clip": gen_clip,
    "flow": gen_flow,
}

if __name__ == "__main__":
    main()
