"""A short session with a device over MQTT: the answered call, a remote error, a timeout,
and a burst of concurrent calls. Starts its own Mosquitto and Rust responder; stops them."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

from mqtt_rpc import MqttRpcClient, RemoteError, RpcTimeoutError
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice

DEVICE = "rpi-camera-device/device/control/set"
OFFLINE_DEVICE = "rpi-offline-device/silent/control/set"


def show(label: str, started: float, outcome: str) -> None:
    print(f"{label:<34} {(time.perf_counter() - started) * 1000:8.2f} ms  {outcome}")


async def session(broker: MosquittoBroker) -> None:
    async with MqttRpcClient(broker.host, broker.port) as client:
        print(f"connected to mosquitto at {broker.host}:{broker.port} as {client.client_id}\n")

        started = time.perf_counter()
        reply = await client.call(DEVICE, '{"action": "GET_HEALTH_CHECK"}', timeout=10)
        show("call GET_HEALTH_CHECK (first)", started, json.dumps(reply))

        started = time.perf_counter()
        reply = await client.call(DEVICE, {"action": "GET_HEALTH_CHECK"}, timeout=10)
        show("call GET_HEALTH_CHECK (again)", started, f"request_id={reply['request_id']}")

        started = time.perf_counter()
        try:
            await client.call(
                DEVICE, {"action": "REBOOT", "_responder": {"error": {"code": 423, "message": "camera is recording"}}}
            )
        except RemoteError as error:
            show("call REBOOT (device refuses)", started, f"RemoteError code={error.code} message={error.message!r}")

        started = time.perf_counter()
        try:
            await client.call(OFFLINE_DEVICE, {"action": "GET_HEALTH_CHECK"}, timeout=0.5)
        except RpcTimeoutError as error:
            show("call an offline device", started, f"RpcTimeoutError: {error}")

        latencies = []

        async def timed_call(i: int) -> None:
            began = time.perf_counter()
            await client.call(DEVICE, {"action": "PING", "i": i})
            latencies.append(time.perf_counter() - began)

        for concurrency, total in ((1, 500), (256, 20_000)):
            latencies.clear()
            started = time.perf_counter()
            for offset in range(0, total, concurrency):
                await asyncio.gather(*(timed_call(offset + i) for i in range(concurrency)))
            elapsed = time.perf_counter() - started
            p50 = statistics.median(latencies) * 1000
            p99 = sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000
            print(
                f"\n{total} calls, {concurrency} at a time: {total / elapsed:,.0f} calls/s, "
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
                end="",
            )
        print(f"\n\npending calls left: {client.pending}; stats: {client.stats()}")


def main() -> None:
    print("starting mosquitto and a simulated device (the Rust responder)...")
    with MosquittoBroker.start() as broker, ResponderDevice.start(broker, "+/device/control/set"):
        asyncio.run(session(broker))
    print("stopped the device and the broker.")


if __name__ == "__main__":
    main()
