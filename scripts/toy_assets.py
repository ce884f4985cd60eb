#!/usr/bin/env python
"""Write the toy world's published models (``assets/toy``) from training runs.

    python scripts/toy_assets.py init                          # the frozen random-init encoders
    python scripts/toy_assets.py publish vae --run <run dir>   # after python train.py experiment=toy_vae
    python scripts/toy_assets.py publish svd_vae --run <run>   # experiment=toy_pretrain_svd_vae
    python scripts/toy_assets.py publish t2v --run <run>       # experiment=toy_pretrain_t2v
    python scripts/toy_assets.py publish i2v_adapter --run <run>     # experiment=toy_pretrain_i2v_adapter
    python scripts/toy_assets.py publish dynamicrafter --run <run>   # experiment=toy_pretrain_dynamicrafter
    python scripts/toy_assets.py publish svd --run <run>       # experiment=toy_pretrain_svd
    python scripts/toy_assets.py publish inbetween --run <run> # experiment=toy_pretrain_inbetween
    python scripts/toy_assets.py sizes                         # what assets/toy holds, in MB

``init`` builds, with fixed seeds, the components that stay frozen at their random initialisation
(the CLIP text encoder shared by toy_i2v_adapter and toy_dynamicrafter, and each backbone's CLIP
image encoder) from the architectures in ``conf/backbone/toy_*.yaml`` and saves them, so that every
later training run and every user sees the same ones. ``publish`` rebuilds a run's method from its
saved config (``i2vlab.sampling.load_method``: its trained weights included) and writes the
components that run trained, in the layouts the ``toy_*`` backbones load: diffusers / transformers
folders (``save_pretrained``), the I2V-Adapter branch as a method export and its IP-Adapter in the
published IP-Adapter file format (checked by loading it back through diffusers' loader). Weights are
stored in ``--dtype`` (float16 by default: the toy models are trained in float32 and evaluated from
these files, so every number in docs/toy_world.md is the stored weights' number).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from i2vlab.utils.runtime import configure_threads

configure_threads()

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets" / "toy"

#: (asset folder, backbone config, component key, seed) of the frozen random-init encoders
FROZEN_ENCODERS = [
    ("text_encoder", "toy_i2v_adapter", "text_encoder", 1),
    ("i2v_adapter/image_encoder", "toy_i2v_adapter", "image_encoder", 2),
    ("dynamicrafter/image_encoder", "toy_dynamicrafter", "image_encoder", 3),
    ("svd/image_encoder", "toy_svd", "image_encoder", 4),
]
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def compose_backbone(name: str):
    from hydra import compose, initialize_config_dir

    import i2vlab.utils.config  # noqa: F401  (resolvers)

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"backbone={name}", "paths.output_dir=/tmp"])
    return cfg.backbone


def save_module(module: torch.nn.Module, out: Path, dtype: torch.dtype) -> Path:
    """``save_pretrained`` of a copy of ``module`` in ``dtype`` (the module itself is not changed).
    transformers models are always stored in float32: transformers loads a checkpoint in its stored
    dtype (diffusers loads it into a float32 model)."""
    import copy

    from transformers import PreTrainedModel

    if isinstance(module, PreTrainedModel):
        dtype = torch.float32
    if out.exists():
        shutil.rmtree(out)
    copy.deepcopy(module).to(dtype).save_pretrained(str(out))
    cfg = out / "config.json"
    if cfg.is_file():  # diffusers records the folder it loaded from: not a path anyone else has
        data = json.loads(cfg.read_text())
        if data.pop("_name_or_path", None) is not None:
            cfg.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return out


def cmd_init(a: argparse.Namespace) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    global ASSETS
    ASSETS = Path(a.assets)
    for folder, backbone, key, seed in FROZEN_ENCODERS:
        cfg = OmegaConf.to_container(compose_backbone(backbone)[key], resolve=True)
        cfg["pretrained"] = None
        torch.manual_seed(seed)
        module = instantiate(cfg)
        print(f"wrote {save_module(module, ASSETS / folder, DTYPES[a.dtype])} (random init, seed {seed})")


# ----------------------------------------------------------------------------------------------
# IP-Adapter in the published file format
# ----------------------------------------------------------------------------------------------
def image_proj_to_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``IPAdapterPlusImageProjection`` names -> the IP-Adapter-Plus Resampler's own
    (``ip-adapter-plus_sd15.bin["image_proj"]``); the inverse of diffusers' loader conversion."""
    import re

    out: dict[str, torch.Tensor] = {}
    kv: dict[str, dict[str, torch.Tensor]] = {}
    rules = [
        (r"layers\.(\d+)\.ln0\.(.*)", r"layers.\1.0.norm1.\2"),
        (r"layers\.(\d+)\.ln1\.(.*)", r"layers.\1.0.norm2.\2"),
        (r"layers\.(\d+)\.attn\.to_q\.(.*)", r"layers.\1.0.to_q.\2"),
        (r"layers\.(\d+)\.attn\.to_out\.0\.(.*)", r"layers.\1.0.to_out.\2"),
        (r"layers\.(\d+)\.ff\.0\.(.*)", r"layers.\1.1.0.\2"),
        (r"layers\.(\d+)\.ff\.1\.net\.0\.proj\.(.*)", r"layers.\1.1.1.\2"),
        (r"layers\.(\d+)\.ff\.1\.net\.2\.(.*)", r"layers.\1.1.3.\2"),
    ]
    for k, v in sd.items():
        m = re.fullmatch(r"layers\.(\d+)\.attn\.to_([kv])\.(.*)", k)
        if m:
            kv.setdefault(f"layers.{m[1]}.0.to_kv.{m[3]}", {})[m[2]] = v
            continue
        for pat, rep in rules:
            if re.fullmatch(pat, k):
                out[re.sub(pat, rep, k)] = v
                break
        else:
            out[k] = v  # latents, proj_in, proj_out, norm_out
    for k, parts in kv.items():
        out[k] = torch.cat([parts["k"], parts["v"]], dim=0)
    return out


