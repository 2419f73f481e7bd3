"""Scatter-gather: one request to a group topic, answered by every device on it; each
device's answer is yielded once, the call ends at its deadline or after max_replies."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AsyncExitStack, ExitStack
from typing import Any, AsyncIterator, Dict, List

import pytest

from mqtt_rpc import MqttRpcClient, Responder, RpcHandlerError, SyncMqttRpcClient
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice


def group_topic() -> str:
    return f"fleet-{uuid.uuid4().hex[:8]}/all/status/get"


async def start_devices(stack: AsyncExitStack, broker: MosquittoBroker, topic: str, names: List[str], handler: Any) -> None:
    for name in names:
        device = Responder(broker.host, broker.port, client_id=name)
        device.handle(topic)(handler)
        await stack.enter_async_context(device)


async def answer_status(request: Dict[str, Any]) -> Dict[str, Any]:
    return {"ok": True}


@pytest.fixture
async def fifty_devices(broker: MosquittoBroker) -> AsyncIterator[tuple]:
    topic = group_topic()
    names = [f"dev{i:02d}-{uuid.uuid4().hex[:4]}" for i in range(50)]
    async with AsyncExitStack() as stack:
        await start_devices(stack, broker, topic, names, answer_status)
        yield topic, names


async def test_fifty_devices_each_answer_once(client: MqttRpcClient, fifty_devices: tuple) -> None:
    topic, names = fifty_devices
    replies = await client.gather_all(topic, {"action": "STATUS"}, timeout=2)
    assert sorted(r["responder"] for r in replies) == sorted(names)
    assert all(r["result"] == {"ok": True} for r in replies)
    assert len({r["request_id"] for r in replies}) == 1
    stats = client.stats()
    assert stats["replies_gathered"] == 50 and stats["calls_timed_out"] == 0
    assert client.pending == 0


async def test_max_replies_ends_the_call_before_its_deadline(client: MqttRpcClient, fifty_devices: tuple) -> None:
    topic, names = fifty_devices
    started = time.monotonic()
    replies = [r async for r in client.call_all(topic, {}, timeout=30, max_replies=10)]
    assert len(replies) == 10 and len({r["responder"] for r in replies}) == 10
    assert time.monotonic() - started < 10
    assert client.pending == 0


async def test_silent_devices_only_shorten_the_list(client: MqttRpcClient, broker: MosquittoBroker) -> None:
    topic = group_topic()
    never = asyncio.Event()

    async def silent(request: Dict[str, Any]) -> Dict[str, Any]:
        await never.wait()
        return {}

    async def failing(request: Dict[str, Any]) -> Dict[str, Any]:
        raise RpcHandlerError(503, "busy")

    async with AsyncExitStack() as stack:
        await start_devices(stack, broker, topic, [f"ok{i}-{uuid.uuid4().hex[:4]}" for i in range(4)], answer_status)
        await start_devices(stack, broker, topic, [f"mute{i}-{uuid.uuid4().hex[:4]}" for i in range(3)], silent)
        await start_devices(stack, broker, topic, [f"bad-{uuid.uuid4().hex[:4]}"], failing)
        replies = await client.gather_all(topic, {}, timeout=1)
        never.set()
    answered = [r for r in replies if "result" in r]
    errors = [r for r in replies if "error" in r]
    assert len(answered) == 4 and len(errors) == 1
    # One device's error answer is yielded, not raised: the others' answers still count.
    assert errors[0]["error"]["code"] == 503
    assert client.pending == 0


async def test_a_device_answering_twice_counts_once(broker: MosquittoBroker) -> None:
    topic = group_topic()
    async with MqttRpcClient(broker.host, broker.port) as client, MqttRpcClient(broker.host, broker.port) as echo:

        async def answer_twice(request: Dict[str, Any]) -> Dict[str, Any]:
            # A copy of this device's answer, as a broker redelivery would produce it.
            reply_topic = f"{topic}/response/{request['request_id']}"
            copy = {"request_id": request["request_id"], "responder": "twice", "result": {"copy": True}}
            await echo.notify(reply_topic, copy)
            return {"copy": False}

        async with AsyncExitStack() as stack:
            await start_devices(stack, broker, topic, ["twice"], answer_twice)
            await start_devices(stack, broker, topic, ["once"], answer_status)
            replies = await client.gather_all(topic, {}, timeout=1)
        assert sorted(r["responder"] for r in replies) == ["once", "twice"]
        assert client.stats()["replies_dropped_duplicate"] == 1


async def test_the_rust_device_names_itself(client: MqttRpcClient, device_topic: str, seed_device: ResponderDevice) -> None:
    replies = await client.gather_all(device_topic, {"action": "STATUS"}, timeout=0.5)
    assert len(replies) == 1
    assert replies[0]["responder"].startswith("mqtt-rpc-") and replies[0]["result"]["topic"] == device_topic
    assert replies[0]["result"]["request"]["gather"] is True


async def test_leaving_the_iteration_early_ends_the_call(client: MqttRpcClient, fifty_devices: tuple) -> None:
    topic, _ = fifty_devices
    async for _reply in client.call_all(topic, {}, timeout=30):
        break
    assert client.pending == 0
    assert client.stats()["calls_cancelled"] == 1


async def test_with_mqtt5_a_group_nobody_listens_to_ends_at_once(broker: MosquittoBroker) -> None:
    async with MqttRpcClient(broker.host, broker.port, protocol="5", qos=1) as client:
        started = time.monotonic()
        assert await client.gather_all(group_topic(), {}, timeout=30) == []
        assert time.monotonic() - started < 10
        assert client.stats()["calls_no_responders"] == 1


async def test_bad_max_replies_is_refused_before_sending(client: MqttRpcClient) -> None:
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="max_replies"):
            await client.gather_all(group_topic(), {}, max_replies=bad)  # type: ignore[arg-type]
    assert client.stats()["calls_started"] == 0


def test_a_blocking_client_gathers_too(broker: MosquittoBroker) -> None:
    topic = group_topic()
    names = [f"rust{i}-{uuid.uuid4().hex[:4]}" for i in range(3)]
    with ExitStack() as devices:
        for name in names:
            devices.enter_context(ResponderDevice.start(broker, topic, options=["--client-id", name]))
        with SyncMqttRpcClient(broker.host, broker.port) as client:
            replies = client.gather_all(topic, {}, timeout=0.5)
            assert sorted(r["responder"] for r in replies) == sorted(names)
            assert len(client.gather_all(topic, {}, timeout=30, max_replies=2)) == 2
            assert client.pending == 0
