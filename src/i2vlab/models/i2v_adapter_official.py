"""I2V-Adapter's official formats and compatibility paths: reading the release's checkpoints,
the official <-> diffusers key layouts (the whole UNet, the first-frame branch, the IP-Adapter
projections), the release conversion with every key accounted for, the export back to the official
layout, and loading personalised (DreamBooth-style) SD1.5 UNets and LoRAs into the adapted UNet.
The processor itself lives in :mod:`i2vlab.models.i2v_adapter`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from i2vlab.models.i2v_adapter import i2v_adapter_processors


# ----------------------------------------------------------------------------------------------
# reading checkpoints (safe by default)
# ----------------------------------------------------------------------------------------------
def _strip_prefix(key: str) -> str:
    for p in ("module.", "unet."):
        if key.startswith(p):
            key = key[len(p) :]
    return key


def read_checkpoint(path: str | Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle (a dict of tensors, possibly nested under
    ``state_dict`` / ``module``). Pickles are read with ``torch.load(weights_only=True)``
    (:func:`i2vlab.utils.safe_load.load_torch_file`); a file that needs full unpickling raises
    ``UnsafeCheckpointError`` unless ``trust=True`` (``--trust-checkpoint``): only for files from a
    source you trust, since unpickling can run code stored in the file."""
    from i2vlab.utils.safe_load import load_torch_file

    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = load_torch_file(path, what="checkpoint", trust=trust)
    while isinstance(sd, dict) and len(sd) == 1 and next(iter(sd)) in ("state_dict", "module"):
        sd = next(iter(sd.values()))
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: not a state dict (a mapping of names to tensors)")
    return sd


# ----------------------------------------------------------------------------------------------
# the official release's key layout (KwaiVGI/I2V-Adapter UNet3DConditionModel) <-> this project's
# ----------------------------------------------------------------------------------------------
_BLOCK = r"(?P<blk>(?:down_blocks\.\d+|mid_block|up_blocks\.\d+)\.attentions\.\d+\.transformer_blocks\.\d+)"
_FF_KEY = re.compile(_BLOCK + r"\.attn1\.(?P<p>to_q_ff\.weight|to_out_ff\.weight|to_out_ff\.bias)")
_IP_KEY = re.compile(_BLOCK + r"\.attn2\.(?P<p>to_k_ip|to_v_ip)\.weight")
_OUR_FF_KEY = re.compile(
    _BLOCK + r"\.attn1\.processor\.(?P<p>to_q_ff\.weight|to_out_ff\.weight|to_out_ff\.bias)"
)
_OUR_IP_KEY = re.compile(_BLOCK + r"\.attn2\.processor\.(?P<p>to_k_ip|to_v_ip)\.0\.weight")


def official_key_to_ours(key: str) -> str:
    """One official UNet key -> its name in this project's ``UNetMotionModel`` (with the IP-Adapter and
    first-frame processors installed). SD1.5 keys are the same in both; motion modules are renamed by
    :func:`i2vlab.models.animatediff.motion_key_to_diffusers`; ``attn1.to_q_ff/to_out_ff`` ->
    ``attn1.processor.*``; ``attn2.to_{k,v}_ip.weight`` -> ``attn2.processor.to_{k,v}_ip.0.weight``."""
    from i2vlab.models.animatediff import motion_key_to_diffusers

    if ".motion_modules." in key:
        return motion_key_to_diffusers(key)
    m = _FF_KEY.fullmatch(key)
    if m:
        return f"{m['blk']}.attn1.processor.{m['p']}"
    m = _IP_KEY.fullmatch(key)
    if m:
        return f"{m['blk']}.attn2.processor.{m['p']}.0.weight"
    return key


def ours_key_to_official(key: str) -> list[str]:
    """The inverse of :func:`official_key_to_ours` (a block's one ``pos_embed.pe`` -> the two official
    copies). The Resampler (``encoder_hid_proj.*``) is not part of the official UNet: ``KeyError``."""
    from i2vlab.models.animatediff import motion_key_to_original

    if key.startswith("encoder_hid_proj."):
        raise KeyError(
            f"{key}: the Resampler is the IP-Adapter file's image_proj, not part of the official UNet"
        )
    if ".motion_modules." in key:
        return motion_key_to_original(key)
    m = _OUR_FF_KEY.fullmatch(key)
    if m:
        return [f"{m['blk']}.attn1.{m['p']}"]
    m = _OUR_IP_KEY.fullmatch(key)
    if m:
        return [f"{m['blk']}.attn2.{m['p']}.weight"]
    if ".processor." in key:
        raise KeyError(f"{key}: an attention processor of no official counterpart")
    return [key]


