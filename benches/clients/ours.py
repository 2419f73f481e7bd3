"""Benchmark client "ours": `MqttRpcClient.call`, concurrent callers on one asyncio loop."""

from __future__ import annotations

import argparse

from harness import run

from mqtt_rpc import MqttRpcClient


async def connect(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    client = MqttRpcClient("127.0.0.1", args.port, protocol=args.protocol, qos=args.qos, max_in_flight=4096)
    await client.connect()
    return client.call, client.close


if __name__ == "__main__":
    run(connect)
