#!/usr/bin/env python
"""Print the trainable / frozen parameter report of any training configuration, without training.

    python scripts/param_report.py experiment=smoke
    python scripts/param_report.py backbone=sd15_animatediff method=animatediff +meta=true

Takes the same overrides as train.py. With ``+meta=true`` every model is built from its
architecture config on the meta device: full-size reports need no weights and no memory. The
last line reads ``trainable=<int> frozen=<int>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

import i2vlab.utils.config  # noqa: F401  (resolvers)
from i2vlab.models.loading import build_on_meta
from i2vlab.training import instantiate_model

CONF = Path(__file__).resolve().parent.parent / "conf"


def compose_train_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):  # no hydra runtime here: give the run paths concrete values
        cfg.paths.output_dir = str(Path(cfg.paths.log_dir) / "param_report")
    return cfg


def report(overrides: list[str]) -> str:
    cfg = compose_train_config(overrides)
    meta = bool(OmegaConf.select(cfg, "meta", default=False))
    if meta:
        with build_on_meta():
            model = instantiate_model(cfg)
    else:
        model = instantiate_model(cfg)
    where = "meta device (architecture only)" if meta else "cpu"
    return f"{type(model).__name__} [{cfg.backbone.name}, {where}]\n{model.parameter_report()}"


if __name__ == "__main__":
    print(report(sys.argv[1:]))
