"""`current_request()`: the request a `Responder` handler is serving, with the time its
caller still waits; and the rule that a call made while serving it never waits longer than
that (the caller would not be there for the answer)."""

from __future__ import annotations

import math
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Optional

from .errors import RpcTimeoutError


@dataclass(frozen=True)
class RequestContext:
    """The request being served.

    Attributes:
        request_id: its ``request_id`` (None for a notification, or a plain MQTT 5 request
            without one).
        topic: the topic it arrived on.
        deadline: when its caller stops waiting, on the `time.monotonic()` clock; None if
            the request did not say (a 3.1.1 caller without ``propagate_deadline``).
    """

    request_id: Optional[str]
    topic: str
    deadline: Optional[float]

    def remaining(self) -> float:
        """Seconds until the caller stops waiting (negative once it has; ``math.inf`` when
        the request carried no deadline)."""
        if self.deadline is None:
            return math.inf
        return self.deadline - time.monotonic()


_current: ContextVar[Optional[RequestContext]] = ContextVar("mqtt_rpc_current_request", default=None)


def current_request() -> Optional[RequestContext]:
    """The request the running handler serves (also in a plain handler's worker thread, and
    in tasks it starts); None outside a handler."""
    return _current.get()


def serving(request: RequestContext) -> None:
    """Marks the running task (a handler's own) as serving ``request``."""
    _current.set(request)


def bounded_timeout(timeout: float, topic: str) -> float:
    """A call's timeout, shortened to what the request being served has left: a call made
    by a handler never outlives its own caller's wait. Raises `RpcTimeoutError` before
    anything is sent when nothing is left."""
    request = _current.get()
    if request is None or request.deadline is None:
        return timeout
    left = request.deadline - time.monotonic()
    if left <= 0:
        raise RpcTimeoutError(
            f"MQTT call to '{topic}' not sent: the request it serves ({request.request_id}) is past its deadline",
            timeout,
            topic,
        )
    return min(timeout, left)
