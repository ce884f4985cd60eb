"""Per-video metric values from frames or embeddings (layouts in the docstrings).

Definitions follow METRICS.md: EvalCrafter for CLIPTemp / first-frame consistency / FlowScore /
warping error (§6, §7), DynamiCrafter for PIC (§5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


def pic_per_frame(image_emb: torch.Tensor, frame_embs: torch.Tensor) -> torch.Tensor:
    """PIC terms 1 - D(x_in, x_l) with D = 1 - cos (DreamSim distance): ``d``, ``f d`` -> ``f``."""
    return 1.0 - (1.0 - cosine(image_emb[None], frame_embs))


def clip_adjacent(frame_embs: torch.Tensor) -> torch.Tensor:
    """CLIPTemp terms cos(E(f_t), E(f_{t+1})): ``f d`` -> ``f-1``."""
    return cosine(frame_embs[:-1], frame_embs[1:])


def clip_first_frame(frame_embs: torch.Tensor) -> torch.Tensor:
    """First-frame consistency terms cos(E(f_0), E(f_t)), t >= 1: ``f d`` -> ``f-1``."""
    return cosine(frame_embs[:1], frame_embs[1:])


def clip_image_frames(image_emb: torch.Tensor, frame_embs: torch.Tensor) -> torch.Tensor:
    """cos(E(input image), E(f_t)) for every frame: ``d``, ``f d`` -> ``f``."""
    return cosine(image_emb[None], frame_embs)


def warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` (n c h w) at p + flow(p) (flow n 2 h w in pixels); bilinear, border clamp
    (FlowNet2 ``Resample2d`` equivalent)."""
    n, _, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    gx = (xs[None] + flow[:, 0]) / max(w - 1, 1) * 2 - 1
    gy = (ys[None] + flow[:, 1]) / max(h - 1, 1) * 2 - 1
    grid = torch.stack([gx, gy], dim=-1).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def pad_to_multiple(x: torch.Tensor, multiple: int = 8) -> torch.Tensor:
    """Replicate-pad ``n c h w`` so H and W are multiples of ``multiple``, split as RAFT's
    ``InputPadder`` (mode ``sintel``: ``pad // 2`` before, the rest after)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")


def flow_score_pairs(video: torch.Tensor, pad_no_crop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The frame pairs (f_t, f_{t+1}) FlowScore measures: ``f c h w`` -> two ``f-1 c h w`` (replicate-padded
    to a multiple of 8 with ``pad_no_crop``, see :func:`flow_magnitudes`)."""
    if pad_no_crop:
        video = pad_to_multiple(video.float(), 8)
    return video[:-1], video[1:]


def mean_flow_magnitude(flows: torch.Tensor) -> torch.Tensor:
    """FlowScore terms from flows ``n 2 h w``: mean over pixels of ||flow||₂ -> ``n`` (float64)."""
    return flows.double().norm(dim=1).flatten(1).mean(1).cpu()


def flow_magnitudes(
    video: torch.Tensor, flow_fn, batch_pairs: int = 64, pad_no_crop: bool = False
) -> torch.Tensor:
    """FlowScore terms: mean over pixels of ||flow(f_t -> f_{t+1})||₂ at the given resolution.
    ``video``: ``f c h w`` in [-1, 1] -> ``f-1`` (pixels).

    ``pad_no_crop`` (EvalCrafter compatibility): the frames are replicate-padded to a multiple of 8
    (``InputPadder``) and the mean is taken over the padded flow field, as EvalCrafter's
    ``calculate_flow_score`` does (it never removes the padding). Off by default: the mean over the
    frame's own pixels."""
    a, b = flow_score_pairs(video, pad_no_crop)
    out = [
        mean_flow_magnitude(flow_fn(a[s : s + batch_pairs], b[s : s + batch_pairs]))
        for s in range(0, a.shape[0], batch_pairs)
    ]
    return torch.cat(out)


def occlusion_mask(fw: torch.Tensor, bw_warped: torch.Tensor) -> torch.Tensor:
    """Lai et al. 2018 / EvalCrafter occlusion: forward-backward check OR motion boundary.
    ``fw``, ``bw_warped``: ``n 2 h w`` -> ``n h w`` bool (True = occluded)."""
    fb = ((fw + bw_warped) ** 2).sum(1)
    mag = (fw**2).sum(1) + (bw_warped**2).sum(1)
    occ = fb > 0.01 * mag + 0.5
    dx = torch.zeros_like(fw)
    dy = torch.zeros_like(fw)
    dx[..., :, :-1] = fw[..., :, 1:] - fw[..., :, :-1]
    dy[..., :-1, :] = fw[..., 1:, :] - fw[..., :-1, :]
    boundary = (dx**2).sum(1) + (dy**2).sum(1) > 0.01 * (fw**2).sum(1) + 0.002
    return occ | boundary


