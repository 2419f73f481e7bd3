"""A FastAPI service that controls devices over MQTT with mqtt-rpc.

    MQTT_RPC_URL=mqtt://localhost:1883 uvicorn app:app

The client is connected in the app's lifespan and closed on shutdown; endpoints get it
through a dependency. (A call would connect the client by itself, but connecting at
start-up makes an unreachable broker fail the deploy, not the first request.) `POST /devices/{device_id}/control` calls
`{device_id}/device/control/set` and returns the device's answer; every failure becomes an
HTTP status with a JSON body that says what happened:

    504  the device did not answer in time       {"error": "device_timeout", ...}
    502  the device answered with an error       {"error": "device_error", "code", "message", "data"}
    503  the broker is unreachable               {"error": "broker_unavailable", ...}
    422  the request body is not valid           (FastAPI's validation error)

Traced end to end with OpenTelemetry (the ``otel`` extra and
``opentelemetry-instrumentation-fastapi``): the HTTP request's span, the MQTT call's span
under it, and, on a device served by mqtt-rpc's `Responder`, the handler's span under
that, all one trace. ``TRACE_TO_CONSOLE=1`` prints the spans:

    TRACE_TO_CONSOLE=1 MQTT_RPC_URL=mqtt://localhost:1883 uvicorn app:app
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Dict, Optional

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from mqtt_rpc import ConnectionEvent, MqttRpcClient, MqttRpcError, NotConnectedError, RemoteError, RpcTimeoutError


class DeviceControlRequest(BaseModel):
    action: str = Field(min_length=1, examples=["GET_HEALTH_CHECK"])
    params: Dict[str, Any] = Field(default_factory=dict)
    timeout: float = Field(default=10, gt=0, le=60, description="seconds to wait for the device")


def create_app(
    host: Optional[str] = None,
    port: Optional[int] = None,
    on_connection_change: Optional[Callable[[ConnectionEvent], None]] = None,
    tracer_provider: Any = None,
) -> FastAPI:
    """The app; `on_connection_change` is told when the broker connection drops or returns
    (a place for a readiness flag or a metric). With a `tracer_provider`, HTTP requests
    and the MQTT calls they make are traced to it."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = MqttRpcClient(
            host,  # None: the broker of MQTT_RPC_URL
            port,
            # Calls made while the broker is away fail at once (503) instead of waiting.
            fail_fast=True,
            on_connection_change=on_connection_change,
        )
        await client.connect()
        app.state.mqtt = client
        try:
            yield
        finally:
            await client.close()

    app = FastAPI(title="Device control over MQTT", lifespan=lifespan)
    if tracer_provider is not None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        from mqtt_rpc.otel import MqttRpcInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=tracer_provider)
        MqttRpcInstrumentor().instrument(tracer_provider=tracer_provider)

    def mqtt_client(request: Request) -> MqttRpcClient:
        return request.app.state.mqtt

    @app.post("/devices/{device_id}/control")
    async def control(device_id: str, body: DeviceControlRequest, client: MqttRpcClient = Depends(mqtt_client)) -> Any:
        payload = {"action": body.action, **body.params}
        try:
            return await client.call(f"{device_id}/device/control/set", payload, timeout=body.timeout)
        except RpcTimeoutError as error:
            return JSONResponse(status_code=504, content={"error": "device_timeout", "detail": str(error)})
        except RemoteError as error:
            return JSONResponse(
                status_code=502,
                content={"error": "device_error", "code": error.code, "message": error.message, "data": error.data},
            )
        except (NotConnectedError, ConnectionError) as error:
            return JSONResponse(status_code=503, content={"error": "broker_unavailable", "detail": str(error)})
        except MqttRpcError as error:  # a device id that cannot be a topic level, for example
            return JSONResponse(status_code=422, content={"error": "bad_request", "detail": str(error)})

    return app


def console_tracer_provider() -> Any:
    """Spans printed to the console as each ends (the OpenTelemetry SDK's exporter)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    return provider


app = create_app(tracer_provider=console_tracer_provider() if os.environ.get("TRACE_TO_CONSOLE") else None)
