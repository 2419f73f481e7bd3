"""Benchmark client "faststream": FastStream's MQTT broker (on zmqtt) in its request/reply
form, `await broker.request(payload, topic)`, with MQTT 5: each request carries a Response
Topic and Correlation Data, which the Rust device answers through (FastStream's 3.1.1
`request()` subscribes per call, as the seed does). The device must serve MQTT 5 requests:
run.py starts them with `--protocol 5` for this client."""

from __future__ import annotations

import argparse
import logging

from faststream.mqtt import MQTTBroker
from harness import run


async def connect(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    broker = MQTTBroker(f"mqtt://127.0.0.1:{args.port}", version="5.0", log_level=logging.WARNING)
    await broker.start()

    async def call(topic: str, payload: str) -> object:
        message = await broker.request(payload, topic, timeout=10, qos=args.qos)
        return await message.decode()

    return call, broker.stop


if __name__ == "__main__":
    run(connect)
