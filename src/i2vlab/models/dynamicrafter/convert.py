"""Official DynamiCrafter / VideoCrafter (LVDM) checkpoint layout <-> this project's layout.

Official ``model.ckpt`` (``state_dict``) prefixes: ``model.diffusion_model.`` (the 3D UNet,
``openaimodel3d.UNetModel``), ``image_proj_model.`` (Resampler), ``first_stage_model.`` (VAE),
``cond_stage_model.`` (OpenCLIP text), ``embedder.`` (OpenCLIP image). Only the first two are
trained by DynamiCrafter; the VAE and the two OpenCLIP towers are the published SD2.1 VAE /
OpenCLIP ViT-H/14 (laion2b_s32b_b79k) weights, loaded here from their diffusers / transformers
releases instead.

UNet module map (official -> ours; "L" = level, "j" = layer in level):

- ``input_blocks.0.0`` -> ``conv_in``; ``init_attn.0`` -> ``transformer_in`` (Conv1d 1x1 proj -> Linear)
- ``time_embed.{0,2}`` -> ``time_embedding.linear_{1,2}``; ``fps_embedding.{0,2}`` -> ``fps_embedding.linear_{1,2}``
- ``input_blocks.k.{0,1,2}`` -> ``down_blocks.L.{resnets,attentions,temp_attentions}.j``;
  the level's last ``input_blocks.k.0.op`` -> ``down_blocks.L.downsamplers.0.conv``
- ``middle_block.{0,1,2,3}`` -> ``mid_block.{resnets.0, attentions.0, temp_attentions.0, resnets.1}``
- ``output_blocks.k.{0,1,2}`` -> ``up_blocks.U.{resnets,attentions,temp_attentions}.j``; the upsampler
  (index 1 or 3) ``.conv`` -> ``up_blocks.U.upsamplers.0.conv``
- ``out.{0,2}`` -> ``conv_norm_out`` / ``conv_out``
- ResBlock: ``in_layers.0/2`` -> ``norm1/conv1``, ``emb_layers.1`` -> ``time_emb_proj``, ``out_layers.0/3``
  -> ``norm2/conv2``, ``skip_connection`` -> ``conv_shortcut``, ``temopral_conv.*`` (sic) -> ``temp_convs.j.*``
- transformers: same names, except ``attn2.{to_k_ip,to_v_ip,alpha}`` -> ``attn2.processor.*``

Resampler: ``layers.i.0.{norm1,norm2,to_q,to_kv,to_out}`` -> ``layers.i.{ln0,ln1,attn.to_q,attn.to_k+to_v,
attn.to_out.0}``; ``layers.i.1.{0,1,3}`` -> ``layers.i.ff.{0,1.net.0.proj,1.net.2}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
RESAMPLER_PREFIX = "image_proj_model."

_RES = {
    "in_layers.0.": "norm1.",
    "in_layers.2.": "conv1.",
    "emb_layers.1.": "time_emb_proj.",
    "out_layers.0.": "norm2.",
    "out_layers.3.": "conv2.",
    "skip_connection.": "conv_shortcut.",
}
_IP = ("to_k_ip.", "to_v_ip.", "alpha")


def unet_module_map(config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(official prefix, our prefix, kind) for every module of a UNet with ``config`` (ours)."""
    n_levels = len(config["block_out_channels"])
    layers = int(config["layers_per_block"])
    attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    up_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    m = [
        ("input_blocks.0.0.", "conv_in.", "plain"),
        ("time_embed.0.", "time_embedding.linear_1.", "plain"),
        ("time_embed.2.", "time_embedding.linear_2.", "plain"),
        ("out.0.", "conv_norm_out.", "plain"),
        ("out.2.", "conv_out.", "plain"),
    ]
    if config.get("fps_condition", True):
        m += [
            ("fps_embedding.0.", "fps_embedding.linear_1.", "plain"),
            ("fps_embedding.2.", "fps_embedding.linear_2.", "plain"),
        ]
    if config.get("init_attention_heads", 8):
        m.append(("init_attn.0.", "transformer_in.", "temporal_conv1d"))
    k = 1
    for lvl in range(n_levels):
        for j in range(layers):
            ours = f"down_blocks.{lvl}."
            m.append((f"input_blocks.{k}.0.", ours + f"resnets.{j}.", f"resnet:{ours}temp_convs.{j}."))
            if attn[lvl]:
                m.append((f"input_blocks.{k}.1.", ours + f"attentions.{j}.", "spatial"))
                m.append((f"input_blocks.{k}.2.", ours + f"temp_attentions.{j}.", "plain"))
            k += 1
        if lvl < n_levels - 1:
            m.append((f"input_blocks.{k}.0.op.", f"down_blocks.{lvl}.downsamplers.0.conv.", "plain"))
            k += 1
    m += [
        ("middle_block.0.", "mid_block.resnets.0.", "resnet:mid_block.temp_convs.0."),
        ("middle_block.1.", "mid_block.attentions.0.", "spatial"),
        ("middle_block.2.", "mid_block.temp_attentions.0.", "plain"),
        ("middle_block.3.", "mid_block.resnets.1.", "resnet:mid_block.temp_convs.1."),
    ]
    k = 0
    for u in range(n_levels):
        for j in range(layers + 1):
            ours = f"up_blocks.{u}."
            m.append((f"output_blocks.{k}.0.", ours + f"resnets.{j}.", f"resnet:{ours}temp_convs.{j}."))
            idx = 1
            if up_attn[u]:
                m.append((f"output_blocks.{k}.1.", ours + f"attentions.{j}.", "spatial"))
                m.append((f"output_blocks.{k}.2.", ours + f"temp_attentions.{j}.", "plain"))
                idx = 3
            if j == layers and u < n_levels - 1:
                m.append((f"output_blocks.{k}.{idx}.conv.", f"up_blocks.{u}.upsamplers.0.conv.", "plain"))
            k += 1
    return m


