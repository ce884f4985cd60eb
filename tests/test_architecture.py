"""The house rules of the code base, checked: inference needs no Lightning, the lower layers never
import the training layers, no source file grows past 400 lines, every method has its pipeline."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

SRC = ROOT / "src" / "i2vlab"
#: packages that must import neither Lightning nor the methods (nor the training glue)
LOWER = ("pipelines", "models", "diffusion", "evaluation", "metrics")
FORBIDDEN = (
    "pytorch_lightning",
    "lightning",
    "lightning_fabric",
    "i2vlab.methods",
    "i2vlab.training",
    "i2vlab.sampling",
)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


@pytest.mark.parametrize("package", LOWER)
def test_lower_layers_import_neither_lightning_nor_methods(package):
    bad = {}
    for f in sorted((SRC / package).rglob("*.py")):
        hits = sorted(m for m in _imports(f) if any(m == x or m.startswith(x + ".") for x in FORBIDDEN))
        if hits:
            bad[str(f.relative_to(SRC))] = hits
    assert not bad, bad


def test_no_source_file_over_400_lines():
    long = {
        str(f.relative_to(SRC)): n for f in SRC.rglob("*.py") if (n := len(f.read_text().splitlines())) > 400
    }
    assert not long, long


def test_every_method_names_a_registered_pipeline():
    from i2vlab.methods.animatediff import AnimateDiffT2V
    from i2vlab.methods.dynamicrafter import DynamiCrafter
    from i2vlab.methods.i2v_adapter import I2VAdapter
    from i2vlab.methods.inbetween import GenerativeInbetweening
    from i2vlab.methods.svd_i2v import SVDImageToVideo
    from i2vlab.models.loading import import_object
    from i2vlab.pipelines import PIPELINES

    for cls in (AnimateDiffT2V, I2VAdapter, DynamiCrafter, GenerativeInbetweening, SVDImageToVideo):
        assert import_object(PIPELINES[cls.__name__]) is cls.pipeline_class, cls.__name__


def test_a_trained_run_samples_with_lightning_blocked(tmp_path, toy_data):
    """``load_pipeline`` + ``pipe(...)`` in a process where importing Lightning (or the methods) fails."""
    from conftest import compose_train

    from i2vlab.training import train

    run = tmp_path / "run"
    cfg = compose_train(
        ["experiment=toy_i2v_adapter", "trainer.max_steps=1", "trainer.val_check_interval=1",
         "data.num_workers=0", "method.validation.num_samples=0"], run, toy_data,
    )  # fmt: skip
    train(cfg)
    from omegaconf import OmegaConf

    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('pytorch_lightning', 'lightning', 'lightning_fabric') or name.startswith(('i2vlab.methods', 'i2vlab.training')):
            raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import torch
from i2vlab.pipelines import load_pipeline
pipe = load_pipeline({str(run)!r})
video = pipe(['a red circle moving left'], images=torch.zeros(1, 3, 32, 32), num_frames=4, seed=0, num_inference_steps=2)
print(type(pipe).__name__, tuple(video.shape))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "I2VAdapterPipeline (1, 4, 3, 32, 32)" in p.stdout, p.stdout[-500:]
