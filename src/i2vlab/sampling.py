"""The training-side loader: a run's LightningModule with its trained weights, for tools that
inspect or continue training (publishing weights, converters). To *sample*, use the plain
pipeline instead -- :func:`i2vlab.pipelines.load_pipeline` -- which needs no Lightning.

    module = load_method("outputs/smoke/runs/2026-...")    # run dir, checkpoint or export
"""

from __future__ import annotations

from pathlib import Path

import torch

from i2vlab.pipelines.loading import find_run_config, resolve_run
from i2vlab.training import instantiate_model

__all__ = ["find_run_config", "load_method"]


def load_method(
    path: str | Path,
    overrides: list[str] | None = None,
    use_ema: bool = False,
    device: str | torch.device | None = None,
):
    """Rebuild the method from its run config (``overrides`` in Hydra dot-list form applied on top)
    and load its trained weights (safe loaders only)."""
    from i2vlab.utils.safe_load import load_torch_file

    cfg, weights = resolve_run(path, overrides or (), use_ema)
    torch.manual_seed(int(cfg.get("seed", 0)))  # random-init frozen parts are rebuilt as in training
    module = instantiate_model(cfg)
    if weights.suffix == ".safetensors":
        module.load_trainable(weights)
    else:
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
