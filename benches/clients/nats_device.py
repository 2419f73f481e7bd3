"""The device for the "nats" benchmark client: answers each request on a subject with the
request echoed back, as the Rust MQTT device does, in a queue group so that several of
these processes share the requests. Prints READY once subscribed.

    python nats_device.py --port 4222 --subject 'bench.>'"""

from __future__ import annotations

import argparse
import asyncio
import json

import nats


async def serve(port: int, subject: str) -> None:
    client = await nats.connect(f"nats://127.0.0.1:{port}")

    async def answer(message: nats.aio.msg.Msg) -> None:
        request = json.loads(message.data)
        await message.respond(json.dumps({"result": {"topic": message.subject, "request": request}}).encode())

    await client.subscribe(subject, queue="devices", cb=answer)
    await client.flush()
    print("READY", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--subject", default="bench.>")
    arguments = parser.parse_args()
    asyncio.run(serve(arguments.port, arguments.subject))