@dataclass
class OfficialConversion:
    """An official UNet state dict split into this project's pieces (all names this project's):

    - ``unet``: ``UNetMotionModel``'s own tensors (SD1.5 + motion modules);
    - ``ip``: the IP-Adapter cross-attention k/v (``<attn2 processor>.to_{k,v}_ip.0.weight``);
    - ``adapter``: the first-frame branch, named as the method's adapter file
      (``unet.<attn1 processor>.to_q_ff.weight``, ...);
    - ``accounting``: {official key: where it went}.
    """

    unet: dict[str, torch.Tensor] = field(default_factory=dict)
    ip: dict[str, torch.Tensor] = field(default_factory=dict)
    adapter: dict[str, torch.Tensor] = field(default_factory=dict)
    accounting: dict[str, str] = field(default_factory=dict)

    def adapter_names(self) -> dict[str, torch.Tensor]:
        """``adapter`` named as in the UNet (without the ``unet.`` prefix)."""
        return {k[len("unet.") :]: v for k, v in self.adapter.items()}

    def names(self) -> set[str]:
        """This project's UNet names covered."""
        return set(self.unet) | set(self.ip) | set(self.adapter_names())


def _shape(v: Any) -> tuple[int, ...]:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def convert_official_unet(
    state_dict: Mapping[str, torch.Tensor],
    target: Mapping[str, Any],
    drop: Iterable[str] = (),
) -> OfficialConversion:
    """Map an official I2V-Adapter UNet state dict (unprefixed keys) onto this project's names.

    ``target``: this project's UNet state dict or {name: shape} (a ``UNetMotionModel`` with the
    content adapter and the first-frame processors installed, e.g. built on the meta device): every
    mapped name must exist there with the same shape. ``drop``: full-match regexes of official keys
    to leave out on purpose (recorded in ``accounting``). Anything else that maps nowhere raises
    ``KeyError``. The two official copies of a motion block's positional encoding must be equal
    (diffusers keeps one per block)."""
    drop = [re.compile(d) for d in drop]
    out = OfficialConversion()
    first: dict[str, str] = {}
    unknown, bad_shape = [], []
    for k, v in state_dict.items():
        d = next((p.pattern for p in drop if p.fullmatch(k)), None)
        if d is not None:
            out.accounting[k] = f"dropped (matches --drop {d})"
            continue
        try:
            ours = official_key_to_ours(k)
        except KeyError:
            unknown.append(k)
            continue
        if ours not in target:
            unknown.append(k)
            continue
        if _shape(v) != _shape(target[ours]):
            bad_shape.append(f"{k}: {_shape(v)} != {ours}: {_shape(target[ours])}")
            continue
        if ours in first:
            prev = state_dict[first[ours]]
            if not (prev.is_meta or v.is_meta) and not torch.equal(prev, v):
                raise ValueError(
                    f"{k} differs from {first[ours]}: one positional encoding per block cannot hold both"
                )
            out.accounting[k] = (
                f"{ours} (equal to {first[ours]}; diffusers keeps one positional encoding per block)"
            )
            continue
        first[ours] = k
        out.accounting[k] = ours
        if _OUR_FF_KEY.fullmatch(ours):
            out.adapter[f"unet.{ours}"] = v
        elif _OUR_IP_KEY.fullmatch(ours):
            out.ip[ours] = v
        else:
            out.unet[ours] = v
    if unknown:
        raise KeyError(
            f"{len(unknown)} keys map to nothing in this UNet (unknown layout or architecture), e.g. "
            f"{unknown[:5]}; drop them on purpose with --drop REGEX if they are not needed"
        )
    if bad_shape:
        raise ValueError(f"{len(bad_shape)} shape mismatches, e.g. {bad_shape[:3]}")
    return out


def to_official_unet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This project's UNet state dict (``UNetMotionModel`` + processors; ``encoder_hid_proj.*`` left
    out) -> the official ``UNet3DConditionModel`` layout, as ``from_pretrained_ip`` /
    ``load_weights`` read it. Tensors are cloned (no shared storage)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k.startswith("encoder_hid_proj."):
            continue
        for o in ours_key_to_official(k):
            out[o] = v.detach().clone()
    return out


