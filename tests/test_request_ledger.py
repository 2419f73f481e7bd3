"""What a device does with repeats, cancellations and more requests than it takes: decided
once, in the Rust core's request ledger, so the Rust device (`mqtt-rpc-responder`, built on
the library's `Responder`) and the Python `Responder` behave alike."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import time
import uuid
from typing import Any, Dict, Iterator, List

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqtt_rpc import MqttRpcClient, RemoteError, Responder
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice


class Listener:
    """A bare MQTT subscriber that collects every message on a filter, to see each answer a
    device sends (a client keeps only the first one per request)."""

    def __init__(self, broker: MosquittoBroker, topic_filter: str) -> None:
        self.messages: "queue.Queue[bytes]" = queue.Queue()
        subscribed = queue.Queue()  # type: queue.Queue[bool]
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda _c, _u, message: self.messages.put(message.payload)
        self.client.on_subscribe = lambda *_: subscribed.put(True)
        self.client.connect(broker.host, broker.port)
        self.client.subscribe(topic_filter)
        self.client.loop_start()
        subscribed.get(timeout=10)

    def next(self) -> Dict[str, Any]:
        message: Dict[str, Any] = json.loads(self.messages.get(timeout=10))
        return message

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def listener(broker: MosquittoBroker) -> Iterator[Listener]:
    listening = Listener(broker, "ledger/+/set/response/#")
    yield listening
    listening.close()


def test_the_rust_device_answers_a_repeat_from_its_first_run(broker: MosquittoBroker, listener: Listener) -> None:
    device = ResponderDevice.start(broker, "ledger/+/set")
    try:
        body = json.dumps({"request_id": uuid.uuid4().hex, "_responder": {"ignore_first": True}})
        # The first copy is ignored (the device stays silent: its run ends unanswered), the
        # second runs and is answered; the third is a repeat of an answered request.
        for _ in range(3):
            listener.client.publish("ledger/d1/set", body)
        first, repeat = listener.next(), listener.next()
        assert first["result"]["seen"] == 2  # the device's handler saw the request twice
        assert repeat == first  # not run a third time: the first run's answer again
    finally:
        device.stop()


async def test_the_rust_device_refuses_past_its_limits_and_a_cancellation_frees_a_place(
    broker: MosquittoBroker,
) -> None:
    device = ResponderDevice.start(broker, "held/+/set", options=["--max-concurrency", "1", "--max-queued", "2"])
    try:
        # Inbox replies: a call publishes at its first step (no subscription to wait for), so
        # tasks publish in the order they were created.
        async with MqttRpcClient(broker.host, broker.port, replies="inbox", cancel_on_abandon=True) as client:
            topic = f"held/{uuid.uuid4().hex[:6]}/set"
            held = [
                asyncio.ensure_future(client.call(topic, {"_responder": {"delay_ms": 60_000}}, timeout=120))
                for _ in range(3)
            ]
            # The three calls above hold the device's three places: more are refused at once.
            more = client.call_many([(topic, {"i": i}) for i in range(5)], timeout=30, return_exceptions=True)
            refused = await asyncio.ensure_future(more)
            assert all(isinstance(r, RemoteError) and r.code == -32000 for r in refused), refused
            # Giving up on the held calls cancels their runs on the device, which frees places.
            for call in held:
                call.cancel()
            await asyncio.gather(*held, return_exceptions=True)
            reply = await client.call(topic, {"after": True}, timeout=30)
            assert reply["result"]["request"]["after"] is True
    finally:
        device.stop()


async def test_repeats_waiting_for_one_run_are_bounded(broker: MosquittoBroker) -> None:
    release = asyncio.Event()
    responder = Responder(broker.host, broker.port)

    @responder.handle("waited/+/set")
    async def slow(request: dict) -> dict:
        await release.wait()
        return {"done": True}

    listener = Listener(broker, "waited/+/set/response/#")
    try:
        async with responder:
            request = json.dumps({"request_id": uuid.uuid4().hex}).encode()
            copies = 1 + 40  # a request and a flood of its repeats while it runs
            for _ in range(copies):
                listener.client.publish("waited/d/set", request)
            deadline = time.monotonic() + 30
            while responder.stats()["requests"] < copies and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            stats = responder.stats()
            assert (stats["repeats_answered_from_cache"], stats["repeats_dropped"]) == (16, copies - 17)
            release.set()
            answers: List[Dict[str, Any]] = [
                await asyncio.get_running_loop().run_in_executor(None, listener.next) for _ in range(17)
            ]
            assert all(answer == answers[0] and answer["result"] == {"done": True} for answer in answers)
            assert responder.stats()["answers_queued"] == 17
    finally:
        listener.close()


async def test_each_kind_of_dropped_request_is_logged_once(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mqtt_rpc")
    responder = Responder(broker.host, broker.port)

    @responder.handle("junk/+/set")
    async def echo(request: dict) -> dict:
        return {"n": request["n"]}

    listener = Listener(broker, "junk/+/set/response/#")
    try:
        async with responder:
            for junk in ("not json", "[1, 2]", '"text"'):
                listener.client.publish("junk/d/set", junk)
            # Same connection, so after the junk: once it is answered, the junk was taken.
            listener.client.publish("junk/d/set", json.dumps({"request_id": uuid.uuid4().hex, "n": 1}))
            answer = await asyncio.get_running_loop().run_in_executor(None, listener.next)
            assert answer["result"] == {"n": 1}
            assert responder.stats()["dropped_malformed"] == 3
    finally:
        listener.close()
    (record,) = [r for r in caplog.records if "dropped_malformed" in r.getMessage()]
    assert record.levelno == logging.WARNING
