"""AnimateDiff backbone: SD1.5 ``UNet2DConditionModel`` + ``MotionAdapter`` -> diffusers ``UNetMotionModel``.

Also: the GroupNorm semantics option (``groupnorm``, :mod:`i2vlab.models.animatediff_norm`) and the
key mapping between the original AnimateDiff motion-module layout
(``...motion_modules.N.temporal_transformer.transformer_blocks.M.attention_blocks.K...``, as in
AnimateDiff checkpoints and the official I2V-Adapter UNet) and diffusers' ``UNetMotionModel``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

from i2vlab.models.animatediff_norm import set_groupnorm_mode
from i2vlab.models.loading import WeightsNotFoundError, check_weights, on_meta, to_plain

SD15_PUBLISHED = "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5"
MOTION_PUBLISHED = "https://huggingface.co/guoyww (animatediff-motion-adapter-v1-5-2, -v1-4, ...)"


def build_motion_unet(
    name: str,
    config: Mapping[str, Any],
    pretrained: str | None = None,
    motion_adapter: str | None = None,
    pretrained_motion_unet: str | None = None,
    groupnorm: str = "diffusers",
) -> UNetMotionModel:
    """Build the AnimateDiff UNet.

    - ``pretrained_motion_unet``: a saved ``UNetMotionModel`` directory (e.g. one exported here, or
      the ``unet/`` folder ``scripts/convert_i2v_adapter.py release`` writes);
    - ``pretrained`` (SD1.5 root, ``unet`` subfolder) + ``motion_adapter``: combined with
      ``UNetMotionModel.from_unet2d``;
    - neither, or on the meta device: ``UNetMotionModel(**config)`` (random init / parameter reports).
      ``from_unet2d`` copies buffers and cannot run on the meta device, hence the config path there.

    ``groupnorm``: ``diffusers`` (diffusers' own), ``animatediff_v1`` (the original AnimateDiff code
    with ``use_inflated_groupnorm: false``, what the official I2V-Adapter runs), ``inflated``
    (``use_inflated_groupnorm: true``) or ``auto`` (``animatediff_v1`` for a v1 motion-module layout,
    else ``diffusers``); see :mod:`i2vlab.models.animatediff_norm`. The state-dict keys are diffusers'
    in every mode.
    """
    config = dict(to_plain(config))
    if on_meta() or (pretrained is None and pretrained_motion_unet is None):
        return _with_groupnorm(UNetMotionModel(**config), groupnorm)
    try:
        if pretrained_motion_unet is not None:
            check_weights(pretrained_motion_unet, f"{name}.pretrained_motion_unet")
            return _with_groupnorm(UNetMotionModel.from_pretrained(pretrained_motion_unet), groupnorm)
        check_weights(pretrained, f"{name}.pretrained", SD15_PUBLISHED)
        if motion_adapter is None:
            raise WeightsNotFoundError(
                f"{name}.motion_adapter is not set; published adapters: {MOTION_PUBLISHED}"
            )
        check_weights(motion_adapter, f"{name}.motion_adapter", MOTION_PUBLISHED)
        unet2d = UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet")
        adapter = MotionAdapter.from_pretrained(motion_adapter)
    except OSError as e:
        raise WeightsNotFoundError(
            f"{name}: could not load SD1.5 UNet / motion adapter ({pretrained!r}, {motion_adapter!r}): {e}. "
            f"Point `{name}.pretrained` and `{name}.motion_adapter` at local copies. "
            f"Published: {SD15_PUBLISHED}; {MOTION_PUBLISHED}"
        ) from e
    return _with_groupnorm(UNetMotionModel.from_unet2d(unet2d, adapter), groupnorm)


def is_motion_v1(config: Mapping[str, Any]) -> bool:
    """AnimateDiff v1 motion-module layout (``mm_sd_v14/15``, diffusers ``animatediff-motion-adapter-v1-5``):
    positional encoding of 24 frames and no mid-block motion module (v2/v3: 32 and a mid block)."""
    return int(config.get("motion_max_seq_length", 32)) == 24 and not config.get("use_motion_mid_block", True)


def resolve_groupnorm(groupnorm: str, config: Mapping[str, Any]) -> str:
    """``auto`` -> ``animatediff_v1`` for a v1 motion-module layout (:func:`is_motion_v1`), else ``diffusers``."""
    if groupnorm == "auto":
        return "animatediff_v1" if is_motion_v1(config) else "diffusers"
    return groupnorm


def _with_groupnorm(unet: UNetMotionModel, groupnorm: str) -> UNetMotionModel:
    return set_groupnorm_mode(unet, resolve_groupnorm(groupnorm, unet.config))


# ----------------------------------------------------------------------------------------------
# motion-module keys: original AnimateDiff layout <-> diffusers UNetMotionModel
# ----------------------------------------------------------------------------------------------
_MM = r"(?P<mm>(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.\d+)"
_ORIG_BLOCK = _MM + r"\.temporal_transformer\.transformer_blocks\.(?P<blk>\d+)\."
_ORIGINAL_RULES: list[tuple[re.Pattern, Any]] = [
    (
        re.compile(_MM + r"\.temporal_transformer\.(?P<rest>(?:norm|proj_in|proj_out)\.(?:weight|bias))"),
        lambda m: f"{m['mm']}.{m['rest']}",
    ),
    (
        re.compile(
            _ORIG_BLOCK
            + r"attention_blocks\.(?P<k>[01])\.(?P<rest>(?:to_q|to_k|to_v)\.weight|to_out\.0\.(?:weight|bias))"
        ),
        lambda m: f"{m['mm']}.transformer_blocks.{m['blk']}.attn{int(m['k']) + 1}.{m['rest']}",
    ),
    (
        re.compile(_ORIG_BLOCK + r"attention_blocks\.(?P<k>[01])\.pos_encoder\.pe"),
        lambda m: f"{m['mm']}.transformer_blocks.{m['blk']}.pos_embed.pe",
    ),
    (
        re.compile(_ORIG_BLOCK + r"norms\.(?P<k>[01])\.(?P<p>weight|bias)"),
        lambda m: f"{m['mm']}.transformer_blocks.{m['blk']}.norm{int(m['k']) + 1}.{m['p']}",
    ),
    (
        re.compile(_ORIG_BLOCK + r"ff_norm\.(?P<p>weight|bias)"),
        lambda m: f"{m['mm']}.transformer_blocks.{m['blk']}.norm3.{m['p']}",
    ),
    (
        re.compile(_ORIG_BLOCK + r"(?P<rest>ff\.net\.(?:0\.proj|2)\.(?:weight|bias))"),
        lambda m: f"{m['mm']}.transformer_blocks.{m['blk']}.{m['rest']}",
    ),
]
_DIFF_BLOCK = _MM + r"\.transformer_blocks\.(?P<blk>\d+)\."
_DIFFUSERS_RULES: list[tuple[re.Pattern, Any]] = [
    (
        re.compile(_MM + r"\.(?P<rest>(?:norm|proj_in|proj_out)\.(?:weight|bias))"),
        lambda m: [f"{m['mm']}.temporal_transformer.{m['rest']}"],
    ),
    (
        re.compile(
            _DIFF_BLOCK + r"attn(?P<k>[12])\.(?P<rest>(?:to_q|to_k|to_v)\.weight|to_out\.0\.(?:weight|bias))"
        ),
        lambda m: [
            f"{m['mm']}.temporal_transformer.transformer_blocks.{m['blk']}.attention_blocks.{int(m['k']) - 1}.{m['rest']}"
        ],
    ),
    (
        re.compile(_DIFF_BLOCK + r"pos_embed\.pe"),
        lambda m: [
            f"{m['mm']}.temporal_transformer.transformer_blocks.{m['blk']}.attention_blocks.{k}.pos_encoder.pe"
            for k in (0, 1)
        ],
    ),
    (
        re.compile(_DIFF_BLOCK + r"norm(?P<k>[12])\.(?P<p>weight|bias)"),
        lambda m: [
            f"{m['mm']}.temporal_transformer.transformer_blocks.{m['blk']}.norms.{int(m['k']) - 1}.{m['p']}"
        ],
    ),
    (
        re.compile(_DIFF_BLOCK + r"norm3\.(?P<p>weight|bias)"),
        lambda m: [f"{m['mm']}.temporal_transformer.transformer_blocks.{m['blk']}.ff_norm.{m['p']}"],
    ),
    (
        re.compile(_DIFF_BLOCK + r"(?P<rest>ff\.net\.(?:0\.proj|2)\.(?:weight|bias))"),
        lambda m: [f"{m['mm']}.temporal_transformer.transformer_blocks.{m['blk']}.{m['rest']}"],
    ),
]


def motion_key_to_diffusers(key: str) -> str:
    """An original AnimateDiff motion-module key -> its ``UNetMotionModel`` name. Both copies of the
    positional encoding (``attention_blocks.{0,1}.pos_encoder.pe``) map to the block's one
    ``pos_embed.pe``. Raises ``KeyError`` for a key of no known motion-module layout."""
    for pat, repl in _ORIGINAL_RULES:
        m = pat.fullmatch(key)
        if m:
            return repl(m)
    raise KeyError(f"not an AnimateDiff motion-module key: {key}")


def motion_key_to_original(key: str) -> list[str]:
    """A ``UNetMotionModel`` motion-module key -> its original AnimateDiff name(s) (``pos_embed.pe`` ->
    both attention blocks' ``pos_encoder.pe``). Raises ``KeyError`` for anything else."""
    for pat, repl in _DIFFUSERS_RULES:
        m = pat.fullmatch(key)
        if m:
            return repl(m)
    raise KeyError(f"not a UNetMotionModel motion-module key: {key}")
