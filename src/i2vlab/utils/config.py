"""Hydra/OmegaConf helpers: resolvers, run metadata."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def to_plain(config: Any) -> Any:
    """OmegaConf containers -> plain Python (dicts, lists), resolved; anything else unchanged."""
    if isinstance(config, (DictConfig, ListConfig)):
        return OmegaConf.to_container(config, resolve=True)
    return config


def run_id(path: str) -> str:
    """A stable id for a run directory (used as the wandb run id, so resumes continue the run)."""
    return hashlib.sha1(str(Path(path).resolve()).encode()).hexdigest()[:12]


def project_root() -> str:
    """The checkout this package runs from (the folder holding ``conf/``), so that default data and
    output paths do not depend on the working directory; the working directory for an installed
    (non-editable) package."""
    root = Path(__file__).resolve().parents[3]
    return str(root) if (root / "conf").is_dir() else str(Path.cwd())


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", run_id)
    if not OmegaConf.has_resolver("i2vlab_root"):
        # usable before Hydra's runtime exists (e.g. while Hydra resolves hydra.sweep.dir)
        OmegaConf.register_new_resolver("i2vlab_root", project_root)


def git_revision(root: str | Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        rev = out.stdout.strip() or "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


register_resolvers()
