"""LPIPS (lpips package) with the backbone loaded from a local torchvision state dict.

The lpips package ships only its linear heads; it would download the backbone from torchvision.
We build it with ``pnet_rand=True`` (no download) and copy the backbone weights in ourselves.
"""

from __future__ import annotations

import warnings

import torch

from .base import Extractor, load_state_dict_file, register_extractor, seeded_init

LPIPS_PUBLISHED = {
    "alex": "torchvision https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "torchvision https://download.pytorch.org/models/vgg16-397923af.pth",
    "squeeze": "torchvision https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}


@register_extractor(
    "lpips",
    config_key="eval.extractors.lpips.weights_path",
    published=lambda kw: LPIPS_PUBLISHED.get(kw.get("net", "alex"), kw.get("net")),
    what=lambda kw: f"LPIPS needs the {kw.get('net', 'alex')} backbone weights",
)
class LPIPSExtractor(Extractor):
    name = "lpips"

    def __init__(self, weights, net: str = "alex", seed: int = 0):
        super().__init__(weights, seed)
        import lpips

        self.net_type = net
        with seeded_init(seed), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision 'pretrained' deprecation inside lpips
            self.model = lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False).eval()
        if weights is not None:
            sd = load_state_dict_file(weights)
            own = self.model.net.state_dict()
            new = {}
            for k in own:  # "slice2.3.weight" -> "features.3.weight"
                _, idx, leaf = k.split(".", 2)
                src = f"features.{idx}.{leaf}"
                if src not in sd:
                    raise RuntimeError(
                        f"LPIPS backbone weights lack {src!r} (expected a torchvision {net} state dict)"
                    )
                new[k] = sd[src]
            self.model.net.load_state_dict(new)
        self.requires_grad_(False)

    def settings(self) -> dict:
        return {"net": self.net_type, "version": "0.1", "input": "[-1,1]"}

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``n c h w`` pairs in [-1, 1] -> ``n`` distances."""
        dev = self.device
        return self.model(a.float().to(dev), b.float().to(dev)).flatten().float()
