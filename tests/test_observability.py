"""Tracing across the MQTT hop (mqtt_rpc.otel) and metrics (mqtt_rpc.metrics), read with
the OpenTelemetry SDK's in-memory exporters and prometheus_client's exposition, against a
real broker, the Python Responder, the Rust device and a raw paho-mqtt device."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mqtt_rpc import MqttRpcClient, RemoteError, Responder, RpcHandlerError, RpcTimeoutError, SyncMqttRpcClient
from mqtt_rpc.metrics import OpenTelemetryMetrics, PrometheusCollector
from mqtt_rpc.otel import MqttRpcInstrumentor
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice
from raw_device import RawDevice
from readme_snippet import run_readme_snippet

PROTOCOLS = ["3.1.1", "5"]


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = MqttRpcInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield exporter
    finally:
        instrumentor.uninstrument()


def by_kind(exporter: InMemorySpanExporter, kind: SpanKind) -> List[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.kind == kind]


def only(spans: List[ReadableSpan]) -> ReadableSpan:
    assert len(spans) == 1, [span.name for span in spans]
    return spans[0]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def traceparent_of(span: ReadableSpan) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_call_and_its_handler_share_one_trace(
    broker: MosquittoBroker, spans: InMemorySpanExporter, protocol: str
) -> None:
    seen: List[Dict[str, Any]] = []
    responder = Responder(broker.host, broker.port, protocol=protocol)

    @responder.handle("+/trace/set")
    async def handle(request: Dict[str, Any]) -> Dict[str, Any]:
        seen.append(request)
        return {"ok": True}

    topic = f"{unique('dev')}/trace/set"
    async with responder, MqttRpcClient(broker.host, broker.port, protocol=protocol) as client:
        reply = await client.call(topic, {"a": 1})

    caller = only(by_kind(spans, SpanKind.CLIENT))
    handler = only(by_kind(spans, SpanKind.SERVER))
    assert handler.context.trace_id == caller.context.trace_id
    assert handler.parent is not None and handler.parent.span_id == caller.context.span_id
    assert caller.name == "call" and handler.name == "process +/trace/set"
    assert caller.attributes["messaging.system"] == "mqtt"
    assert caller.attributes["messaging.destination.name"] == topic
    assert caller.attributes["messaging.message.conversation_id"] == reply["request_id"]
    assert handler.attributes["messaging.message.conversation_id"] == reply["request_id"]
    assert handler.attributes["messaging.destination.template"] == "+/trace/set"
    assert caller.status.status_code == handler.status.status_code == StatusCode.UNSET
    # MQTT 3.1.1 carries the context in the request's JSON; MQTT 5 in user properties only.
    if protocol == "3.1.1":
        assert seen[0]["traceparent"] == traceparent_of(caller)
    else:
        assert "traceparent" not in seen[0]


@pytest.mark.parametrize(
    "raw_device", [("5", "+/raw5/set"), ("3.1.1", "+/raw311/set")], indirect=True, ids=["5", "3.1.1"]
)
async def test_the_context_reaches_a_device_in_another_client_library(
    broker: MosquittoBroker, spans: InMemorySpanExporter, raw_device: RawDevice
) -> None:
    protocol = raw_device.protocol
    topic = f"{unique('dev')}/{'raw5' if protocol == '5' else 'raw311'}/set"
    async with MqttRpcClient(broker.host, broker.port, protocol=protocol) as client:
        await client.call(topic, {"a": 1})
    request, user_properties, _ = await raw_device.next_request()
    caller = only(by_kind(spans, SpanKind.CLIENT))
    if protocol == "5":
        assert ("traceparent", traceparent_of(caller)) in user_properties
        assert "traceparent" not in request
    else:
        assert request["traceparent"] == traceparent_of(caller) and request["a"] == 1
        assert user_properties == []


@pytest.mark.parametrize(
    "raw_device", [("5", "+/plain5/set"), ("3.1.1", "+/plain311/set")], indirect=True, ids=["5", "3.1.1"]
)
async def test_nothing_is_added_to_requests_when_not_instrumented(
    broker: MosquittoBroker, raw_device: RawDevice
) -> None:
    protocol = raw_device.protocol
    topic = f"{unique('dev')}/{'plain5' if protocol == '5' else 'plain311'}/set"
    async with MqttRpcClient(broker.host, broker.port, protocol=protocol) as client:
        reply = await client.call(topic, {"a": 1})
    request, user_properties, _ = await raw_device.next_request()
    assert request == {"a": 1, "request_id": reply["request_id"]}
    # No trace context: on MQTT 5 the only header is the caller's deadline.
    assert [name for name, _ in user_properties] == (["timeout_ms"] if protocol == "5" else [])


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_failed_calls_and_handlers_record_their_errors(
    broker: MosquittoBroker, spans: InMemorySpanExporter, silent_topic: str, protocol: str
) -> None:
    responder = Responder(broker.host, broker.port, protocol=protocol)

    @responder.handle("+/fail/set")
    async def fail(request: Dict[str, Any]) -> None:
        raise RpcHandlerError(4001, "door jammed")

    async with responder, MqttRpcClient(broker.host, broker.port, protocol=protocol) as client:
        with pytest.raises(RemoteError):
            await client.call(f"{unique('dev')}/fail/set", {})
        with pytest.raises(RpcTimeoutError):
            await client.call(silent_topic, {}, timeout=0.2)

    remote, timed_out = sorted(by_kind(spans, SpanKind.CLIENT), key=lambda s: s.start_time or 0)
    handler = only(by_kind(spans, SpanKind.SERVER))
    assert remote.status.status_code == StatusCode.ERROR
    assert remote.attributes["error.type"] == "RemoteError"
    assert remote.attributes["rpc.jsonrpc.error_code"] == 4001
    assert handler.status.status_code == StatusCode.ERROR
    assert handler.attributes["rpc.jsonrpc.error_code"] == 4001
    assert [event.name for event in handler.events] == ["exception"]
    assert timed_out.status.status_code == StatusCode.ERROR
    assert timed_out.attributes["error.type"] == "RpcTimeoutError"
    assert [event.name for event in timed_out.events] == ["exception"]


async def test_calls_a_handler_makes_continue_its_trace(
    broker: MosquittoBroker, spans: InMemorySpanExporter, seed_device: ResponderDevice
) -> None:
    responder = Responder(broker.host, broker.port, protocol="5")
    inner = MqttRpcClient(broker.host, broker.port)

    @responder.handle("+/outer/set")
    async def outer(request: Dict[str, Any]) -> Any:
        return (await inner.call(f"{unique('inner')}/device/control/set", {}))["result"]

    @responder.handle("+/blocking/set")
    def blocking(request: Dict[str, Any]) -> Any:
        # A plain function runs in a worker thread, with its run's context.
        with SyncMqttRpcClient(broker.host, broker.port) as sync:
            return sync.call(f"{unique('inner')}/device/control/set", {})["result"]

    async with responder, inner, MqttRpcClient(broker.host, broker.port, protocol="5") as client:
        await client.call(f"{unique('dev')}/outer/set", {})
        await client.call(f"{unique('dev')}/blocking/set", {})

    finished = spans.get_finished_spans()
    by_id = {span.context.span_id: span for span in finished}
    for handler in by_kind(spans, SpanKind.SERVER):
        nested = [s for s in finished if s.parent is not None and s.parent.span_id == handler.context.span_id]
        assert [s.kind for s in nested] == [SpanKind.CLIENT], handler.name
        assert nested[0].context.trace_id == handler.context.trace_id
        assert handler.parent is not None and by_id[handler.parent.span_id].kind == SpanKind.CLIENT


async def test_every_kind_of_call_gets_its_span(
    broker: MosquittoBroker, spans: InMemorySpanExporter, seed_device: ResponderDevice
) -> None:
    run = unique("kinds")
    async with MqttRpcClient(broker.host, broker.port) as client:
        replies = await client.call_many([(f"{run}-{i}/device/control/set", {}) for i in range(3)])
        async for _ in client.stream(f"{run}-s/device/control/set", {}):
            pass
        await client.gather_all(f"{run}-g/device/control/set", {}, timeout=0.3)
        await client.notify(f"{run}-n/device/control/set", {})
    with SyncMqttRpcClient(broker.host, broker.port) as sync:
        sync_reply = sync.call(f"{run}-sync/device/control/set", {})
    names = sorted(span.name for span in by_kind(spans, SpanKind.CLIENT))
    assert names == sorted(["call"] * 4 + ["stream", "call_all", "notify"])
    ids = {span.attributes.get("messaging.message.conversation_id") for span in by_kind(spans, SpanKind.CLIENT)}
    assert {reply["request_id"] for reply in replies} | {sync_reply["request_id"]} <= ids


def scrape(*sources: Any) -> Dict[str, Dict[Tuple[Tuple[str, str], ...], float]]:
    """The collector rendered and parsed back as Prometheus reads it: sample name →
    labels → value."""
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(*sources, buckets=[0.001, 10.0]))
    samples: Dict[str, Dict[Tuple[Tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def scripted_session(broker: MosquittoBroker, silent_topic: str) -> Tuple[Any, Responder]:
    """3 answers, 1 error answer, 1 timeout, 1 not-a-JSON-object request dropped."""
    responder = Responder(broker.host, broker.port, client_id=unique("metrics-responder"))

    @responder.handle("+/metrics/set")
    async def handle(request: Dict[str, Any]) -> Dict[str, Any]:
        if request.get("fail"):
            raise RpcHandlerError(7, "no")
        return {"ok": True}

    await responder.start()
    client = MqttRpcClient(broker.host, broker.port, client_id=unique("metrics-client"))
    await client.connect()
    for _ in range(3):
        await client.call(f"{unique('dev')}/metrics/set", {})
    with pytest.raises(RemoteError):
        await client.call(f"{unique('dev')}/metrics/set", {"fail": True})
    with pytest.raises(RpcTimeoutError):
        await client.call(silent_topic, {}, timeout=0.1)
    return client, responder


async def test_a_prometheus_scrape_shows_exact_counts(broker: MosquittoBroker, silent_topic: str) -> None:
    client, responder = await scripted_session(broker, silent_topic)
    try:
        samples = scrape(client, responder)
    finally:
        await client.close()
        await responder.close()
    me = (("client_id", client.client_id),)

    def calls(outcome: str) -> float:
        return samples["mqtt_rpc_client_calls_total"][tuple(sorted(me + (("outcome", outcome),)))]

    assert samples["mqtt_rpc_client_calls_started_total"][me] == 5
    assert (calls("succeeded"), calls("failed_remotely"), calls("timed_out"), calls("cancelled")) == (3, 1, 1, 0)
    # Answered calls, error answers included, are timed; the timeout is not.
    assert samples["mqtt_rpc_client_call_duration_seconds_count"][me] == 4
    assert samples["mqtt_rpc_client_call_duration_seconds_bucket"][me + (("le", "+Inf"),)] == 4
    assert samples["mqtt_rpc_client_call_duration_seconds_bucket"][me + (("le", "10.0"),)] == 4
    assert 0 < samples["mqtt_rpc_client_call_duration_seconds_sum"][me] < 40
    assert samples["mqtt_rpc_client_pending"][me] == 0
    assert samples["mqtt_rpc_client_connected"][me] == 1

    handler = (("client_id", responder.client_id or ""), ("filter", "+/metrics/set"))
    assert samples["mqtt_rpc_responder_requests_total"][handler[:1]] == 4
    assert samples["mqtt_rpc_handler_requests_total"][handler] == 4
    assert samples["mqtt_rpc_handler_errors_total"][handler] == 1
    assert samples["mqtt_rpc_handler_duration_seconds_count"][handler] == 4
    assert samples["mqtt_rpc_handler_duration_seconds_bucket"][handler + (("le", "+Inf"),)] == 4
    assert responder.stats()["handlers"]["+/metrics/set"]["last_error"] == "7: no"


async def test_opentelemetry_metrics_read_the_same_counts(broker: MosquittoBroker, silent_topic: str) -> None:
    client, responder = await scripted_session(broker, silent_topic)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    OpenTelemetryMetrics(client, responder, meter_provider=provider)
    try:
        data = reader.get_metrics_data()
    finally:
        await client.close()
        await responder.close()
    points: Dict[str, List[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = list(metric.data.data_points)
    succeeded = [p for p in points["mqtt_rpc.client.calls"] if p.attributes["outcome"] == "succeeded"]
    assert [p.value for p in succeeded] == [3]
    assert [p.value for p in points["mqtt_rpc.client.call_duration.count"]] == [4]
    assert [p.value for p in points["mqtt_rpc.handler.errors"]] == [1]
    assert {p.attributes["quantile"] for p in points["mqtt_rpc.client.call.duration.quantile"]} == {"0.50", "0.90", "0.99"}


def test_one_collector_exports_several_sources_labelled_by_client_id() -> None:
    first = MqttRpcClient("127.0.0.1", 1883, client_id="web-1")
    second = SyncMqttRpcClient("127.0.0.1", 1883, client_id="web-2")
    collector = PrometheusCollector(first)
    collector.add(second)
    collector.add(second)  # once only
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'mqtt_rpc_client_calls_started_total{client_id="web-1"} 0.0' in text
    assert 'mqtt_rpc_client_calls_started_total{client_id="web-2"} 0.0' in text
    collector.remove(first)
    assert 'client_id="web-1"' not in generate_latest(registry).decode()
    with pytest.raises(ValueError, match="ascending"):
        PrometheusCollector(buckets=[1.0, 0.5])


@pytest.mark.parametrize("member", [12345, "not-a-traceparent", ["00-x"], None])
async def test_a_bad_trace_context_from_the_network_starts_a_new_trace(
    broker: MosquittoBroker, spans: InMemorySpanExporter, member: Any
) -> None:
    responder = Responder(broker.host, broker.port)

    @responder.handle("+/badctx/set")
    async def handle(request: Dict[str, Any]) -> Any:
        return {"ok": True}

    async with responder, MqttRpcClient(broker.host, broker.port) as client:
        # Sent past the instrumentation, as another library's client would send it.
        body = json.dumps({"traceparent": member})
        loop = asyncio.get_running_loop()
        future, _ = client._core.start_call(loop, f"{unique('dev')}/badctx/set", body, 10.0)
        assert (await future)["result"] == {"ok": True}
    handler = only(by_kind(spans, SpanKind.SERVER))
    assert handler.parent is None


def test_a_repeated_failure_is_logged_once_then_summarised_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from mqtt_rpc._logs import MAX_KINDS, LogOncePerKind

    now = [0.0]
    logs = LogOncePerKind(logging.getLogger("mqtt_rpc"), interval=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="mqtt_rpc"):
        for _ in range(1000):
            logs.log("handler-a", logging.ERROR, "handler %s failed", "a")
        logs.log("handler-b", logging.ERROR, "handler %s failed", "b")
        now[0] = 61.0
        logs.log("handler-a", logging.ERROR, "handler %s failed", "a")
        # Made-up kinds beyond the bound share one entry: the table stays bounded.
        for i in range(MAX_KINDS + 10):
            logs.log(f"kind-{i}", logging.WARNING, "flood")
    messages = [record.getMessage() for record in caplog.records]
    assert messages[:3] == [
        "handler a failed",
        "handler b failed",
        "handler a failed (999 more like it since 60 s ago, not logged)",
    ]
    assert len(logs._kinds) == MAX_KINDS
    assert messages[3:] == ["flood"] * (MAX_KINDS - 2)


async def test_a_handler_that_always_fails_logs_its_traceback_once(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    responder = Responder(broker.host, broker.port)

    @responder.handle("+/crash/set")
    async def crash(request: Dict[str, Any]) -> None:
        raise ValueError("bug")

    with caplog.at_level(logging.WARNING, logger="mqtt_rpc"):
        async with responder, MqttRpcClient(broker.host, broker.port) as client:
            replies = await client.call_many(
                [(f"{unique('dev')}/crash/set", {}) for _ in range(20)], return_exceptions=True
            )
    assert all(isinstance(reply, RemoteError) and reply.code == -32603 for reply in replies)
    failures = [record for record in caplog.records if "crash failed" in record.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
    assert responder.stats()["handlers"]["+/crash/set"]["errors"] == 20


def test_the_tracing_snippet_of_the_readme_runs(broker: MosquittoBroker, tmp_path: Any) -> None:
    result = run_readme_snippet("import asyncio\n\nfrom opentelemetry", broker, tmp_path)
    assert '"name": "process +/device/control/set"' in result.stdout and '"name": "call"' in result.stdout
    assert 'outcome="succeeded"} 1.0' in result.stdout
    assert 'mqtt_rpc_handler_requests_total{client_id=' in result.stdout
