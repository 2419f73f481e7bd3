"""`SyncMqttRpcClient`: the same calls for code without an event loop (Flask or Django
views, scripts, worker threads). Each call blocks its thread, with the GIL released, until
the answer; many threads may share one client. It has the async client's options and
powers: retries, typed answers, batches, streams, scatter-gather, notifications and
discovery, through the same call steps (`pipeline`)."""

from __future__ import annotations

import threading
import uuid
from types import TracebackType
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Type, TypeVar, Union, overload

from . import _core, pipeline, services, typed
from ._base import ClientBase, url_keywords
from .client import Payload
from .config import records_given_arguments
from .context import bounded_timeout
from .errors import NotConnectedError
from .options import TLS, Limits, Reconnect, Replies
from .pipeline import Retry
from .presence import DeviceOf, Presence, PresenceSource
from .streams import BlockingCallStream, OnMessage

T = TypeVar("T")


class SyncMqttRpcClient(ClientBase):
    """A blocking MQTT RPC client. It takes the same arguments as `MqttRpcClient`
    (``on_connection_change`` excepted: without a loop, connection changes are only
    visible as ``connected``, and in the log), reads ``MQTT_RPC_URL`` the same way, and
    raises the same errors. A call on a client not yet connected (or closed) connects first.

        with SyncMqttRpcClient("localhost", 1883) as client:
            reply = client.call("dev1/device/control/set", {"action": "GET_HEALTH_CHECK"})
    """

    @records_given_arguments
    def __init__(
        self,
        host: Optional[str] = None,
        port: Optional[int] = None,
        *,
        hosts: Optional[Sequence[Tuple[str, int]]] = None,
        client_id: Optional[str] = None,
        protocol: str = "3.1.1",
        qos: int = 0,
        keepalive: float = 60,
        username: Optional[str] = None,
        password: Optional[str] = None,
        timeout: float = 10,
        connect_timeout: float = 10,
        session_expiry: Optional[float] = None,
        tls: Union[bool, TLS] = False,
        limits: Union[Limits, str, None] = None,
        reconnect: Optional[Reconnect] = None,
        replies: Union[Replies, str] = "topic",
        presence: Optional[Presence] = None,
        device_of: Optional[DeviceOf] = None,
        connections: int = 1,
        fail_fast: bool = False,
        cancel_on_abandon: bool = False,
        propagate_deadline: Optional[bool] = None,
        service_prefix: str = "mqtt-rpc/_srv",
        **deprecated: Any,
    ) -> None:
        if deprecated.get("on_connection_change") is not None:
            raise ValueError("on_connection_change needs an event loop: use MqttRpcClient")
        deprecated.pop("on_connection_change", None)
        if isinstance(presence, PresenceSource):
            raise ValueError(
                "a presence source's run() needs an event loop: use presence=\"reported\" and "
                "call report_presence() from your own source"
            )
        self._configure(locals())
        # Threads that find the client unconnected take turns here; one connects, and those
        # that waited meanwhile share its outcome (one CONNECT at the broker).
        self._connect_lock = threading.Lock()
        self._attempts = 0
        self._last_failure: Optional[BaseException] = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "SyncMqttRpcClient":
        """As `MqttRpcClient.from_url`."""
        return cls(**url_keywords(url, options))

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
                self._unused_core().connect_blocking()
            except BaseException as error:
                self._last_failure = error
                raise
            self._last_failure = None
            self._open = True

    def _opened(self) -> _core.CoreClient:
        if not self._open:
            self.connect()
        return self._core

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
        retry: Optional[Retry] = None,
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
        retry: Optional[Retry] = None,
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
        retry: Optional[Retry] = None,
        *,
        response_model: Any,
        wait_for_device: Optional[float] = None,
    ) -> Any: ...

    def call(
        self,
        topic: str,
        payload: Payload,
        timeout: Optional[float] = None,
        retry: Optional[Retry] = None,
        *,
        response_model: Any = None,
        wait_for_device: Optional[float] = None,
    ) -> Any:
        """As `MqttRpcClient.call`, blocking this thread (not others) until the answer;
        retries (`Retry`) pause this thread between attempts."""
        call = pipeline.prepare(
            topic, payload, timeout, self._timeout, self._device_of,
            response_model=response_model, wait_for_device=wait_for_device,
        )
        reply = pipeline.call_blocking(self._opened(), call, retry, self._peer)
        return reply if response_model is None else pipeline.finish(reply, response_model)

    def call_many(
        self,
        requests: Iterable[Tuple[str, Payload]],
        timeout: Optional[float] = None,
        return_exceptions: bool = False,
        *,
        response_model: Any = None,
    ) -> List[Any]:
        """As `MqttRpcClient.call_many`: every request checked, then all published at once,
        blocking this thread until each has its outcome; results in input order."""
        timeout = bounded_timeout(self._timeout if timeout is None else timeout, "a batch")
        batch = pipeline.batch(requests)
        if response_model is not None:
            typed.check_model(response_model)
        core = self._opened()
        devices = None if self._device_of is None else [pipeline.device(topic, self._device_of) or "" for topic, _ in batch]
        replies = pipeline.traced_blocking(
            self._peer, "call_many", "a batch", lambda headers: core.many_blocking(batch, timeout, return_exceptions, None, devices)
        )
        return pipeline.finish_many(replies, response_model, return_exceptions)

    def stream(
        self, topic: str, payload: Payload, timeout: Optional[float] = None, idle_timeout: Optional[float] = None
    ) -> BlockingCallStream:
        """As `MqttRpcClient.stream`: an iterator over the device's progress messages as
        they arrive and then its answer (the call runs on a thread of its own meanwhile).

            for message in client.stream("dev1/firmware/update", {"url": url}, timeout=600):
                print(message.get("progress", message.get("result")))
        """
        call = pipeline.prepare(topic, payload, timeout, self._timeout, None)
        device = pipeline.device(topic, self._device_of)
        core = self._opened()
        # Chosen here, so that a consumer that leaves early can end the call at once.
        request_id = str(uuid.uuid4())

        def run(on_message: OnMessage) -> Dict[str, Any]:
            answer: Dict[str, Any] = pipeline.traced_blocking(
                self._peer, "stream", topic,
                lambda headers: core.call_blocking(call.topic, call.body, call.timeout, headers, device, None, request_id, on_message),
            )
            return answer

        return BlockingCallStream(run, topic, idle_timeout=idle_timeout, forget=lambda: core.forget(request_id))

    def call_all(
        self, topic: str, payload: Payload, timeout: Optional[float] = None, max_replies: Optional[int] = None
    ) -> BlockingCallStream:
        """As `MqttRpcClient.call_all`: an iterator over every device's answer as it
        arrives, until ``timeout`` or ``max_replies``."""
        pipeline.check_max_replies(max_replies)
        call = pipeline.prepare(topic, payload, timeout, self._timeout, None)
        core = self._opened()

        def run(on_reply: OnMessage) -> None:
            pipeline.traced_blocking(
                self._peer, "call_all", topic,
                lambda headers: core.gather_blocking(call.topic, call.body, call.timeout, max_replies, headers, on_reply),
            )

        return BlockingCallStream(run, topic)

    def gather_all(
        self, topic: str, payload: Payload, timeout: Optional[float] = None, max_replies: Optional[int] = None
    ) -> List[Dict[str, Any]]:
        """As `MqttRpcClient.gather_all`: blocks this thread until the scatter-gather call
        ends (its deadline, or ``max_replies`` answers) and returns the answers."""
        pipeline.check_max_replies(max_replies)
        call = pipeline.prepare(topic, payload, timeout, self._timeout, None)
        core = self._opened()
        replies: List[Dict[str, Any]] = pipeline.traced_blocking(
            self._peer, "call_all", topic,
            lambda headers: core.gather_blocking(call.topic, call.body, call.timeout, max_replies, headers),
        )
        return replies

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
        topic, max_replies = services.control_request(self._settings["service_prefix"], verb, name, instance)
        return services.answers(self.gather_all(topic, {}, timeout, max_replies), verb)

    def notify(self, topic: str, payload: Payload) -> None:
        """As `MqttRpcClient.notify`: publishes without waiting for any answer."""
        body = typed.encode(payload)
        core = self._opened()
        pipeline.traced_blocking(self._peer, "notify", topic, lambda headers: core.notify(topic, body, headers))
