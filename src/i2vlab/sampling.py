"""Load a trained method from a run directory (or checkpoint / export) for sampling.

    module = load_method("outputs/smoke/runs/2026-...")          # run dir: config + best weights
    video = module.sample(["a red circle moving left"], images=img[None], num_frames=16, seed=0)

Weights, in order of preference for a run directory: ``export/trainable_ema.safetensors`` (if
``use_ema``), ``export/trainable.safetensors``, ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import i2vlab.utils.config  # noqa: F401  (resolvers used in saved configs)
from i2vlab.training import instantiate_model


def find_run_config(path: Path) -> DictConfig:
    """The composed config saved with a run (``.hydra/config.yaml`` or ``export/config.yaml``)."""
    candidates = [path / ".hydra" / "config.yaml", path / "export" / "config.yaml", path / "config.yaml"]
    if path.is_file():
        run = path.parent.parent if path.parent.name in ("checkpoints", "export") else path.parent
        candidates = [
            run / ".hydra" / "config.yaml",
            run / "export" / "config.yaml",
            path.parent / "config.yaml",
        ]
    for c in candidates:
        if c.is_file():
            return OmegaConf.load(c)
    raise FileNotFoundError(f"no run config found for {path} (looked for {[str(c) for c in candidates]})")


def _weights_for(path: Path, use_ema: bool, frozen_in_ckpt: bool) -> Path:
    if path.is_file():
        return path
    exports = ([path / "export" / "trainable_ema.safetensors"] if use_ema else []) + [
        path / "export" / "trainable.safetensors"
    ]
    last = [path / "checkpoints" / "last.ckpt"]
    # random-init backbones keep their frozen weights only in the checkpoint
    options = last + exports if frozen_in_ckpt and not use_ema else exports + last
    for o in options:
        if o.is_file():
            return o
    raise FileNotFoundError(f"{path}: no export/trainable.safetensors or checkpoints/last.ckpt")


def load_method(
    path: str | Path,
    overrides: list[str] | None = None,
    use_ema: bool = False,
    device: str | torch.device | None = None,
):
    """Rebuild the method from its run config (``overrides`` in Hydra dot-list form applied on top,
    e.g. ``["backbone.pretrained=/models/sd15"]``) and load its trained weights."""
    path = Path(path)
    cfg = find_run_config(path)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    OmegaConf.set_struct(cfg, False)
    if "paths" in cfg:  # the saved config refers to hydra's runtime, absent here
        run_dir = str(path if path.is_dir() else path.parent.parent)
        cfg.paths.output_dir = run_dir
    torch.manual_seed(int(cfg.get("seed", 0)))  # random-init frozen parts are rebuilt as in training
    module = instantiate_model(cfg)
    frozen_in_ckpt = bool(OmegaConf.select(cfg, "method.checkpoint_frozen", default=False))
    weights = _weights_for(path, use_ema, frozen_in_ckpt)
    if weights.suffix == ".safetensors":
        module.load_trainable(weights)
    else:
        from i2vlab.utils.safe_load import load_torch_file

        ckpt = load_torch_file(weights, what="checkpoint", trust_flag=None)
        module.load_state_dict(
            ckpt["state_dict"], strict=bool(ckpt.get("i2vlab", {}).get("checkpoint_frozen", False))
        )
    module.configure_trainable()
    module.eval()
    if device is not None:
        module.to(device)
    module.run_config = cfg
    return module
