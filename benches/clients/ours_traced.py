"""Benchmark client "ours-traced": "ours" with tracing on (`MqttRpcInstrumentor`), every
span made, given trace context, and handed to the OpenTelemetry SDK's batch processor,
whose exporter drops it: what tracing costs a call, without the cost of a collector."""

from __future__ import annotations

import argparse
from typing import Sequence

from harness import run
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from mqtt_rpc import MqttRpcClient
from mqtt_rpc.otel import MqttRpcInstrumentor


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


async def connect(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    MqttRpcInstrumentor().instrument(tracer_provider=provider)
    client = MqttRpcClient("127.0.0.1", args.port, qos=args.qos, max_in_flight=4096)
    await client.connect()
    return client.call, client.close


if __name__ == "__main__":
    run(connect)
