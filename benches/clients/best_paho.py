"""Benchmark client "best Python": what a careful engineer writes without mqtt-rpc.
paho-mqtt driven by the asyncio loop itself (its sockets registered with add_reader /
add_writer, as paho documents), TCP_NODELAY on, one wildcard reply subscription made at
connect, and a dict of futures keyed by request id."""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import uuid
from typing import Any, Dict

import paho.mqtt.client as paho
from harness import run


class BestPahoRpcClient:
    def __init__(self, port: int, qos: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.port, self.qos = port, qos
        self.pending: Dict[str, asyncio.Future] = {}
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"best-{uuid.uuid4().hex}")
        self.client.on_socket_open = self._on_socket_open
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = self._on_register_write
        self.client.on_socket_unregister_write = self._on_unregister_write
        self.client.on_connect = lambda *a: self._connected.set_result(None)
        self.client.on_subscribe = lambda *a: self._subscribed.set_result(None)
        self.client.on_message = self._on_message
        self._connected = self.loop.create_future()
        self._subscribed = self.loop.create_future()
        self._misc: asyncio.Task | None = None

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.loop.add_reader(sock, client.loop_read)
        self._misc = self.loop.create_task(self._loop_misc())

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: socket.socket) -> None:
        self.loop.remove_reader(sock)
        if self._misc:
            self._misc.cancel()

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: socket.socket) -> None:
        self.loop.add_writer(sock, client.loop_write)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: socket.socket) -> None:
        self.loop.remove_writer(sock)

    async def _loop_misc(self) -> None:
        while self.client.loop_misc() == paho.MQTT_ERR_SUCCESS:
            await asyncio.sleep(1)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        future = self.pending.pop(message.topic.rsplit("/", 1)[-1], None)
        if future is not None and not future.done():
            try:
                future.set_result(json.loads(message.payload))
            except ValueError:
                self.pending[message.topic.rsplit("/", 1)[-1]] = future

    async def connect(self, reply_filter: str) -> None:
        self.client.connect("127.0.0.1", self.port)
        await self._connected
        self.client.subscribe(reply_filter, self.qos)
        await self._subscribed

    async def close(self) -> None:
        self.client.disconnect()

    async def call(self, topic: str, payload: str, timeout: float = 10) -> dict:
        request_id = str(uuid.uuid4())
        body = json.loads(payload)
        body["request_id"] = request_id
        future = self.loop.create_future()
        self.pending[request_id] = future
        try:
            self.client.publish(topic, json.dumps(body), self.qos)
            return await asyncio.wait_for(future, timeout)
        finally:
            self.pending.pop(request_id, None)


async def connect(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    client = BestPahoRpcClient(args.port, args.qos)
    await client.connect(f"{args.topic}/response/+")
    return client.call, client.close


if __name__ == "__main__":
    run(connect)
