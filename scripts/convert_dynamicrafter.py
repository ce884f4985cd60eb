#!/usr/bin/env python
"""Convert an official DynamiCrafter / VideoCrafter2 ``model.ckpt`` to this project's layout.

    python scripts/convert_dynamicrafter.py --ckpt checkpoints/dynamicrafter_512_v1/model.ckpt \
        --backbone dynamicrafter_512 --out converted/dc512

writes ``<out>/unet`` and ``<out>/image_proj_model`` (diffusers ``save_pretrained`` folders: point
``backbone.unet.pretrained`` / ``backbone.image_proj_model.pretrained`` at them) and
``<out>/trainable.safetensors`` with method-level names (``unet.*``, ``image_proj_model.*``) for
``init_from=``. ``--to-official`` does the reverse for a converted folder. The UNet architecture comes
from ``conf/backbone/<backbone>.yaml`` (``--in-channels 4`` for the VideoCrafter2 T2V checkpoint).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from i2vlab.models.dynamicrafter import DynamiCrafterUNet3DModel, Resampler
from i2vlab.models.dynamicrafter.convert import (
    convert_resampler_state_dict,
    convert_unet_state_dict,
    load_official_checkpoint,
    resampler_state_dict_to_official,
    unet_state_dict_to_official,
)

CONF = Path(__file__).resolve().parent.parent / "conf" / "backbone"


def backbone_configs(name: str, in_channels: int | None) -> tuple[dict, dict]:
    root = OmegaConf.create({"backbone": OmegaConf.load(CONF / f"{name}.yaml")})  # resolves ${backbone.*}
    unet = OmegaConf.to_container(root.backbone.unet.config, resolve=True)
    res = OmegaConf.to_container(root.backbone.image_proj_model.config, resolve=True)
    if in_channels is not None:
        unet["in_channels"] = in_channels
    return unet, res


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--ckpt", required=True, help="official model.ckpt (or a converted folder with --to-official)"
    )
    ap.add_argument(
        "--backbone", default="dynamicrafter_512", help="conf/backbone/<name>.yaml with the architecture"
    )
    ap.add_argument("--in-channels", type=int, default=None, help="4 for VideoCrafter2 T2V weights")
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--to-official", action="store_true", help="converted folder -> official model.ckpt layout"
    )
    ap.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow full unpickling of a .ckpt that holds Python objects besides tensors; unpickling "
        "runs code stored in the file, so only for a file from a source you trust",
    )
    a = ap.parse_args(argv)
    out = Path(a.out)
    if a.to_official:
        unet = DynamiCrafterUNet3DModel.from_pretrained(Path(a.ckpt) / "unet")
        sd = unet_state_dict_to_official(unet.state_dict(), unet.config)
        if (Path(a.ckpt) / "image_proj_model").is_dir():
            sd.update(
                resampler_state_dict_to_official(
                    Resampler.from_pretrained(Path(a.ckpt) / "image_proj_model").state_dict()
                )
            )
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": sd}, out)
        print(f"wrote {out} ({len(sd)} tensors)")
        return out
    ucfg, rcfg = backbone_configs(a.backbone, a.in_channels)
    official = load_official_checkpoint(a.ckpt, trust=a.trust_checkpoint)
    unet = DynamiCrafterUNet3DModel(**ucfg)
    missing, unexpected = unet.load_state_dict(convert_unet_state_dict(official, unet.config), strict=False)
    if unexpected:
        raise SystemExit(f"checkpoint has UNet weights this architecture lacks: {unexpected[:5]}")
    if missing:
        print(
            f"warning: {len(missing)} UNet weights not in the checkpoint (left at init), e.g. {missing[:4]}"
        )
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet")
    tensors = {f"unet.{k}": v.contiguous() for k, v in unet.state_dict().items()}
    res_sd = convert_resampler_state_dict(official)
    if res_sd:
        res = Resampler(**rcfg)
        res.load_state_dict(res_sd)
        res.save_pretrained(out / "image_proj_model")
        tensors.update({f"image_proj_model.{k}": v.contiguous() for k, v in res.state_dict().items()})
    else:
        print("no image_proj_model.* weights (a T2V checkpoint): only the UNet was converted")
    save_file(tensors, str(out / "trainable.safetensors"))
    print(f"wrote {out}/unet, {out}/trainable.safetensors" + (f", {out}/image_proj_model" if res_sd else ""))
    return out


if __name__ == "__main__":
    main()
