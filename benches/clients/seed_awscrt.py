"""Benchmark client "seed": the hand-written MqttRpcClient from the post this project
replaces, on awscrt's MQTT client as the original is: per call it subscribes to a unique
reply topic and waits for the SUBACK, publishes, `asyncio.wait_for`s the answer, and
unsubscribes in `finally`.

One deliberate difference: the original sets the asyncio future's result directly from
awscrt's callback thread, which asyncio does not allow; here the callback hands it to the
loop with `call_soon_threadsafe`, as a working version must."""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid

from awscrt import io, mqtt
from harness import run


class AwsMQTTClient:
    """The thin awscrt wrapper the post's code uses (`subscribe`/`publish`/`unsubscribe`)."""

    def __init__(self, port: int, qos: int) -> None:
        event_loop_group = io.EventLoopGroup(1)
        bootstrap = io.ClientBootstrap(event_loop_group, io.DefaultHostResolver(event_loop_group))
        self.qos = mqtt.QoS.AT_LEAST_ONCE if qos else mqtt.QoS.AT_MOST_ONCE
        self.connection = mqtt.Connection(
            client=mqtt.Client(bootstrap),
            host_name="127.0.0.1",
            port=port,
            client_id=f"seed-{uuid.uuid4().hex}",
            clean_session=True,
            keep_alive_secs=60,
        )

    async def connect(self) -> None:
        await asyncio.wrap_future(self.connection.connect())

    async def disconnect(self) -> None:
        await asyncio.wrap_future(self.connection.disconnect())

    async def subscribe(self, topic: str, callback) -> None:  # type: ignore[no-untyped-def]
        future, _ = self.connection.subscribe(topic, self.qos, callback)
        await asyncio.wrap_future(future)

    def publish(self, topic: str, payload: str) -> None:
        self.connection.publish(topic, payload, self.qos)

    async def unsubscribe(self, topic: str) -> None:
        future, _ = self.connection.unsubscribe(topic)
        await asyncio.wrap_future(future)


class MqttRpcClient:
    def __init__(self, mqtt_client: AwsMQTTClient) -> None:
        self.mqtt_client = mqtt_client

    async def call(self, request_topic: str, payload: str, timeout: int = 10) -> dict:
        request_id = str(uuid.uuid4())
        reply_topic = f"{request_topic}/response/{request_id}"

        payload_dict = json.loads(payload)
        payload_dict["request_id"] = request_id
        encoded_payload = json.dumps(payload_dict)

        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(data: object, error: BaseException | None) -> None:
            if not future.done():
                future.set_exception(error) if error else future.set_result(data)

        def on_response(topic, payload, **kwargs):  # type: ignore[no-untyped-def]
            try:
                loop.call_soon_threadsafe(settle, json.loads(payload.decode()), None)
            except Exception as e:
                loop.call_soon_threadsafe(settle, None, e)

        try:
            await self.mqtt_client.subscribe(reply_topic, on_response)
            self.mqtt_client.publish(request_topic, encoded_payload)
            return await asyncio.wait_for(future, timeout=timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"MQTT call timed out after {timeout}s for topic '{request_topic}'")
        finally:
            await self.mqtt_client.unsubscribe(reply_topic)


async def connect(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    mqtt_client = AwsMQTTClient(args.port, args.qos)
    await mqtt_client.connect()
    return MqttRpcClient(mqtt_client).call, mqtt_client.disconnect


if __name__ == "__main__":
    run(connect)
