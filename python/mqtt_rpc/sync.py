"""`SyncMqttRpcClient`: the same calls for code without an event loop (Flask or Django
views, scripts, worker threads). Each call blocks its thread, with the GIL released, until
the answer; many threads may share one client."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any, Callable, Dict, List, Optional, Type, TypeVar, overload

from . import _observer, services, typed
from ._core import CoreClient
from ._observer import Headers
from .client import MqttRpcClient, Payload, _ClientState
from .context import bounded_timeout
from .errors import NotConnectedError
from .presence import PresenceSource

T = TypeVar("T")
R = TypeVar("R")


class SyncMqttRpcClient(_ClientState):
    """A blocking MQTT RPC client. It takes the same arguments as `MqttRpcClient`
    (``on_connection_change`` excepted: without a loop, connection changes are only
    visible as ``connected``), reads ``MQTT_RPC_URL`` the same way, and raises the same
    errors. A call on a client not yet connected (or closed) connects first.

        with SyncMqttRpcClient("localhost", 1883) as client:
            reply = client.call("dev1/device/control/set", {"action": "GET_HEALTH_CHECK"})
    """

    def __init__(self, *args: Any, **options: Any) -> None:
        if options.get("on_connection_change") is not None:
            raise ValueError("on_connection_change needs an event loop: use MqttRpcClient")
        if isinstance(options.get("presence"), PresenceSource):
            raise ValueError(
                "a presence source's run() needs an event loop: use presence=\"reported\" and "
                "call report_presence() from your own source"
            )
        self._client = MqttRpcClient(*args, **options)
        self._open = False
        self._closing = False
        # Threads that find the client unconnected take turns here; one connects, and those
        # that waited meanwhile share its outcome (one CONNECT at the broker).
        self._connect_lock = threading.Lock()
        self._attempts = 0
        self._last_failure: Optional[BaseException] = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "SyncMqttRpcClient":
        """As `MqttRpcClient.from_url`."""
        from . import config

        return cls(**config.url_arguments(url, config.CLIENT_OPTIONS, options))

    @property
    def _core(self) -> CoreClient:  # type: ignore[override]
        return self._client._core

    @property
    def _presence_source(self) -> Optional[Any]:  # type: ignore[override]
        return self._client._presence_source

    def __repr__(self) -> str:
        state = "connected" if self._open else "not connected"
        return f"<{type(self).__name__} {self._client._address} client_id={self.client_id!r} {state}>"

    def connect(self) -> None:
        """Connects, blocking until the client is ready (nothing to do when it is); raises
        as `MqttRpcClient.connect`."""
        if self._open:
            return
        if self._closing:
            raise NotConnectedError("the client is closing: wait for close() to end before using it again")
        seen = self._attempts
        with self._connect_lock:
            if self._open:
                return
            if self._attempts != seen and self._last_failure is not None:
                raise self._last_failure  # the attempt this thread waited for failed
            self._attempts += 1
            try:
                self._client._unused_core().connect_blocking()
            except BaseException as error:
                self._last_failure = error
                raise
            self._last_failure = None
            self._open = True

    def close(self, grace: float = 2.0) -> None:
        """As `MqttRpcClient.close`: waits up to ``grace`` seconds for calls in flight; a
        later call connects again."""
        with self._connect_lock:
            if not self._open:
                return
            self._open = False
            self._closing = True
        try:
            self._core.close_blocking(float(grace))
        finally:
            self._closing = False

    def __enter__(self) -> "SyncMqttRpcClient":
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    @overload
    def call(
        self,
        topic: str,
        payload: Payload,
        timeout: Optional[float] = None,
        *,
        response_model: None = None,
        wait_for_device: Optional[float] = None,
    ) -> Dict[str, Any]: ...

    @overload
    def call(
        self,
        topic: str,
        payload: Payload,
        timeout: Optional[float] = None,
        *,
        response_model: Type[T],
        wait_for_device: Optional[float] = None,
    ) -> T: ...

    @overload
    def call(
        self,
        topic: str,
        payload: Payload,
        timeout: Optional[float] = None,
        *,
        response_model: Any,
        wait_for_device: Optional[float] = None,
    ) -> Any: ...

    def call(
        self,
        topic: str,
        payload: Payload,
        timeout: Optional[float] = None,
        *,
        response_model: Any = None,
        wait_for_device: Optional[float] = None,
    ) -> Any:
        """As `MqttRpcClient.call`, blocking this thread (not others) until the answer."""
        timeout = bounded_timeout(self._client._timeout if timeout is None else timeout, topic)
        body = typed.encode(payload)
        if response_model is not None:
            typed.check_model(response_model)
        aim = self._client._aim(topic, wait_for_device)
        if not self._open:
            self.connect()
        observer = _observer.current
        if observer is None:
            reply: Dict[str, Any] = self._core.call_blocking(topic, body, timeout, None, *aim)
        else:
            reply = self._traced(
                "call", topic, lambda headers: self._core.call_blocking(topic, body, timeout, headers, *aim)
            )
        if response_model is None:
            return reply
        return typed.validate(reply, response_model)

    def gather_all(
        self, topic: str, payload: Payload, timeout: Optional[float] = None, max_replies: Optional[int] = None
    ) -> List[Dict[str, Any]]:
        """As `MqttRpcClient.gather_all`: blocks this thread until the scatter-gather call
        ends (its deadline, or ``max_replies`` answers) and returns the answers."""
        timeout = bounded_timeout(self._client._timeout if timeout is None else timeout, topic)
        if max_replies is not None and (not isinstance(max_replies, int) or max_replies < 1):
            raise ValueError(f"max_replies must be a positive integer or None, not {max_replies!r}")
        body = typed.encode(payload)
        if not self._open:
            self.connect()
        if _observer.current is None:
            return self._core.gather_blocking(topic, body, timeout, max_replies)
        return self._traced(
            "call_all", topic, lambda headers: self._core.gather_blocking(topic, body, timeout, max_replies, headers)
        )

    def discover(
        self, name: Optional[str] = None, timeout: float = 1.0, *, instance: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        """As `MqttRpcClient.discover`, blocking this thread."""
        return self._control("INFO", name, instance, timeout)

    def ping(
        self, name: Optional[str] = None, timeout: float = 1.0, *, instance: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        """As `MqttRpcClient.ping`, blocking this thread."""
        return self._control("PING", name, instance, timeout)

    def service_stats(
        self, name: Optional[str] = None, timeout: float = 1.0, *, instance: Optional[str] = None
    ) -> List[Dict[str, Any]]:
        """As `MqttRpcClient.service_stats`, blocking this thread."""
        return self._control("STATS", name, instance, timeout)

    def _control(self, verb: str, name: Optional[str], instance: Optional[str], timeout: float) -> List[Dict[str, Any]]:
        topic, max_replies = services.control_request(self._client._settings["service_prefix"], verb, name, instance)
        return services.answers(self.gather_all(topic, {}, timeout, max_replies), verb)

    def notify(self, topic: str, payload: Payload) -> None:
        """As `MqttRpcClient.notify`: publishes without waiting for any answer."""
        body = typed.encode(payload)
        if not self._open:
            self.connect()
        if _observer.current is None:
            self._core.notify(topic, body)
        else:
            self._traced("notify", topic, lambda headers: self._core.notify(topic, body, headers))

    def _traced(self, operation: str, topic: str, send: Callable[[Optional[Headers]], R]) -> R:
        """``send(headers)`` inside a client span (the blocking core calls give no request
        id back before they end: the span has none)."""
        observer = _observer.current
        assert observer is not None
        with observer.client_span(operation, topic, self._client._peer) as span:
            outcome = send(span.headers)
            if isinstance(outcome, dict) and isinstance(outcome.get("request_id"), str):
                span.sent(outcome["request_id"])  # the answer names the request it answers
            return outcome
