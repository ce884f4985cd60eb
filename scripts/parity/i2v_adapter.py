#!/usr/bin/env python
"""Parity fixtures for I2V-Adapter (official code: KwaiVGI/I2V-Adapter, which pins diffusers 0.11.1).

    I2VLAB_OFFICIAL_I2V_ADAPTER=/path/to/I2V-Adapter I2VLAB_DIFFUSERS011=/path/to/site-diffusers011 \\
        python scripts/parity/i2v_adapter.py [--out tests/fixtures/parity/i2v_adapter]

Needs:

- a checkout of KwaiVGI/I2V-Adapter (``--official`` or ``$I2VLAB_OFFICIAL_I2V_ADAPTER``; its commit
  from git, a ``COMMIT`` file or ``--official-commit``);
- diffusers 0.11.1 installed on its own into a folder (``--diffusers011`` or ``$I2VLAB_DIFFUSERS011``):
  ``pip install --no-deps --target <folder> diffusers==0.11.1``. The official modules run in a
  separate process (``scripts/parity/i2v_adapter_official.py``) with that folder first on
  ``sys.path``; everything else (torch, torchvision, einops, huggingface_hub) comes from the project
  environment.

Writes to ``tests/fixtures/parity/i2v_adapter/`` (float64 unless noted):

- ``attention``: ``MixedCausalAttention2D`` (first-frame branch) and ``IPAdapterAttention``;
- ``resampler`` (float32): the IP-Adapter-Plus ``Resampler`` (its softmax is float32 by design);
- ``unet``: the whole tiny ``UNet3DConditionModel`` (SD blocks + AnimateDiff v1 motion modules +
  first-frame branch + IP-Adapter k/v) in the release's GroupNorm semantics
  (``use_inflated_groupnorm: false``) and, with the same weights, ``use_inflated_groupnorm: true``;
- ``sampling``: ``I2VIPAdapterPipeline.__call__`` as ``inference.py`` calls it (FSP, CFG 7.5, 4 DDIM
  steps, 16 frames) with the ``unet`` weights: the FSP start latents and the final latents;
- ``sampling_f32``: the same call in float32 with the image tokens made by the ``resampler``;
- ``official_unet_sd15_keys``: the names and shapes of the full-size official UNet (no tensors).

``tests/test_parity_i2v_adapter.py`` loads them into this project's classes through its converter
(``i2vlab.models.i2v_adapter.convert_official_unet``) and compares.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import FIXTURES, add_official_args, official_checkout, official_commit  # noqa: E402

ENV = "I2VLAB_OFFICIAL_I2V_ADAPTER"
ENV_DIFFUSERS = "I2VLAB_DIFFUSERS011"
REPO = "KwaiVGI/I2V-Adapter"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_official_args(ap, ENV, REPO)
    ap.add_argument(
        "--diffusers011",
        default=os.environ.get(ENV_DIFFUSERS),
        help=f"folder with diffusers==0.11.1 installed by pip --target (default: ${ENV_DIFFUSERS})",
    )
    a = ap.parse_args(argv)
    official = official_checkout(a.official, ENV, REPO)
    commit = official_commit(official, a.official_commit)
    if not a.diffusers011 or not (Path(a.diffusers011) / "diffusers").is_dir():
        raise SystemExit(
            f"give --diffusers011 or set {ENV_DIFFUSERS}: a folder made by "
            "`pip install --no-deps --target <folder> diffusers==0.11.1`"
        )
    out = a.out or FIXTURES / "i2v_adapter"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": ""}
    cmd = [
        sys.executable,
        str(HERE / "i2v_adapter_official.py"),
        "--official",
        str(official),
        "--diffusers011",
        str(Path(a.diffusers011).resolve()),
        "--commit",
        commit,
        "--out",
        str(Path(out).resolve()),
    ]
    subprocess.run(cmd, check=True, env=env)


if __name__ == "__main__":
    main()
