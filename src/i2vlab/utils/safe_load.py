"""Loading files that could run code, safely; and keys that become file names, safely.

- :func:`load_torch_file`: ``torch.load(..., weights_only=True)`` always; a file that needs full
  unpickling is refused with a message that names it and says what an explicit trust flag allows.
  Unpickling a crafted ``.ckpt`` / ``.pth`` / ``.bin`` runs arbitrary code, so nothing here ever
  unpickles without that explicit flag. Prefer safetensors wherever a format allows it.
- :func:`safe_child`: the one check for every user- or data-supplied key (video id, prompt key,
  sample key) that becomes a path: it must stay inside its output (or input) folder.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

from i2vlab.errors import UserError


class UnsafeCheckpointError(UserError, RuntimeError):
    """A file needs full unpickling (it may run code) and no trust flag was given."""


class CorruptFileError(UserError, RuntimeError):
    """A weights/checkpoint file is empty, truncated or not a torch/safetensors file."""


def load_torch_file(
    path: str | os.PathLike,
    what: str = "checkpoint",
    trust: bool = False,
    trust_flag: str | None = "--trust-checkpoint",
    map_location: Any = "cpu",
) -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors, containers, numbers, strings only).

    ``trust=True`` allows full unpickling: only for files from a source you trust, because
    unpickling runs code stored in the file. ``what`` and ``trust_flag`` name the file's role and
    the switch the user would set, in the error messages."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{what} {path} is empty (0 bytes): a crashed or unfinished write?")
    try:
        return torch.load(str(path), map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as e:
        # weights_only refuses a file that would import a global (a class, a function): such a file
        # needs full unpickling; any other unpickling error is a damaged or foreign file
        if not trust and "GLOBAL" in str(e):
            allow = (
                f"If (and only if) you trust where it came from, pass {trust_flag} to allow it; better, "
                if trust_flag
                else ""
            )
            raise UnsafeCheckpointError(
                f"{what} {path} holds Python objects besides tensors, which only full unpickling can "
                f"read, and unpickling runs code stored in the file. It was not loaded. {allow}"
                f"{'c' if allow else 'C'}onvert it once to safetensors on a machine you trust. ({_global_line(e)})"
            ) from e
        hint = (
            ""
            if trust
            else f" (or it holds objects the safe loader refuses: only if you trust it, {trust_flag})"
        )
        raise CorruptFileError(
            f"{what} {path} cannot be read: it is damaged or not a torch file{hint}. {_short(e)}"
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CorruptFileError(f"{what} {path} is damaged or not a torch file. {_short(e)}") from e


def _short(e: Exception) -> str:
    """The informative line of torch's message, without its advice to turn the safe loader off."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "weights_only" not in ln]
    keep = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()] or lines
    return f"({type(e).__name__}: {keep[0][:160]})" if keep else f"({type(e).__name__})"


def _global_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln]
    return lines[0][:200] if lines else type(e).__name__


def load_weights(path: str | os.PathLike, what: str = "weights", trust: bool = False, **kw: Any) -> Any:
    """safetensors files with safetensors (no code can run), anything else with :func:`load_torch_file`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} does not exist")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CorruptFileError(f"{what} {path} is damaged or not a safetensors file: {e}") from e
    return load_torch_file(path, what=what, trust=trust, **kw)


_BAD_KEY = re.compile(r"[\x00-\x1f]")


class UnsafePathError(UserError, ValueError):
    """A key would name a file outside its folder."""


def safe_child(root: str | os.PathLike, key: str, suffix: str = "", what: str = "key") -> Path:
    """``root / (key + suffix)``, refusing keys that would leave ``root``: absolute paths, ``..``
    components, empty keys, control characters, or symlinks inside ``root`` pointing out of it.
    Sub-folders inside ``root`` (``a/b``) are allowed."""
    key = str(key)
    if not key or key.strip() in (".", "") or _BAD_KEY.search(key):
        raise UnsafePathError(f"{what} {key!r} is not a usable file name")
    rel = Path(key + suffix)
    if rel.is_absolute() or key.startswith(("/", "\\", "~")) or ".." in Path(key).parts or "\\" in key:
        raise UnsafePathError(
            f"{what} {key!r} would write or read outside {root}: keys must be relative names "
            "without '..' (rename the entry)"
        )
    base = Path(root).resolve()
    target = (base / rel).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"{what} {key!r} resolves outside {root} (through a symlink?)")
    return base / rel
