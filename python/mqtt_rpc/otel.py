"""OpenTelemetry traces across the MQTT hop: a CLIENT span per call, W3C trace context
carried in the request, and a SERVER span per handler run that continues the caller's
trace. Needs the ``otel`` extra (``pip install 'mqtt-rpc[otel]'``).

    from mqtt_rpc.otel import MqttRpcInstrumentor

    MqttRpcInstrumentor().instrument()      # tracer_provider=... to use another provider

Every `MqttRpcClient`, `SyncMqttRpcClient` and `Responder` of the process is traced from
then on, until ``uninstrument()``. The context goes out as MQTT 5 user properties
(``traceparent``, and ``tracestate``/``baggage`` when set) or, as MQTT 3.1.1 has no
properties, as members of the request's JSON; a `Responder` reads either. Spans follow
OpenTelemetry's messaging conventions: ``messaging.system`` = ``mqtt``, the request topic
as ``messaging.destination.name`` (a handler's filter as ``messaging.destination.template``),
the request id as ``messaging.message.conversation_id``; a failed call records its
exception, sets the span's status to ERROR and its ``error.type`` (and, for a device's
error answer, ``rpc.jsonrpc.error_code``).

Span names are low-cardinality, as the conventions ask: the operation (``call``,
``stream``, ``call_all``, ``notify``) for a client span, since request topics name
devices; ``process {filter}`` for a handler's."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Collection, Dict, List, Mapping, Optional, Type

from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]
from opentelemetry.propagate import get_global_textmap
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from . import _observer
from ._core import __version__
from ._observer import Headers, Peer
from .errors import RemoteError

__all__ = ["MqttRpcInstrumentor"]

_SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"


class MqttRpcInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Traces mqtt-rpc calls and handlers. ``instrument(tracer_provider=None,
    propagator=None)``: the provider (default: the global one) and the propagator that
    writes and reads the context (default: the global one, W3C trace context and baggage).
    It is also found by ``opentelemetry-instrument`` through its entry point."""

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("mqtt-rpc",)

    def _instrument(self, **kwargs: Any) -> None:
        tracer = trace.get_tracer(__name__, __version__, kwargs.get("tracer_provider"), schema_url=_SCHEMA_URL)
        _observer.current = _Tracing(tracer, kwargs.get("propagator"))

    def _uninstrument(self, **kwargs: Any) -> None:
        _observer.current = None


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads trace context from user properties or request members. Only text counts: a
    member of another type, from a careless or hostile sender, reads as absent."""

    def get(self, carrier: Mapping[str, Any], key: str) -> Optional[List[str]]:
        value = carrier.get(key)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Mapping[str, Any]) -> List[str]:
        return [key for key, value in carrier.items() if isinstance(value, str)]


_getter = _HeaderGetter()


class _Tracing:
    """The observer `mqtt_rpc._observer.current` holds while instrumented."""

    def __init__(self, tracer: Tracer, propagator: Optional[TextMapPropagator]) -> None:
        self._tracer = tracer
        self._propagator = propagator

    def _textmap(self) -> TextMapPropagator:
        return self._propagator if self._propagator is not None else get_global_textmap()

    def client_span(self, operation: str, topic: str, peer: Peer) -> "_ClientSpan":
        attributes = _attributes(operation, topic, peer)
        span = self._tracer.start_span(operation, kind=SpanKind.CLIENT, attributes=attributes)
        carrier: Dict[str, str] = {}
        self._textmap().inject(carrier, context=trace.set_span_in_context(span))
        return _ClientSpan(span, list(carrier.items()) or None)

    def server_span(
        self,
        topic_filter: str,
        topic: str,
        request: Dict[str, Any],
        user_properties: Optional[Headers],
        peer: Peer,
    ) -> "_ServerSpan":
        # MQTT 5 carries the context in user properties; 3.1.1 in the request's members.
        carrier: Mapping[str, Any] = request
        if user_properties and any(name == "traceparent" for name, _ in user_properties):
            carrier = dict(user_properties)
        parent = self._textmap().extract(carrier, getter=_getter)
        attributes = _attributes("process", topic, peer)
        attributes["messaging.destination.template"] = topic_filter
        request_id = request.get("request_id")
        if isinstance(request_id, str):
            attributes["messaging.message.conversation_id"] = request_id
        span = self._tracer.start_span(
            f"process {topic_filter}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        )
        return _ServerSpan(span)


def _attributes(operation: str, topic: str, peer: Peer) -> Dict[str, Any]:
    attributes: Dict[str, Any] = {
        "messaging.system": "mqtt",
        "messaging.operation.name": operation,
        "messaging.destination.name": topic,
        "server.address": peer.host,
        "server.port": peer.port,
    }
    if peer.client_id:
        attributes["messaging.client.id"] = peer.client_id
    return attributes


def _record_failure(span: Span, error: BaseException, code: Optional[int]) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.set_attribute("error.type", type(error).__qualname__)
    if code is not None:
        span.set_attribute("rpc.jsonrpc.error_code", code)


class _ClientSpan:
    __slots__ = ("_span", "headers")

    def __init__(self, span: Span, headers: Optional[Headers]) -> None:
        self._span = span
        self.headers = headers

    def sent(self, request_id: str) -> None:
        self._span.set_attribute("messaging.message.conversation_id", request_id)

    def end(self, error: Optional[BaseException] = None) -> None:
        if error is not None:
            _record_failure(self._span, error, error.code if isinstance(error, RemoteError) else None)
        self._span.end()

    def __enter__(self) -> "_ClientSpan":
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.end(exc)


class _ServerSpan:
    """The span of one handler run, current while it runs (``with``)."""

    def __init__(self, span: Span) -> None:
        self._span = span
        self._use = trace.use_span(span, end_on_exit=True)

    def failed(self, error: BaseException, code: int) -> None:
        _record_failure(self._span, error, code)

    def __enter__(self) -> "_ServerSpan":
        self._use.__enter__()
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self._use.__exit__(exc_type, exc, tb)
