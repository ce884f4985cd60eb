"""I2V-Adapter (arXiv 2312.16693): image-to-video on a frozen SD1.5 + AnimateDiff ``UNetMotionModel``.

What this method adds to :class:`~i2vlab.methods.animatediff.AnimateDiffT2V`:

- the first-frame attention branch on every spatial ``attn1`` (:mod:`i2vlab.models.i2v_adapter`);
  only its two new projections train (``to_q_ff``, ``to_out_ff``);
- the frozen IP-Adapter(-Plus) content adapter (:mod:`i2vlab.models.content_adapter`) fed with the
  first frame through a frozen CLIP image encoder, with image-embedding dropout for CFG;
- the unnoised first frame: ``noisy[:, :, 0] = z0[:, :, 0]`` exactly (not ``add_noise`` with zero
  noise, which scales it by sqrt(alpha_bar_t)), the same t for all frames, and the loss on frames 1..F-1;
- sampling with the clean first frame kept fixed and the Frame Similarity Prior
  (:mod:`i2vlab.pipelines.i2v_adapter`);
- compatibility paths: a personalised (DreamBooth-style) SD1.5 UNet, an SD1.5 LoRA, a ControlNet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from i2vlab.methods.animatediff import AnimateDiffT2V
from i2vlab.methods.base import _plain
from i2vlab.models.content_adapter import encode_clip_image, has_content_adapter, install_content_adapter
from i2vlab.models.i2v_adapter import (
    install_i2v_adapter,
    load_lora,
    load_personalized_unet,
)
from i2vlab.pipelines.i2v_adapter import sample_i2v


class I2VAdapter(AnimateDiffT2V):
    """I2V-Adapter training and sampling.

    Args (besides :class:`~i2vlab.methods.base.VideoDiffusionModule`'s):
        image_encoder: frozen ``CLIPVisionModelWithProjection`` (``hidden_states[-2]`` feeds the Resampler).
        content_adapter: ``install_content_adapter`` kwargs (``pretrained`` IP-Adapter file or ``image_proj``
            Resampler config, ``scale``), or ``None`` to train without the content adapter (ablation).
        adapter: ``{copy_query: bool, pretrained: <exported/converted adapter .safetensors> | null}``.
        image_dropout: probability of replacing the conditioning image by the all-zero CLIP input
            during training (the unconditional image branch of CFG).
    """

    frozen_modules = ("vae", "text_encoder", "image_encoder")

    def __init__(
        self,
        unet: nn.Module,
        image_encoder: nn.Module | None = None,
        content_adapter: Mapping[str, Any] | None = None,
        adapter: Mapping[str, Any] | None = None,
        image_dropout: float = 0.05,
        **kwargs: Any,
    ) -> None:
        super().__init__(unet=unet, **kwargs)
        self.image_encoder = image_encoder
        content_adapter = _plain(content_adapter)
        if content_adapter:
            if image_encoder is None:
                raise ValueError("method.content_adapter needs method.image_encoder (a CLIP vision model)")
            install_content_adapter(
                unet, **content_adapter
            )  # before the I2V processors (see install_i2v_adapter)
        adapter = dict(_plain(adapter) or {})
        install_i2v_adapter(unet, copy_query=bool(adapter.get("copy_query", True)))
        if adapter.get("pretrained"):
            self.load_adapter(adapter["pretrained"])
        self.image_dropout = float(image_dropout)
        self._personalized: dict[str, Any] = {}
        self._controlnets: dict[str, nn.Module] = {}

    # ------------------------------------------------------------------------------------------
    # training hooks
    # ------------------------------------------------------------------------------------------
    def image_embeddings(
        self, images: torch.Tensor, generator: torch.Generator | None = None, dropout: float = 0.0
    ) -> dict[str, Any]:
        """UNet keyword arguments for the content adapter from first frames (b c h w in [-1, 1])."""
        if not has_content_adapter(self.unet):
            return {}
        drop = None
        if dropout > 0 and generator is not None:
            drop = torch.rand(images.shape[0], generator=generator, device=generator.device) < dropout
        emb = encode_clip_image(self.image_encoder, images, drop=drop)
        return {"added_cond_kwargs": {"image_embeds": [emb[:, None].to(self.device)]}}

    def prepare_conditions(
        self, batch: Mapping[str, Any], latents: torch.Tensor, generator: torch.Generator, train: bool = True
    ) -> dict[str, Any]:
        cond = super().prepare_conditions(batch, latents, generator, train)
        cond["unet_kwargs"] = self.image_embeddings(
            batch["video"][:, 0], generator, self.image_dropout if train else 0.0
        )
        return cond

    def prepare_noisy(
        self, noisy: torch.Tensor, latents: torch.Tensor, cond: Mapping[str, Any]
    ) -> torch.Tensor:
        """Frame 0 is the clean latent itself (bit-identical), the other frames keep their noise."""
        noisy = noisy.clone()
        noisy[:, :, 0] = latents[:, :, 0]
        return noisy

    def loss_mask(self, latents: torch.Tensor, cond: Mapping[str, Any]) -> torch.Tensor:
        """Frames 1..F-1 only."""
        mask = torch.ones(latents.shape[0], latents.shape[2], device=latents.device)
        mask[:, 0] = 0
        return mask

    # ------------------------------------------------------------------------------------------
    # adapter weights
    # ------------------------------------------------------------------------------------------
    def load_adapter(self, path: str | Path) -> list[str]:
        """Load an adapter file (``export/trainable.safetensors`` or ``scripts/convert_i2v_adapter.py`` output)."""
        from i2vlab.models.i2v_adapter import load_i2v_adapter_state_dict
        from i2vlab.models.loading import WeightsNotFoundError, on_meta

        if on_meta():
            return []
        if not Path(path).is_file():
            raise WeightsNotFoundError(
                f"method.adapter.pretrained: {path!r} does not exist (an I2V-Adapter .safetensors)"
            )
        from safetensors.torch import load_file

        return load_i2v_adapter_state_dict(self.unet, load_file(str(path)))

    # ------------------------------------------------------------------------------------------
    # compatibility: personalised UNet, LoRA, ControlNet
    # ------------------------------------------------------------------------------------------
    def personalize(
        self,
        personalized_unet: str | None = None,
        lora: str | None = None,
        lora_scale: float = 1.0,
        reset_query: bool = False,
    ) -> None:
        """Swap in a DreamBooth-style SD1.5 UNet (full weights) and/or add a LoRA, keeping the trained
        adapter and motion module. Idempotent for the same arguments."""
        key = {
            "personalized_unet": personalized_unet,
            "lora": lora,
            "lora_scale": lora_scale,
            "reset_query": reset_query,
        }
        if key == self._personalized:
            return
        if self._personalized:
            raise RuntimeError(
                "this module was already personalised differently; reload it from its run directory"
            )
        if personalized_unet:
            load_personalized_unet(self.unet, personalized_unet, reset_query=reset_query)
        if lora:
            load_lora(self.unet, lora, scale=lora_scale)
        self._personalized = key

    def _controlnet(self, controlnet: Any) -> nn.Module:
        if isinstance(controlnet, nn.Module):
            return controlnet.to(self.device).eval()
        if controlnet not in self._controlnets:
            from diffusers import ControlNetModel

            from i2vlab.models.loading import check_weights

            check_weights(str(controlnet), "controlnet")
            self._controlnets[controlnet] = ControlNetModel.from_pretrained(controlnet).to(self.device).eval()
        return self._controlnets[controlnet]

    # ------------------------------------------------------------------------------------------
    # sampling
    # ------------------------------------------------------------------------------------------
    def sample(
        self,
        prompts: Sequence[str],
        images: torch.Tensor | None = None,
        num_frames: int | None = None,
        seed: int = 0,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Image(s) (b c h w in [-1, 1]) + prompts -> videos (b f c h w in [-1, 1]).

        Keyword arguments (defaults from ``method.sampling``): see :func:`i2vlab.pipelines.i2v_adapter.sample_i2v`;
        also ``personalized_unet``, ``lora``, ``lora_scale`` (see :meth:`personalize`), ``controlnet``
        (``ControlNetModel`` or its folder) with ``control_frames`` (b f 3 H W in [0, 1]) or
        ``control_video`` (a video file, one control frame per output frame)."""
        if images is None:
            raise ValueError("I2V-Adapter needs a first-frame image (images=...)")
        opts = {"num_inference_steps": 25, "guidance_scale": 7.5, **self.sampling_cfg, **kwargs}
        num_frames = int(num_frames or opts.pop("num_frames", 16))
        opts.pop("num_frames", None)
        perso = {
            k: opts.pop(k) for k in ("personalized_unet", "lora", "lora_scale", "reset_query") if k in opts
        }
        if perso.get("personalized_unet") or perso.get("lora"):
            self.personalize(**perso)
        if opts.get("controlnet") is not None:
            opts["controlnet"] = self._controlnet(opts["controlnet"])
            video_path = opts.pop("control_video", None)
            if video_path is not None and opts.get("control_frames") is None:
                from i2vlab.utils.video_io import from_uint8_frames, read_video

                frames = from_uint8_frames(read_video(video_path)[0][:num_frames])  # f c h w in [-1, 1]
                opts["control_frames"] = ((frames + 1) / 2)[None].expand(len(prompts), -1, -1, -1, -1)
        opts.pop("control_video", None)
        return sample_i2v(self, prompts, images, num_frames=num_frames, seed=seed, **opts)
