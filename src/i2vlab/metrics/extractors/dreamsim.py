"""DreamSim perceptual distance for PIC (DynamiCrafter).

With weights: the ``dreamsim`` package (optional dependency, ``pip install dreamsim``) loaded from
a staged local ``cache_dir`` (``dreamsim(pretrained=True, cache_dir=..., dreamsim_type=...)``);
preprocessing as DreamSim's: bicubic resize to 224x224, [0, 1]. Distance = 1 - cos(embeddings).

Without weights (``allow_random_weights=true`` only): a random-init ViT with DreamSim's
``dino_vitb16`` backbone layout (transformers ``ViTModel``, CLS embedding, L2-normalised). Its values
are not DreamSim values and are labelled not comparable.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .base import Extractor, register_extractor, seeded_init

DREAMSIM_PUBLISHED = (
    "the dreamsim package's release zip https://github.com/ssundaram21/dreamsim/releases/download/"
    "v0.2.0-checkpoints/dreamsim_ensemble_checkpoint.zip unzipped into the cache dir, plus the torch.hub "
    "facebookresearch/dino:main checkout and dino_vitbase16_pretrain.pth staged in the same dir"
)


@register_extractor(
    "dreamsim",
    config_key="eval.extractors.dreamsim.weights_path",
    published=DREAMSIM_PUBLISHED,
    what="PIC needs DreamSim checkpoints (a cache dir)",
)
class DreamSimExtractor(Extractor):
    name = "dreamsim"

    def __init__(
        self, weights: Path | None, dreamsim_type: str = "ensemble", tiny: dict | None = None, seed: int = 0
    ):
        super().__init__(weights, seed)
        self.dreamsim_type = dreamsim_type
        if weights is not None:
            try:
                from dreamsim import dreamsim
            except ImportError as e:
                raise ImportError(
                    "PIC with real weights needs the optional 'dreamsim' package: pip install dreamsim "
                    "(and stage its checkpoints in eval.extractors.dreamsim.weights_path)"
                ) from e
            if not any(Path(weights).iterdir()):
                raise FileNotFoundError(f"DreamSim cache dir {weights} is empty; stage {DREAMSIM_PUBLISHED}")
            self.model, _ = dreamsim(
                pretrained=True, device="cpu", cache_dir=str(weights), dreamsim_type=dreamsim_type
            )
            self.backend = "dreamsim"
        else:
            from transformers import ViTConfig, ViTModel

            cfg = {
                "hidden_size": 768,
                "num_hidden_layers": 12,
                "num_attention_heads": 12,
                "intermediate_size": 3072,
                "image_size": 224,
                "patch_size": 16,
                **(tiny or {}),
            }
            with seeded_init(seed):
                self.model = ViTModel(ViTConfig(**cfg), add_pooling_layer=False).eval()
            self.backend = "random-vit-stand-in"
        self.image_size = 224 if weights is not None else int(self.model.config.image_size)
        self.requires_grad_(False)

    def settings(self) -> dict:
        return {
            "backend": self.backend,
            "dreamsim_type": self.dreamsim_type,
            "image_size": self.image_size,
            "preprocess": "bicubic resize (square), [0,1]",
        }

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``n c h w`` in [-1, 1] -> ``n d`` L2-normalised embeddings."""
        dev = next(self.model.parameters()).device
        x = (images.float().clamp(-1, 1).to(dev) + 1) / 2
        s = self.image_size
        x = F.interpolate(x, size=(s, s), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        if self.backend == "dreamsim":
            e = self.model.embed(x)
        else:
            e = self.model(pixel_values=(x - 0.5) / 0.5).last_hidden_state[:, 0]
        return F.normalize(e.float(), dim=-1)

    forward = embed
