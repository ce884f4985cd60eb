"""Peak memory of one training step, measured on fake tensors: will a configuration fit a GPU?

The method is built from its configuration on the meta device (no weights), its parameters and
buffers become fake tensors (:class:`torch._subclasses.fake_tensor.FakeTensorMode`: shapes, dtypes
and strides, no storage), and the real training step runs on them -- the method's own
``compute_loss`` (encoders, conditioning, UNet), backward, gradient clipping and the AdamW step,
in Lightning's order, with the optimizer state already
allocated (the steady state of a run). Every tensor allocated and freed is
followed by ``torch.distributed._tools.mem_tracker.MemTracker`` (weights, gradients, optimizer state,
activations and temporaries); the peak of its total is the step's peak memory. Nothing is computed,
so a full-size step takes seconds on a CPU and no memory.

What the measurement copies from a CUDA run:

- mixed precision (``bf16-mixed`` / ``16-mixed``) runs under CPU autocast whose kernels are replaced,
  while planning, by CUDA autocast's op lists (:func:`cuda_autocast_policy`: matmuls and convolutions
  in low precision with the weight-cast cache, norms, softmax, ``exp``, losses and nearest upsampling
  in float32, promotion for ``cat``-like ops). CPU autocast alone keeps norms and softmax in bfloat16
  and would underestimate;
- allocations are rounded up to CUDA's 512-byte blocks; AdamW is fused (what ``fused: auto`` picks
  on CUDA), so the step allocates no foreach temporaries;
- ``frozen_dtype`` and ``*-true`` precisions set the parameters' dtypes as ``setup()`` and Lightning do.

What it does not see: the CUDA context and library workspaces (cuBLAS, cuDNN: about 0.5-1 GB),
allocator fragmentation and the caching allocator's reserve above the allocated peak -- hence
``reserve_gb`` when deciding what fits -- and kernels whose CUDA implementation allocates workspace
the CPU one does not (attention runs the CPU flash kernel, which stores what CUDA's flash and
memory-efficient kernels store: the output and the log-sum-exp).

Random host-side decisions (caption and image dropout, the conditioning frame) read values that
fake tensors do not have: :class:`PlanningFakeMode` answers such reads with a fixed value (``True``,
``0``, ``1.0``). They choose among inputs of the same shapes, so memory does not depend on them.

Sharded strategies are derived from the categories measured at the peak (see :func:`shard`): ZeRO-2
and FSDP ``SHARD_GRAD_OP`` split gradients and optimizer state over the ranks, ZeRO-3 and FSDP
``FULL_SHARD`` also the trainable weights; DDP adds its gradient buckets (one copy of the trainable
gradients).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

GiB = 2**30
CUDA_BLOCK = 512  # bytes: the CUDA caching allocator's smallest block

#: Lightning precision -> (parameter dtype, autocast dtype or None)
PRECISIONS: dict[str, tuple[torch.dtype, torch.dtype | None]] = {
    "32-true": (torch.float32, None),
    "32": (torch.float32, None),
    "bf16-mixed": (torch.float32, torch.bfloat16),
    "16-mixed": (torch.float32, torch.float16),
    "bf16-true": (torch.bfloat16, None),
    "16-true": (torch.float16, None),
}
STRATEGIES = ("single", "ddp", "fsdp_grad_op", "fsdp_full", "zero2", "zero3")

from .fake_memory import (  # noqa: E402
    PlanningFakeMode,
    StepMemoryTracker,
    cuda_autocast_policy,
    materialize_fake,
)


# ----------------------------------------------------------------------------------------------
# one training step
# ----------------------------------------------------------------------------------------------
@dataclass
class StepMemory:
    """Peak memory of a training step (bytes), with the categories at the peak and the static parts."""

    peak: int
    at_peak: dict[str, int]
    weights: int  # parameters + buffers
    trainable_weights: int
    optimizer: int  # optimizer state after the steps
    batch_size: int
    setting: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_gb(self) -> float:
        return self.peak / GiB


def make_batch(b: int, f: int, h: int, w: int, device: str | torch.device = "cpu") -> dict[str, Any]:
    """A training batch as :class:`~i2vlab.data.datamodule.VideoDataModule` yields it (b f c h w video)."""
    return {
        "video": torch.empty(b, f, 3, h, w, device=device).uniform_(-1, 1),
        "caption": ["a red circle moving left over a striped background"] * b,
        "fps": torch.full((b,), 8.0, device=device),
        "frame_stride": torch.full((b,), 2, device=device),
        "key": [f"clip{i}" for i in range(b)],
    }


def train_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batch: Mapping[str, Any],
    step: int,
    autocast: torch.dtype | None = None,
    clip: float | None = None,
    policy: cuda_autocast_policy | None = None,
) -> None:
    """One optimizer step in Lightning's order (automatic optimization, one micro-batch): the training
    loss under autocast, *then* the previous step's gradients set to ``None`` (Lightning zeroes them
    between forward and backward, so they live through the forward), backward, gradient-norm clipping,
    optimizer step (and EMA). With ``policy`` (entered by the caller) autocast follows CUDA's op lists."""
    device_type = batch["video"].device.type
    with torch.autocast(device_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        loss, _ = model.compute_loss(batch, model.step_generator(salt=step))
        loss = loss.mean()
    if policy is not None:
        policy.clear_cache()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if policy is not None:
        policy.clear_cache()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), clip)
    optimizer.step()
    if getattr(model, "ema", None) is not None:
        model.ema.step(model.trainable_parameters())


