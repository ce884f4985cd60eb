"""Checking a composed training config before anything is built.

Two checks, each failing with one message that names the config key and what to set instead:

- :func:`check_compatibility`: every ``${backbone.X}`` the method config refers to exists in the
  chosen backbone (``method=i2v_adapter backbone=tiny_svd`` fails here, listing the backbones that
  fit, instead of deep inside Hydra with ``InterpolationKeyError``);
- :func:`check_values`: types and ranges of the keys a user sets most (``data.batch_size=abc``,
  ``data.num_frames=0``, ``trainer.max_steps=abc``, ``optimizer.lr=fast`` ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from i2vlab.errors import UserError, WeightsNotFoundError


class ConfigError(UserError, ValueError):
    """A config value or combination that cannot work; the message names the key."""


_BACKBONE_REF = re.compile(r"\$\{backbone\.([A-Za-z0-9_]+)")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_at_least(lo: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= lo), f"an integer >= {lo}"


def _stride(v: Any) -> bool:
    if _is_int(v):
        return v >= 1
    if isinstance(v, (list, tuple, ListConfig)) and len(v) == 2 and all(_is_int(x) for x in v):
        return 1 <= v[0] <= v[1]
    return False


def _resolution(v: Any) -> bool:
    return (
        isinstance(v, (list, tuple, ListConfig))
        and len(v) == 2
        and all(_is_int(x) and x >= 8 and x % 8 == 0 for x in v)
    )


def _devices(v: Any) -> bool:
    return v == "auto" or (_is_int(v) and (v >= 1 or v == -1)) or isinstance(v, (list, ListConfig))


def _val_interval(v: Any) -> bool:
    return (_is_int(v) and v >= 1) or (isinstance(v, float) and 0 < v <= 1)


#: (key, test, what it must be) -- optional keys are skipped when absent or null
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", _is_int, "an integer"),
    ("data.batch_size", *_int_at_least(1)),
    ("data.val_batch_size", *_int_at_least(1)),
    ("data.num_workers", *_int_at_least(0)),
    ("data.num_frames", *_int_at_least(1)),
    ("data.frame_stride", _stride, "an integer >= 1 or [lo, hi] with 1 <= lo <= hi"),
    ("data.val_frame_stride", *_int_at_least(1)),
    ("data.resolution", _resolution, "[height, width], each a multiple of 8"),
    ("data.epoch_length", *_int_at_least(1)),
    ("data.val_num_samples", *_int_at_least(0)),
    ("data.shuffle_buffer", *_int_at_least(0)),
    ("data.timeout_s", lambda v: _is_num(v) and v >= 0, "a number of seconds >= 0"),
    ("trainer.max_steps", lambda v: _is_int(v) and (v >= 1 or v == -1), "a positive integer (or -1)"),
    ("trainer.accumulate_grad_batches", *_int_at_least(1)),
    ("trainer.log_every_n_steps", *_int_at_least(1)),
    ("trainer.val_check_interval", _val_interval, "a number of steps >= 1 (or a fraction in (0, 1])"),
    ("trainer.limit_val_batches", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    ("trainer.gradient_clip_val", lambda v: _is_num(v) and v >= 0, "a number >= 0 (or null)"),
    ("trainer.devices", _devices, "an integer >= 1, -1, 'auto' or a list of device ids"),
    ("trainer.num_nodes", *_int_at_least(1)),
    ("optimizer.lr", lambda v: _is_num(v) and v > 0, "a number > 0 (e.g. 1e-4)"),
    ("optimizer.weight_decay", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    ("optimizer.warmup_steps", *_int_at_least(0)),
    ("optimizer.eps", lambda v: _is_num(v) and v > 0, "a number > 0"),
    ("callbacks.model_checkpoint.every_n_train_steps", *_int_at_least(0)),
]


def _select(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    """(present, value) with interpolations resolved for just this key; ``"???"`` if mandatory."""
    parent_key, _, leaf = key.rpartition(".")
    try:
        parent = cfg if not parent_key else OmegaConf.select(cfg, parent_key, default=None)
        if not isinstance(parent, DictConfig) or leaf not in parent:
            return False, None
        if OmegaConf.is_missing(parent, leaf):
            return True, "???"
        return True, parent[leaf]
    except OmegaConfBaseException as e:
        raise ConfigError(f"{key}: cannot be resolved ({e})") from e


def check_values(cfg: DictConfig) -> None:
    """Types and ranges of :data:`RULES`; all problems are reported together."""
    problems = [
        f"{k} is required (set {k}=...)"
        for k in sorted(OmegaConf.missing_keys(cfg))
        if not k.startswith("hydra")
    ]
    for key, ok, what in RULES:
        present, value = _select(cfg, key)
        if not present or value is None:
            continue
        if value == "???":
            continue  # listed above
        if not ok(value):
            problems.append(f"{key}={value!r} must be {what}")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def _backbone_keys_used(method: DictConfig) -> set[str]:
    refs: set[str] = set()
    container = OmegaConf.to_container(method, resolve=False)

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        elif isinstance(x, str):
            refs.update(_BACKBONE_REF.findall(x))

    walk(container)
    return refs


def check_compatibility(cfg: DictConfig, conf_dir: str | Path | None = None) -> None:
    """The method's ``${backbone.X}`` references all exist in the chosen backbone."""
    method, backbone = cfg.get("method"), cfg.get("backbone")
    if not isinstance(method, DictConfig) or not isinstance(backbone, DictConfig):
        return
    needed = _backbone_keys_used(method)
    missing = sorted(k for k in needed if k not in backbone)
    if not missing:
        return
    target = str(method.get("_target_", "?")).rsplit(".", 1)[-1]
    name = backbone.get("name", "?")
    fits = _fitting_backbones(needed, conf_dir)
    raise ConfigError(
        f"method {target} needs backbone keys {missing}, which backbone={name} does not have. "
        + (f"Backbones that fit this method: {', '.join(fits)} (set backbone=<name>)." if fits else "")
    )


