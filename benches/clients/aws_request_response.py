"""Benchmark client "aws": AWS's own request-response client, `awscrt.mqtt_request_response`
(the one the AWS IoT SDKs use for shadows and jobs), on an awscrt MQTT 3.1.1 connection.
Each request names the wildcard filter its answer arrives under (one subscription shared
by every request, which the client keeps), the exact answer topic, and where the
correlation token sits in the answer's JSON (`request_id`): the seed device's convention
`{topic}/response/{request_id}`."""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid

from awscrt import io, mqtt, mqtt_request_response
from harness import run


async def connect(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    event_loop_group = io.EventLoopGroup(1)
    bootstrap = io.ClientBootstrap(event_loop_group, io.DefaultHostResolver(event_loop_group))
    connection = mqtt.Connection(
        client=mqtt.Client(bootstrap),
        host_name="127.0.0.1",
        port=args.port,
        client_id=f"aws-rr-{uuid.uuid4().hex}",
        clean_session=True,
        keep_alive_secs=60,
    )
    await asyncio.wrap_future(connection.connect())
    options = mqtt_request_response.ClientOptions(
        max_request_response_subscriptions=2, max_streaming_subscriptions=1, operation_timeout_in_seconds=10
    )
    client = mqtt_request_response.Client(connection, options)

    async def call(topic: str, payload: str) -> object:
        request_id = str(uuid.uuid4())
        body = json.loads(payload)
        body["request_id"] = request_id
        request = mqtt_request_response.RequestOptions(
            subscription_topic_filters=[f"{topic}/response/+"],
            response_paths=[mqtt_request_response.ResponsePath(f"{topic}/response/{request_id}", "request_id")],
            publish_topic=topic,
            payload=json.dumps(body).encode(),
            correlation_token=request_id,
        )
        response = await asyncio.wrap_future(client.make_request(request))
        return json.loads(response.payload)

    async def close() -> None:
        await asyncio.wrap_future(connection.disconnect())

    return call, close


if __name__ == "__main__":
    run(connect)
