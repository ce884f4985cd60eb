"""Fake-tensor machinery of the memory planner (:mod:`i2vlab.training.memory`): a fake mode that
answers data-dependent reads, the conversion of a model's parameters to fake tensors, an allocation
tracker that rounds to CUDA blocks, and CUDA autocast's op policy emulated on CPU autocast."""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools import mem_tracker as _mt
from torch.utils._pytree import tree_map


# ----------------------------------------------------------------------------------------------
# fake tensors
# ----------------------------------------------------------------------------------------------
class PlanningFakeMode(FakeTensorMode):
    """A ``FakeTensorMode`` that answers data-dependent scalar reads (``.item()``, ``.tolist()``,
    ``bool(t)``) with fixed values instead of failing: ``True`` for booleans, ``0`` for integers,
    ``1.0`` for floats. Used only where such values pick among same-shaped inputs (dropout draws)."""

    _SCALAR_READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default)

    def __init__(self) -> None:
        super().__init__(allow_non_fake_inputs=True)

    def dispatch(self, func, types, args=(), kwargs=None):  # noqa: A002 - torch's signature
        if func in self._SCALAR_READS and getattr(args[0], "item_memo", None) is None:
            dt = args[0].dtype
            return True if dt == torch.bool else (1.0 if dt.is_floating_point else 0)
        return super().dispatch(func, types, args, kwargs or {})


