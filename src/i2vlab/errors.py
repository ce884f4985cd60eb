"""Errors meant for the person at the command line.

Their messages name the config key or flag and what to set; the entry points print them as one
paragraph and exit with status 2, without a traceback (``I2VLAB_TRACEBACK=1`` shows it)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any


class UserError(Exception):
    """Mixin for errors whose message is the whole story (bad config, missing file, refused input)."""


class WeightsNotFoundError(UserError, FileNotFoundError):
    """A configured weights path does not exist or cannot be loaded."""


def report_user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for ``main`` functions: a :class:`UserError` becomes ``error: <message>`` and exit 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if os.environ.get("I2VLAB_TRACEBACK"):
                raise
            print(f"error: {e}", file=sys.stderr)
            print("(set I2VLAB_TRACEBACK=1 for the traceback)", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
