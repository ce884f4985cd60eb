"""Optical flow for FlowScore and warping error.

- ``opencv`` (default, no weights): OpenCV DIS (preset medium) or Farneback on grey uint8 frames.
- ``raft``: torchvision RAFT (``raft_large`` / ``raft_small``) with a local state dict. Note that
  torchvision's published RAFT weights are not the princeton-vl ``raft-things`` weights EvalCrafter
  uses (convert those to torchvision's layout to match published numbers).

Interface: ``flow(a, b)`` with ``a, b`` = ``n c h w`` in [-1, 1] -> ``n 2 h w`` flow a->b in pixels
(x, y): a(p) ≈ b(p + flow(p)).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import (
    Extractor,
    load_state_dict_file,
    register_extractor,
    resolve_weights,
    seeded_init,
    strict_load,
)

RAFT_PUBLISHED = (
    "torchvision https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth "
    "(or princeton-vl raft-things.pth from https://dl.dropboxusercontent.com/s/4j4z58wuv8o0mfz/models.zip, "
    "converted to torchvision's parameter names)"
)


def _to_gray_u8(x: torch.Tensor) -> np.ndarray:
    u8 = ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    import cv2

    return cv2.cvtColor(np.ascontiguousarray(u8), cv2.COLOR_RGB2GRAY)


class OpenCVFlow(Extractor):
    name = "opencv_flow"

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


class RAFTFlow(Extractor):
    name = "raft"

    def __init__(self, weights, variant: str = "raft_large", num_flow_updates: int = 20, seed: int = 0):
        super().__init__(weights, seed)
        from torchvision.models.optical_flow import raft_large, raft_small

        builders = {"raft_large": raft_large, "raft_small": raft_small}
        if variant not in builders:
            raise ValueError(f"raft variant must be one of {sorted(builders)}, got {variant!r}")
        self.variant, self.num_flow_updates = variant, int(num_flow_updates)
        with seeded_init(seed):
            self.net = builders[variant](weights=None, progress=False).eval()
        if weights is not None:
            strict_load(self.net, load_state_dict_file(weights), f"RAFT ({variant})")
        self.requires_grad_(False)

    def settings(self) -> dict:
        return {
            "variant": self.variant,
            "num_flow_updates": self.num_flow_updates,
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


@register_extractor("opencv_flow")
def build_opencv_flow(method: str = "dis", **_) -> OpenCVFlow:
    return OpenCVFlow(method)


@register_extractor("raft")
def build_raft(
    weights_path=None,
    allow_random_weights: bool = False,
    variant: str = "raft_large",
    num_flow_updates: int = 20,
    seed: int = 0,
    config_key: str = "eval.extractors.flow.weights_path",
) -> RAFTFlow:
    w = resolve_weights(
        weights_path,
        config_key=config_key,
        published=RAFT_PUBLISHED,
        allow_random_weights=allow_random_weights,
        what="RAFT flow needs weights (or use flow.name=opencv_flow)",
    )
    return RAFTFlow(w, variant=variant, num_flow_updates=num_flow_updates, seed=seed)