def write_ip_adapter(unet: torch.nn.Module, path: Path, dtype: torch.dtype) -> Path:
    """The UNet's IP-Adapter (Resampler + k/v of every spatial cross-attention) as a published-format
    ``.safetensors`` file, verified by loading it into a fresh copy of the UNet with diffusers' loader."""
    import copy

    from safetensors.torch import save_file

    from i2vlab.models.content_adapter import install_content_adapter, ip_adapter_file_tensors

    proj = unet.encoder_hid_proj.image_projection_layers[0].state_dict()
    kv = {
        k: v for k, v in unet.state_dict().items() if ".processor.to_k_ip." in k or ".processor.to_v_ip." in k
    }
    tensors = ip_adapter_file_tensors(image_proj_to_original(proj), kv, unet)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    # round trip: a fresh UNet without the adapter, loaded through diffusers' public loader
    from diffusers.models.attention_processor import AttnProcessor2_0

    fresh = copy.deepcopy(unet)
    fresh.set_attn_processor(AttnProcessor2_0())
    fresh.encoder_hid_proj = None
    install_content_adapter(fresh, pretrained=str(path))
    want = {k: v for k, v in unet.state_dict().items() if "_ip." in k or k.startswith("encoder_hid_proj.")}
    got = fresh.state_dict()
    bad = [k for k, v in want.items() if k not in got or not torch.equal(got[k].float(), v.to(dtype).float())]
    if bad:
        raise RuntimeError(f"{path}: IP-Adapter round trip differs at {bad[:4]} ({len(bad)} tensors)")
    return path


# ----------------------------------------------------------------------------------------------
# publish
# ----------------------------------------------------------------------------------------------
def _tensors(path: Path, tensors: dict[str, torch.Tensor], dtype: torch.dtype, meta: dict) -> Path:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().to("cpu", dtype).contiguous() for k, v in tensors.items()}, str(path), metadata=meta
    )
    return path