def prime_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's state (AdamW: step, first and second moments) as its first step would,
    with zero gradients, so that a single tracked step measures the steady state."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    optimizer.step()
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
    optimizer.zero_grad(set_to_none=True)


def measure_step(
    model: Any,
    batch: Mapping[str, Any],
    autocast: torch.dtype | None = None,
    clip: float | None = 1.0,
    steps: int = 1,
    fake_mode: FakeTensorMode | None = None,
    emulate_cuda: bool = True,
    optimizer: torch.optim.Optimizer | None = None,
) -> StepMemory:
    """Peak memory of ``steps`` training steps of ``model`` (real or fake tensors) on ``batch``, the
    optimizer state created beforehand (:func:`prime_optimizer`: the steady state of a long run). Fake
    models need ``fake_mode`` (the mode their tensors belong to). ``emulate_cuda``: CUDA's autocast
    policy and 512-byte allocation blocks."""
    with fake_mode if fake_mode is not None else contextlib.nullcontext():
        if optimizer is None:
            optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4, fused=True)
            prime_optimizer(optimizer)
        tracker = StepMemoryTracker(round_to=CUDA_BLOCK if emulate_cuda else 1)
        extra = [v for v in batch.values() if isinstance(v, torch.Tensor)]
        if getattr(model, "ema", None) is not None:
            extra += list(model.ema.shadow_params)
        tracker.track_external(model, optimizer, *extra)
        policy = cuda_autocast_policy(autocast) if emulate_cuda and autocast is not None else None
        with tracker, policy or contextlib.nullcontext():
            for i in range(steps):
                train_step(model, optimizer, batch, i, autocast, clip, policy)
        now = tracker.current()
    return StepMemory(
        peak=tracker.peak()["total"],
        at_peak=tracker.peak(),
        weights=now["param"] + now["buffer"],
        trainable_weights=sum(_nbytes(p) for p in model.trainable_parameters()),
        optimizer=now["opt"],
        batch_size=int(batch["video"].shape[0]),
    )


def _nbytes(t: torch.Tensor) -> int:
    n = t.numel() * t.element_size()
    return math.ceil(n / CUDA_BLOCK) * CUDA_BLOCK


