"""Rate-limited logging for failures that are counted, not raised: the first of each kind
is logged in full, later ones are counted and summarised at most once per interval, so a
failure that repeats a thousand times a second costs a counter, not a log line each."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, List

#: Kinds remembered at most; beyond, new kinds share one (the set stays bounded whatever
#: names a caller or the network makes up).
MAX_KINDS = 1000


class LogOncePerKind:
    def __init__(self, logger: logging.Logger, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self._interval = interval
        self._clock = clock
        # kind -> [when last logged, occurrences since]
        self._kinds: Dict[str, List[float]] = {}

    def log(self, kind: str, level: int, message: str, *args: Any, exc_info: Any = None) -> None:
        """Logs ``message % args`` if it is the first of ``kind``, or the first after
        ``interval`` seconds (then saying how many were not logged in between)."""
        now = self._clock()
        if kind not in self._kinds and len(self._kinds) >= MAX_KINDS - 1:
            kind = "(other kinds)"
        state = self._kinds.get(kind)
        if state is None:
            self._kinds[kind] = [now, 0]
            self._logger.log(level, message, *args, exc_info=exc_info)
            return
        state[1] += 1
        if now - state[0] >= self._interval:
            unlogged = int(state[1]) - 1
            suffix = f" ({unlogged} more like it since {self._interval:g} s ago, not logged)" if unlogged else ""
            self._logger.log(level, message + suffix, *args, exc_info=exc_info)
            state[0], state[1] = now, 0


def taken_over(client_id: str) -> str:
    """What is logged, once per episode, when another connection with our client id keeps
    taking the connection over: the broker holds one connection per id, so two processes
    sharing one (several workers or replicas started from one configuration) disconnect
    each other for ever."""
    return (
        f"the connection of client id {client_id!r} was taken over by another connection with the "
        "same client id, and keeps being: give each process its own id, for example "
        "client_id='web-{pid}' or '?client_id=web-{hostname}-{pid}' in MQTT_RPC_URL; "
        "reconnects back off meanwhile (stats()['takeovers'] counts them)"
    )
