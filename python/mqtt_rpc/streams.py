"""The messages of a call as they come: `CallStream`, the async iterator of
`MqttRpcClient.stream` and `call_all`, and `BlockingCallStream`, the iterator of
`SyncMqttRpcClient.stream` and `call_all`. Both hold at most `MAX_BUFFERED_MESSAGES` for a
consumer that does not keep up (the oldest dropped and counted), and leaving the iteration
early ends the call at once."""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from typing import Any, Awaitable, Callable, Deque, Dict, Optional, Tuple

from . import _core, _observer
from ._observer import ClientSpan, Headers, Peer
from .errors import NoRespondersError, RpcTimeoutError

logger = logging.getLogger("mqtt_rpc")

#: Takes each interim message of a call (progress, or a scatter-gather answer).
OnMessage = Callable[[Dict[str, Any]], None]
#: Starts a stream's call on a core: ``(future, request_id)``.
Begin = Callable[[_core.CoreClient, OnMessage, Optional[Headers]], Tuple[Any, str]]
#: Connects the client if it is not, and gives its core.
Connect = Callable[[], Awaitable[_core.CoreClient]]
#: Runs a call to its end blocking the thread, handing each interim message on; gives the
#: answer (or None when the call ends without one, as a scatter-gather does).
Run = Callable[[OnMessage], Optional[Dict[str, Any]]]

_get_running_loop = asyncio.get_running_loop


#: Messages a `CallStream` holds for a consumer that does not keep up; beyond, the oldest
#: are dropped (counted in `CallStream.dropped`, logged once per stream).
MAX_BUFFERED_MESSAGES = 10_000


class _Inbox:
    """The messages of one call waiting for its consumer, bounded. The core holds this (not
    the `CallStream`), so a stream dropped by its consumer is collected at once."""

    __slots__ = ("messages", "arrived", "dropped", "topic")

    def __init__(self, topic: str) -> None:
        self.messages: Deque[Dict[str, Any]] = collections.deque()
        self.arrived: Optional["asyncio.Future[None]"] = None
        self.dropped = 0
        self.topic = topic

    def offer(self, message: Dict[str, Any]) -> None:
        # Called on the loop's thread for each message, as it arrives.
        if len(self.messages) >= MAX_BUFFERED_MESSAGES:
            self.messages.popleft()
            self.dropped += 1
            if self.dropped == 1:
                logger.warning(
                    "a call on %s: the consumer does not keep up; dropping the oldest messages beyond %d",
                    self.topic,
                    MAX_BUFFERED_MESSAGES,
                )
        self.messages.append(message)
        arrived = self.arrived
        if arrived is not None and not arrived.done():
            arrived.set_result(None)


class CallStream:
    """The messages of one call, as an async iterator: the progress messages and then the
    answer of `MqttRpcClient.stream`, or the answers of `MqttRpcClient.call_all`.

    The call is published when the stream is created (on a client not yet connected: when
    the iteration starts, after connecting). Leaving the iteration early (a ``break``, an
    exception, ``aclose()``, the end of an ``async with`` block) ends the call at once: the
    client forgets it (and, with ``cancel_on_abandon``, tells the device). At most
    `MAX_BUFFERED_MESSAGES` messages wait for the consumer; past that the oldest are
    dropped and counted in ``dropped``. The answer of `stream` is never dropped.
    """

    def __init__(
        self,
        connect: Connect,
        begin: Begin,
        topic: str,
        operation: str,
        peer: Peer,
        *,
        core: Optional[_core.CoreClient] = None,
        idle_timeout: Optional[float] = None,
        ends_with_answer: bool = False,
    ) -> None:
        self._connect = connect
        self._peer = peer
        self._begin: Optional[Begin] = begin
        self._operation = operation
        self._span: Optional[ClientSpan] = None
        self._core: Optional[_core.CoreClient] = None
        self._future: Optional["asyncio.Future[Dict[str, Any]]"] = None
        self.request_id: Optional[str] = None
        self._inbox = _Inbox(topic)
        self._topic = topic
        self._idle_timeout = idle_timeout
        self._ends_with_answer = ends_with_answer
        self._finished = False
        if core is not None:
            self._start(core)

    @property
    def dropped(self) -> int:
        """Messages dropped because the consumer did not keep up."""
        return self._inbox.dropped

    def _start(self, core: _core.CoreClient) -> None:
        begin, self._begin = self._begin, None
        assert begin is not None
        self._core = core
        observer = _observer.current
        if observer is None:
            self._future, self.request_id = begin(self._core, self._inbox.offer, None)
            return
        span = observer.client_span(self._operation, self._topic, self._peer)
        try:
            self._future, self.request_id = begin(self._core, self._inbox.offer, span.headers)
        except BaseException as error:
            self._finished = True
            span.end(error)
            raise
        span.sent(self.request_id)
        self._span = span

    def _end_span(self, error: Optional[BaseException] = None) -> None:
        span, self._span = self._span, None
        if span is not None:
            span.end(error)

    def __aiter__(self) -> "CallStream":
        return self

    async def __anext__(self) -> Dict[str, Any]:
        if self._begin is not None and not self._finished:
            self._start(await self._connect())
        inbox = self._inbox
        while not self._finished:
            assert self._future is not None
            if inbox.messages:
                return inbox.messages.popleft()
            if self._future.done():
                # Messages sent before the call ended were queued before it: given first.
                self._finished = True
                return self._outcome()
            arrived = inbox.arrived = _get_running_loop().create_future()
            try:
                done, _ = await asyncio.wait(
                    {arrived, self._future}, timeout=self._idle_timeout, return_when=asyncio.FIRST_COMPLETED
                )
            except BaseException as error:
                self._abandon(error)
                raise
            finally:
                inbox.arrived = None
            if not done:
                idle = RpcTimeoutError(
                    f"MQTT call got neither progress nor an answer for {self._idle_timeout}s for topic '{self._topic}'",
                    self._idle_timeout,
                    self._topic,
                )
                self._abandon(idle)
                raise idle
        raise StopAsyncIteration

    def _outcome(self) -> Dict[str, Any]:
        assert self._future is not None
        try:
            answer = self._future.result()
        except NoRespondersError as error:
            if self._ends_with_answer:
                self._end_span(error)
                raise
            # Nobody subscribes to a scatter-gather topic: an empty gathering, not a failure.
            self._end_span()
            raise StopAsyncIteration from None
        except BaseException as error:
            self._end_span(error)
            raise
        self._end_span()
        if self._ends_with_answer:
            return answer
        raise StopAsyncIteration

    def _abandon(self, error: Optional[BaseException] = None) -> None:
        self._end_span(error)
        self._finished = True
        if self._future is not None and not self._future.done() and self._core is not None and self.request_id:
            self._core.forget(self.request_id)

    async def aclose(self) -> None:
        """Ends the call now if it is still going."""
        self._abandon()

    async def __aenter__(self) -> "CallStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._abandon()

    def __del__(self) -> None:
        # Dropped while still going (a `break` out of `async for`): end the call now.
        if not self._finished:
            self._abandon()


