"""Subscribe once, never per call, as the broker itself reports it."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from mqtt_rpc import Limits, Replies

from mqtt_rpc import MqttRpcClient, PayloadError

from mqtt_rpc.testing import MosquittoBroker


async def test_exactly_one_subscribe_per_request_topic(broker: MosquittoBroker, device_topic: str) -> None:
    other_topic = device_topic.replace("dev-", "other-")
    async with MqttRpcClient(broker.host, broker.port) as client:
        # Concurrent first calls share one SUBSCRIBE; later calls make none.
        await asyncio.gather(*(client.call(device_topic, {"i": i}) for i in range(200)))
        for i in range(50):
            await client.call(device_topic, {"i": i})
        await asyncio.gather(*(client.call(other_topic, {"i": i}) for i in range(20)))

        assert sorted(broker.subscribes(client.client_id)) == sorted(
            [f"{device_topic}/response/+", f"{other_topic}/response/+"]
        )
        assert client.reply_subscriptions == 2


async def test_one_reply_filter_covers_every_device(broker: MosquittoBroker, seed_device: object) -> None:
    topics = [f"dev-{uuid.uuid4().hex[:8]}/device/control/set" for _ in range(5)]
    reply_filter = "+/device/control/set/response/+"
    async with MqttRpcClient(broker.host, broker.port, replies=Replies.shared_filter(reply_filter)) as client:
        replies = await asyncio.gather(*(client.call(t, {"t": t}) for t in topics for _ in range(10)))
        assert all(r["result"]["request"]["t"] == r["result"]["topic"] for r in replies)
        assert broker.subscribes(client.client_id) == [reply_filter]
        assert client.reply_subscriptions == 1

        # A request whose reply could never match the filter is refused before it is sent.
        with pytest.raises(PayloadError, match="not covered by reply_filter"):
            await client.call("dev1/other/topic", {})
        assert client.stats()["calls_started"] == 50


async def test_idle_reply_filters_beyond_the_limit_are_unsubscribed_least_recent_first(
    broker: MosquittoBroker, seed_device: object
) -> None:
    topics = [f"lru{i}-{uuid.uuid4().hex[:8]}/device/control/set" for i in range(4)]
    async with MqttRpcClient(broker.host, broker.port, limits=Limits(max_subscriptions=2)) as client:
        await client.call(topics[0], {})
        await client.call(topics[1], {})
        await client.call(topics[0], {})  # topics[1] is now the least recently used
        await client.call(topics[2], {})
        await client.call(topics[3], {})
        assert client.reply_subscriptions == 2
        # Our UNSUBSCRIBE is sent before the next SUBSCRIBE; the broker handles them in
        # order, so by the last answer both are in its log.
        assert broker.unsubscribes(client.client_id) == [f"{topics[1]}/response/+", f"{topics[0]}/response/+"]
        # A topic used again after eviction subscribes again and still works.
        reply = await client.call(topics[1], {"again": True})
        assert reply["result"]["request"]["again"] is True
        assert broker.subscribes(client.client_id).count(f"{topics[1]}/response/+") == 2
