"""Retrying a side-effect-free call on the product's TransientError, for what the SDKs do not retry."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from remediation.model import TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")


def with_retries(fn: Callable[[], T], *, what: str, attempts: int = 3, backoff: float = 0.5) -> T:
    """Call fn; on TransientError call it again, up to `attempts` in all, pausing backoff, 2*backoff, ..."""
    for attempt in range(attempts):
        try:
            return fn()
        except TransientError:
            if attempt == attempts - 1:
                raise
            log.info("%s: transient error, trying again (attempt %d of %d)", what, attempt + 2, attempts)
            time.sleep(backoff * (2 ** attempt))
    raise AssertionError("unreachable")
