#!/usr/bin/env python
"""Plot DynamiCrafter's learned gate lambda = tanh(alpha) + 1 per spatial cross-attention layer
(the paper's Figure 2) from a run's export, a checkpoint or a run directory.

    python scripts/plot_lambda.py outputs/<run>/export/trainable.safetensors --out lambda.png

Layers are in forward order (down blocks, mid block, up blocks). Also prints the values and writes
``<out>.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from i2vlab.models.dynamicrafter import gates_from_state_dict


def load_tensors(path: Path, trust: bool = False) -> dict[str, torch.Tensor]:
    if path.is_dir():
        cands = [path / "export" / "trainable.safetensors", path / "checkpoints" / "last.ckpt"]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise SystemExit(f"no export/trainable.safetensors or checkpoints/last.ckpt under {path}")
        path = found
    from i2vlab.utils.safe_load import load_weights

    ckpt = load_weights(path, what="weights", trust=trust)
    return ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", help="export .safetensors, .ckpt (ours or official), or run directory")
    ap.add_argument("--out", default="lambda.png")
    ap.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow full unpickling of a .ckpt holding Python objects (runs code stored in the file)",
    )
    a = ap.parse_args(argv)
    tensors = load_tensors(Path(a.weights), trust=a.trust_checkpoint)
    tensors = {
        k.replace("attn2.alpha", "attn2.processor.alpha"): v for k, v in tensors.items()
    }  # official names
    gates = gates_from_state_dict(tensors)
    if not gates:
        raise SystemExit(
            "no learnable gates (…attn2.processor.alpha) in these weights: lambda is fixed to 1 "
            "(512/1024 configs) or the run did not train them"
        )
    names, values = list(gates), list(gates.values())
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".csv").open("w") as f:
        f.write("layer,index,lambda\n")
        for i, (n, v) in enumerate(gates.items()):
            f.write(f"{n},{i},{v:.6f}\n")
            print(f"{i:2d} {v:.4f} {n}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(values)), 3))
    ax.bar(range(len(values)), values, color="tab:blue")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax.set_xticks(
        range(len(values)),
        [n.split(".attentions")[0].replace("_blocks.", "") for n in names],
        rotation=60,
        fontsize=7,
    )
    ax.set_ylabel(r"$\lambda = \tanh(\alpha) + 1$")
    ax.set_title("learned image cross-attention gate per layer")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out} and {out.with_suffix('.csv')}")
    return out


if __name__ == "__main__":
    main()
