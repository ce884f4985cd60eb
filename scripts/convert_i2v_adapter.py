#!/usr/bin/env python
"""Convert the official I2V-Adapter checkpoint to this project's adapter file.

    python scripts/convert_i2v_adapter.py --src animatediff_v15_v1_ipplus.pth --dst i2v_adapter.safetensors
    python scripts/convert_i2v_adapter.py --src ... --dst ... --query-from-to-q      # as the official loader
    python scripts/convert_i2v_adapter.py --src ... --dst ... --check backbone=sd15_animatediff_ipplus
    python scripts/convert_i2v_adapter.py --src ... --dst out/i2v_adapter.safetensors \
        --write-config backbone=sd15_animatediff_ipplus backbone.pretrained=/models/sd15 ...
    python scripts/sample.py --run out/i2v_adapter.safetensors --image first.png --prompt "..."

Reads ``.pth``/``.ckpt``/``.bin`` (a state dict, or a dict with ``state_dict``) or ``.safetensors``;
writes only the first-frame projections (``to_q_ff``, ``to_out_ff``), renamed onto
``unet.<block>.attn1.processor.*``: the same names as ``export/trainable.safetensors`` of a training
run, so the file loads with ``method.adapter.pretrained=<dst>`` or ``module.load_adapter(<dst>)``.
``--check <overrides>`` builds that configuration on the meta device and verifies names and shapes;
``--write-config <overrides>`` writes the composed training config (``method=i2v_adapter`` + overrides)
as ``config.yaml`` beside the output, so ``scripts/sample.py --run <dst>`` can sample with it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from i2vlab.models.i2v_adapter import convert_official_state_dict


def read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "module"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


def compose(overrides: list[str]):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from param_report import compose_train_config

    return compose_train_config(["method=i2v_adapter", *overrides])


def check(tensors: dict[str, torch.Tensor], overrides: list[str]) -> None:
    from i2vlab.models.loading import build_on_meta
    from i2vlab.training import instantiate_model

    cfg = compose(overrides)
    with build_on_meta():
        model = instantiate_model(cfg)
    own = {n: p.shape for n, p in model.named_parameters() if "_ff." in n}
    if set(own) != set(tensors):
        missing, extra = sorted(set(own) - set(tensors))[:3], sorted(set(tensors) - set(own))[:3]
        raise SystemExit(f"names do not match {overrides}: missing {missing}, unexpected {extra}")
    bad = [k for k, v in tensors.items() if v.shape != own[k]]
    if bad:
        raise SystemExit(f"shape mismatch for {bad[:3]}")
    print(f"checked against {overrides}: {len(own)} tensors match")


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="official checkpoint (.pth/.ckpt/.bin/.safetensors)")
    ap.add_argument("--dst", required=True, help="output .safetensors")
    ap.add_argument(
        "--query-from-to-q", action="store_true", help="to_q_ff <- to_q, as the official loader does"
    )
    ap.add_argument(
        "--check", nargs="*", default=None, help="train.py overrides of the target config (meta build)"
    )
    ap.add_argument(
        "--write-config", nargs="*", default=None, help="train.py overrides: config.yaml beside dst"
    )
    a = ap.parse_args(argv)
    tensors = convert_official_state_dict(read(Path(a.src)), query_from_to_q=a.query_from_to_q)
    if a.check is not None:
        check(tensors, a.check)
    dst = Path(a.dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(dst),
        metadata={"format": "pt", "method": "I2VAdapter"},
    )
    if a.write_config is not None:
        from omegaconf import OmegaConf

        OmegaConf.save(compose(a.write_config), dst.parent / "config.yaml")
        print(f"wrote {dst.parent / 'config.yaml'} (scripts/sample.py --run {dst})")
    n = sum(v.numel() for v in tensors.values())
    print(f"wrote {len(tensors)} tensors ({n:,} parameters, {len(tensors) // 3} layers) to {dst}")
    return dst


if __name__ == "__main__":
    main()
