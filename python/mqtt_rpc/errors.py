"""The exceptions of mqtt-rpc: one tree under `MqttRpcError`, each also a builtin that a
Python programmer already catches (`TimeoutError`, `ConnectionError`, `ValueError`)."""

from __future__ import annotations

from typing import Any


class MqttRpcError(Exception):
    """Base class of every error raised by mqtt-rpc."""


class RpcTimeoutError(MqttRpcError, TimeoutError):
    """No answer arrived within the call's timeout.

    The message is the one the hand-written client raised:
    ``MQTT call timed out after {timeout}s for topic '{topic}'``.
    """

    def __init__(self, message: str, timeout: Any = None, topic: str | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.topic = topic


class RemoteError(MqttRpcError):
    """The device answered with an error object: ``{"error": {"code", "message", "data"}}``."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"remote error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.code, self.message, self.data))


class NotConnectedError(MqttRpcError, ConnectionError):
    """The client is not connected: `connect()` was not called, failed, or `close()` was."""


class TlsError(NotConnectedError):
    """TLS could not be set up (a missing or unreadable file, no key, a key that does not
    match its certificate) or its handshake failed (an unknown CA, a certificate the broker
    rejects). Raised by `connect()`; the message names the cause."""


class BrokerRefusedError(NotConnectedError):
    """The broker refused the connection: bad username or password, not authorised, or
    another CONNACK refusal (named in the message)."""


class ConnectionLostError(MqttRpcError, ConnectionError):
    """The connection (or the client) went away while the call was waiting."""


class SubscriptionRefusedError(MqttRpcError):
    """The broker refused a subscription the client needs: a reply filter (a call's answer
    could never arrive), or at `connect()` the ``presence`` source's filter. The message
    names the filter."""


class NoRespondersError(MqttRpcError, LookupError):
    """Nobody is subscribed to the request topic: with MQTT 5 and QoS 1 the broker says so
    in its PUBACK (reason 16, "No matching subscribers") and the call ends at once instead
    of waiting out its timeout. Also a ``LookupError``: the device was not found."""

    def __init__(self, message: str, topic: str | None = None) -> None:
        super().__init__(message)
        self.topic = topic


class DeviceOfflineError(NoRespondersError):
    """The client's presence source says the device is offline, so the request was not
    sent (with ``wait_for_device``: the device did not come online while the call waited).
    ``device`` is its id, ``since`` when it went offline (Unix time in seconds, if the
    source said) and ``reason`` why (AWS's ``disconnectReason``, if it gave one). A
    `NoRespondersError`, so code that catches that (or ``LookupError``) keeps working."""

    def __init__(
        self,
        message: str,
        topic: str | None = None,
        device: str | None = None,
        since: float | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message, topic)
        self.device = device
        self.since = since
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.topic, self.device, self.since, self.reason))


class PublishRejectedError(MqttRpcError):
    """The broker refused the request (MQTT 5 PUBACK with a failing reason code, such as
    135 "Not authorized" or 151 "Quota exceeded"): ``reason_code`` and ``reason`` say which."""

    def __init__(self, message: str, topic: str | None = None, reason_code: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.topic = topic
        self.reason_code = reason_code
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.topic, self.reason_code, self.reason))


class PayloadError(MqttRpcError, ValueError):
    """The request was refused before anything was sent: the payload is not a JSON object,
    is too large, or the topic has wildcards or empty levels."""


class ReplyValidationError(MqttRpcError, ValueError):
    """The device's answer does not fit the ``response_model`` of the call. ``reply`` is the
    answer as it came (a ``dict``); ``errors`` is pydantic's list of what failed."""

    def __init__(self, message: str, reply: Any = None, errors: Any = None) -> None:
        super().__init__(message)
        self.reply = reply
        self.errors = errors if errors is not None else []

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.reply, self.errors))


__all__ = [
    "MqttRpcError",
    "RpcTimeoutError",
    "RemoteError",
    "NotConnectedError",
    "TlsError",
    "BrokerRefusedError",
    "ConnectionLostError",
    "SubscriptionRefusedError",
    "NoRespondersError",
    "DeviceOfflineError",
    "PublishRejectedError",
    "PayloadError",
    "ReplyValidationError",
]
