"""Benchmark client "nats": nats-py's request/reply against nats-server, the NATS way to do
what mqtt-rpc does over MQTT: `await nc.request(subject, payload)` (one wildcard inbox
subscription for every request, nats-py's default since 2.0). Its device is
nats_device.py; the MQTT topic is used as a NATS subject ('/' becomes '.')."""

from __future__ import annotations

import argparse

import nats
from harness import run


async def connect(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    client = await nats.connect(f"nats://127.0.0.1:{args.port}")

    async def call(topic: str, payload: str) -> object:
        return (await client.request(topic.replace("/", "."), payload.encode(), timeout=10)).data

    return call, client.close


if __name__ == "__main__":
    run(connect)
