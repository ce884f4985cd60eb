#!/usr/bin/env python
"""Convert the official I2V-Adapter release into this project's files, and back.

The official release (KwaiVGI/I2V-Adapter ``inference.py``) loads three files:

- ``animatediff_v15_v1_ipplus.pth`` (in the SD1.5 ``unet/`` folder): SD1.5 UNet + AnimateDiff v1
  motion modules + IP-Adapter cross-attention k/v, in the official ``UNet3DConditionModel`` layout.
  ``from_pretrained_ip`` reads it and sets every ``attn1.to_q_ff`` to that block's ``to_q``;
- ``i2v_module.pth``: the first-frame branch (``attn1.to_q_ff``, ``attn1.to_out_ff``), loaded over it
  by ``load_weights(i2v_module_path=...)``, so its tensors win;
- ``ip-adapter-plus_sd15.bin``: only its ``image_proj`` (the Resampler) is used; its own k/v are not
  (the UNet checkpoint's are).

Subcommands::

    # the whole release -> a folder the backbone config loads
    python scripts/convert_i2v_adapter.py release --unet-ckpt animatediff_v15_v1_ipplus.pth \\
        --i2v-module i2v_module.pth --ip-adapter ip-adapter-plus_sd15.bin --out converted/ \\
        [--set backbone=sd15_animatediff_ipplus ...] [--drop REGEX ...] [--trust-checkpoint] \\
        [--write-config backbone.pretrained=/models/sd15 backbone.image_encoder.pretrained=...]
    # only the first-frame branch -> an adapter file (method.adapter.pretrained)
    python scripts/convert_i2v_adapter.py adapter --src i2v_module.pth [--unet-ckpt animatediff_v15_v1_ipplus.pth] \\
        --dst i2v_adapter.safetensors [--check backbone=sd15_animatediff_ipplus] [--write-config ...]
    # a trained adapter -> the official first-frame-branch checkpoint (inference.py --i2v_module_path)
    python scripts/convert_i2v_adapter.py export --adapter <run>/export/trainable.safetensors --out i2v_module.pth
    # a trained run's whole UNet -> the official combined layout (from_pretrained_ip reads it)
    python scripts/convert_i2v_adapter.py export --run <run dir> --full-unet --out animatediff_v15_v1_ipplus.pth

``release`` writes into ``--out``: ``unet/`` (a diffusers ``UNetMotionModel``: SD1.5 + motion module),
``ip_adapter.safetensors`` (published IP-Adapter format: the Resampler + the UNet checkpoint's k/v),
``i2v_adapter.safetensors`` (the first-frame branch, as ``export/trainable.safetensors``) and
``conversion.json`` (every official key and where it went, or why it was dropped). It prints the
overrides that load the folder::

    backbone.motion_unet=<out>/unet backbone.content_adapter.pretrained=<out>/ip_adapter.safetensors
    method.adapter.pretrained=<out>/i2v_adapter.safetensors

(the VAE, text encoder and tokenizer still come from ``backbone.pretrained``, the CLIP image encoder
from ``backbone.image_encoder.pretrained``). An official key of no known layout, a tensor of this
UNet that none of the files holds, or a shape mismatch is an error; ``--drop REGEX`` leaves named
keys out on purpose (recorded). ``--write-config`` also writes the composed config beside the
adapter, so ``scripts/sample.py --run <out>/i2v_adapter.safetensors`` samples with it.

Pickles (``.pth``/``.bin``/``.ckpt``) are read with ``torch.load(weights_only=True)``; a file that
needs full unpickling is refused unless ``--trust-checkpoint`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from i2vlab.models.i2v_adapter import (
    convert_official_adapter,
    convert_release,
    export_official_adapter,
    read_checkpoint,
    to_official_unet_state_dict,
)

DEFAULT_BACKBONE = "backbone=sd15_animatediff_ipplus"


def compose(overrides: list[str]):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from param_report import compose_train_config

    if not any(o.split("=", 1)[0].lstrip("+~") in ("backbone", "experiment") for o in overrides):
        overrides = [DEFAULT_BACKBONE, *overrides]  # the release's architecture unless told otherwise
    return compose_train_config(["method=i2v_adapter", *overrides])


def meta_model(overrides: list[str]):
    from i2vlab.models.loading import build_on_meta
    from i2vlab.training import instantiate_model

    cfg = compose(overrides)
    with build_on_meta():
        return cfg, instantiate_model(cfg)


def save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    if path.suffix == ".safetensors":
        save_file(tensors, str(path), metadata=metadata)
    else:  # a plain dict of tensors, what the official code's torch.load expects
        torch.save(tensors, str(path))


def write_config(overrides: list[str], dst: Path) -> None:
    from omegaconf import OmegaConf

    OmegaConf.save(compose(overrides), dst.parent / "config.yaml")
    print(f"wrote {dst.parent / 'config.yaml'} (scripts/sample.py --run {dst})")


# ----------------------------------------------------------------------------------------------
def cmd_release(a: argparse.Namespace) -> Path:
    from diffusers import UNetMotionModel

    from i2vlab.models.content_adapter import ip_adapter_file_tensors
    from i2vlab.models.loading import to_plain

    cfg, model = meta_model(a.set)
    target = model.unet
    unet_ckpt = read_checkpoint(a.unet_ckpt, trust=a.trust_checkpoint)
    i2v = read_checkpoint(a.i2v_module, trust=a.trust_checkpoint) if a.i2v_module else None
    ip = None
    if a.ip_adapter:
        from i2vlab.models.content_adapter import read_ip_adapter_file

        ip = read_ip_adapter_file(a.ip_adapter, trust=a.trust_checkpoint)
    conv = convert_release(unet_ckpt, target, i2v_module=i2v, ip_adapter=ip, drop=a.drop)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    with torch.device("meta"):
        unet = UNetMotionModel(**to_plain(cfg.backbone.unet.config))
    unet.load_state_dict(conv.unet, strict=True, assign=True)
    unet.save_pretrained(str(out / "unet"))
    adapter_path = out / "i2v_adapter.safetensors"
    save(conv.adapter, adapter_path, {"format": "pt", "method": "I2VAdapter"})
    written = {"unet": str(out / "unet"), "i2v_adapter": str(adapter_path)}
    overrides = [
        f"backbone.motion_unet={out / 'unet'}",
        f"method.adapter.pretrained={adapter_path}",
    ]
    if conv.image_proj:
        ip_path = out / "ip_adapter.safetensors"
        save(ip_adapter_file_tensors(conv.image_proj, conv.ip, target), ip_path, {"format": "pt"})
        written["ip_adapter"] = str(ip_path)
        overrides.insert(1, f"backbone.content_adapter.pretrained={ip_path}")
    else:
        print("no --ip-adapter: ip_adapter.safetensors not written (the content adapter needs its Resampler)")
    report = {
        "sources": {"unet_ckpt": str(a.unet_ckpt), "i2v_module": a.i2v_module, "ip_adapter": a.ip_adapter},
        "config": [DEFAULT_BACKBONE, *a.set],
        "written": written,
        "overrides": overrides,
        "counts": {
            "official_keys": {k: len(v) for k, v in conv.accounting.items()},
            "unet": len(conv.unet),
            "ip_kv": len(conv.ip),
            "adapter": len(conv.adapter),
            "image_proj": len(conv.image_proj),
        },
        "notes": conv.notes,
        "accounting": conv.accounting,
    }
    (out / "conversion.json").write_text(json.dumps(report, indent=1) + "\n")
    for src, acc in conv.accounting.items():
        dropped = sum(v.startswith("dropped") for v in acc.values())
        if acc:
            print(
                f"{src}: {len(acc)} keys, {len(acc) - dropped} mapped, {dropped} dropped (reasons in conversion.json)"
            )
    for n in conv.notes:
        print(f"note: {n}")
    print(
        f"wrote {out}: unet/ ({len(conv.unet)} tensors), i2v_adapter.safetensors ({len(conv.adapter)}), "
        f"ip_adapter.safetensors ({len(conv.ip)} k/v + {len(conv.image_proj)} Resampler), conversion.json"
    )
    print("load it with: " + " ".join(overrides))
    if a.write_config is not None:
        write_config([*a.set, *overrides, *a.write_config], adapter_path)
    return out


def cmd_adapter(a: argparse.Namespace) -> Path:
    src = read_checkpoint(a.src, trust=a.trust_checkpoint)
    to_q = read_checkpoint(a.unet_ckpt, trust=a.trust_checkpoint) if a.unet_ckpt else None
    tensors = convert_official_adapter(src, to_q_source=to_q)
    if a.check is not None:
        _, model = meta_model(a.check)
        own = {n: p.shape for n, p in model.named_parameters() if "_ff." in n}
        if set(own) != set(tensors):
            missing, extra = sorted(set(own) - set(tensors))[:3], sorted(set(tensors) - set(own))[:3]
            raise SystemExit(f"names do not match {a.check}: missing {missing}, unexpected {extra}")
        bad = [k for k, v in tensors.items() if v.shape != own[k]]
        if bad:
            raise SystemExit(f"shape mismatch for {bad[:3]}")
        print(f"checked against {a.check}: {len(own)} tensors match")
    dst = Path(a.dst)
    save(tensors, dst, {"format": "pt", "method": "I2VAdapter"})
    if a.write_config is not None:
        write_config(a.write_config, dst)
    n = sum(v.numel() for v in tensors.values())
    print(f"wrote {len(tensors)} tensors ({n:,} parameters, {len(tensors) // 3} layers) to {dst}")
    return dst


def cmd_export(a: argparse.Namespace) -> Path:
    out = Path(a.out)
    if a.full_unet:
        if not a.run:
            raise SystemExit(
                "--full-unet needs --run (a run directory, checkpoint or export with its config)"
            )
        from i2vlab.pipelines import load_pipeline

        pipe = load_pipeline(a.run, overrides=a.set)
        tensors = to_official_unet_state_dict(pipe.unet.state_dict())
    else:
        if a.adapter:
            adapter = read_checkpoint(a.adapter, trust=a.trust_checkpoint)
        elif a.run:
            from i2vlab.models.i2v_adapter import i2v_adapter_state_dict
            from i2vlab.pipelines import load_pipeline

            adapter = i2v_adapter_state_dict(load_pipeline(a.run, overrides=a.set).unet)
        else:
            raise SystemExit("give --adapter <trainable.safetensors> or --run <run>")
        tensors = export_official_adapter(adapter)
    save(tensors, out)
    print(f"wrote {len(tensors)} tensors in the official layout to {out}")
    return out


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].startswith("--") and argv[0] not in ("-h", "--help"):
        argv.insert(0, "adapter")  # the earlier interface: --src/--dst without a subcommand
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("release", help="the whole official release -> a folder the backbone config loads")
    r.add_argument("--unet-ckpt", required=True, help="animatediff_v15_v1_ipplus.pth")
    r.add_argument("--i2v-module", help="i2v_module.pth (the first-frame branch)")
    r.add_argument("--ip-adapter", help="ip-adapter-plus_sd15.bin (its image_proj: the Resampler)")
    r.add_argument("--out", required=True)
    r.add_argument("--set", nargs="*", default=[], help="train.py overrides of the target architecture")
    r.add_argument(
        "--drop", action="append", default=[], help="full-match regex of official keys to leave out"
    )
    r.add_argument(
        "--write-config", nargs="*", default=None, help="train.py overrides: config.yaml beside the adapter"
    )

    d = sub.add_parser("adapter", help="the first-frame branch only -> an adapter .safetensors")
    d.add_argument("--src", required=True, help="i2v_module.pth (.pth/.bin/.ckpt/.safetensors)")
    d.add_argument("--unet-ckpt", help="the combined UNet checkpoint: to_q for layers without to_q_ff")
    d.add_argument("--dst", required=True, help="output .safetensors")
    d.add_argument(
        "--check", nargs="*", default=None, help="train.py overrides of the target config (meta build)"
    )
    d.add_argument(
        "--write-config", nargs="*", default=None, help="train.py overrides: config.yaml beside dst"
    )

    e = sub.add_parser("export", help="this project's weights -> the official layout")
    e.add_argument("--adapter", help="export/trainable.safetensors (or a converted adapter)")
    e.add_argument("--run", help="a run directory / checkpoint / export (with its config)")
    e.add_argument("--full-unet", action="store_true", help="the whole UNet (SD + motion + IP k/v + branch)")
    e.add_argument("--set", nargs="*", default=[], help="overrides when loading --run")
    e.add_argument(
        "--out", required=True, help=".pth (torch.save, as the official code loads) or .safetensors"
    )

    for p in (r, d, e):
        p.add_argument(
            "--trust-checkpoint", action="store_true", help="allow full unpickling (trusted files only)"
        )
    a = ap.parse_args(argv)
    return {"release": cmd_release, "adapter": cmd_adapter, "export": cmd_export}[a.cmd](a)


if __name__ == "__main__":
    main()
