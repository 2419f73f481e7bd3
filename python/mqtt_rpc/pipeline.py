"""The steps every call takes, written once for both clients: its timeout (bounded by the
deadline of the request a handler serves), its payload encoded and its model checked, the
device its presence check looks at, the tracing span, retries, and start, wait, and forget
when the caller gives up. `MqttRpcClient` runs them on its event loop (`call_async`),
`SyncMqttRpcClient` blocking its thread (`call_blocking`); both connect first."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Dict, Iterable, Iterator, List, Optional, Tuple, Type, Union

from . import _core, _observer, typed
from ._observer import ClientSpan, Headers, Peer
from .context import bounded_timeout
from .errors import ConnectionLostError, PayloadError, ReplyValidationError, RpcTimeoutError
from .presence import DeviceOf

_get_running_loop = asyncio.get_running_loop
_CancelledError = asyncio.CancelledError


@dataclass(frozen=True)
class Retry:
    """How `call()` retries: up to ``attempts`` attempts, all within the call's ``timeout``.

    Every attempt publishes the same request with the same ``request_id``, so a device can
    recognise a repeat (and answer it without acting twice). An attempt waits
    ``attempt_timeout`` seconds (default: what the call's timeout leaves after the pauses,
    shared by the attempts; the last attempt waits for whatever time is left), then, after
    a pause of ``backoff`` seconds doubling up to ``max_backoff``, the next one goes out. Only the exceptions in
    ``on`` are retried: a `RemoteError` is the device's answer and is not, unless listed.
    The call never outlives its ``timeout``.
    """

    attempts: int = 3
    backoff: float = 0.2
    max_backoff: float = 2.0
    on: Tuple[Type[BaseException], ...] = (RpcTimeoutError, ConnectionLostError)
    attempt_timeout: Optional[float] = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must not be negative")
        if self.attempt_timeout is not None and self.attempt_timeout <= 0:
            raise ValueError(f"attempt_timeout must be positive, not {self.attempt_timeout}")

    def steps(self, timeout: float, clock: Callable[[], float]) -> Iterator[Tuple[bool, float]]:
        """What a call with this policy does, one step at a time, all within ``timeout``
        from now by ``clock``: an attempt, ``(True, seconds it waits)`` (the last waits for
        whatever is left), then a pause, ``(False, seconds)``, then the next attempt. Read
        lazily: each step is worked out when the one before it is over."""
        pauses = [min(self.backoff * 2**k, self.max_backoff) for k in range(self.attempts - 1)]
        total = sum(pauses)
        per_attempt = self.attempt_timeout or (timeout - total if timeout > total else timeout) / self.attempts
        deadline = clock() + timeout
        for attempt in range(self.attempts):
            left = deadline - clock()
            if left <= 0:
                return
            yield True, left if attempt == self.attempts - 1 else min(per_attempt, left)
            if attempt < len(pauses):
                pause = min(pauses[attempt], deadline - clock())
                if pause > 0:
                    yield False, pause


@dataclass
class Prepared:
    """A call checked and ready to start: nothing was sent yet."""

    topic: str
    body: Union[str, bytes, bytearray]
    timeout: float
    #: The core's ``device`` and ``wait_for_device`` arguments, or () (the usual case).
    aim: Tuple[Any, ...]
    model: Any = None


def prepare(
    topic: str,
    payload: Any,
    timeout: Optional[float],
    default_timeout: float,
    device_of: Optional[DeviceOf],
    *,
    response_model: Any = None,
    wait_for_device: Optional[float] = None,
) -> Prepared:
    """Every check a call makes before anything is sent."""
    bounded = bounded_timeout(default_timeout if timeout is None else timeout, topic)
    body = payload if isinstance(payload, str) else typed.encode(payload)
    if response_model is not None:
        typed.check_model(response_model)
    # No device to aim at and none to wait for: the usual case, spared a call.
    aimed = () if device_of is None and wait_for_device is None else aim(topic, device_of, wait_for_device)
    return Prepared(topic, body, bounded, aimed, response_model)


def aim(topic: str, device_of: Optional[DeviceOf], wait_for_device: Optional[float]) -> Tuple[Any, ...]:
    """The core's last two call arguments, ``device`` and ``wait_for_device``, or () when
    neither is given (the usual case, which then converts two arguments fewer)."""
    if wait_for_device is not None and not (isinstance(wait_for_device, (int, float)) and wait_for_device >= 0):
        raise ValueError(f"wait_for_device must be a non-negative number of seconds, not {wait_for_device!r}")
    if device_of is None and wait_for_device is None:
        return ()
    return (device(topic, device_of), wait_for_device)


def device(topic: str, device_of: Optional[DeviceOf]) -> Optional[str]:
    """The device a call addresses, when ``device_of`` says (``""``: none); None leaves it
    to the core: the topic's first level."""
    if device_of is None:
        return None
    return device_of(topic) or ""


def check_max_replies(max_replies: Optional[int]) -> None:
    if max_replies is not None and (isinstance(max_replies, bool) or not isinstance(max_replies, int) or max_replies < 1):
        raise ValueError(f"max_replies must be a positive integer or None, not {max_replies!r}")


def batch(requests: Iterable[Tuple[str, Any]]) -> List[Tuple[str, Union[str, bytes, bytearray]]]:
    """A batch's requests encoded; the first bad one raises `PayloadError` naming its index."""
    encoded = []
    for index, (topic, payload) in enumerate(requests):
        try:
            encoded.append((topic, typed.encode(payload)))
        except PayloadError as error:
            raise PayloadError(f"request {index} of the batch: {error}") from error
    return encoded


