"""Shared helpers of the parity fixture generators (developer tools, not part of the package).

A generator builds an *official* module (imported from a checkout of the official repository that
lives outside this project) with a tiny config, fills every parameter and floating-point buffer with
seeded non-zero random values (zero-initialised layers included), runs it, and writes the weights,
inputs and outputs as a small fixture under ``tests/fixtures/parity/<group>/``:

- ``<name>.safetensors``: the tensors (weights under ``official.`` / ``ours.`` prefixes as the
  generator chooses, inputs under ``in.``, outputs under ``out.``);
- ``<name>.json``: what produced it: official repository and commit, generator and arguments, the
  config, tolerances, library versions, date.

The tests (``tests/test_parity_*.py``) load the fixture into *our* classes through *our* converters
and compare the outputs. The official code is needed only to (re)generate fixtures, never by the
tests or the package, and none of it is copied here.

Where the official checkout is found: ``--official PATH`` or the environment variable named by the
generator (for example ``I2VLAB_OFFICIAL_DYNAMICRAFTER``). Its commit: ``git rev-parse HEAD`` in the
checkout, else a ``COMMIT`` file at its root, else ``--official-commit``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "parity"


def add_official_args(parser: argparse.ArgumentParser, env: str, repo: str) -> None:
    """``--official`` (checkout path, default ``$env``), ``--official-commit``, ``--out``."""
    parser.add_argument(
        "--official",
        default=os.environ.get(env),
        help=f"path of a checkout of {repo} (default: ${env})",
    )
    parser.add_argument("--official-commit", default=None, help="commit of that checkout if it has no .git")
    parser.add_argument(
        "--out", type=Path, default=None, help="fixture folder (default: tests/fixtures/parity/<group>)"
    )


def official_checkout(path: str | None, env: str, repo: str) -> Path:
    if not path:
        raise SystemExit(f"give --official PATH or set {env}: a checkout of {repo}")
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise SystemExit(f"{env}/--official: {p} is not a directory (a checkout of {repo})")
    return p


def official_commit(path: Path, explicit: str | None = None) -> str:
    if explicit:
        return explicit
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    f = path / "COMMIT"
    if f.is_file():
        return f.read_text().strip()
    raise SystemExit(f"cannot tell the commit of {path}: give --official-commit")


@contextlib.contextmanager
def on_path(*paths: Path | str) -> Iterator[None]:
    """Put ``paths`` first on ``sys.path`` for the duration (the official code's imports)."""
    old = list(sys.path)
    sys.path[:0] = [str(p) for p in paths]
    try:
        yield
    finally:
        sys.path[:] = old


def randomize_(module: nn.Module, seed: int, gain: float = 1.0, buffers: bool = True) -> nn.Module:
    """Fill every parameter (and floating buffer) of ``module`` with seeded, non-zero random values.

    Weights (ndim >= 2): N(0, gain / sqrt(fan_in)). 1-D parameters: normalisation scales
    (named ``weight`` of a norm layer, or ``gamma``/``scale``) 1 + 0.1 N(0, 1), everything else
    (biases, gates, embeddings of one dim) 0.1 N(0, 1); 0-d parameters 0.1 N(0, 1) + 0.05.
    Floating buffers: positive ones (``running_var``) 1 + 0.1 |N|, others 0.1 N. Zero-initialised
    layers get non-zero values like any other. Exact zeros are re-drawn.
    """
    g = torch.Generator().manual_seed(int(seed))
    norm_types = (
        nn.GroupNorm,
        nn.LayerNorm,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.InstanceNorm2d,
    )
    owners = {}
    for mname, m in module.named_modules():
        for pname, _ in m.named_parameters(recurse=False):
            owners[f"{mname}.{pname}" if mname else pname] = m
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(_draw(p, name, owners.get(name), g, gain, norm_types))
        if buffers:
            for name, b in module.named_buffers():
                if not b.is_floating_point():
                    continue
                r = torch.randn(b.shape, generator=g, dtype=torch.float64)
                val = 1 + 0.1 * r.abs() if "var" in name.rsplit(".", 1)[-1] else 0.1 * r
                b.copy_(val.to(b.dtype))
    assert_nonzero(module)
    return module


def _draw(p: torch.Tensor, name: str, owner, g, gain, norm_types) -> torch.Tensor:
    last = name.rsplit(".", 1)[-1]
    if p.ndim >= 2:
        fan_in = max(1, p[0].numel())
        val = torch.randn(p.shape, generator=g, dtype=torch.float64) * (gain / math.sqrt(fan_in))
    elif p.ndim == 1:
        r = torch.randn(p.shape, generator=g, dtype=torch.float64)
        is_scale = (isinstance(owner, norm_types) and last == "weight") or last in ("gamma", "scale", "g")
        val = 1 + 0.1 * r if is_scale else 0.1 * r
    else:
        val = 0.1 * torch.randn((), generator=g, dtype=torch.float64) + 0.05
    val = torch.where(val == 0, torch.full_like(val, 1e-3), val)
    return val.to(p.dtype)


def assert_nonzero(module: nn.Module) -> None:
    zeros = [n for n, p in module.named_parameters() if (p == 0).any()]
    if zeros:
        raise AssertionError(f"parameters with zeros after randomize_: {zeros[:5]} ...")


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for mod in ("diffusers", "transformers", "numpy", "scipy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is just not recorded
            pass
    return out


def save_fixture(
    out_dir: Path,
    name: str,
    tensors: Mapping[str, torch.Tensor],
    *,
    repo: str,
    commit: str,
    generator: str,
    config: Mapping[str, Any] | None = None,
    notes: str = "",
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``<name>.safetensors`` + ``<name>.json``; returns the safetensors path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    path = out_dir / f"{name}.safetensors"
    save_file(flat, str(path))
    meta = {
        "official_repo": repo,
        "official_commit": commit,
        "generator": generator,
        "config": dict(config or {}),
        "notes": notes,
        "versions": versions(),
        "created": _dt.date.today().isoformat(),
        "tensors": {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in flat.items()},
        **dict(extra or {}),
    }
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=False) + "\n")
    size = path.stat().st_size
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({size / 1e6:.2f} MB)")
    return path


def prefixed(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in tensors.items()}


def _draw_kind(kind: str, shape, g, gain: float) -> torch.Tensor:
    """One tensor of :func:`random_state_dict`, drawn as :func:`randomize_` draws that kind."""
    if kind == "weight":
        fan_in = max(1, math.prod(shape[1:]))
        val = torch.randn(shape, generator=g, dtype=torch.float64) * (gain / math.sqrt(fan_in))
    elif kind == "scale":
        val = 1 + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
    elif kind == "vector":
        val = 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
    elif kind == "scalar":
        val = 0.1 * torch.randn((), generator=g, dtype=torch.float64) + 0.05
    elif kind == "var":
        return 1 + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64).abs()
    elif kind == "buffer":
        return 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return torch.where(val == 0, torch.full_like(val, 1e-3), val)


