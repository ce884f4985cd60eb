"""Loading a trained method for inference, without Lightning: ``load_pipeline(path)``.

    pipe = load_pipeline("outputs/smoke/runs/2026-...")            # a run directory
    video = pipe(["a red circle moving left"], images=img[None], num_frames=16, seed=0)

``path`` is a run directory, one of its checkpoints, or an export (``export/trainable.safetensors``
or a converted official folder with a ``config.yaml`` beside the weights). The run's saved config
says which method made it (the pipeline class comes from :data:`i2vlab.pipelines.PIPELINES`) and
how its backbone is built; the components are built from that config (seeded as in training, so
random-init frozen parts are the same) and the trained weights are loaded by name. Weights, in order
of preference for a run directory: ``export/trainable_ema.safetensors`` (``use_ema``),
``export/trainable.safetensors``, ``checkpoints/last.ckpt`` (first, for random-init backbones, whose
frozen weights live only in checkpoints). Files are read with the safe loaders (no code in them runs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import i2vlab.utils.config  # noqa: F401  (resolvers used in saved configs)
from i2vlab.pipelines.base import VideoPipeline


def find_run_config(path: str | Path) -> DictConfig:
    """The composed config saved with a run (``.hydra/config.yaml`` or ``export/config.yaml``)."""
    path = Path(path)
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


def run_dir_of(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent.parent


def weights_for(path: str | Path, use_ema: bool = False, frozen_in_ckpt: bool = False) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    exports = ([path / "export" / "trainable_ema.safetensors"] if use_ema else []) + [
        path / "export" / "trainable.safetensors"
    ]
    last = [path / "checkpoints" / "last.ckpt"]
    options = last + exports if frozen_in_ckpt and not use_ema else exports + last
    for o in options:
        if o.is_file():
            return o
    raise FileNotFoundError(f"{path}: no export/trainable.safetensors or checkpoints/last.ckpt")


def resolve_run(
    path: str | Path, overrides: Sequence[str] = (), use_ema: bool = False
) -> tuple[DictConfig, Path]:
    """A trained run's saved config (``overrides`` in Hydra dot-list form applied on top; output paths
    pointed at the run) and the weights file to load (export, EMA export or checkpoint)."""
    cfg = find_run_config(path)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    OmegaConf.set_struct(cfg, False)
    if "paths" in cfg:  # the saved config refers to Hydra's runtime, absent here
        cfg.paths.output_dir = str(run_dir_of(path))
    frozen_in_ckpt = bool(OmegaConf.select(cfg, "method.checkpoint_frozen", default=False))
    return cfg, weights_for(path, use_ema, frozen_in_ckpt)


def pipeline_class(cfg: DictConfig) -> type[VideoPipeline]:
    from i2vlab.models.loading import import_object
    from i2vlab.pipelines import PIPELINES

    target = str(OmegaConf.select(cfg, "method._target_", default=""))
    name = target.rsplit(".", 1)[-1]
    if name not in PIPELINES:
        raise ValueError(f"no inference pipeline for method {target!r}; known: {sorted(PIPELINES)}")
    return import_object(PIPELINES[name])


def build_from_config(cls: type[VideoPipeline], cfg: DictConfig) -> VideoPipeline:
    """The pipeline's constructor arguments from the run's ``method`` config: components are
    instantiated (they are the backbone's), other arguments converted to plain values."""
    import hydra

    method = cfg.method
    kwargs: dict[str, Any] = {}
    for name in sorted(cls.init_parameters()):
        if name not in method:
            continue
        node = method[name]
        if OmegaConf.is_config(node):
            kwargs[name] = hydra.utils.instantiate(node, _convert_="partial")
            if OmegaConf.is_config(kwargs[name]):
                kwargs[name] = OmegaConf.to_container(kwargs[name], resolve=True)
        else:
            kwargs[name] = node
    return cls(**kwargs)


def trainable_names(pipe: VideoPipeline, patterns: Sequence[str]) -> set[str]:
    regs = [re.compile(p) for p in patterns]
    return {k for k in pipe.named_tensors() if any(r.fullmatch(k) for r in regs)}


def load_pipeline(
    path: str | Path,
    device: str | torch.device | None = None,
    overrides: Sequence[str] = (),
    use_ema: bool = False,
) -> VideoPipeline:
    """The trained method at ``path`` as its inference pipeline (see the module docstring).
    ``overrides`` are Hydra dot-list changes to the saved config (e.g. ``backbone.pretrained=/models/sd15``
    on another machine)."""
    from i2vlab.utils.safe_load import load_weights

    cfg, weights = resolve_run(path, overrides, use_ema)
    cls = pipeline_class(cfg)
    torch.manual_seed(int(cfg.get("seed", 0)))  # random-init frozen parts are rebuilt as in training
    pipe = build_from_config(cls, cfg)
    tensors = load_weights(weights, what="trained weights", trust_flag=None)
    if isinstance(tensors, dict) and "state_dict" in tensors:
        tensors = tensors["state_dict"]
    patterns = list(OmegaConf.select(cfg, "method.trainable", default=[]) or [])
    if weights.suffix == ".safetensors" and patterns:
        expected = trainable_names(pipe, patterns)
        if set(tensors) != expected:
            extra, missing = sorted(set(tensors) - expected)[:3], sorted(expected - set(tensors))[:3]
            raise RuntimeError(
                f"{weights}: trained weights do not match the run's method.trainable "
                f"(extra {extra}, missing {missing})"
            )
    pipe.load_tensors(tensors, source=str(weights))
    pipe.eval()
    if device is not None:
        pipe.to(device)
    pipe.run_config = cfg
    return pipe
