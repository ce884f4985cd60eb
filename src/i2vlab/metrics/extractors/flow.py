"""Optical flow for FlowScore and warping error.

- ``opencv`` (default, no weights): OpenCV DIS (preset medium) or Farneback on grey uint8 frames.
- ``raft``: torchvision RAFT (``raft_large`` / ``raft_small``) with a local state dict: torchvision's
  own, or princeton-vl's (``raft-things.pth``, the weights EvalCrafter and VBench use; their
  ``module.fnet.conv1.weight``-style keys are converted on load by :func:`convert_princeton_raft`).
  torchvision's published RAFT weights are not the ``raft-things`` weights.

Interface: ``flow(a, b)`` with ``a, b`` = ``n c h w`` in [-1, 1] -> ``n 2 h w`` flow a->b in pixels
(x, y): a(p) ≈ b(p + flow(p)).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from . import base
from .base import Extractor, register_extractor

RAFT_PUBLISHED = (
    "torchvision https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth "
    "(or princeton-vl raft-things.pth from https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip, "
    "converted to torchvision's parameter names)"
)


def _to_gray_u8(x: torch.Tensor) -> np.ndarray:
    u8 = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(u8), cv2.COLOR_RGB2GRAY)


@register_extractor("opencv_flow")
class OpenCVFlow(Extractor):
    name = "opencv_flow"
    batch_invariant = True  # one OpenCV call per pair: no batch to pad

    def __init__(self, method: str = "dis"):
        super().__init__(weights=None)
        if method not in ("dis", "farneback"):
            raise ValueError(f"opencv flow method must be 'dis' or 'farneback', got {method!r}")
        self.method = method
        self.comparable = True  # classical flow: no weights involved

    @property
    def weights_hash(self) -> str:
        import cv2

        return f"opencv-{cv2.__version__}"

    def settings(self) -> dict:
        params = "preset=MEDIUM" if self.method == "dis" else "0.5,3,15,3,5,1.2,0"
        return {"method": self.method, "params": params}

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        import cv2

        cv2.setNumThreads(1)
        out = []
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) if self.method == "dis" else None
        for x, y in zip(a, b):
            g1, g2 = _to_gray_u8(x), _to_gray_u8(y)
            if dis is not None:
                fl = dis.calc(g1, g2, None)
            else:
                fl = cv2.calcOpticalFlowFarneback(g1, g2, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            out.append(torch.from_numpy(fl).permute(2, 0, 1))
        return torch.stack(out).float().to(a.device)


_PRINCETON_RULES = [
    # (pattern, replacement) on princeton-vl/RAFT core names (after stripping "module.")
    (r"^fnet\.", "feature_encoder."),
    (r"^cnet\.", "context_encoder."),
    (r"^(feature_encoder|context_encoder)\.conv1\.", r"\1.convnormrelu.0."),
    (r"^(feature_encoder|context_encoder)\.norm1\.", r"\1.convnormrelu.1."),
    (r"^(feature_encoder|context_encoder)\.conv2\.", r"\1.conv."),
    (r"^(.*\.layer\d\.\d)\.conv(\d)\.", r"\1.convnormrelu\2.0."),
    (r"^(.*\.layer\d\.\d)\.norm(\d)\.", r"\1.convnormrelu\2.1."),
    (r"^update_block\.encoder\.convc(\d)\.", r"update_block.motion_encoder.convcorr\1.0."),
    (r"^update_block\.encoder\.convf(\d)\.", r"update_block.motion_encoder.convflow\1.0."),
    (r"^update_block\.encoder\.conv\.", "update_block.motion_encoder.conv.0."),
    (r"^update_block\.gru\.conv([zrq])(\d)\.", r"update_block.recurrent_block.convgru\2.conv\1."),
    (r"^update_block\.gru\.conv([zrq])\.", r"update_block.recurrent_block.convgru1.conv\1."),
    (r"^update_block\.mask\.0\.", "mask_predictor.convrelu.0."),
    (r"^update_block\.mask\.2\.", "mask_predictor.conv."),
]


def is_princeton_raft(sd: dict) -> bool:
    """True for a princeton-vl/RAFT state dict (``[module.]fnet.conv1.weight``, ...)."""
    return any(k.removeprefix("module.").startswith(("fnet.", "cnet.")) for k in sd)


def convert_princeton_raft(sd: dict) -> dict:
    """princeton-vl/RAFT (``raft-things.pth``, ``raft-small.pth``; EvalCrafter ``metrics/RAFT/core``) ->
    torchvision ``raft_large`` / ``raft_small`` parameter names.

    The architectures are the same (torchvision's RAFT is a port of it); only names differ. The
    residual blocks of princeton's BatchNorm context encoder register the projection's norm twice
    (``layerN.0.norm3`` and ``layerN.0.downsample.1``, one module): the ``norm3`` copy is dropped
    after checking it equals ``downsample.1``. Bottleneck blocks (raft_small) have a real ``norm3``
    (3rd conv) and the duplicate is ``norm4``; their encoders have no norm parameters at all.
    """
    import re

    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    out = {}
    for k, v in sd.items():
        m = re.match(r"^(.*\.layer\d\.\d)\.norm(\d)\.(.*)$", k)
        if m:
            # a norm that is also the downsample projection's norm: a duplicate registration
            dup = f"{m.group(1)}.downsample.1.{m.group(3)}"
            n_convs = 3 if f"{m.group(1)}.conv3.weight" in sd else 2
            if int(m.group(2)) == n_convs + 1 and dup in sd:
                if not torch.equal(sd[dup], v):
                    raise ValueError(f"RAFT state dict: {k} differs from {dup} (expected one shared module)")
                continue
        new = k
        for pat, rep in _PRINCETON_RULES:
            new = re.sub(pat, rep, new)
        out[new] = v
    return out


@register_extractor(
    "raft",
    config_key="eval.extractors.flow.weights_path",
    published=RAFT_PUBLISHED,
    what="RAFT flow needs weights (or use flow.name=opencv_flow)",
)
class RAFTFlow(Extractor):
    name = "raft"

    def __init__(self, weights, variant: str = "raft_large", num_flow_updates: int = 20, seed: int = 0):
        super().__init__(weights, seed)
        from torchvision.models.optical_flow import raft_large, raft_small

        builders = {"raft_large": raft_large, "raft_small": raft_small}
        if variant not in builders:
            raise ValueError(f"raft variant must be one of {sorted(builders)}, got {variant!r}")
        self.variant, self.num_flow_updates = variant, int(num_flow_updates)
        with base.seeded_init(seed):
            self.net = builders[variant](weights=None, progress=False).eval()
        self.weights_format = "torchvision"
        if weights is not None:
            sd = base.load_state_dict_file(weights)
            if is_princeton_raft(sd):
                sd, self.weights_format = convert_princeton_raft(sd), "princeton-vl (converted)"
            base.strict_load(self.net, sd, f"RAFT ({variant})")
        self.requires_grad_(False)

    def settings(self) -> dict:
        return {
            "variant": self.variant,
            "num_flow_updates": self.num_flow_updates,
            "weights_format": self.weights_format,
            "pad": "replicate to x8 and >=128 px, cropped",
        }

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h, w = a.shape[-2:]
        # torchvision RAFT needs H, W divisible by 8 and >= 128 (correlation pyramid): replicate-pad.
        ph, pw = max((-h) % 8, 128 - h), max((-w) % 8, 128 - w)
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        dev = self.device
        a = F.pad(a.float().to(dev), pad, mode="replicate")
        b = F.pad(b.float().to(dev), pad, mode="replicate")
        flow = self.net(a.clamp(-1, 1), b.clamp(-1, 1), num_flow_updates=self.num_flow_updates)[-1]
        return flow[..., pad[2] : pad[2] + h, pad[0] : pad[0] + w].float()
