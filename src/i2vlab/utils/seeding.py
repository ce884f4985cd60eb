"""One seeding policy for every random draw the framework makes.

A draw's seed is a hash of what identifies it, never a running counter, so it does not depend on
batch composition, worker count, resumes or the order work happens in:

- training: (seed, optimizer step, micro-batch index within the step, rank): every micro-batch of
  an accumulated step draws its own noise, timesteps, dropout and conditioning frame, and a resumed
  run draws exactly what the uninterrupted run drew;
- generation and validation videos: (seed, video key): a video is the same whatever the batch size
  and after a killed-and-resumed generation.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts (their ``str``), stable across processes and Python versions."""
    key = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def generator(*parts: object, device: str | torch.device = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g
