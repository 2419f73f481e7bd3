"""No responders, at once: with MQTT 5 and QoS 1 the broker's PUBACK says whether anybody
is subscribed to a request topic, and a failing PUBACK says the broker refused it."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Iterator

import pytest

from mqtt_rpc import (
    MqttRpcClient,
    NoRespondersError,
    PublishRejectedError,
    Retry,
    RpcTimeoutError,
)
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice


async def test_a_call_nobody_listens_to_fails_at_once(broker: MosquittoBroker, silent_topic: str) -> None:
    async with MqttRpcClient(broker.host, broker.port, protocol="5", qos=1) as client:
        started = time.monotonic()
        with pytest.raises(NoRespondersError, match="no responders") as raised:
            await client.call(silent_topic, {"action": "GET_HEALTH_CHECK"}, timeout=30)
        assert time.monotonic() - started < 10  # the PUBACK, not the 30 s timeout
        assert raised.value.topic == silent_topic
        assert isinstance(raised.value, LookupError)
        stats = client.stats()
        assert stats["calls_no_responders"] == 1 and stats["calls_timed_out"] == 0
        assert client.pending == 0


async def test_with_a_responder_present_the_same_call_is_answered(
    broker: MosquittoBroker, device_topic: str
) -> None:
    async with MqttRpcClient(broker.host, broker.port, protocol="5", qos=1) as client:
        reply = await client.call(device_topic, {"action": "GET_HEALTH_CHECK"}, timeout=10)
        assert reply["result"]["topic"] == device_topic
        assert client.stats()["calls_no_responders"] == 0


async def test_each_puback_ends_only_its_own_call_when_packet_ids_wrap(
    broker: MosquittoBroker, seed_device: ResponderDevice
) -> None:
    # Mosquitto grants 20 QoS 1 publishes in flight, so 400 calls reuse every packet id
    # many times over; answered and unanswered topics alternate.
    run = uuid.uuid4().hex[:6]
    answered = [f"wrap{i}-{run}/device/control/set" for i in range(200)]
    unanswered = [f"wrap{i}-{run}/nobody/control/set" for i in range(200)]
    topics = [t for pair in zip(answered, unanswered) for t in pair]
    async with MqttRpcClient(broker.host, broker.port, protocol="5", qos=1) as client:
        results = await asyncio.gather(*(client.call(t, {"t": t}, timeout=10) for t in topics), return_exceptions=True)
        for topic, result in zip(topics, results):
            if topic in answered:
                assert isinstance(result, dict) and result["result"]["topic"] == topic, (topic, result)
            else:
                assert isinstance(result, NoRespondersError) and result.topic == topic, (topic, result)
        assert client.pending == 0


async def test_a_retry_can_wait_for_a_device_to_come_online(broker: MosquittoBroker) -> None:
    # No responders is listed in `on`: the call tries again after the pause, and the device
    # that subscribed meanwhile answers.
    topic = f"late-{uuid.uuid4().hex[:8]}/late/control/set"
    async with MqttRpcClient(broker.host, broker.port, protocol="5", qos=1) as client:
        first = asyncio.ensure_future(
            client.call(topic, {}, timeout=10, retry=Retry(attempts=10, backoff=0.3, on=(NoRespondersError,)))
        )
        # The first attempt found nobody; the device comes up before a later one.
        async def first_attempt_found_nobody() -> None:
            while client.stats()["calls_no_responders"] == 0:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(first_attempt_found_nobody(), 5)
        with ResponderDevice.start(broker, topic):
            reply = await first
        assert reply["result"]["topic"] == topic


@pytest.mark.parametrize("protocol, qos", [("3.1.1", 1), ("5", 0)])
async def test_without_mqtt5_and_qos1_a_silent_topic_times_out_as_before(
    broker: MosquittoBroker, silent_topic: str, protocol: str, qos: int
) -> None:
    async with MqttRpcClient(broker.host, broker.port, protocol=protocol, qos=qos) as client:
        with pytest.raises(RpcTimeoutError):
            await client.call(silent_topic, {}, timeout=0.5)
        assert client.stats()["calls_no_responders"] == 0


@pytest.fixture(scope="module")
def acl_broker() -> Iterator[MosquittoBroker]:
    acl = "user service\ntopic readwrite allowed/#\n"
    with MosquittoBroker.start(users={"service": "s3cret"}, acl=acl) as running:
        yield running


async def test_a_request_the_acl_forbids_is_rejected_with_the_brokers_reason(acl_broker: MosquittoBroker) -> None:
    options = dict(protocol="5", qos=1, username="service", password="s3cret")
    async with MqttRpcClient(acl_broker.host, acl_broker.port, **options) as client:
        started = time.monotonic()
        with pytest.raises(PublishRejectedError) as raised:
            await client.call("forbidden/device/control/set", {}, timeout=30)
        assert time.monotonic() - started < 10
        assert (raised.value.reason_code, raised.value.reason) == (135, "Not authorized")
        assert "Not authorized" in str(raised.value)
        # An allowed topic with nobody listening is told apart from a forbidden one.
        with pytest.raises(NoRespondersError):
            await client.call("allowed/device/control/set", {}, timeout=10)
        assert client.stats()["calls_rejected"] == 1
        assert client.pending == 0


async def test_pubacks_stay_matched_after_a_reconnect() -> None:
    # The broker keeps sessions across its restart and the device's session is persistent,
    # so the device is subscribed whenever the broker is up.
    with MosquittoBroker.start(persistent=True) as broker:
        topic = f"back-{uuid.uuid4().hex[:8]}/device/control/set"
        device_options = ["--qos", "1", "--client-id", f"device-{uuid.uuid4().hex[:6]}", "--session-expiry", "3600"]
        with ResponderDevice.start(broker, "+/device/control/set", options=device_options):
            down = asyncio.Event()
            client = MqttRpcClient(
                broker.host, broker.port, protocol="5", qos=1,
                on_connection_change=lambda event: None if event.connected else down.set(),
            )
            async with client:
                assert (await client.call(topic, {}))["result"]["topic"] == topic
                await asyncio.get_running_loop().run_in_executor(None, broker.terminate)
                await asyncio.wait_for(down.wait(), 10)
                # Calls made while the broker is away wait for the connection.
                waiting = [
                    asyncio.ensure_future(client.call(t, {}, timeout=15))
                    for t in (topic, "nobody/after/restart", topic, "nobody/after/restart")
                ]
                await asyncio.get_running_loop().run_in_executor(None, broker.restart)
                results = await asyncio.gather(*waiting, return_exceptions=True)
                assert isinstance(results[0], dict) and isinstance(results[2], dict), results
                assert isinstance(results[1], NoRespondersError) and isinstance(results[3], NoRespondersError), results
                assert client.pending == 0