# ----------------------------------------------------------------------------------------------
# from a training configuration
# ----------------------------------------------------------------------------------------------
@dataclass
class Setting:
    """What one estimate is for (read from a composed training config, see :func:`setting_of`)."""

    batch_size: int
    num_frames: int
    resolution: tuple[int, int]
    precision: str
    frozen_dtype: str
    gradient_checkpointing: bool
    clip: float | None

    def describe(self) -> str:
        h, w = self.resolution
        return (f"batch {self.batch_size} x {self.num_frames} frames @ {h}x{w}, {self.precision}, frozen "
                f"{self.frozen_dtype}{', grad-ckpt' if self.gradient_checkpointing else ''}")  # fmt: skip


def setting_of(cfg: Any) -> Setting:
    from omegaconf import OmegaConf

    sel = lambda k, d=None: OmegaConf.select(cfg, k, default=d)  # noqa: E731
    res = sel("data.resolution") or sel("backbone.resolution")
    precision = str(sel("trainer.precision", "32-true"))
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision={precision!r}: the planner knows {sorted(PRECISIONS)}")
    clip = sel("trainer.gradient_clip_val")
    return Setting(
        batch_size=int(sel("data.batch_size", 1)),
        num_frames=int(sel("data.num_frames", 16)),
        resolution=(int(res[0]), int(res[1])),
        precision=precision,
        frozen_dtype=str(sel("method.frozen_dtype", "fp32")),
        gradient_checkpointing=bool(sel("method.gradient_checkpointing", False)),
        clip=float(clip) if clip else None,
    )