def materialize_fake(
    module: nn.Module,
    mode: FakeTensorMode,
    dtype_of: Any = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Replace every parameter and buffer of ``module`` (typically built on the meta device) by a fake
    tensor of the same shape on ``device``; ``dtype_of(qualified_name, tensor)`` may change floating
    dtypes. Shared tensors stay shared; ``requires_grad`` is kept. In place; returns ``module``."""
    memo: dict[int, torch.Tensor] = {}
    for mod_name, m in module.named_modules(remove_duplicate=False):
        for slot in ("_parameters", "_buffers"):
            tensors = getattr(m, slot)
            for name, t in list(tensors.items()):
                if t is None:
                    continue
                if id(t) not in memo:
                    dt = t.dtype
                    if dtype_of is not None and t.is_floating_point():
                        dt = dtype_of(f"{mod_name}.{name}" if mod_name else name, t) or dt
                    with mode:
                        new = torch.empty(t.shape, dtype=dt, device=device)
                    if slot == "_parameters":
                        new = nn.Parameter(new, requires_grad=t.requires_grad)
                    memo[id(t)] = new
                tensors[name] = memo[id(t)]
    return module


# ----------------------------------------------------------------------------------------------
# tracking
# ----------------------------------------------------------------------------------------------
class StepMemoryTracker(_mt.MemTracker):
    """``MemTracker`` reduced to what a training-step estimate needs: the device-wide current and peak
    memory per category. Its per-module snapshots are skipped (they refuse a root module called twice
    in a step, as the VAE is for each chunk, and cost time per operator); gradient hooks go only on
    parameters that require gradients (``MemTracker`` hooks every parameter, which fails on frozen
    ones). ``round_to`` rounds every storage up as the CUDA caching allocator does."""

    def __init__(self, round_to: int = 1) -> None:
        super().__init__()
        self.round_to = int(round_to)
        self._saved_calc = None

    def _track_module_params_and_buffers(self, module: nn.Module, install_grad_hooks: bool = True):
        kinds = _mt._MemRefType

        def grad_hook(grad: torch.Tensor) -> None:
            self._update_and_maybe_create_winfos(grad, kinds.GRAD)

        param_mem = 0
        for p in module.parameters():
            param_mem += sum(w.mem_consumed for w in self._update_and_maybe_create_winfos(p, kinds.PARAM))
            if p.grad is not None:
                self._update_and_maybe_create_winfos(p.grad, kinds.GRAD)
            if install_grad_hooks and p.requires_grad and self._param_to_grad_hook_handles.get(p) is None:
                self._param_to_grad_hook_handles[p] = (
                    p.register_hook(grad_hook),
                    p.register_post_accumulate_grad_hook(lambda q: grad_hook(q.grad)),
                )
        buffer_mem = 0
        for b in module.buffers():
            buffer_mem += sum(w.mem_consumed for w in self._update_and_maybe_create_winfos(b, kinds.BUFFER))
        return param_mem, buffer_mem

    def _pre_fw_hook(self, module: nn.Module, inputs: Any) -> None:
        self._track_module_params_and_buffers(module, install_grad_hooks=True)

    def _post_fw_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        pass

    def _pre_bw_hook(self, module: nn.Module, args: Any) -> None:
        pass

    def _post_bw_hook(self, module: nn.Module, args: Any) -> None:
        pass

    def __enter__(self) -> StepMemoryTracker:
        if self._depth == 0 and self.round_to > 1:
            self._saved_calc = _mt._WeakRefInfo._calculate_mem_consumed
            r = self.round_to

            def rounded(info: Any) -> int:
                return math.ceil(info.size * info.element_size / r) * r

            _mt._WeakRefInfo._calculate_mem_consumed = rounded
        super().__enter__()
        return self

    def __exit__(self, *args: Any) -> None:
        super().__exit__(*args)
        if self._depth == 0 and self._saved_calc is not None:
            _mt._WeakRefInfo._calculate_mem_consumed = self._saved_calc
            self._saved_calc = None

    def peak(self) -> dict[str, int]:
        """Bytes per category at the peak (``param``, ``buffer``, ``grad``, ``act``, ``temp``, ``opt``,
        ``other``) and ``total``, summed over devices."""
        return _named(self.get_tracker_snapshot("peak"))

    def current(self) -> dict[str, int]:
        return _named(self.get_tracker_snapshot("current"))


_KIND_NAMES = {"Parameter": "param", "Buffer": "buffer", "Gradient": "grad", "Activation": "act",
               "Temp": "temp", "Optstate": "opt", "Other": "other", "Total": "total"}  # fmt: skip


def _named(snapshot: Mapping[Any, Mapping[Any, int]]) -> dict[str, int]:
    out = dict.fromkeys(_KIND_NAMES.values(), 0)
    for dev_snap in snapshot.values():
        for k, v in dev_snap.items():
            key = _KIND_NAMES.get(getattr(k, "value", str(k)), str(k))
            out[key] = out.get(key, 0) + int(v)
    return out


# ----------------------------------------------------------------------------------------------
# CUDA's autocast policy on CPU tensors
# ----------------------------------------------------------------------------------------------
# CUDA autocast's op lists (ATen autocast_mode.h: AT_FORALL_LOWER_PRECISION_FP, AT_FORALL_FP32,
# AT_FORALL_FP32_SET_OPT_DTYPE, AT_FORALL_PROMOTE), as "op" or "op.overload".
CUDA_LOWER = """_convolution.deprecated _convolution conv1d conv2d conv3d conv_tbc conv_transpose1d
conv_transpose2d.input conv_transpose3d.input convolution prelu addmm addmv addr matmul einsum mm mv
linalg_vecdot linear addbmm baddbmm bmm chain_matmul linalg_multi_dot _thnn_fused_lstm_cell
_thnn_fused_gru_cell lstm_cell gru_cell rnn_tanh_cell rnn_relu_cell _scaled_dot_product_flash_attention
scaled_dot_product_attention""".split()
CUDA_FP32 = """acos asin cosh erfinv exp expm1 log log10 log2 log1p reciprocal rsqrt sinh tan
pow.Tensor_Scalar pow.Tensor_Tensor pow.Scalar softplus layer_norm native_layer_norm group_norm
frobenius_norm.dim nuclear_norm nuclear_norm.dim cosine_similarity poisson_nll_loss
cosine_embedding_loss nll_loss nll_loss2d hinge_embedding_loss kl_div l1_loss smooth_l1_loss huber_loss
mse_loss margin_ranking_loss multilabel_margin_loss soft_margin_loss triplet_margin_loss
multi_margin_loss binary_cross_entropy_with_logits dist pdist cdist renorm logsumexp upsample_nearest1d
_upsample_nearest_exact1d upsample_nearest2d _upsample_nearest_exact2d upsample_nearest3d
_upsample_nearest_exact3d upsample_linear1d upsample_bilinear2d _upsample_bilinear2d_aa
upsample_trilinear3d upsample_bicubic2d _upsample_bicubic2d_aa""".split()
CUDA_FP32_OPT_DTYPE = """prod prod.dim_int softmax.int log_softmax.int cumprod cumsum linalg_vector_norm
linalg_matrix_norm sum sum.dim_IntList""".split()
CUDA_PROMOTE = (
    "addcdiv addcmul atan2 bilinear cross dot vdot grid_sampler index_put tensordot scatter_add".split()
)
#: ops CPU autocast casts that CUDA autocast leaves alone (they pass through while planning)
CPU_ONLY = """avg_pool3d grid_sampler_2d grid_sampler_3d max_pool3d max_unpool2d max_unpool3d
adaptive_avg_pool3d reflection_pad1d reflection_pad2d replication_pad1d replication_pad2d
replication_pad3d cross_entropy_loss polar stft trace view_as_complex""".split()


def _op(name: str):
    base, _, overload = name.partition(".")
    packet = getattr(torch.ops.aten, base, None)
    if packet is None:
        return None
    return getattr(packet, overload or "default", None)


class cuda_autocast_policy:  # noqa: N801 - used like torch.autocast
    """Within this context, CPU autocast follows CUDA autocast's policy (the op lists above), in the
    forward and in the backward's recomputation of checkpointed blocks. Low-precision casts of leaf
    weights that require gradients are cached, as CUDA's cast cache does, until :meth:`clear_cache`
    (call it where the outermost ``torch.autocast`` exits). Use beside ``torch.autocast("cpu", dtype)``."""

    def __init__(self, dtype: torch.dtype = torch.bfloat16) -> None:
        self.dtype = dtype
        self.cache: dict[int, tuple[Any, torch.Tensor]] = {}
        self._lib: Any = None

    def clear_cache(self) -> None:
        self.cache.clear()

    def _eligible(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float64

    def _cast(self, t: Any, to: torch.dtype) -> Any:
        if not self._eligible(t) or t.dtype == to:
            return t
        cacheable = to == self.dtype and t.dtype == torch.float32 and t.requires_grad and t.is_leaf
        if cacheable and not t._is_view() and torch.is_autocast_cache_enabled():
            hit = self.cache.get(id(t))
            if hit is not None and hit[0]() is t:
                return hit[1]
            out = t.to(to)
            self.cache[id(t)] = (weakref.ref(t), out)
            return out
        return t.to(to)

    def _kernel(self, op: Any, policy: str):
        keys = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)

        def run(*args, **kwargs):
            with torch._C._ExcludeDispatchKeyGuard(keys):
                if policy == "lower":
                    args, kwargs = tree_map(lambda t: self._cast(t, self.dtype), (args, kwargs))
                elif policy == "fp32":
                    args, kwargs = tree_map(lambda t: self._cast(t, torch.float32), (args, kwargs))
                elif policy == "opt_dtype":
                    first = args[0] if args else None
                    if self._eligible(first) and first.dtype != torch.float32 and kwargs.get("dtype") is None:
                        kwargs = {**kwargs, "dtype": torch.float32}
                elif policy == "promote":
                    floats = [t.dtype for t in _tensors(args, kwargs) if self._eligible(t)]
                    if floats:
                        widest = torch.float32 if torch.float32 in floats else self.dtype
                        args, kwargs = tree_map(lambda t: self._cast(t, widest), (args, kwargs))
                return op(*args, **kwargs)

        return run

    def __enter__(self) -> cuda_autocast_policy:
        self._lib = torch.library.Library("aten", "IMPL")
        for names, policy in ((CUDA_LOWER, "lower"), (CUDA_FP32, "fp32"), (CUDA_FP32_OPT_DTYPE, "opt_dtype"),
                              (CUDA_PROMOTE, "promote"), (CPU_ONLY, "pass")):  # fmt: skip
            for name in names:
                op = _op(name)
                if op is not None:
                    self._lib.impl(op, self._kernel(op, policy), "AutocastCPU", allow_override=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._lib._destroy()
        self._lib = None
        self.clear_cache()


def _tensors(args: Any, kwargs: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    tree_map(lambda t: out.append(t) if isinstance(t, torch.Tensor) else None, (args, kwargs))
    return out