def state_dict_spec(module: nn.Module) -> list[list]:
    """``[key, shape, dtype, kind]`` for every state-dict entry of ``module``, in state-dict order, with
    the kind :func:`randomize_` would give it (``weight``, ``scale``, ``vector``, ``scalar`` for
    parameters; ``var``, ``buffer`` for floating buffers; ``int`` for integer buffers (rebuilt as
    zeros: right for ``num_batches_tracked``, not for index buffers); ``alias:<key>`` for an entry
    registered twice, e.g. one module under two attribute names).

    Stored in a fixture, it lets a test rebuild the same seeded random state dict of an official
    module with :func:`random_state_dict`, without the official code."""
    norm_types = (
        nn.GroupNorm,
        nn.LayerNorm,
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
        nn.InstanceNorm2d,
    )
    owners = {}
    for mname, m in module.named_modules():
        for pname, _ in m.named_parameters(recurse=False):
            owners[f"{mname}.{pname}" if mname else pname] = m
    params = {id(p) for p in module.parameters()}
    seen: dict[int, str] = {}
    spec = []
    for k, t in module.state_dict(keep_vars=True).items():
        shape, dt = list(t.shape), str(t.dtype).replace("torch.", "")
        if id(t) in seen:
            spec.append([k, shape, dt, f"alias:{seen[id(t)]}"])
            continue
        seen[id(t)] = k
        last = k.rsplit(".", 1)[-1]
        if id(t) in params:
            if t.ndim >= 2:
                kind = "weight"
            elif t.ndim == 1:
                is_scale = (isinstance(owners.get(k), norm_types) and last == "weight") or last in (
                    "gamma",
                    "scale",
                    "g",
                )
                kind = "scale" if is_scale else "vector"
            else:
                kind = "scalar"
        elif t.is_floating_point():
            kind = "var" if "var" in last else "buffer"
        else:
            kind = "int"
        spec.append([k, shape, dt, kind])
    return spec


def random_state_dict(spec: list[list], seed: int, gain: float = 1.0) -> dict[str, torch.Tensor]:
    """Seeded non-zero random state dict from a :func:`state_dict_spec`: entries are drawn in spec
    order from one ``torch.Generator().manual_seed(seed)`` (float64, then cast), parameters first and
    floating buffers after (as :func:`randomize_`), integer buffers as zeros, aliases shared."""
    g = torch.Generator().manual_seed(int(seed))
    out: dict[str, torch.Tensor] = {}
    order = [e for e in spec if e[3] in ("weight", "scale", "vector", "scalar")]
    order += [e for e in spec if e[3] in ("var", "buffer")]
    for k, shape, dt, kind in order:
        out[k] = _draw_kind(kind, tuple(shape), g, gain).to(getattr(torch, dt))
    for k, shape, dt, kind in spec:
        if kind == "int":
            out[k] = torch.zeros(shape, dtype=getattr(torch, dt))
        elif kind.startswith("alias:"):
            out[k] = out[kind.split(":", 1)[1]]
    return {k: out[k] for k, *_ in spec}


def state_dict_digest(sd: Mapping[str, torch.Tensor]) -> str:
    """sha256 (first 16 hex) over the sorted keys and the raw bytes of the tensors: stored beside a
    seed-generated state dict so a test notices if the generating procedure drifts."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
