#!/usr/bin/env python
"""Train a method. Compose a config from conf/ and run it with PyTorch Lightning.

python train.py experiment=smoke                          # tiny CPU run, nothing downloaded
python train.py experiment=toy_i2v_adapter                # another recipe
python train.py ... trainer=ddp trainer.devices=8         # multi-GPU
python train.py -m experiment=smoke optimizer.lr=1e-4,2e-4   # Hydra multirun, one dir per job
python train.py ... hydra.run.dir=<run dir> ckpt_path=last   # resume a run

The config is checked (types, ranges, method/backbone fit, weights paths) before anything heavy
is imported or built; problems are printed as one paragraph naming the key (exit status 2).
"""

from __future__ import annotations

import logging
import math

from i2vlab.utils.runtime import configure_threads

configure_threads()  # before torch is imported (OMP_NUM_THREADS to override)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import i2vlab.utils.config  # noqa: E402,F401  (registers OmegaConf resolvers)
from i2vlab.errors import report_user_errors  # noqa: E402
from i2vlab.utils.validate import validate_train_config  # noqa: E402


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    validate_train_config(cfg)  # fast: before torch / Lightning / diffusers are imported
    from i2vlab.training import train

    metrics = train(cfg)
    value = metrics.get(cfg.get("optimized_metric") or "", None)
    if value is not None and not math.isfinite(value):
        # a NaN reported to the Optuna sweeper aborts the whole study; None makes it a failed trial
        logging.getLogger("i2vlab.train").warning(
            "%s is %s: reported as missing", cfg.optimized_metric, value
        )
        return None
    return value


if __name__ == "__main__":
    main()
