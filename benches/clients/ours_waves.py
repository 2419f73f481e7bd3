"""Benchmark clients "ours, gather" and "ours, call_many": `concurrency` calls at a time in
waves, made with `asyncio.gather` of `call()`s or with one `call_many()`, to compare the
two at the same concurrency (`--mode gather|many`)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from harness import PAYLOAD, run

from mqtt_rpc import MqttRpcClient

MODE = sys.argv.pop(sys.argv.index("--mode") + 1) if "--mode" in sys.argv else "many"
if "--mode" in sys.argv:
    sys.argv.remove("--mode")


async def connect(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    client = MqttRpcClient("127.0.0.1", args.port, qos=args.qos, max_in_flight=4096)
    await client.connect()

    async def with_gather(topic: str, n: int) -> object:
        return await asyncio.gather(*(client.call(topic, PAYLOAD) for _ in range(n)))

    async def with_call_many(topic: str, n: int) -> object:
        return await client.call_many([(topic, PAYLOAD)] * n)

    return (with_call_many if MODE == "many" else with_gather), client.close


if __name__ == "__main__":
    run(connect, in_waves=True)
