"""Building components from a pretrained path / hub id, or from an architecture config.

Every component in ``conf/backbone/*.yaml`` goes through :func:`load_or_build`:

- ``pretrained`` set: ``cls.from_pretrained(pretrained, subfolder=...)``. A missing local path fails
  at once with a message naming the config key (``name``) and where such weights are published.
- ``pretrained`` null: ``cls(**config)`` (random init; the tiny test configs).
- inside :func:`build_on_meta`: ``cls(**config)`` on the meta device, whatever ``pretrained`` says, so
  full-size parameter reports need neither weights nor memory.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from i2vlab.errors import WeightsNotFoundError  # noqa: F401  (re-exported)
from i2vlab.utils.config import to_plain  # noqa: F401  (re-exported)
from i2vlab.utils.validate import looks_like_local_path  # noqa: F401  (re-exported)

_META = contextvars.ContextVar("i2vlab_build_on_meta", default=False)


@contextlib.contextmanager
def build_on_meta() -> Iterator[None]:
    """Within this context, builders construct architectures on the meta device (no weights)."""
    token = _META.set(True)
    try:
        with torch.device("meta"):
            yield
    finally:
        _META.reset(token)


def on_meta() -> bool:
    return _META.get()


def import_object(path: str | type) -> Any:
    if not isinstance(path, str):
        return path
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def check_weights(pretrained: str, key: str, published: str | None = None) -> None:
    """Fail early if ``pretrained`` is meant as a local path but is missing. ``key`` is the full
    config key that holds the path (e.g. ``backbone.vae.pretrained``)."""
    if looks_like_local_path(pretrained) and not Path(pretrained).expanduser().exists():
        where = f" Published weights: {published}." if published else ""
        raise WeightsNotFoundError(
            f"{key}: weights path {pretrained!r} does not exist. Set `{key}=<local dir or hub id>` "
            f"(or null for random init from the architecture config, tests only).{where}"
        )


def load_or_build(
    cls: str | type,
    name: str,
    config: Mapping[str, Any] | None = None,
    pretrained: str | None = None,
    subfolder: str | None = None,
    published: str | None = None,
    config_class: str | type | None = None,
    **kwargs: Any,
) -> Any:
    """Instantiate ``cls`` from weights or from ``config`` (see module docstring).

    ``config_class`` is for transformers models, whose constructor takes a config object
    (``transformers.CLIPTextConfig`` etc.) rather than keyword arguments.
    """
    klass = import_object(cls)
    config = dict(to_plain(config) or {})
    if on_meta() or pretrained is None:
        if not config and pretrained is None:
            raise ValueError(f"{name}: give either `pretrained` (weights) or `config` (architecture)")
        if not config:  # on meta with weights and no config: the architecture of the saved model
            return _from_saved_config(klass, name, pretrained, subfolder)
        if config_class is not None:
            return klass(import_object(config_class)(**config))
        return klass(**config)
    check_weights(pretrained, f"{name}.pretrained", published)
    sub = {"subfolder": subfolder} if subfolder else {}
    try:
        return klass.from_pretrained(pretrained, **sub, **kwargs)
    except (OSError, ValueError) as e:
        where = f" Published weights: {published}." if published else ""
        raise WeightsNotFoundError(
            f"{name}: could not load {klass.__name__} from {pretrained!r}{f' (subfolder {subfolder!r})' if subfolder else ''}: {e}. "
            f"Point `{name}.pretrained` at a local copy; this machine may not reach the hub.{where}"
        ) from e


def _from_saved_config(klass: type, name: str, pretrained: str, subfolder: str | None) -> Any:
    """``klass`` built (no weights read) from the config saved beside ``pretrained``'s weights:
    a diffusers ``ModelMixin`` (``load_config`` / ``from_config``) or a transformers model
    (its ``config_class``)."""
    sub = {"subfolder": subfolder} if subfolder else {}
    try:
        if hasattr(klass, "load_config") and hasattr(klass, "from_config"):
            return klass.from_config(klass.load_config(pretrained, **sub))
        return klass(klass.config_class.from_pretrained(pretrained, **sub))
    except (OSError, ValueError) as e:
        raise WeightsNotFoundError(
            f"{name}: building {klass.__name__} on the meta device needs its config: none given in "
            f"`{name}.config` and none readable from {pretrained!r} ({e})"
        ) from e
