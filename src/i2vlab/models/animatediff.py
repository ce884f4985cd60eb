"""AnimateDiff backbone: SD1.5 ``UNet2DConditionModel`` + ``MotionAdapter`` -> diffusers ``UNetMotionModel``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

from i2vlab.models.loading import WeightsNotFoundError, check_weights, on_meta, to_plain

SD15_PUBLISHED = "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5"
MOTION_PUBLISHED = "https://huggingface.co/guoyww (animatediff-motion-adapter-v1-5-2, -v1-4, ...)"


def build_motion_unet(
    name: str,
    config: Mapping[str, Any],
    pretrained: str | None = None,
    motion_adapter: str | None = None,
    pretrained_motion_unet: str | None = None,
) -> UNetMotionModel:
    """Build the AnimateDiff UNet.

    - ``pretrained_motion_unet``: a saved ``UNetMotionModel`` directory (e.g. one exported here);
    - ``pretrained`` (SD1.5 root, ``unet`` subfolder) + ``motion_adapter``: combined with
      ``UNetMotionModel.from_unet2d``;
    - neither, or on the meta device: ``UNetMotionModel(**config)`` (random init / parameter reports).
      ``from_unet2d`` copies buffers and cannot run on the meta device, hence the config path there.
    """
    config = dict(to_plain(config))
    if on_meta() or (pretrained is None and pretrained_motion_unet is None):
        return UNetMotionModel(**config)
    try:
        if pretrained_motion_unet is not None:
            check_weights(pretrained_motion_unet, f"{name}.pretrained_motion_unet")
            return UNetMotionModel.from_pretrained(pretrained_motion_unet)
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
    return UNetMotionModel.from_unet2d(unet2d, adapter)
