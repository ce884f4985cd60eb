"""What a checkpoint and an export of a method hold, and loading them back (one place for it).

- :func:`save_contents` / :func:`restore_contents`: the LightningModule's checkpoint hooks. A
  checkpoint keeps the trainable weights only (frozen ones too for random-init backbones,
  ``checkpoint_frozen``), the EMA, every RNG state (Python, numpy, torch, CUDA: plain types, so
  the safe loader reads them) and which parameters were trainable.
- :func:`export_trainable` / :func:`load_trainable`: ``export/trainable.safetensors`` (only the
  trained weights, with the git revision in its metadata) and ``config.yaml`` beside it.
- :func:`load_matching`: initialise from a previous stage's export or checkpoint (``init_from``).

Files are read with the safe loaders of :mod:`i2vlab.utils.safe_load` (no code in them can run).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from i2vlab.utils.params import trainable_state_dict


def save_contents(module: Any, checkpoint: dict[str, Any]) -> None:
    """Trim and annotate a Lightning checkpoint of ``module`` (a ``VideoDiffusionModule``)."""
    names = list(module.configure_trainable())
    if not module.checkpoint_frozen:
        keep = set(names)
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
    checkpoint["i2vlab"] = {"trainable": names, "checkpoint_frozen": module.checkpoint_frozen}
    if module.ema is not None:
        checkpoint["ema"] = module.ema.state_dict()
    checkpoint["rng"] = {
        "python": random.getstate(),
        "numpy": numpy_rng_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_contents(module: Any, checkpoint: dict[str, Any]) -> None:
    names = set(module.configure_trainable())
    missing = names - set(checkpoint.get("state_dict", {}))
    if missing:
        raise RuntimeError(
            f"checkpoint lacks {len(missing)} trainable weights (e.g. {sorted(missing)[:3]}): it was written "
            "by a different method/trainable config"
        )
    if module.ema is not None and "ema" in checkpoint:
        module.ema.load_state_dict(checkpoint["ema"])
    rng = checkpoint.get("rng")
    if rng:
        random.setstate(rng["python"])
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def numpy_rng_state() -> tuple:
    """numpy's global RNG state in plain Python types (loadable with ``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return kind, keys.tolist(), int(pos), int(has_gauss), float(cached)


def export_trainable(module: Any, path: str | Path, config: Any = None, use_ema: bool = False) -> Path:
    """Write only the trainable weights of ``module`` as safetensors (and ``config.yaml`` beside it)."""
    from safetensors.torch import save_file

    from i2vlab.utils.config import git_revision

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = module.trainable_parameters()
    if use_ema and module.ema is not None:
        module.ema.store(params)
        module.ema.copy_to(params)
    try:
        tensors = {
            k: v.detach().to("cpu", copy=True).contiguous() for k, v in trainable_state_dict(module).items()
        }
    finally:
        if use_ema and module.ema is not None:
            module.ema.restore(params)
    meta = {
        "format": "pt",
        "method": type(module).__name__,
        "git_revision": git_revision(),
        "ema": str(use_ema),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    if config is not None:
        from omegaconf import OmegaConf

        OmegaConf.save(config, path.parent / "config.yaml")
    return path


def load_trainable(
    module: nn.Module, path: str | Path, names: set[str] | None = None, strict: bool = True
) -> list[str]:
    """Load an export into ``module``; with ``strict`` its keys must be exactly ``names`` (the
    module's trainable parameters). Returns the loaded names."""
    from i2vlab.utils.safe_load import load_weights

    tensors = load_weights(path, what="trained weights", trust_flag=None)
    if strict and names is not None and set(tensors) != names:
        extra, missing = sorted(set(tensors) - names)[:3], sorted(names - set(tensors))[:3]
        raise RuntimeError(
            f"{path}: trainable weights do not match this model (extra {extra}, missing {missing})"
        )
    own = dict(module.named_parameters())
    with torch.no_grad():
        for k, v in tensors.items():
            if k not in own:
                raise KeyError(f"{path}: unknown parameter {k}")
            own[k].copy_(v.to(own[k].dtype))
    return sorted(tensors)


def load_weights_file(path: str | Path, what: str = "init_from") -> dict[str, torch.Tensor]:
    """An export (``.safetensors``) or a training checkpoint (``.ckpt``, loaded with the safe loader:
    no code in it can run) -> flat tensors."""
    from i2vlab.utils.safe_load import load_weights

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist (an export .safetensors or a .ckpt)")
    ckpt = load_weights(path, what=what, trust_flag=None)  # training never unpickles objects
    return ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt


def load_matching(module: nn.Module, path: str | Path | Mapping[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of ``path`` whose name and shape match a parameter of ``module`` (e.g. the
    previous training stage's export). Returns the names loaded; fails if none matched."""
    tensors = path if isinstance(path, Mapping) else load_weights_file(path)
    own = dict(module.named_parameters())
    loaded = []
    with torch.no_grad():
        for k, v in tensors.items():
            if k in own and own[k].shape == v.shape:
                own[k].copy_(v.to(own[k].dtype))
                loaded.append(k)
    if not loaded:
        src = "the given tensors" if isinstance(path, Mapping) else path
        raise RuntimeError(f"init_from: no tensor in {src} matches this model's parameters")
    return loaded
