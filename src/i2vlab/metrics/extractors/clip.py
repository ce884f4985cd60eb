"""CLIP image/text embeddings (transformers ``CLIPModel``) for CLIPTemp, first-frame consistency,
image-frame similarity and CLIP-SIM (text-video).

``convention``:
- ``standard``: transformers' ``CLIPImageProcessor`` itself on the uint8 frames (the model folder's
  ``preprocessor_config.json`` when there is one, else CLIP's defaults at the model's image size): short
  side to the image size (bicubic, antialiased; the long side truncated to an integer), centre crop,
  /255, CLIP mean/std;
- ``evalcrafter_raw``: EvalCrafter's quirk, kept to match published numbers (METRICS.md §6): raw 0-255
  pixels, no /255 and no mean/std, squashed to 224x224 without keeping the aspect ratio, resized as
  EvalCrafter's two code paths do (its ``environment.yml`` pins torchvision 0.15.2):

  - CLIPTemp, first-frame consistency, image-frame similarity (``calculate_clip_temp_score``,
    ``calculate_face_consistency_score``): ``transforms.Resize([224, 224])`` on the float tensor, which
    in torchvision 0.15.2 is bilinear **without antialiasing** (``antialias=None`` meant no antialias
    for tensors; 0.17+ antialias by default);
  - CLIP-SIM / text similarity (``calculate_clip_score``): ``cv2.resize(frame, (224, 224))``
    (INTER_LINEAR, no antialias) on the uint8 RGB frame, so the resized frame is uint8 again.

  Frames at 224x224 are the same in both paths; larger frames (I2V-Adapter's native-resolution
  evaluation) differ from an antialiased resize by several percent in the cosine terms.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from i2vlab.utils.clip import CLIP_MEAN, CLIP_STD

from .base import Extractor, register_extractor, seeded_init

CLIP_PUBLISHED = "HF hub openai/clip-vit-base-patch32 (EvalCrafter, VBench) — a local from_pretrained folder"


class ByteTokenizer:
    """Stand-in tokenizer for random-init smoke runs only (no vocabulary files are available)."""

    def __init__(self, vocab_size: int, max_length: int):
        self.vocab_size, self.max_length = vocab_size, max_length

    def __call__(self, texts: list[str]) -> dict:
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            b = [1 + (c % (self.vocab_size - 2)) for c in t.encode()][: self.max_length - 1]
            b.append(self.vocab_size - 1)  # EOS = highest id (CLIP pools at argmax id)
            ids[i, : len(b)] = torch.tensor(b)
            mask[i, : len(b)] = 1
        return {"input_ids": ids, "attention_mask": mask}


@register_extractor(
    "clip",
    config_key="eval.extractors.clip.weights_path",
    published=CLIP_PUBLISHED,
    what="CLIP metrics need a local CLIP model folder",
)
class CLIPExtractor(Extractor):
    name = "clip"

    def __init__(self, weights, convention: str = "standard", tiny: dict | None = None, seed: int = 0):
        super().__init__(weights, seed)
        from transformers import CLIPConfig, CLIPModel

        if convention not in ("standard", "evalcrafter_raw"):
            raise ValueError(f"clip convention must be 'standard' or 'evalcrafter_raw', got {convention!r}")
        self.convention = convention
        if weights is not None:
            from transformers import AutoTokenizer

            self.model = CLIPModel.from_pretrained(str(weights), local_files_only=True).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(str(weights), local_files_only=True)
            self._hf_tokenizer = True
        else:
            t = dict(tiny or {})
            vis = {
                "hidden_size": 768,
                "num_hidden_layers": 12,
                "num_attention_heads": 12,
                "intermediate_size": 3072,
                "image_size": 224,
                "patch_size": 32,
                **t.get("vision", {}),
            }
            txt = {
                "hidden_size": 512,
                "num_hidden_layers": 12,
                "num_attention_heads": 8,
                "intermediate_size": 2048,
                "vocab_size": 49408,
                **t.get("text", {}),
            }
            txt.setdefault("bos_token_id", txt["vocab_size"] - 2)
            txt.setdefault("eos_token_id", txt["vocab_size"] - 1)
            cfg = CLIPConfig(text_config=txt, vision_config=vis, projection_dim=t.get("projection_dim", 512))
            with seeded_init(seed):
                self.model = CLIPModel(cfg).eval()
            self.tokenizer = ByteTokenizer(txt["vocab_size"], cfg.text_config.max_position_embeddings)
            self._hf_tokenizer = False
        self.image_size = int(self.model.config.vision_config.image_size)
        # EvalCrafter resizes the frames of CLIP-SIM (text) differently from CLIPTemp's (see module doc)
        self.text_frames_differ = convention == "evalcrafter_raw"
        self.processor = self._image_processor(weights) if convention == "standard" else None
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    def _image_processor(self, weights):
        from transformers import CLIPImageProcessor

        s = self.image_size
        if weights is not None and (Path(weights) / "preprocessor_config.json").is_file():
            return CLIPImageProcessor.from_pretrained(str(weights), local_files_only=True)
        return CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s})

    def settings(self) -> dict:
        if self.convention == "evalcrafter_raw":
            resize = {
                "frames": "squash bilinear, no antialias, float 0-255 (torchvision 0.15.2 Resize)",
                "text_frames": "squash cv2.resize INTER_LINEAR on uint8",
            }
        else:
            p = self.processor
            resize = {
                "processor": type(p).__name__,
                **{
                    k: str(getattr(p, k, None))
                    for k in ("size", "crop_size", "resample", "image_mean", "image_std")
                },
            }
        return {
            "convention": self.convention,
            "image_size": self.image_size,
            "resize": resize,
            "tokenizer": "hf" if self._hf_tokenizer else "byte-stand-in(random smoke only)",
        }

    def _prep_evalcrafter(self, images: torch.Tensor, for_text: bool) -> torch.Tensor:
        s = self.image_size
        u8 = ((images.float().clamp(-1, 1) + 1) * 127.5).round()  # the decoded uint8 values
        if not for_text:
            if tuple(u8.shape[-2:]) == (s, s):
                return u8
            return F.interpolate(u8, size=(s, s), mode="bilinear", align_corners=False, antialias=False)
        import cv2

        frames = u8.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = [torch.from_numpy(cv2.resize(f, (s, s))) for f in frames]  # INTER_LINEAR, uint8 -> uint8
        return torch.stack(out).permute(0, 3, 1, 2).float().to(images.device)

    def _prep(self, images: torch.Tensor, for_text: bool = False) -> torch.Tensor:
        if self.convention == "evalcrafter_raw":
            return self._prep_evalcrafter(images, for_text)
        u8 = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
        pv = self.processor(images=list(u8), return_tensors="pt")["pixel_values"]
        return pv.to(images.device, torch.float32)

    @staticmethod
    def _as_tensor(out) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, for_text: bool = False) -> torch.Tensor:
        """``n c h w`` in [-1, 1] -> ``n d`` projected image embeddings (not normalised).

        ``for_text``: frames for a text similarity (CLIP-SIM); with ``evalcrafter_raw`` they are resized
        as EvalCrafter's ``calculate_clip_score`` does (``text_frames_differ``), otherwise the same."""
        x = self._prep(images.to(self.mean.device), for_text=for_text)
        return self._as_tensor(self.model.get_image_features(pixel_values=x)).float()

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        if self._hf_tokenizer:
            tok = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
        else:
            tok = self.tokenizer(list(texts))
        tok = {k: v.to(self.mean.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        return self._as_tensor(self.model.get_text_features(**tok)).float()

    forward = embed_images
