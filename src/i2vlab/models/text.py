"""Text tokenizer builders.

Full-size configs load the CLIP tokenizer from a local path or hub id. Tiny configs need a
tokenizer without any download: :func:`byte_level_clip_tokenizer` writes a minimal byte-level
vocabulary (every byte, with and without the CLIP end-of-word marker, no merges) and loads the
real ``transformers.CLIPTokenizer`` from it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transformers import CLIPTokenizer

from i2vlab.models.loading import check_weights, on_meta


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode map."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_level_clip_tokenizer(model_max_length: int = 77, cache_dir: str | None = None) -> CLIPTokenizer:
    """A real ``CLIPTokenizer`` over a 514-token byte-level vocabulary (tests and tiny configs)."""
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    root = Path(cache_dir or tempfile.gettempdir()) / "i2vlab_byte_clip_tokenizer"
    root.mkdir(parents=True, exist_ok=True)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(
        str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=model_max_length
    )


def build_tokenizer(
    name: str, pretrained: str | None = None, subfolder: str | None = "tokenizer", model_max_length: int = 77
) -> CLIPTokenizer:
    """CLIP tokenizer from ``pretrained`` (local path or hub id), or the byte-level one if ``None``."""
    if pretrained is None or on_meta():
        return byte_level_clip_tokenizer(model_max_length)
    check_weights(pretrained, f"{name}.pretrained")
    return CLIPTokenizer.from_pretrained(pretrained, subfolder=subfolder)