def _convert_one(rest: str, ours: str, kind: str, value: torch.Tensor) -> tuple[str, torch.Tensor]:
    if kind.startswith("resnet:"):
        if rest.startswith("temopral_conv."):
            return kind[len("resnet:") :] + rest[len("temopral_conv.") :], value
        for a, b in _RES.items():
            if rest.startswith(a):
                return ours + b + rest[len(a) :], value
        raise KeyError(f"unknown ResBlock parameter {rest!r}")
    if kind == "spatial":
        for ip in _IP:
            tag = f"attn2.{ip}"
            if tag in rest:
                return ours + rest.replace(tag, f"attn2.processor.{ip}"), value
    if (
        kind == "temporal_conv1d"
        and rest.startswith(("proj_in.weight", "proj_out.weight"))
        and value.ndim == 3
    ):
        return ours + rest, value[..., 0]
    return ours + rest, value


def convert_unet_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], prefix: str = UNET_PREFIX
) -> dict[str, torch.Tensor]:
    """Official UNet weights (keys under ``prefix``; others ignored) -> :class:`DynamiCrafterUNet3DModel` keys."""
    table = sorted(unet_module_map(config), key=lambda e: -len(e[0]))
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        k = key[len(prefix) :]
        for off, ours, kind in table:
            if k.startswith(off):
                new, v = _convert_one(k[len(off) :], ours, kind, value)
                out[new] = v
                break
        else:
            raise KeyError(f"official UNet key {key!r} has no counterpart for this config")
    return out


