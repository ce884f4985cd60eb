"""Loading parity fixtures (made by ``scripts/parity/``) and comparing against them.

A fixture is ``tests/fixtures/parity/<group>/<name>.safetensors`` + ``<name>.json`` (which official
repository and commit produced it). ``rel_err`` is the relative Frobenius error ``|a - e| / |e|``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "parity"

#: default tolerances on the relative error (float32 / float64), as the fidelity docs state
RTOL32 = 1e-5
RTOL64 = 1e-10


class Fixture:
    def __init__(self, group: str, name: str) -> None:
        base = FIXTURES / group / name
        self.path = base.with_suffix(".safetensors")
        self.meta = json.loads(base.with_suffix(".json").read_text())
        self.tensors = load_file(str(self.path))

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix`` with the prefix stripped."""
        return {k[len(prefix) :]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    @property
    def config(self) -> dict:
        return self.meta.get("config", {})


def load_fixture(group: str, name: str) -> Fixture:
    return Fixture(group, name)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    assert a.shape == e.shape, f"shape {tuple(a.shape)} != {tuple(e.shape)}"
    denom = e.norm().item()
    return (a - e).norm().item() / (denom if denom > 0 else 1.0)


def assert_rel_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float | None = None, what: str = ""
) -> float:
    """Assert ``rel_err <= rtol`` (default by dtype of ``expected``); returns the error."""
    if rtol is None:
        rtol = RTOL64 if expected.dtype == torch.float64 else RTOL32
    err = rel_err(actual, expected)
    assert err <= rtol, f"{what or 'output'}: relative error {err:.3e} > {rtol:.0e}"
    return err
