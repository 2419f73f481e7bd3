"""The FastAPI example service (examples/fastapi_service) against a real Mosquitto and a
simulated device: each outcome maps to its HTTP status and JSON body."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import httpx
import pytest

from mqtt_rpc.testing import MosquittoBroker, SimulatedDevice

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fastapi_service" / "app.py"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("fastapi_service_app", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example_broker() -> Iterator[MosquittoBroker]:
    # Its own broker: the suite's Rust test device also answers */device/control/set.
    with MosquittoBroker.start() as broker:
        yield broker


@pytest.fixture
async def device(example_broker: MosquittoBroker) -> AsyncIterator[SimulatedDevice]:
    async with SimulatedDevice(example_broker, "+/device/control/set") as simulated:
        yield simulated


@pytest.fixture
async def http(example_broker: MosquittoBroker) -> AsyncIterator[httpx.AsyncClient]:
    app = load_example().create_app(example_broker.host, example_broker.port)
    async with app.router.lifespan_context(app):  # connects the MQTT client, closes it after
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client


async def test_control_returns_the_devices_answer(http: httpx.AsyncClient, device: SimulatedDevice) -> None:
    device.answer(lambda request: {"health": "ok", "asked": request["action"]})
    response = await http.post("/devices/rpi-camera/control", json={"action": "GET_HEALTH_CHECK", "params": {"x": 1}})
    assert response.status_code == 200
    body = response.json()
    assert body["result"] == {"health": "ok", "asked": "GET_HEALTH_CHECK"}
    assert device.requests[-1] == {"action": "GET_HEALTH_CHECK", "x": 1, "request_id": body["request_id"]}


async def test_a_silent_device_is_a_504(http: httpx.AsyncClient, device: SimulatedDevice) -> None:
    device.stay_silent()
    response = await http.post("/devices/rpi-camera/control", json={"action": "GET_HEALTH_CHECK", "timeout": 0.3})
    assert response.status_code == 504
    assert response.json()["error"] == "device_timeout"
    assert "timed out after 0.3s" in response.json()["detail"]


async def test_a_device_error_is_a_502(http: httpx.AsyncClient, device: SimulatedDevice) -> None:
    device.fail(423, "camera is recording", {"until": "12:00"})
    response = await http.post("/devices/rpi-camera/control", json={"action": "REBOOT"})
    assert response.status_code == 502
    assert response.json() == {"error": "device_error", "code": 423, "message": "camera is recording", "data": {"until": "12:00"}}


async def test_a_bad_body_is_a_422(http: httpx.AsyncClient) -> None:
    response = await http.post("/devices/rpi-camera/control", json={"params": {}})
    assert response.status_code == 422
    response = await http.post("/devices/dev+1/control", json={"action": "X"})
    assert response.status_code == 422 and response.json()["error"] == "bad_request"


async def test_broker_down_is_a_503() -> None:
    broker = MosquittoBroker.start()
    lost = asyncio.Event()
    app = load_example().create_app(broker.host, broker.port, lambda event: event.connected or lost.set())
    try:
        async with app.router.lifespan_context(app):
            broker.kill()
            await asyncio.wait_for(lost.wait(), 10)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
                response = await http.post("/devices/rpi-camera/control", json={"action": "GET_HEALTH_CHECK"})
            assert response.status_code == 503
            assert response.json()["error"] == "broker_unavailable"
    finally:
        broker.stop()


async def test_an_http_request_its_mqtt_call_and_the_devices_handler_are_one_trace(
    example_broker: MosquittoBroker, device: SimulatedDevice
) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from mqtt_rpc.otel import MqttRpcInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = load_example().create_app(example_broker.host, example_broker.port, tracer_provider=provider)
    device.answer({"status": "ok"})
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
                response = await http.post("/devices/cam1/control", json={"action": "GET_HEALTH_CHECK"})
        assert response.status_code == 200
    finally:
        MqttRpcInstrumentor().uninstrument()
        FastAPIInstrumentor.uninstrument_app(app)
    finished = {span.context.span_id: span for span in exporter.get_finished_spans()}
    handler = next(span for span in finished.values() if span.name == "process +/device/control/set")
    call = finished[handler.parent.span_id]
    http_span = finished[call.parent.span_id]
    assert (call.kind, call.name) == (SpanKind.CLIENT, "call")
    assert http_span.kind == SpanKind.SERVER and http_span.attributes["http.route"] == "/devices/{device_id}/control"
    assert handler.context.trace_id == call.context.trace_id == http_span.context.trace_id
