"""`MqttRpcClient`: the awaitable `call()` over MQTT that replaces the hand-written client.

The Rust core does the MQTT work, correlation, subscriptions and timeouts; this class only
adapts it to asyncio (the running loop, `async with`, cancellation)."""

from __future__ import annotations

import asyncio
import json
from types import TracebackType
from typing import Any, Dict, Optional, Type, Union

from . import _core
from .errors import PayloadError

Payload = Union[str, bytes, bytearray, Dict[str, Any]]

_get_running_loop = asyncio.get_running_loop
_CancelledError = asyncio.CancelledError


class MqttRpcClient:
    """A request/response client over one MQTT connection.

    ``await client.call(topic, payload)`` publishes the JSON object ``payload`` with a fresh
    ``request_id`` to ``topic`` and returns the device's reply from
    ``{topic}/response/{request_id}`` as a ``dict``. The first call to a topic subscribes
    ``{topic}/response/+`` once; later calls publish at once.

    Args:
        host, port: the broker.
        client_id: defaults to a unique id, so that replicas never kick each other off.
        protocol: ``"3.1.1"`` or ``"5"``. With 5, requests also carry the Response Topic
            and Correlation Data properties.
        qos: 0 or 1, for requests and reply subscriptions.
        keepalive: seconds between MQTT pings.
        username, password: broker credentials.
        reply_filter: one filter that covers every reply (for example
            ``"+/device/control/set/response/+"``), subscribed at connect; then no
            per-topic subscription is made.
        max_reply_subscriptions: idle per-topic reply filters beyond this are unsubscribed,
            least recently used first.
        max_in_flight: calls published and unanswered at once; further calls wait for a
            slot within their own timeout (and count in ``pending``).
        max_packet_size: the largest request or reply, in bytes.
        timeout: the default timeout of ``call()``, in seconds.
        connect_timeout: how long ``connect()`` may take, in seconds.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 1883,
        *,
        client_id: Optional[str] = None,
        protocol: str = "3.1.1",
        qos: int = 0,
        keepalive: float = 60,
        username: Optional[str] = None,
        password: Optional[str] = None,
        reply_filter: Optional[str] = None,
        max_reply_subscriptions: int = 1000,
        max_in_flight: int = 4096,
        max_packet_size: int = 1024 * 1024,
        timeout: float = 10,
        connect_timeout: float = 10,
    ) -> None:
        if not (isinstance(port, int) and 0 < port < 65536):
            raise ValueError(f"port must be a TCP port number (1-65535), not {port!r}")
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self._core = _core.CoreClient(
            host,
            port,
            client_id,
            str(protocol),
            qos,
            float(keepalive),
            username,
            password,
            reply_filter,
            max_reply_subscriptions,
            max_in_flight,
            max_packet_size,
            float(connect_timeout),
        )
        self._timeout = timeout
        self._closed = False

    async def connect(self) -> None:
        """Connects to the broker (and subscribes ``reply_filter``, if given).

        Raises:
            NotConnectedError: the broker could not be reached or refused the connection,
                within ``connect_timeout``.
        """
        await self._core.connect(_get_running_loop())

    async def close(self) -> None:
        """Fails the calls still pending with `ConnectionLostError`, disconnects, and releases
        the client's resources. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        running_loop = _get_running_loop()
        await self._core.close(running_loop)
        self._core.detach(running_loop)

    async def __aenter__(self) -> "MqttRpcClient":
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        await self.close()

    async def call(self, topic: str, payload: Payload, timeout: Optional[float] = None) -> Dict[str, Any]:
        """Publishes ``payload`` to ``topic`` and returns the device's reply.

        Args:
            topic: the request topic, for example ``"dev1/device/control/set"``.
            payload: a JSON object, as ``str``, ``bytes`` or ``dict``. A ``request_id``
                member is added to it.
            timeout: seconds to wait for the answer; defaults to the client's ``timeout``.

        Returns:
            The reply object as the device sent it (``request_id`` and ``result`` included).

        Raises:
            RpcTimeoutError: no answer in time (also a ``TimeoutError``).
            RemoteError: the device answered with an error object.
            PayloadError: bad payload or topic, raised before anything is published
                (also a ``ValueError``).
            NotConnectedError, ConnectionLostError: no connection (also ``ConnectionError``).
        """
        if timeout is None:
            timeout = self._timeout
        if isinstance(payload, dict):
            payload = _encode(payload)
        future, request_id = self._core.start_call(_get_running_loop(), topic, payload, timeout)
        try:
            return await future
        except _CancelledError:
            self._core.forget(request_id)
            raise

    @property
    def pending(self) -> int:
        """Calls not yet ended: waiting for a slot, for a SUBACK, or for their answer."""
        return self._core.pending

    @property
    def reply_subscriptions(self) -> int:
        """Reply filters held or being subscribed."""
        return self._core.reply_subscriptions

    @property
    def connected(self) -> bool:
        """Whether the MQTT connection is up."""
        return self._core.connected

    @property
    def client_id(self) -> str:
        """The MQTT client id of this client's connection."""
        return self._core.client_id

    def stats(self) -> Dict[str, int]:
        """Counters (calls started, succeeded, timed out, failed remotely, cancelled, failed;
        replies dropped as stray or malformed; reconnects) and gauges (pending, reply
        subscriptions)."""
        return self._core.stats()


def _encode(payload: Dict[str, Any]) -> str:
    # json.dumps with its default separators: the bytes the hand-written client sent.
    try:
        return json.dumps(payload)
    except (TypeError, ValueError) as error:
        raise PayloadError(f"the payload dict is not JSON-serialisable: {error}") from error