def export_official_adapter(adapter: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A trained adapter (``export/trainable.safetensors`` naming: ``unet.<block>.attn1.processor.to_q_ff.weight``,
    ...) -> the official first-frame-branch checkpoint's keys (``<block>.attn1.to_q_ff.weight``, ...), which
    the official ``load_weights(i2v_module_path=...)`` loads into its UNet. All three tensors of each layer
    are written, the trained ``to_q_ff`` included."""
    out = {}
    for k, v in adapter.items():
        m = _OUR_FF_KEY.fullmatch(k[len("unet.") :] if k.startswith("unet.") else k)
        if m is None:
            raise KeyError(f"{k}: not a first-frame projection of this project's adapter")
        out[f"{m['blk']}.attn1.{m['p']}"] = v.detach().clone()
    return out


def convert_official_adapter(
    state_dict: Mapping[str, torch.Tensor], to_q_source: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The official first-frame-branch checkpoint (``i2v_module.pth``: ``<block>.attn1.to_q_ff.weight``,
    ``to_out_ff.{weight,bias}``, with or without a ``module.``/``unet.`` prefix) -> this project's adapter
    names (``unet.<block>.attn1.processor.*``, as ``export/trainable.safetensors``).

    The official code loads that file *after* ``from_pretrained_ip`` has set ``to_q_ff <- to_q``, so a
    ``to_q_ff`` in the file is what the release uses; a layer whose ``to_q_ff`` is absent keeps the copy
    of ``to_q``, taken here from ``to_q_source`` (the combined UNet checkpoint). Any other key is an
    error (the whole release converts with :func:`convert_release`)."""
    blocks: dict[str, dict[str, torch.Tensor]] = {}
    other = []
    for k, v in state_dict.items():
        m = _FF_KEY.fullmatch(_strip_prefix(k))
        if m:
            blocks.setdefault(m["blk"], {})[m["p"]] = v
        else:
            other.append(k)
    if other:
        raise KeyError(
            f"{len(other)} keys are not first-frame projections (e.g. {other[:3]}): convert the whole release "
            "with `scripts/convert_i2v_adapter.py release`"
        )
    if not blocks:
        raise KeyError("no I2V-Adapter weights (attn1.to_out_ff.*) found in the state dict")
    src = {_strip_prefix(k): v for k, v in (to_q_source or {}).items()}
    out: dict[str, torch.Tensor] = {}
    for blk, t in sorted(blocks.items()):
        missing = {"to_out_ff.weight", "to_out_ff.bias"} - set(t)
        if missing:
            raise KeyError(f"{blk}.attn1: {sorted(missing)} missing")
        q = t.get("to_q_ff.weight", src.get(f"{blk}.attn1.to_q.weight"))
        if q is None:
            raise KeyError(
                f"{blk}.attn1: no to_q_ff.weight in the file; the official code then uses to_q of the UNet "
                "checkpoint: give it (--unet-ckpt)"
            )
        base = f"unet.{blk}.attn1.processor"
        out[f"{base}.to_q_ff.weight"] = q.clone()
        out[f"{base}.to_out_ff.weight"] = t["to_out_ff.weight"].clone()
        out[f"{base}.to_out_ff.bias"] = t["to_out_ff.bias"].clone()
    return out


#: the Resampler's keys in ``ip-adapter-plus_sd15.bin["image_proj"]`` (IP-Adapter-Plus), as full-match regexes
_RESAMPLER_KEYS = re.compile(
    r"latents|(?:proj_in|proj_out|norm_out)\.(?:weight|bias)"
    r"|layers\.\d+\.0\.(?:norm1|norm2)\.(?:weight|bias)|layers\.\d+\.0\.(?:to_q|to_kv|to_out)\.weight"
    r"|layers\.\d+\.1\.0\.(?:weight|bias)|layers\.\d+\.1\.(?:1|3)\.weight"
)


@dataclass
class ReleaseConversion:
    """The official release converted (see :func:`convert_release`)."""

    unet: dict[str, torch.Tensor]
    adapter: dict[str, torch.Tensor]
    ip: dict[str, torch.Tensor]
    image_proj: dict[str, torch.Tensor]
    accounting: dict[str, dict[str, str]]
    notes: list[str]


def convert_release(
    unet_ckpt: Mapping[str, torch.Tensor],
    target: nn.Module,
    i2v_module: Mapping[str, torch.Tensor] | None = None,
    ip_adapter: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    drop: Iterable[str] = (),
) -> ReleaseConversion:
    """Convert the official I2V-Adapter release as its ``inference.py`` loads it.

    - ``unet_ckpt``: ``animatediff_v15_v1_ipplus.pth`` (SD1.5 + AnimateDiff v1 motion modules +
      IP-Adapter k/v, official ``UNet3DConditionModel`` keys), read by ``from_pretrained_ip``, which
      first sets every ``attn1.to_q_ff`` to that block's ``to_q``;
    - ``i2v_module``: the first-frame-branch checkpoint (``i2v_module.pth``), loaded next by
      ``load_weights(i2v_module_path=...)`` over it: its tensors (``to_q_ff``, ``to_out_ff``) win;
    - ``ip_adapter``: ``ip-adapter-plus_sd15.bin`` ({image_proj, ip_adapter}); ``inference.py`` uses
      only its ``image_proj`` (the Resampler); its ``ip_adapter`` k/v are not used (the UNet's own
      ``attn2.to_{k,v}_ip`` from ``unet_ckpt`` are), so they are accounted as dropped.

    ``target``: this project's UNet (a ``UNetMotionModel`` with the content adapter and the first-frame
    processors installed; the meta device will do). Every official key is accounted for; an unknown key,
    a missing tensor or a shape mismatch raises."""
    notes: list[str] = []
    accounting: dict[str, dict[str, str]] = {"unet_ckpt": {}, "i2v_module": {}, "ip_adapter": {}}
    own = target.state_dict()
    sd = {_strip_prefix(k): v for k, v in unet_ckpt.items()}
    origin = {k: "unet_ckpt" for k in sd}
    blocks = [name[: -len(".attn1.processor")] for name in i2v_adapter_processors(target)]
    if not blocks:
        raise ValueError("target UNet has no first-frame processors (install_i2v_adapter first)")
    for blk in blocks:
        q, qff = f"{blk}.attn1.to_q.weight", f"{blk}.attn1.to_q_ff.weight"
        if q not in sd:
            raise KeyError(f"{q} missing from the UNet checkpoint")
        if qff in sd:
            accounting["unet_ckpt"][qff] = "overwritten by to_q, as from_pretrained_ip does"
        sd[qff], origin[qff] = sd[q], "to_q copy"
    for k, v in (i2v_module or {}).items():
        k = _strip_prefix(k)
        if origin.get(k) == "unet_ckpt":
            accounting["unet_ckpt"][k] = "superseded by the i2v_module tensor (loaded after it)"
        elif k in accounting["unet_ckpt"]:
            accounting["unet_ckpt"][k] += ", then by the i2v_module tensor (loaded after it)"
        sd[k], origin[k] = v, "i2v_module"
    conv = convert_official_unet(sd, own, drop)
    copied = []
    for k, dest in conv.accounting.items():
        if origin[k] == "to_q copy":
            copied.append(f"unet.{dest}")
        else:
            accounting[origin[k]][k] = dest
    for dest in copied:  # the combined checkpoint's to_q also initialised the branch's query
        q = dest[len("unet.") :].replace(".processor.to_q_ff.", ".to_q.")
        accounting["unet_ckpt"][q] = accounting["unet_ckpt"].get(q, "") + f"; also {dest} (to_q_ff <- to_q)"
    if copied:
        notes.append(f"{len(copied)} layers have no to_q_ff in the i2v module: they use the copy of to_q")
    required = {k for k in own if not k.startswith("encoder_hid_proj.")}
    missing = sorted(required - conv.names())
    if missing:
        raise KeyError(
            f"{len(missing)} tensors of this UNet are in none of the files, e.g. {missing[:5]}"
            + (" (the first-frame branch is in i2v_module.pth: give it)" if i2v_module is None else "")
        )
    image_proj: dict[str, torch.Tensor] = {}
    if ip_adapter is not None:
        if not {"image_proj", "ip_adapter"} <= set(ip_adapter):
            raise KeyError("the IP-Adapter file must hold image_proj and ip_adapter")
        bad = [k for k in ip_adapter["image_proj"] if not _RESAMPLER_KEYS.fullmatch(k)]
        if bad:
            raise KeyError(f"image_proj: not an IP-Adapter-Plus Resampler (e.g. {bad[:3]})")
        image_proj = dict(ip_adapter["image_proj"])
        for k in image_proj:
            accounting["ip_adapter"][f"image_proj.{k}"] = f"image_proj.{k} (the Resampler, encoder_hid_proj)"
        from i2vlab.models.content_adapter import ip_adapter_layer_ids

        ids = {i: name for name, i in ip_adapter_layer_ids(target).items()}
        same = True
        for k, v in ip_adapter["ip_adapter"].items():
            m = re.fullmatch(r"(\d+)\.(to_k_ip|to_v_ip)\.weight", k)
            if m is None or int(m[1]) not in ids:
                raise KeyError(
                    f"ip_adapter.{k}: not a k/v projection of this UNet's {len(ids)} cross-attentions"
                )
            ours = conv.ip.get(f"{ids[int(m[1])]}.{m[2]}.0.weight")
            same = same and ours is not None and (v.is_meta or torch.equal(ours.to(v.dtype), v))
            accounting["ip_adapter"][f"ip_adapter.{k}"] = (
                "dropped: inference.py takes the IP-Adapter k/v from the UNet checkpoint (attn2.to_*_ip)"
            )
        notes.append(
            "the IP-Adapter file's own k/v equal the UNet checkpoint's"
            if same
            else "the IP-Adapter file's own k/v differ from the UNet checkpoint's; the checkpoint's are used (as inference.py)"
        )
    return ReleaseConversion(conv.unet, conv.adapter, conv.ip, image_proj, accounting, notes)
