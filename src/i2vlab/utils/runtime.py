"""Process set-up shared by the entry points: CPU thread defaults, this process's rank, quiet logs.

Import this module (and call :func:`configure_threads`) *before* torch is imported: OpenMP reads
``OMP_NUM_THREADS`` once, and child processes (data-loader workers, DDP ranks) inherit it.
"""

from __future__ import annotations

import logging
import os
import warnings


def default_num_threads(cpus: int | None = None) -> int:
    """Intra-op threads per process when the user set none: 1 on small machines (on 2-4 cores, the
    data-loader workers and the main process oversubscribe the CPU and tiny models run 10-20x
    slower with more), else half the cores (at most 16), leaving the rest to decoding."""
    n = cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return 1 if n <= 4 else min(16, n // 2)


def configure_threads() -> int:
    """Respect ``OMP_NUM_THREADS`` (or ``I2VLAB_NUM_THREADS``) when set; otherwise apply
    :func:`default_num_threads`. Sets the environment for child processes and torch if imported."""
    n = os.environ.get("I2VLAB_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS")
    threads = int(n) if n and n.isdigit() and int(n) > 0 else default_num_threads()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


def global_rank() -> int:
    """This process's rank before any process group exists (torchrun, SLURM, Lightning's launcher)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    local = os.environ.get("LOCAL_RANK", "")
    node = os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0"))
    if local.isdigit():
        return int(local) + (int(node) if node.isdigit() and int(node) else 0) * 1000
    return 0


#: harmless warnings of the stack that bury real ones (each checked on this stack)
QUIET_WARNINGS = (
    r".*does not have many workers.*",
    r".*`IterableDataset` has `__len__` defined.*",
    r".*Found \d+ module\(s\) in eval mode at the start of training.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    # the data module resumes its stream itself (its state_dict); Lightning only sees the DataLoader
    r".*your dataloader is not resumable.*",
)

#: (logger, message start) pairs of harmless library log lines
QUIET_LOG_LINES = (
    ("pytorch_lightning.utilities.rank_zero", "💡"),
    ("lightning.pytorch.utilities.rank_zero", "💡"),
    ("lightning_fabric.utilities.rank_zero", "💡"),
)


def quiet_logs() -> None:
    """Silence Lightning's tips and the harmless warnings above (real warnings stay)."""
    for pattern in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name, start in QUIET_LOG_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) and f.start == start for f in logger.filters):
            logger.addFilter(_Drop(start))


class _Drop(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not msg.startswith(self.start)