def _fitting_backbones(needed: set[str], conf_dir: str | Path | None) -> list[str]:
    folder = Path(conf_dir) if conf_dir else Path(__file__).resolve().parents[3] / "conf"
    out = []
    for f in sorted((folder / "backbone").glob("*.yaml")):
        try:
            keys = set(OmegaConf.load(f).keys())
        except Exception:  # noqa: BLE001 - an unreadable file just is not listed
            continue
        if needed <= keys:
            out.append(f.stem)
    return out


def looks_like_local_path(s: str) -> bool:
    """A value meant as a file-system path (not a hub id ``owner/name``)."""
    s = str(s)
    return (
        s.startswith(("/", "./", "../", "~"))
        or s.strip("/").count("/") >= 2  # hub ids are owner/name
        or Path(s).suffix.lower() in (".ckpt", ".pth", ".pt", ".bin", ".safetensors", ".json", ".yaml")
        or Path(s).expanduser().exists()
    )


#: component keys that name weights (local folder/file or hub id)
WEIGHT_FIELDS = ("pretrained", "motion_adapter", "pretrained_motion_unet")


def _hub_online(timeout: float = 1.5) -> bool:
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_cached(repo: str, subfolder: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return False
    names = [f"{subfolder}/config.json" if subfolder else "config.json", "model_index.json"]
    try:
        return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
    except ValueError:  # not a valid hub id (HFValidationError)
        return False


def check_weights_available(cfg: DictConfig) -> None:
    """Every weights path of the backbone exists, or (hub ids) is cached or downloadable, checked
    before anything is built. The message names the key a user sets (``backbone.pretrained``, not
    the component key that interpolates it), where the weights are published and the expected
    folder layout; without network it comes at once instead of after the hub's retries."""
    backbone = cfg.get("backbone")
    if not isinstance(backbone, DictConfig):
        return
    raw = OmegaConf.to_container(backbone, resolve=False)
    wanted: dict[str, dict[str, Any]] = {}
    for comp, node in raw.items():
        if not isinstance(node, dict):
            continue
        for field in WEIGHT_FIELDS:
            if field not in node:
                continue
            ref = node[field]
            m = re.fullmatch(r"\$\{(backbone\.[A-Za-z0-9_.]+)\}", ref) if isinstance(ref, str) else None
            key = m.group(1) if m else f"backbone.{comp}.{field}"
            try:
                value = OmegaConf.select(cfg, key)
            except OmegaConfBaseException:
                continue
            if value is None:
                continue
            w = wanted.setdefault(key, {"value": str(value), "subfolders": set(), "published": set()})
            sub = node.get("subfolder") or ("unet" if comp == "unet" and field == "pretrained" else None)
            if sub:  # (diffusers UNet builders read <pretrained>/unet themselves)
                w["subfolders"].add(str(sub))
            if node.get("published"):
                w["published"].add(str(node["published"]))
    online: bool | None = None
    problems = []
    for key, w in wanted.items():
        value = w["value"]
        local = looks_like_local_path(value)
        layout = (
            f" Expected layout: {value if local else '<dir>'}/{{{','.join(sorted(w['subfolders']))}}}/ "
            "(diffusers / transformers folders)."
            if w["subfolders"] and not Path(value).suffix
            else ""
        )
        where = f" Published: {'; '.join(sorted(w['published']))}." if w["published"] else ""
        if local:
            if not Path(value).expanduser().exists():
                problems.append(
                    f"{key}={value!r} does not exist: set {key}=<local folder or file>.{layout}{where}"
                )
            continue
        subs = sorted(w["subfolders"]) or [None]
        if all(_hub_cached(value, s) for s in subs):
            continue
        if online is None:
            online = _hub_online()
        if not online:
            problems.append(
                f"{key}={value!r} is a hub id, not in the local cache, and this machine cannot reach the hub: "
                f"download it where you can (huggingface-cli download {value} --local-dir <dir>) and set "
                f"{key}=<dir>.{layout}{where}"
            )
    if problems:
        raise WeightsNotFoundError("weights not found: " + " | ".join(problems))


def validate_train_config(cfg: DictConfig, conf_dir: str | Path | None = None) -> None:
    """All checks; every problem found is reported in one error (the first check's type if only one
    check failed)."""
    check_compatibility(cfg, conf_dir)  # nothing else is meaningful with the wrong backbone
    errors: list[UserError] = []
    for check in (check_values, check_weights_available):
        try:
            check(cfg)
        except UserError as e:
            errors.append(e)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigError(" | ".join(str(e) for e in errors))
