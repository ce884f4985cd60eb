"""Parameter selection by name patterns, and the trainable / frozen report."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn


def select_trainable(module: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Freeze every parameter of ``module`` except those whose name fully matches one of the
    regular expressions in ``patterns``. Returns the trainable names. A pattern matching nothing
    is an error (it is almost always a typo or a renamed layer)."""
    compiled = [re.compile(p) for p in patterns]
    hits = {p.pattern: 0 for p in compiled}
    names = []
    for name, p in module.named_parameters():
        ok = False
        for c in compiled:
            if c.fullmatch(name):
                hits[c.pattern] += 1
                ok = True
        p.requires_grad_(ok)
        if ok:
            names.append(name)
    missing = [p for p, n in hits.items() if n == 0]
    if missing:
        sample = [n for n, _ in module.named_parameters()][:5]
        raise ValueError(
            f"trainable pattern(s) {missing} matched no parameter. Patterns are full-match regular "
            f"expressions over names such as {sample}; fix `method.trainable`."
        )
    return names


def parameter_report(module: nn.Module, depth: int = 1) -> tuple[str, int, int]:
    """Table of trainable / frozen parameter counts per top-level child. Returns (text, trainable, frozen).
    The last line of the text reads ``trainable=<int> frozen=<int>``."""
    rows: OrderedDict[str, list[int]] = OrderedDict()
    seen: set[int] = set()
    for name, p in module.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        key = ".".join(name.split(".")[:depth])
        r = rows.setdefault(key, [0, 0])
        r[0 if p.requires_grad else 1] += p.numel()
    tr = sum(r[0] for r in rows.values())
    fr = sum(r[1] for r in rows.values())
    w = max([len(k) for k in rows] + [6])
    lines = [f"{'module':<{w}} {'trainable':>14} {'frozen':>14}", "-" * (w + 30)]
    lines += [f"{k:<{w}} {a:>14,} {b:>14,}" for k, (a, b) in rows.items()]
    lines += ["-" * (w + 30), f"{'total':<{w}} {tr:>14,} {fr:>14,}", f"trainable={tr} frozen={fr}"]
    return "\n".join(lines), tr, fr


def trainable_state_dict(module: nn.Module) -> OrderedDict[str, torch.Tensor]:
    return OrderedDict((n, p.detach()) for n, p in module.named_parameters() if p.requires_grad)