def unet_state_dict_to_official(
    state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any], prefix: str = UNET_PREFIX
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_unet_state_dict` (for exporting back to the official layout)."""
    entries = unet_module_map(config)
    rev = []
    for off, ours, kind in entries:
        rev.append((ours, off, kind))
        if kind.startswith("resnet:"):
            rev.append((kind[len("resnet:") :], off + "temopral_conv.", "plain_back"))
    rev.sort(key=lambda e: -len(e[0]))
    res_back = {b: a for a, b in _RES.items()}
    out = {}
    for key, value in state_dict.items():
        for ours, off, kind in rev:
            if not key.startswith(ours):
                continue
            rest = key[len(ours) :]
            if kind.startswith("resnet:"):
                a = next((a for a in res_back if rest.startswith(a)), None)
                if a is None:
                    raise KeyError(f"unknown resnet parameter {key!r}")
                rest = res_back[a] + rest[len(a) :]
            elif kind == "spatial":
                rest = rest.replace("attn2.processor.", "attn2.")
            elif kind == "temporal_conv1d" and rest in ("proj_in.weight", "proj_out.weight"):
                value = value[..., None]
            out[prefix + off + rest] = value
            break
        else:
            raise KeyError(f"UNet key {key!r} has no official counterpart")
    return out


def convert_resampler_state_dict(
    state_dict: Mapping[str, torch.Tensor], prefix: str = RESAMPLER_PREFIX
) -> dict[str, torch.Tensor]:
    """Official Resampler weights -> :class:`~i2vlab.models.dynamicrafter.resampler.Resampler` keys."""
    ff = {"0.": "ff.0.", "1.": "ff.1.net.0.proj.", "3.": "ff.1.net.2."}
    attn = {"norm1.": "ln0.", "norm2.": "ln1.", "to_q.": "attn.to_q.", "to_out.": "attn.to_out.0."}
    out = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        k = key[len(prefix) :]
        if not k.startswith("layers."):
            out[k] = value
            continue
        _, i, sub, rest = k.split(".", 3)
        if sub == "0" and rest.startswith("to_kv."):
            kk, vv = value.chunk(2, dim=0)
            out[f"layers.{i}.attn.to_k.{rest[6:]}"], out[f"layers.{i}.attn.to_v.{rest[6:]}"] = kk, vv
            continue
        table = attn if sub == "0" else ff
        a = next((a for a in table if rest.startswith(a)), None)
        if a is None:
            raise KeyError(f"official Resampler key {key!r} not understood")
        out[f"layers.{i}.{table[a]}{rest[len(a) :]}"] = value
    return out


def resampler_state_dict_to_official(
    state_dict: Mapping[str, torch.Tensor], prefix: str = RESAMPLER_PREFIX
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`convert_resampler_state_dict`."""
    back = {
        "ln0.": "0.norm1.",
        "ln1.": "0.norm2.",
        "attn.to_q.": "0.to_q.",
        "attn.to_out.0.": "0.to_out.",
        "ff.0.": "1.0.",
        "ff.1.net.0.proj.": "1.1.",
        "ff.1.net.2.": "1.3.",
    }
    out = {}
    for key, value in state_dict.items():
        if not key.startswith("layers."):
            out[prefix + key] = value
            continue
        _, i, rest = key.split(".", 2)
        if rest.startswith("attn.to_k."):
            out[f"{prefix}layers.{i}.0.to_kv.{rest[10:]}"] = torch.cat(
                [value, state_dict[f"layers.{i}.attn.to_v.{rest[10:]}"]]
            )
            continue
        if rest.startswith("attn.to_v."):
            continue
        a = next((a for a in back if rest.startswith(a)), None)
        if a is None:
            raise KeyError(f"Resampler key {key!r} has no official counterpart")
        out[f"{prefix}layers.{i}.{back[a]}{rest[len(a) :]}"] = value
    return out


def widen_conv_in(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A conv_in weight (out, c, k, k) with fewer input channels -> (out, in_channels, k, k), the new
    channels zero (stage 3: the concatenated image latent starts with no effect)."""
    if weight.shape[1] == in_channels:
        return weight
    if weight.shape[1] > in_channels:
        raise ValueError(f"cannot narrow conv_in from {weight.shape[1]} to {in_channels} channels")
    out = weight.new_zeros(weight.shape[0], in_channels, *weight.shape[2:])
    out[:, : weight.shape[1]] = weight
    return out


def load_official_checkpoint(path: str, trust: bool = False) -> dict[str, torch.Tensor]:
    """Read an official ``.ckpt`` (Lightning, ``state_dict`` inside) or ``.safetensors`` file.

    Pickles are read with ``torch.load(weights_only=True)``: a file that holds Python objects besides
    tensors (e.g. hyper-parameters saved as OmegaConf objects) is refused with
    :class:`~i2vlab.utils.safe_load.UnsafeCheckpointError` unless ``trust=True``
    (``backbone.trust_checkpoint=true`` / ``--trust-checkpoint``), since unpickling runs code stored
    in the file. A checkpoint that holds only tensors, strings and numbers loads without it."""
    from i2vlab.utils.safe_load import load_weights

    ckpt = load_weights(
        path, what="DynamiCrafter checkpoint", trust=trust, trust_flag="backbone.trust_checkpoint=true"
    )
    if not isinstance(ckpt, dict):
        raise ValueError(f"DynamiCrafter checkpoint {path} holds a {type(ckpt).__name__}, not a state dict")
    return ckpt.get("state_dict", ckpt)
