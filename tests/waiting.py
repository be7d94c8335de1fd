"""Polling for tests that watch background processes."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float = 120, interval: float = 0.2) -> bool:
    """Call `predicate` every `interval` seconds until it is true (True) or `timeout` passes (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
