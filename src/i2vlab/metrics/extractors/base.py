"""Feature-extractor registry and the weights policy shared by every learned extractor.

Policy (DESIGN.md principle 2): an extractor takes ``weights_path`` from config. A missing path
fails before any video is read, with a message naming the config key and where the weights are
published. Random initialisation needs ``allow_random_weights=True``; the extractor then reports
``comparable = False`` and every result computed with it is labelled "not comparable".
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from i2vlab.errors import UserError


class MissingWeightsError(UserError, FileNotFoundError):
    """A learned extractor has no usable weights and random weights were not allowed."""


@dataclass(frozen=True)
class ExtractorEntry:
    """How to build one registered extractor: its class and, for learned ones, where the weights come
    from (``config_key`` to set, ``published`` location, ``what`` needs them; the last two may be
    functions of the constructor's keyword arguments)."""

    cls: type
    config_key: str | None = None
    published: str | Callable[[dict], str] | None = None
    what: str | Callable[[dict], str] = ""


EXTRACTORS: dict[str, ExtractorEntry] = {}


def register_extractor(name: str, config_key: str | None = None, published=None, what: str = ""):
    """Class decorator. ``config_key`` None: the extractor takes no weights (e.g. OpenCV flow)."""

    def deco(cls):
        EXTRACTORS[name] = ExtractorEntry(cls, config_key, published, what)
        return cls

    return deco


def build_extractor(
    name: str,
    weights_path=None,
    allow_random_weights: bool = False,
    config_key: str | None = None,
    **kwargs,
) -> Extractor:
    """Build a registered extractor by name (``i3d``, ``inception``, ``clip``, ``dreamsim``, ``raft``,
    ``opencv_flow``, ``lpips``, ``dover``): the weights path is checked first (:func:`resolve_weights`),
    then the class is constructed with the remaining keyword arguments."""
    if name not in EXTRACTORS:
        raise KeyError(f"unknown extractor {name!r}; registered: {sorted(EXTRACTORS)}")
    e = EXTRACTORS[name]
    if e.config_key is None:
        return e.cls(**kwargs)
    w = resolve_weights(
        weights_path,
        config_key=config_key or e.config_key,
        published=e.published(kwargs) if callable(e.published) else e.published,
        allow_random_weights=allow_random_weights,
        what=e.what(kwargs) if callable(e.what) else e.what,
    )
    return e.cls(w, **kwargs)


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike, prefix: int = 16) -> str:
    """sha256 of a file or of all files in a folder (sorted), cached by (path, size, mtime)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            if p.is_dir():
                h.update(str(f.relative_to(p)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key][:prefix]


def resolve_weights(
    weights_path: str | os.PathLike | None,
    *,
    config_key: str,
    published: str,
    allow_random_weights: bool,
    what: str,
) -> Path | None:
    """Return the weights path, or ``None`` for random init when allowed; otherwise raise
    :class:`MissingWeightsError` naming ``config_key`` and where the weights are ``published``."""
    if weights_path not in (None, "", "null"):
        p = Path(os.path.expanduser(str(weights_path)))
        if p.exists():
            return p
        problem = f"{config_key}={weights_path!r} does not exist"
    else:
        problem = f"{config_key} is not set"
    if allow_random_weights:
        return None
    raise MissingWeightsError(
        f"{what}: {problem}. Download the weights ({published}) to a local path and set "
        f"{config_key}=<path>. No weights are downloaded by this code. For a smoke run only, set "
        f"allow_random_weights=true (results are then labelled 'not comparable')."
    )


class Extractor(torch.nn.Module):
    """Base class: a frozen network plus the facts a result file must record.

    Subclasses set ``name``, ``weights`` (path or None), ``comparable`` and fill ``describe()``.
    """

    name: str = "extractor"
    random_init_scheme: str = "default"
    #: True when a call processes its items one by one (no batched kernels), so its outputs cannot
    #: depend on the batch: the evaluator then does not pad its calls to a fixed size
    batch_invariant: bool = False

    def __init__(self, weights: Path | None, seed: int = 0):
        super().__init__()
        self.weights = weights
        self.comparable = weights is not None
        self.seed = seed

    @property
    def weights_hash(self) -> str:
        if self.weights is not None:
            return file_sha256(self.weights)
        return f"random-init(seed={self.seed},{self.random_init_scheme})"

    def settings(self) -> dict:
        """Preprocessing and architecture settings that change the features (part of the cache key)."""
        return {}

    def describe(self) -> dict:
        return {
            "name": self.name,
            "weights": str(self.weights) if self.weights is not None else None,
            "weights_hash": self.weights_hash,
            "comparable": self.comparable,
            **self.settings(),
        }

    def signature(self) -> str:
        """Short hash of name + weights hash + settings: the feature-cache namespace."""
        blob = repr(sorted({"name": self.name, "w": self.weights_hash, **self.settings()}.items()))
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


def seeded_init(seed: int):
    """Context manager: deterministic random init that leaves the global RNG untouched."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    return ctx()


def load_state_dict_file(path: Path) -> dict:
    """Load a state dict from ``.safetensors`` or a torch pickle (``weights_only=True``); unwraps
    ``{"state_dict": ...}`` / ``{"model": ...}`` containers."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for k in ("state_dict", "model", "params"):
        if isinstance(sd, dict) and k in sd and isinstance(sd[k], dict):
            sd = sd[k]
    return sd


def is_torchscript(path: Path) -> bool:
    """True if ``path`` is a TorchScript archive (zip with a ``constants.pkl`` / ``code/`` entry)."""
    import zipfile

    if path.is_dir() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def strict_load(module: torch.nn.Module, sd: dict, what: str) -> None:
    missing, unexpected = module.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{what}: weights do not match the architecture; missing {len(missing)} keys "
            f"(e.g. {missing[:3]}), unexpected {len(unexpected)} (e.g. {unexpected[:3]})"
        )


def init_network(factory, weights: Path | None, seed: int, what: str) -> torch.nn.Module:
    """``factory()`` in eval mode with seeded He-normal weights (:func:`he_init_`), then the state dict at
    ``weights`` loaded strictly when given (I3D, Inception)."""
    with seeded_init(seed):
        net = factory().eval()
        he_init_(net)
    if weights is not None:
        strict_load(net, load_state_dict_file(weights), what)
    return net


def he_init_(module: torch.nn.Module) -> None:
    """He-normal (fan_in, ReLU) init of every conv / linear weight, zero biases. Used for random-init
    smoke networks so activations keep their scale through deep stacks with identity (eval-mode)
    batch norm, and features still differ between videos."""
    for m in module.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
