"""Score generated videos (optionally generating them first): ``python evaluate.py eval=<protocol>``.

See docs/evaluation.md for every config key and output file. Multi-process:
``torchrun --nproc_per_node=N evaluate.py eval=... hydra.run.dir=<one dir>``.
"""

from __future__ import annotations

import logging
import os

from i2vlab.utils.runtime import configure_threads

configure_threads()  # before torch is imported (OMP_NUM_THREADS to override)

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

import i2vlab.evaluation.config  # noqa: E402,F401  (registers the eval/schema structured config)
from i2vlab.errors import report_user_errors  # noqa: E402

log = logging.getLogger("evaluate")


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
@report_user_errors
def main(cfg: DictConfig) -> dict:
    import torch
    import torch.distributed as dist
    from hydra.core.hydra_config import HydraConfig

    from i2vlab.evaluation import Evaluator
    from i2vlab.evaluation.report import summary_lines

    ecfg = OmegaConf.to_container(cfg.eval, resolve=True)
    if ecfg.get("output_dir") is None:
        ecfg["output_dir"] = HydraConfig.get().runtime.output_dir
    torch.manual_seed(int(cfg.get("seed", 0)))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    results = Evaluator(ecfg).run()
    if not dist.is_initialized() or dist.get_rank() == 0:
        for level, line in summary_lines(results):
            log.log(level, "%s", line)
        log.info(
            "wrote results.json, results.md, per_video.csv to %s%s",
            ecfg["output_dir"],
            "" if results["comparable"] else "  (NOT COMPARABLE: random-init extractors)",
        )
    if dist.is_initialized():
        dist.destroy_process_group()
    return results


if __name__ == "__main__":
    main()
