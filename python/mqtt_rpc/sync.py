"""`SyncMqttRpcClient`: the same calls for code without an event loop (Flask or Django
views, scripts, worker threads). Each call blocks its thread, with the GIL released, until
the answer; many threads may share one client."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Dict, List, Optional, Type

from .client import MqttRpcClient, Payload, _ClientState, _encode


class SyncMqttRpcClient(_ClientState):
    """A blocking MQTT RPC client. It takes the same arguments as `MqttRpcClient`
    (``on_connection_change`` excepted: without a loop, connection changes are only
    visible as ``connected``) and raises the same errors.

        with SyncMqttRpcClient("localhost", 1883) as client:
            reply = client.call("dev1/device/control/set", {"action": "GET_HEALTH_CHECK"})
    """

    def __init__(self, *args: Any, **options: Any) -> None:
        if options.get("on_connection_change") is not None:
            raise ValueError("on_connection_change needs an event loop: use MqttRpcClient")
        self._client = MqttRpcClient(*args, **options)
        self._core = self._client._core
        self._closed = False

    def connect(self) -> None:
        """Connects, blocking until the client is ready; raises as `MqttRpcClient.connect`."""
        self._core.connect_blocking()

    def close(self, grace: float = 2.0) -> None:
        """As `MqttRpcClient.close`: waits up to ``grace`` seconds for calls in flight."""
        if self._closed:
            return
        self._closed = True
        self._core.close_blocking(float(grace))

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

    def call(self, topic: str, payload: Payload, timeout: Optional[float] = None) -> Dict[str, Any]:
        """As `MqttRpcClient.call`, blocking this thread (not others) until the answer."""
        if timeout is None:
            timeout = self._client._timeout
        if isinstance(payload, dict):
            payload = _encode(payload)
        return self._core.call_blocking(topic, payload, timeout)

    def gather_all(
        self, topic: str, payload: Payload, timeout: Optional[float] = None, max_replies: Optional[int] = None
    ) -> List[Dict[str, Any]]:
        """As `MqttRpcClient.gather_all`: blocks this thread until the scatter-gather call
        ends (its deadline, or ``max_replies`` answers) and returns the answers."""
        if timeout is None:
            timeout = self._client._timeout
        if max_replies is not None and (not isinstance(max_replies, int) or max_replies < 1):
            raise ValueError(f"max_replies must be a positive integer or None, not {max_replies!r}")
        if isinstance(payload, dict):
            payload = _encode(payload)
        return self._core.gather_blocking(topic, payload, timeout, max_replies)

    def notify(self, topic: str, payload: Payload) -> None:
        """As `MqttRpcClient.notify`: publishes without waiting for any answer."""
        if isinstance(payload, dict):
            payload = _encode(payload)
        self._core.notify(topic, payload)

