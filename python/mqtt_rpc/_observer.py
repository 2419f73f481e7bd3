"""The seam where optional instrumentation attaches (`mqtt_rpc.otel` sets it): ``current``
is None unless something is instrumented, so a call that is not traced costs one module
attribute read and nothing is added to its request.

A client asks the observer for a span per call before publishing, sends the span's
``headers`` with the request (MQTT 5 user properties, or members of a 3.1.1 request's
JSON), and ends the span with the call's outcome. A `Responder` runs each handler inside
the observer's server span, made from the request's headers."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, ContextManager, Dict, List, Optional, Protocol, Tuple, Type

#: Name/value pairs a request carries beside its body (W3C trace context).
Headers = List[Tuple[str, str]]


class ClientSpan(Protocol):
    """One call, from before its request is published to its outcome."""

    #: What to send with the request; None sends nothing extra.
    headers: Optional[Headers]

    def sent(self, request_id: str) -> None:
        """The request went out with this id (a retry sends the same id again)."""

    def end(self, error: Optional[BaseException] = None) -> None:
        """The call ended: answered (``error`` None) or failed with ``error``."""

    def __enter__(self) -> "ClientSpan":
        """For a call that ends within a block: leaving it ends the span (with the
        exception that left it, if one did)."""

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None: ...


class ServerSpan(Protocol):
    """One handler run; current (entered) while the handler runs."""

    def failed(self, error: BaseException, code: int) -> None:
        """The handler raised ``error``; the caller is answered with error ``code``."""


@dataclass(frozen=True)
class Peer:
    """Who calls or serves: what a span says about the connection (its client id, empty
    when not yet known, and the broker's address)."""

    client_id: str
    host: str
    port: int


class Observer(Protocol):
    def client_span(self, operation: str, topic: str, peer: Peer) -> ClientSpan:
        """A span for a call about to be made (``operation``: ``call``, ``stream``,
        ``call_all`` or ``notify``)."""

    def server_span(
        self,
        topic_filter: str,
        topic: str,
        request: Dict[str, Any],
        user_properties: Optional[Headers],
        peer: Peer,
    ) -> ContextManager[ServerSpan]:
        """A span for one handler run, continuing the caller's trace from the request's
        user properties (MQTT 5) or its members (3.1.1)."""


#: The observer in use, or None (nothing is traced).
current: Optional[Observer] = None