def warping_frames(video: torch.Tensor, downsample: float = 0.5, pad_no_crop: bool = False) -> torch.Tensor:
    """The frames the warping error compares: ``f c h w`` in [-1, 1] -> [0, 1], downsampled by
    ``downsample`` (bilinear) and, with ``pad_no_crop``, replicate-padded to a multiple of 8."""
    x = (video.float().clamp(-1, 1) + 1) / 2
    if downsample != 1:
        x = F.interpolate(x, scale_factor=downsample, mode="bilinear", align_corners=False)
    return pad_to_multiple(x, 8) if pad_no_crop else x


def warping_net_input(x: torch.Tensor, double_rescale: bool = False) -> torch.Tensor:
    """What the flow network sees of [0, 1] frames: [-1, 1], or EvalCrafter's 2 (x / 255) - 1."""
    return x / 255.0 * 2 - 1 if double_rescale else x * 2 - 1


def warping_errors_from_flows(
    i1: torch.Tensor, i2: torch.Tensor, fw: torch.Tensor, bw: torch.Tensor
) -> torch.Tensor:
    """Warping error of pairs ``i1, i2`` (``n c h w`` in [0, 1]) from the forward (1 -> 2) and backward
    flows ``n 2 h w``: Σ_{c,x} noc (W - I₁)² / Σ_x noc (or / numel when nothing is visible) -> ``n``."""
    fw, bw = fw.to(i1.device).double(), bw.to(i1.device).double()
    i1d, i2d = i1.double(), i2.double()
    warped = warp(i2d, fw)
    bw_w = warp(bw, fw)
    noc = (~occlusion_mask(fw, bw_w)).double()[:, None]
    num = (noc * (warped - i1d) ** 2).flatten(1).sum(1)
    den = noc.flatten(1).sum(1)
    den = torch.where(den > 0, den, torch.full_like(den, float(noc[0].numel())))
    return (num / den).cpu()


def warping_errors(
    video: torch.Tensor,
    flow_fn,
    downsample: float = 0.5,
    batch_pairs: int = 64,
    pad_no_crop: bool = False,
    double_rescale: bool = False,
) -> torch.Tensor:
    """EvalCrafter warping error per adjacent pair: frames in [0, 1], downsampled by ``downsample``
    (bilinear), W = I₂ warped by the forward flow, error = Σ_{c,x} noc (W - I₁)² / Σ_x noc (or / numel
    when nothing is visible). ``video``: ``f c h w`` in [-1, 1] -> ``f-1``.

    EvalCrafter compatibility flags (off by default; the defaults are the formula as written):

    - ``double_rescale``: EvalCrafter's ``compute_video_warping_error`` divides the frames by 255
      before RAFT, whose ``forward`` divides by 255 again, so the flow network sees
      ``2 (x / 255) - 1`` for x in [0, 1] (near-black frames in [-1, -0.992]) and its flows are those
      of almost constant images. The warping and the error still use x in [0, 1].
    - ``pad_no_crop``: the downsampled frames are replicate-padded to a multiple of 8 (``InputPadder``)
      and flows, warp, occlusion mask and error are all computed on the padded frames (EvalCrafter
      never crops the padding back)."""
    x = warping_frames(video, downsample, pad_no_crop)
    out = []
    for s in range(0, x.shape[0] - 1, batch_pairs):
        i1, i2 = x[s : s + batch_pairs], x[s + 1 : s + 1 + batch_pairs]
        i1 = i1[: i2.shape[0]]
        n1, n2 = warping_net_input(i1, double_rescale), warping_net_input(i2, double_rescale)
        out.append(warping_errors_from_flows(i1, i2, flow_fn(n1, n2), flow_fn(n2, n1)))
    return torch.cat(out)


def psnr_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR on [0, 1] (data_range 1) per frame: ``f c h w`` in [-1, 1] -> ``f``."""
    a, b = (pred.double().clamp(-1, 1) + 1) / 2, (target.double().clamp(-1, 1) + 1) / 2
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-20))


def ssim_per_frame(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM (torchmetrics: Gaussian 11x11, sigma 1.5, data_range 1) per frame -> ``f``."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    a, b = (pred.float().clamp(-1, 1) + 1) / 2, (target.float().clamp(-1, 1) + 1) / 2
    return ssim(a, b, data_range=1.0, reduction="none").double().cpu()