def finish(reply: Any, model: Any) -> Any:
    """The reply, or its ``result`` validated as ``model``."""
    return reply if model is None else typed.validate(reply, model)


def finish_many(replies: List[Any], model: Any, return_exceptions: bool) -> List[Any]:
    if model is None:
        return replies
    return [_validated_in_place(reply, model, return_exceptions) for reply in replies]


def _validated_in_place(reply: Any, model: Any, return_exceptions: bool) -> Any:
    if isinstance(reply, BaseException):
        return reply
    try:
        return typed.validate(reply, model)
    except ReplyValidationError as error:
        if return_exceptions:
            return error
        raise


def timed_out(call: Prepared, last: Optional[BaseException]) -> BaseException:
    """What a retried call raises when no attempt succeeded."""
    if last is None or isinstance(last, RpcTimeoutError):
        message = f"MQTT call timed out after {call.timeout}s for topic '{call.topic}'"
        error = RpcTimeoutError(message, call.timeout, call.topic)
        error.__cause__ = last
        return error
    return last


# --- on an event loop ----------------------------------------------------------------------


def call_async(
    core: _core.CoreClient, call: Prepared, retry: Optional[Retry], peer: Peer
) -> Coroutine[Any, Any, Dict[str, Any]]:
    """Runs a prepared call on the running loop: its span, its attempts, its outcome. (The
    coroutine that does it, without a frame of its own around it: the hot path.)"""
    observer = _observer.current
    if observer is not None:
        return _traced(core, call, retry, peer, observer)
    if retry is None:
        return _attempt(core, call, call.timeout, None, None)
    return _with_retries(core, call, retry, None)


async def _traced(
    core: _core.CoreClient, call: Prepared, retry: Optional[Retry], peer: Peer, observer: Any
) -> Dict[str, Any]:
    with observer.client_span("call", call.topic, peer) as span:
        if retry is None:
            return await _attempt(core, call, call.timeout, None, span)
        return await _with_retries(core, call, retry, span)


async def _attempt(
    core: _core.CoreClient, call: Prepared, wait: float, request_id: Optional[str], span: Optional[ClientSpan]
) -> Dict[str, Any]:
    """One attempt: start, wait, and forget the call if the waiter is cancelled. With a
    ``request_id`` (a retry's), the caller has named the request in the span already."""
    loop = _get_running_loop()
    if span is None and request_id is None and not call.aim:
        future, request_id = core.start_call(loop, call.topic, call.body, wait)
    else:
        headers = None if span is None else span.headers
        chosen = request_id
        future, request_id = core.start_call(loop, call.topic, call.body, wait, request_id, headers, *call.aim)
        if span is not None and chosen is None:
            span.sent(request_id)
    try:
        reply: Dict[str, Any] = await future
    except _CancelledError:
        core.forget(request_id)  # nobody waits for the answer any more
        raise
    return reply


async def _with_retries(core: _core.CoreClient, call: Prepared, retry: Retry, span: Optional[ClientSpan]) -> Dict[str, Any]:
    request_id = str(uuid.uuid4())  # every attempt sends the same request
    if span is not None:
        span.sent(request_id)
    last: Optional[BaseException] = None
    for attempt, seconds in retry.steps(call.timeout, _get_running_loop().time):
        if not attempt:
            await asyncio.sleep(seconds)
            continue
        try:
            return await _attempt(core, call, seconds, request_id, span)
        except retry.on as error:
            last = error
    raise timed_out(call, last)


# --- blocking a thread ---------------------------------------------------------------------


def call_blocking(core: _core.CoreClient, call: Prepared, retry: Optional[Retry], peer: Peer) -> Dict[str, Any]:
    """Runs a prepared call blocking this thread (the GIL released while it waits)."""
    observer = _observer.current
    if observer is None:
        if retry is None:
            return core.call_blocking(call.topic, call.body, call.timeout, None, *call.aim)
        return _with_retries_blocking(core, call, retry, None)
    with observer.client_span("call", call.topic, peer) as span:
        if retry is None:
            reply = core.call_blocking(call.topic, call.body, call.timeout, span.headers, *call.aim)
        else:
            reply = _with_retries_blocking(core, call, retry, span.headers)
        if isinstance(reply.get("request_id"), str):
            span.sent(reply["request_id"])  # the answer names the request it answers
        return reply


def _with_retries_blocking(core: _core.CoreClient, call: Prepared, retry: Retry, headers: Optional[Headers]) -> Dict[str, Any]:
    device, wait_for_device = call.aim or (None, None)
    request_id = str(uuid.uuid4())  # every attempt sends the same request
    last: Optional[BaseException] = None
    for attempt, seconds in retry.steps(call.timeout, time.monotonic):
        if not attempt:
            time.sleep(seconds)
            continue
        try:
            return core.call_blocking(call.topic, call.body, seconds, headers, device, wait_for_device, request_id)
        except retry.on as error:
            last = error
    raise timed_out(call, last)


def traced_blocking(peer: Peer, operation: str, topic: str, send: Callable[[Optional[Headers]], Any]) -> Any:
    """``send(headers)`` inside a client span when tracing is on (a blocking core call
    gives no request id before it ends: the answer names it)."""
    observer = _observer.current
    if observer is None:
        return send(None)
    with observer.client_span(operation, topic, peer) as span:
        outcome = send(span.headers)
        if isinstance(outcome, dict) and isinstance(outcome.get("request_id"), str):
            span.sent(outcome["request_id"])
        return outcome


def end_spans(spans: List[ClientSpan], error: BaseException) -> None:
    for span in spans:
        span.end(error)