def fake_model(cfg: Any, precision: str | None = None) -> tuple[Any, PlanningFakeMode]:
    """The method of ``cfg`` with fake parameters, dtypes as training gives them (``frozen_dtype`` for
    fully frozen encoders, the parameter dtype of ``precision``), ready for :func:`measure_step`."""
    from omegaconf import OmegaConf

    from i2vlab.methods.base import DTYPES
    from i2vlab.models.loading import build_on_meta
    from i2vlab.training.run import instantiate_model

    precision = precision or str(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
    param_dtype = PRECISIONS[precision][0]
    with build_on_meta():
        model = instantiate_model(cfg)
    model.configure_trainable()
    frozen_dtype = DTYPES[str(OmegaConf.select(cfg, "method.frozen_dtype", default="fp32"))]
    frozen_prefixes = tuple(
        f"{name}."
        for name in model.frozen_modules
        if isinstance(getattr(model, name, None), nn.Module)
        and not any(p.requires_grad for p in getattr(model, name).parameters())
    )

    def dtype_of(name: str, t: torch.Tensor) -> torch.dtype:
        if param_dtype != torch.float32:  # *-true precisions: Lightning converts the whole module
            return param_dtype
        return frozen_dtype if name.startswith(frozen_prefixes) else t.dtype

    mode = PlanningFakeMode()
    materialize_fake(model, mode, dtype_of)
    _on_cpu(model)
    model.setup("fit")
    model.train()
    return model, mode


def _on_cpu(model: Any) -> None:
    """A module built on the meta device believes it lives there (Lightning's ``device``)."""
    for m in model.modules():
        if hasattr(m, "_device"):
            m._device = torch.device("cpu")


def estimate(
    cfg: Any,
    batch_size: int | None = None,
    emulate_cuda: bool = True,
    built: tuple[Any, FakeTensorMode] | None = None,
) -> StepMemory:
    """Peak memory of one training step of ``cfg`` (optionally at another ``batch_size``), measured on
    fake tensors. ``built``: a :func:`fake_model` of ``cfg`` to reuse (measurements do not change it)."""
    s = setting_of(cfg)
    b = int(batch_size or s.batch_size)
    model, mode = built or fake_model(cfg, s.precision)
    with mode:
        batch = make_batch(b, s.num_frames, *s.resolution)
    out = measure_step(model, batch, PRECISIONS[s.precision][1], s.clip, 1, mode, emulate_cuda)
    out.setting = {**vars(s), "batch_size": b}
    return out


def shard(m: StepMemory, strategy: str, world: int) -> int:
    """Peak bytes per GPU of ``m`` under a strategy with ``world`` ranks (see the module docstring)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: choose from {STRATEGIES}")
    a = m.at_peak
    if strategy == "single" or world <= 1:
        return m.peak + (m.trainable_weights if strategy == "ddp" else 0)
    if strategy == "ddp":
        return m.peak + m.trainable_weights
    cut = 1 - 1 / world
    saved = (a["grad"] + a["opt"]) * cut
    if strategy in ("fsdp_full", "zero3"):
        saved += m.trainable_weights * cut
    return int(m.peak - saved)


def search_batch(peak_of: Any, budgets: Sequence[int], max_batch: int = 256) -> list[int]:
    """For each budget (bytes), the largest batch ``b`` with ``peak_of(b) <= budget`` (0 if not even
    batch 1 fits), assuming the peak grows with the batch. ``peak_of`` is called at 1 and 2, then at
    the batch where the line through those two reaches the budget, stepping down (or up) from there
    until the answer is measured on both sides."""
    p1, p2 = peak_of(1), peak_of(2)
    slope = max(p2 - p1, 1)
    out = []
    for budget in budgets:
        if p1 > budget:
            out.append(0)
            continue
        b = min(max_batch, max(1, 1 + int((budget - p1) // slope)))
        while b > 1 and peak_of(b) > budget:
            b -= 1
        while b < max_batch and peak_of(b + 1) <= budget:
            b += 1
        out.append(b)
    return out


def largest_batch(
    cfg: Any,
    gpu_gb: Sequence[float],
    reserve_gb: float = 1.0,
    strategy: str = "single",
    world: int = 1,
    max_batch: int = 256,
    emulate_cuda: bool = True,
    built: tuple[Any, FakeTensorMode] | None = None,
) -> tuple[dict[float, int], list[StepMemory]]:
    """For each GPU size (GiB), the largest batch whose step peak under ``strategy`` plus ``reserve_gb``
    fits, every candidate measured (:func:`search_batch`). Returns ``{gpu_gb: batch}`` (0: not even
    batch 1) and the measurements, by batch size."""
    runs: dict[int, StepMemory] = {}
    built = built or fake_model(cfg)

    def peak_of(b: int) -> int:
        if b not in runs:
            runs[b] = estimate(cfg, batch_size=b, emulate_cuda=emulate_cuda, built=built)
        return shard(runs[b], strategy, world)

    budgets = [int((gb - reserve_gb) * GiB) for gb in gpu_gb]
    fits = search_batch(peak_of, budgets, max_batch)
    return dict(zip(gpu_gb, fits)), [runs[k] for k in sorted(runs)]


def cuda_peak(cfg: Any, batch_size: int | None = None) -> int:
    """The real thing, on a GPU: the method of ``cfg`` built on the meta device, its tensors allocated
    on CUDA (random values: memory does not depend on them), one primed training step as
    :func:`measure_step` runs it; returns ``torch.cuda.max_memory_allocated`` of the step (bytes)."""
    from omegaconf import OmegaConf

    from i2vlab.methods.base import DTYPES
    from i2vlab.models.loading import build_on_meta
    from i2vlab.training.run import instantiate_model

    s = setting_of(cfg)
    with build_on_meta():
        model = instantiate_model(cfg)
    model.configure_trainable()
    model.to_empty(device="cuda")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    param_dtype, autocast = PRECISIONS[s.precision]
    if param_dtype != torch.float32:
        model.to(param_dtype)
    else:
        frozen = DTYPES[str(OmegaConf.select(cfg, "method.frozen_dtype", default="fp32"))]
        for name in model.frozen_modules:
            m = getattr(model, name, None)
            if isinstance(m, nn.Module) and not any(p.requires_grad for p in m.parameters()):
                m.to(frozen)
    for m in model.modules():
        if hasattr(m, "_device"):
            m._device = torch.device("cuda")
    model.setup("fit")
    model.train()
    batch = make_batch(int(batch_size or s.batch_size), s.num_frames, *s.resolution, device="cuda")
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4, fused=True)
    prime_optimizer(opt)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    train_step(model, opt, batch, 0, autocast, s.clip)
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())