class _Abandoned(Exception):
    """Raised into a blocking call's thread when its consumer has left."""


class BlockingCallStream:
    """`CallStream` for code without an event loop: an iterator over the messages of one
    call, which runs on a thread of its own while the consumer iterates (the core blocks
    that thread, not the consumer's). Leaving the iteration early (``close()``, the end of
    a ``with`` block, or dropping the iterator) ends the call at once when ``forget`` is
    given (a `stream`), else with its next message or by its deadline (a `call_all`)."""

    def __init__(
        self,
        run: Run,
        topic: str,
        *,
        idle_timeout: Optional[float] = None,
        forget: Optional[Callable[[], Any]] = None,
    ) -> None:
        self._forget = forget
        self._inbox: Deque[Dict[str, Any]] = collections.deque()
        self._changed = threading.Condition()
        self._outcome: Optional[Tuple[Optional[Dict[str, Any]], Optional[BaseException]]] = None
        self._closed = False
        self.dropped = 0
        self._topic = topic
        self._idle_timeout = idle_timeout
        self._thread = threading.Thread(target=self._run, args=(run,), name="mqtt-rpc-stream", daemon=True)
        self._thread.start()

    def _offer(self, message: Dict[str, Any]) -> None:
        with self._changed:
            if self._closed:
                raise _Abandoned  # the core forgets the call
            if len(self._inbox) >= MAX_BUFFERED_MESSAGES:
                self._inbox.popleft()
                self.dropped += 1
                if self.dropped == 1:
                    logger.warning(
                        "a call on %s: the consumer does not keep up; dropping the oldest messages beyond %d",
                        self._topic,
                        MAX_BUFFERED_MESSAGES,
                    )
            self._inbox.append(message)
            self._changed.notify()

    def _run(self, run: Run) -> None:
        try:
            outcome: Tuple[Optional[Dict[str, Any]], Optional[BaseException]] = (run(self._offer), None)
        except BaseException as error:  # handed to the consumer's thread, raised there
            outcome = (None, error)
        with self._changed:
            self._outcome = outcome
            self._changed.notify()

    def __iter__(self) -> "BlockingCallStream":
        return self

    def __next__(self) -> Dict[str, Any]:
        with self._changed:
            while True:
                if self._inbox:
                    return self._inbox.popleft()
                if self._outcome is not None:
                    answer, error = self._outcome
                    self._outcome = (None, None)
                    self._closed = True
                    if error is not None:
                        raise error
                    if answer is not None:
                        return answer
                    raise StopIteration
                if self._closed:
                    raise StopIteration
                if not self._changed.wait(self._idle_timeout):
                    self._closed = True
                    if self._forget is not None:
                        self._forget()
                    raise RpcTimeoutError(
                        f"MQTT call got neither progress nor an answer for {self._idle_timeout}s for topic '{self._topic}'",
                        self._idle_timeout,
                        self._topic,
                    )

    def close(self) -> None:
        """Stops iterating, and ends the call if it is still going."""
        with self._changed:
            going = self._outcome is None and not self._closed
            self._closed = True
            self._inbox.clear()
        if going and self._forget is not None:
            self._forget()

    def __del__(self) -> None:
        if not self._closed:
            self.close()

    def __enter__(self) -> "BlockingCallStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