def cmd_publish(a: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    from i2vlab.sampling import load_method
    from i2vlab.utils.config import git_revision

    global ASSETS
    ASSETS = Path(a.assets)
    run = Path(a.run)
    module = load_method(run, use_ema=a.ema)
    dtype = DTYPES[a.dtype]
    written: list[Path] = []
    kind = a.kind
    if kind in ("vae", "svd_vae"):
        # the whole VAE as the run exported it (export/vae: with the encoder a run may have taken
        # from init_from, which a rebuild from the run config would not have, and its scaling factor)
        folder = run / "export" / ("vae_ema" if a.ema else "vae")
        if folder.is_dir():
            vae = type(module.vae).from_pretrained(str(folder))
        else:  # a run stopped early (SIGTERM): its last checkpoint, scaling factor from its last validation
            vae = module.vae
            std = _last_logged(run, "val/latent_std")
            vae.register_to_config(scaling_factor=1.0 / std)
            print(f"{folder} missing: VAE from the run's last checkpoint, scaling_factor 1/{std:.4f}")
        written.append(save_module(vae, ASSETS / ("vae" if kind == "vae" else "svd/vae"), dtype))
    elif kind == "t2v":
        written.append(save_module(module.unet, ASSETS / "i2v_adapter" / "unet", dtype))
    elif kind == "i2v_adapter":
        from i2vlab.models.i2v_adapter import i2v_adapter_state_dict

        meta = {"format": "pt", "method": "I2VAdapter", "git_revision": git_revision()}
        written.append(
            _tensors(
                ASSETS / "i2v_adapter" / "adapter.safetensors",
                i2v_adapter_state_dict(module.unet),
                dtype,
                meta,
            )
        )
        written.append(
            write_ip_adapter(module.unet, ASSETS / "i2v_adapter" / "ip_adapter.safetensors", dtype)
        )
    elif kind == "dynamicrafter":
        written.append(save_module(module.unet, ASSETS / "dynamicrafter" / "unet", dtype))
        written.append(
            save_module(module.image_proj_model, ASSETS / "dynamicrafter" / "image_proj_model", dtype)
        )
    elif kind == "svd":
        written.append(save_module(module.unet, ASSETS / "svd" / "unet", dtype))
    elif kind == "inbetween":
        names = module.configure_trainable()
        own = dict(module.named_parameters())
        meta = {"format": "pt", "method": "GenerativeInbetweening", "git_revision": git_revision()}
        written.append(
            _tensors(ASSETS / "inbetween" / "trainable.safetensors", {k: own[k] for k in names}, dtype, meta)
        )
    else:  # pragma: no cover - argparse restricts the choices
        raise SystemExit(f"unknown kind {kind}")
    info = {
        "kind": kind,
        "run": run.name,  # the folder's name only: where it lay on the training machine is not provenance
        "published": time.strftime("%Y-%m-%d %H:%M:%S"),
        "dtype": a.dtype,
        "git_revision_publish": git_revision(),
        "run_info": _first_run_info(run),
        "overrides": _overrides(run),
        "config": OmegaConf.to_container(module.run_config.method, resolve=False)
        if "method" in module.run_config
        else None,
    }
    prov = ASSETS / "provenance" / f"{kind}.json"
    prov.parent.mkdir(parents=True, exist_ok=True)
    prov.write_text(json.dumps(info, indent=1, default=str) + "\n")
    for p in written + [prov]:
        print(f"wrote {p}")


def _last_logged(run: Path, key: str) -> float:
    import csv

    rows = [r for r in csv.DictReader(open(run / "csv" / "version_0" / "metrics.csv")) if r.get(key)]
    if not rows:
        raise SystemExit(f"{run}: no {key} logged")
    return float(rows[-1][key])


def _first_run_info(run: Path) -> list[dict]:
    p = run / "run_info.jsonl"
    if not p.is_file():
        return []
    keep = ("time", "git_revision", "argv", "torch", "diffusers", "torch_threads")
    out = [{k: d.get(k) for k in keep} for d in map(json.loads, p.read_text().splitlines()) if d]
    for d in out:  # the command as a user types it: the run folder is theirs to choose
        d["argv"] = [scrub_run_dir(x) for x in d.get("argv") or []]
    return out


def scrub_run_dir(arg: str) -> str:
    """``hydra.run.dir=/any/where/name`` -> ``hydra.run.dir=<run dir>``; other arguments unchanged."""
    return "hydra.run.dir=<run dir>" if arg.startswith("hydra.run.dir=") else arg


def _overrides(run: Path) -> list[str] | None:
    p = run / ".hydra" / "overrides.yaml"
    if not p.is_file():
        return None
    from omegaconf import OmegaConf

    return list(OmegaConf.load(p))


def cmd_sizes(a: argparse.Namespace) -> None:
    total = 0
    for p in sorted(ASSETS.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            if p.stat().st_size > 100_000:
                print(f"{p.stat().st_size / 1e6:8.2f} MB  {p.relative_to(ROOT)}")
    print(f"{total / 1e6:8.2f} MB  total")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="the frozen random-init encoders")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--assets", default=str(ASSETS), help="where to write (default: assets/toy)")
    p = sub.add_parser("publish", help="a run's trained components")
    p.add_argument(
        "kind", choices=["vae", "svd_vae", "t2v", "i2v_adapter", "dynamicrafter", "svd", "inbetween"]
    )
    p.add_argument("--run", required=True, help="the training run directory")
    p.add_argument("--ema", action="store_true", help="the run's EMA weights")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--assets", default=str(ASSETS), help="where to write (default: assets/toy)")
    sub.add_parser("sizes", help="what assets/toy holds")
    a = ap.parse_args(argv)
    {"init": cmd_init, "publish": cmd_publish, "sizes": cmd_sizes}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
