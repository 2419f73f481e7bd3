"""Waiting for state the test cannot be told about (a responder's queue, what a client has
heard from the broker): polled, bounded, never a fixed sleep standing in for an event."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable


async def until(condition: Callable[[], Any], what: str = "the condition", within: float = 10.0) -> None:
    """Returns once ``condition()`` holds; fails the test naming ``what`` after ``within`` s."""
    give_up = time.monotonic() + within
    while not condition():
        assert time.monotonic() < give_up, f"still waiting for {what}"
        await asyncio.sleep(0.005)
