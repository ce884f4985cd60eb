#!/usr/bin/env python
"""Transfer the Generative Inbetweening fine-tuning delta from SVD (14 frames) onto SVD-XT (25 frames).

For every trained tensor (``temporal_transformer_blocks.0.attn1.to_v.weight`` / ``.to_out.0.weight``)::

    W_xt_ft = W_xt + (W_ft - W_svd)

as the official ``keyframe_interpolation.py`` does. Only those tensors are read and written.

    python scripts/transfer_svd_delta.py \\
        --finetuned outputs/inbetween_paper/runs/<time>/export/trainable.safetensors \\
        --base /models/stable-video-diffusion-img2vid --target /models/stable-video-diffusion-img2vid-xt
    # writes <run>/export/trainable_svd_xt.safetensors; sample with SVD-XT:
    python scripts/sample.py --run <run>/export/trainable_svd_xt.safetensors \\
        --override backbone.pretrained=/models/stable-video-diffusion-img2vid-xt backbone.num_frames=25 \\
        --image first.png --image last.png --num-frames 25

``--base`` / ``--target``: an SVD pipeline folder (its ``unet/`` is used), a UNet folder, or a
``.safetensors`` file of the UNet state dict (fp16 or fp32; the ``fp16`` variant file is used when
it is the only one). Names in ``--finetuned`` carry the method's ``unet.`` prefix.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

PREFIX = "unet."


def unet_weight_files(path: str | Path) -> list[Path]:
    """The safetensors file(s) holding a UNet's weights under ``path``."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FileNotFoundError(
            f"{path}: no such file or folder (an SVD pipeline folder, unet folder or .safetensors)"
        )
    if (p / "unet").is_dir():
        p = p / "unet"
    for stem in ("diffusion_pytorch_model", "diffusion_pytorch_model.fp16"):
        index = p / f"{stem}.safetensors.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [p / s for s in shards]
        single = p / f"{stem}.safetensors"
        if single.is_file():
            return [single]
    raise FileNotFoundError(f"{p}: no diffusion_pytorch_model(.fp16).safetensors found")


def read_tensors(path: str | Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Read only ``names`` (UNet state-dict keys) from the UNet weights at ``path``."""
    out: dict[str, torch.Tensor] = {}
    for f in unet_weight_files(path):
        with safe_open(str(f), framework="pt") as sf:
            keys = set(sf.keys())
            for n in names:
                if n in keys:
                    out[n] = sf.get_tensor(n)
    missing = [n for n in names if n not in out]
    if missing:
        raise KeyError(f"{path}: {len(missing)} tensor(s) missing, e.g. {missing[:3]}")
    return out


def transfer_delta(
    finetuned: Mapping[str, torch.Tensor],
    base: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``target + (finetuned - base)`` per name (all three keyed alike), computed in float32 and
    returned in the fine-tuned tensors' dtype."""
    out = {}
    for name, w_ft in finetuned.items():
        if base[name].shape != w_ft.shape or target[name].shape != w_ft.shape:
            raise ValueError(
                f"{name}: shapes differ (ft {tuple(w_ft.shape)}, base {tuple(base[name].shape)}, "
                f"target {tuple(target[name].shape)})"
            )
        delta = w_ft.float() - base[name].float()
        out[name] = (target[name].float() + delta).to(w_ft.dtype).contiguous()
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--finetuned", required=True, help="export/trainable.safetensors of a method=inbetween run"
    )
    ap.add_argument("--base", required=True, help="the SVD (14-frame) UNet the run was fine-tuned from")
    ap.add_argument("--target", required=True, help="the SVD-XT (25-frame) UNet to transfer onto")
    ap.add_argument("--out", default=None, help="default: <finetuned dir>/trainable_svd_xt.safetensors")
    a = ap.parse_args(argv)

    ft = load_file(a.finetuned)
    if not ft or not all(k.startswith(PREFIX) for k in ft):
        raise SystemExit(
            f"{a.finetuned}: expected tensors named '{PREFIX}...' (an export of method=inbetween)"
        )
    names = [k[len(PREFIX) :] for k in ft]
    base, target = read_tensors(a.base, names), read_tensors(a.target, names)
    moved = transfer_delta({k[len(PREFIX) :]: v for k, v in ft.items()}, base, target)
    out = Path(a.out) if a.out else Path(a.finetuned).with_name("trainable_svd_xt.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(
        {PREFIX + k: v for k, v in moved.items()},
        str(tmp),
        metadata={
            "format": "pt",
            "method": "GenerativeInbetweening",
            "transfer": "W_target + (W_ft - W_base)",
        },
    )
    tmp.replace(out)
    print(f"transferred {len(moved)} tensors (W_target + W_ft - W_base) -> {out}")
    return out


if __name__ == "__main__":
    main()
