"""Shared helpers of the benchmark scripts: device description and table printing."""

from __future__ import annotations

import platform

import torch


def device_name(device: str | torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads (torch {torch.__version__})"


def print_table(title: str, device: str, header: list[str], rows: list[list]) -> None:
    print(f"\n{title}\ndevice: {device}")
    widths = [max(len(str(h)), *(len(_fmt(r[i])) for r in rows)) for i, h in enumerate(header)]
    print("  ".join(f"{h:>{w}}" for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(f"{_fmt(c):>{w}}" for c, w in zip(r, widths)))


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)
