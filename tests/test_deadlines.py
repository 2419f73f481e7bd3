"""Deadlines that travel with the request: what goes over the wire (MQTT 5 Message Expiry and
`timeout_ms`, nothing new on 3.1.1 unless asked), a responder that drops a request its
caller stopped waiting for (Python and Rust), `current_request()`, and calls a handler makes
that never wait past its own caller."""

from __future__ import annotations

import asyncio
import json
import math
import queue
import threading
import time
import uuid
from typing import Any, Dict, List, Optional

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

import mqtt_rpc
from mqtt_rpc import MqttRpcClient, Responder, RpcTimeoutError, SyncMqttRpcClient, current_request
from mqtt_rpc.context import RequestContext, serving
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice
from raw_device import RawDevice
from waiting import until


def unique(level: str) -> str:
    return f"{level}-{uuid.uuid4().hex[:10]}"


class RawCaller:
    """A 3.1.1 caller written with paho-mqtt: publishes request bodies as given (a deadline
    already past, say) and collects the answers on the seed reply topics."""

    def __init__(self, broker: MosquittoBroker, reply_filter: str) -> None:
        self.answers: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self._client = paho.Client(CallbackAPIVersion.VERSION2)
        self._client.on_message = lambda client, userdata, message: self.answers.put(json.loads(message.payload))
        subscribed: "queue.Queue[bool]" = queue.Queue()
        self._client.on_subscribe = lambda *args: subscribed.put(True)
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        self._client.subscribe(reply_filter)
        assert subscribed.get(timeout=10)

    def publish(self, topic: str, body: Dict[str, Any]) -> None:
        self._client.publish(topic, json.dumps(body))

    async def next_answer(self) -> Dict[str, Any]:
        return await asyncio.to_thread(self.answers.get, True, 10)

    def stop(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@pytest.mark.parametrize("raw_device", [("5", "+/expiry5/set")], indirect=True)
async def test_an_mqtt5_request_carries_its_deadline_as_message_expiry(
    broker: MosquittoBroker, raw_device: RawDevice
) -> None:
    async with MqttRpcClient(broker.host, broker.port, protocol="5") as client:
        await client.call(f"{unique('d')}/expiry5/set", {"a": 1}, timeout=2.5)
    body, user_properties, message_expiry = await raw_device.next_request()
    # Rounded up to whole seconds, so the broker never drops it before the caller gives up.
    assert message_expiry == 3
    [(name, millis)] = user_properties
    assert name == "timeout_ms" and 0 < int(millis) <= 2500
    assert "timeout_ms" not in body
    # Asked to, it goes in the JSON instead, where a 3.1.1 device would see it too.
    async with MqttRpcClient(broker.host, broker.port, protocol="5", propagate_deadline=True) as client:
        await client.call(f"{unique('d')}/expiry5/set", {"a": 1}, timeout=2.5)
    body, user_properties, message_expiry = await raw_device.next_request()
    assert (message_expiry, user_properties) == (3, []) and 0 < body["timeout_ms"] <= 2500


@pytest.mark.parametrize("raw_device", [("3.1.1", "+/plain/set")], indirect=True)
async def test_a_311_request_carries_its_deadline_only_when_asked(broker: MosquittoBroker, raw_device: RawDevice) -> None:
    topic = f"{unique('d')}/plain/set"
    async with MqttRpcClient(broker.host, broker.port) as client:
        reply = await client.call(topic, {"a": 1}, timeout=2.5)
    # The seed's devices see exactly the request the hand-written client sent.
    assert (await raw_device.next_request()).body == {"a": 1, "request_id": reply["request_id"]}
    async with MqttRpcClient(broker.host, broker.port, propagate_deadline=True) as client:
        reply = await client.call(topic, {"a": 1, "timeout_ms": "the application's own"}, timeout=2.5)
    body, user_properties, message_expiry = await raw_device.next_request()
    assert set(body) == {"a", "request_id", "timeout_ms"} and 0 < body["timeout_ms"] <= 2500
    assert (user_properties, message_expiry) == ([], None)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_handler_knows_its_request_and_the_time_its_caller_still_waits(
    broker: MosquittoBroker, protocol: str
) -> None:
    seen: List[Optional[RequestContext]] = []
    remaining: List[float] = []
    responder = Responder(broker.host, broker.port, protocol=protocol)

    @responder.handle("+/knows/set")
    async def knows(request: Dict[str, Any]) -> Any:
        seen.append(current_request())
        remaining.append(current_request().remaining())  # type: ignore[union-attr]
        return {}

    topic = f"{unique('d')}/knows/set"
    async with responder:
        async with MqttRpcClient(broker.host, broker.port, protocol=protocol, propagate_deadline=True) as client:
            reply = await client.call(topic, {}, timeout=2.5)
        async with MqttRpcClient(broker.host, broker.port, protocol=protocol, propagate_deadline=False) as client:
            await client.call(topic, {}, timeout=2.5)
    assert current_request() is None  # outside a handler
    request = seen[0]
    assert request is not None
    assert (request.request_id, request.topic) == (reply["request_id"], topic)
    assert request.deadline is not None and 0 < remaining[0] <= 2.5
    if protocol == "3.1.1":
        # Without timeout_ms a 3.1.1 request carries no deadline at all.
        assert seen[1] is not None and seen[1].deadline is None
        assert remaining[1] == math.inf
    else:
        # MQTT 5 always carries Message Expiry: whole seconds, rounded up.
        assert 0 < remaining[1] <= 3


async def test_a_request_that_arrives_expired_is_dropped_unanswered_and_counted(broker: MosquittoBroker) -> None:
    handled: List[str] = []
    responder = Responder(broker.host, broker.port)

    @responder.handle("+/late/set")
    async def late(request: Dict[str, Any]) -> Any:
        handled.append(request["request_id"])
        return {}

    caller = RawCaller(broker, "+/late/set/response/+")
    try:
        async with responder:
            caller.publish("d/late/set", {"request_id": "expired", "timeout_ms": 0})
            caller.publish("d/late/set", {"request_id": "on-time", "timeout_ms": 60_000})
            # Answers come in the order the requests were taken: the expired one had none.
            assert (await caller.next_answer())["request_id"] == "on-time"
            assert handled == ["on-time"]
            assert responder.stats()["requests_expired"] == 1
            assert caller.answers.empty()
    finally:
        caller.stop()


async def test_a_request_held_back_past_its_deadline_is_dropped_before_its_handler_starts(
    broker: MosquittoBroker,
) -> None:
    handled: List[str] = []
    release = asyncio.Event()
    responder = Responder(broker.host, broker.port, max_concurrency=1)

    @responder.handle("+/held/set")
    async def held(request: Dict[str, Any]) -> Any:
        handled.append(request["request_id"])
        if request["request_id"] == "blocker":
            await release.wait()
        return {}

    caller = RawCaller(broker, "+/held/set/response/+")
    try:
        async with responder:
            caller.publish("d/held/set", {"request_id": "blocker"})
            await until(lambda: handled == ["blocker"])
            # It waits for the one turn; its caller gives up a microsecond after it arrives.
            caller.publish("d/held/set", {"request_id": "queued", "timeout_ms": 0.001})
            caller.publish("d/held/set", {"request_id": "after"})
            await until(lambda: responder.stats()["handlers_running_or_waiting"] == 3)
            release.set()
            answered = [(await caller.next_answer())["request_id"] for _ in range(2)]
            assert answered == ["blocker", "after"]
            assert handled == ["blocker", "after"]
            assert responder.stats()["requests_expired"] == 1
    finally:
        caller.stop()


async def test_the_rust_device_drops_a_request_that_arrives_expired(broker: MosquittoBroker, seed_device: ResponderDevice) -> None:
    device = unique("dev")
    caller = RawCaller(broker, f"{device}/device/control/set/response/+")
    try:
        caller.publish(f"{device}/device/control/set", {"request_id": "expired", "timeout_ms": 0})
        caller.publish(f"{device}/device/control/set", {"request_id": "on-time"})
        assert (await caller.next_answer())["request_id"] == "on-time"
        assert caller.answers.empty()
    finally:
        caller.stop()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_call_a_handler_makes_times_out_when_its_own_caller_would(
    broker: MosquittoBroker, silent_topic: str, protocol: str
) -> None:
    inner: List[BaseException] = []
    done = asyncio.Event()
    responder = Responder(broker.host, broker.port, protocol=protocol)
    downstream = MqttRpcClient(broker.host, broker.port, protocol=protocol)

    @responder.handle("+/nested/set")
    async def nested(request: Dict[str, Any]) -> Any:
        try:
            await downstream.call(silent_topic, {}, timeout=0.05)  # shorter than what is left: kept
        except RpcTimeoutError as error:
            inner.append(error)
        try:
            # Asks for 30 s; its caller waits 0.5 s: the call gets what is left of that.
            await downstream.call(silent_topic, {}, timeout=30)
        except RpcTimeoutError as error:
            inner.append(error)
        done.set()
        return {}

    async with responder, downstream:
        async with MqttRpcClient(broker.host, broker.port, protocol=protocol, propagate_deadline=True) as client:
            with pytest.raises(RpcTimeoutError):
                await client.call(f"{unique('d')}/nested/set", {}, timeout=0.5)
        await done.wait()
    kept, bounded = inner
    assert kept.timeout == 0.05  # type: ignore[attr-defined]
    assert 0 < bounded.timeout < 0.5  # type: ignore[attr-defined]


async def test_a_blocking_call_in_a_plain_handler_inherits_the_deadline(broker: MosquittoBroker, silent_topic: str) -> None:
    inner: List[BaseException] = []
    done = threading.Event()
    responder = Responder(broker.host, broker.port)
    downstream = SyncMqttRpcClient(broker.host, broker.port)

    @responder.handle("+/plain-nested/set")
    def plain(request: Dict[str, Any]) -> Any:
        # Runs in a worker thread, with the request's context.
        try:
            downstream.call(silent_topic, {}, timeout=30)
        except RpcTimeoutError as error:
            inner.append(error)
        done.set()
        return {}

    try:
        async with responder:
            async with MqttRpcClient(broker.host, broker.port, propagate_deadline=True) as client:
                with pytest.raises(RpcTimeoutError):
                    await client.call(f"{unique('d')}/plain-nested/set", {}, timeout=0.5)
            assert await asyncio.to_thread(done.wait, 10)
    finally:
        downstream.close()
    assert 0 < inner[0].timeout < 0.5  # type: ignore[attr-defined]


async def test_a_call_past_the_deadline_of_the_request_it_serves_is_not_sent(broker: MosquittoBroker) -> None:
    async with MqttRpcClient(broker.host, broker.port) as client:

        async def in_a_handler() -> None:
            serving(RequestContext("r-1", "d/set", time.monotonic() - 0.1))
            with pytest.raises(RpcTimeoutError, match="past its deadline"):
                await client.call("anyone/set", {}, timeout=5)

        await asyncio.create_task(in_a_handler())
        assert client.stats()["calls_started"] == 0
        assert mqtt_rpc.current_request() is None  # the task's context, not the test's
