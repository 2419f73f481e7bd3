"""The broker matrix: the same conformance tests on every broker this machine can run
(Mosquitto, RabbitMQ's MQTT plugin, NATS server's MQTT listener, ejabberd's mod_mqtt,
amqtt). Where a broker lacks a feature, the test asserts what the client does instead, as
docs/brokers.md describes. Run only these with `pytest -m brokers`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from typing import AsyncIterator, Iterator, List

import pytest

from brokers import STARTERS, RunningBroker, start_amqtt
from mqtt_rpc import (
    MqttRpcClient,
    NoRespondersError,
    NotConnectedError,
    PayloadError,
    Responder,
    RpcTimeoutError,
    SubscriptionRefusedError,
)
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice, find_responder
from test_rolling_deploy import restart_python_pool

pytestmark = pytest.mark.brokers

DEVICES = "+/device/control/set"


@pytest.fixture(scope="session", params=list(STARTERS))
def matrix_broker(request: pytest.FixtureRequest) -> Iterator[RunningBroker]:
    broker = STARTERS[request.param]()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def matrix_device(matrix_broker: RunningBroker) -> Iterator[ResponderDevice]:
    with ResponderDevice.start(matrix_broker, DEVICES, options=["--qos", "1", *matrix_broker.device_options()]) as device:
        yield device


def protocols(broker: RunningBroker) -> List[str]:
    return ["3.1.1", "5"] if broker.profile.mqtt5 else ["3.1.1"]


def topic(kind: str = "device") -> str:
    return f"m{uuid.uuid4().hex[:10]}/{kind}/control/set"


@pytest.fixture
async def clients(matrix_broker: RunningBroker) -> AsyncIterator[List[MqttRpcClient]]:
    """A connected QoS 1 client per protocol version the broker has."""
    opened = []
    for protocol in protocols(matrix_broker):
        client = MqttRpcClient(
            matrix_broker.host, matrix_broker.port, protocol=protocol, qos=1, **matrix_broker.credentials()
        )
        await client.connect()
        opened.append(client)
    yield opened
    for client in opened:
        assert client.pending == 0, f"{client.pending} calls left pending"
        await client.close()


async def test_the_drop_in_call(clients: List[MqttRpcClient], matrix_device: ResponderDevice) -> None:
    for client in clients:
        device_topic = topic()
        payload = json.dumps({"action": "GET_HEALTH_CHECK"})
        reply = await client.call(device_topic, payload, timeout=10)
        assert reply["result"]["topic"] == device_topic
        assert reply["result"]["request"] == {"action": "GET_HEALTH_CHECK", "request_id": reply["request_id"]}
        assert client.reply_subscriptions == 1


async def test_a_thousand_concurrent_calls_each_get_their_own_answer(
    clients: List[MqttRpcClient], matrix_device: ResponderDevice
) -> None:
    for client in clients:
        topics = [topic() for _ in range(50)]
        replies = await asyncio.gather(*(client.call(topics[i % 50], {"i": i}, timeout=60) for i in range(1000)))
        assert [r["result"]["request"]["i"] for r in replies] == list(range(1000))
        assert [r["result"]["topic"] for r in replies] == [topics[i % 50] for i in range(1000)]
        stats = client.stats()
        assert stats["replies_dropped_stray"] == 0 and stats["replies_dropped_duplicate"] == 0


async def test_a_silent_device_times_out_and_leaves_nothing(
    clients: List[MqttRpcClient], matrix_broker: RunningBroker
) -> None:
    async with MqttRpcClient(matrix_broker.host, matrix_broker.port, **matrix_broker.credentials()) as client:
        started = time.monotonic()
        with pytest.raises(RpcTimeoutError):
            await client.call(topic("silent"), {}, timeout=0.5)
        assert time.monotonic() - started < 5
        assert client.pending == 0


async def test_bad_replies_are_dropped_and_counted(clients: List[MqttRpcClient], matrix_device: ResponderDevice) -> None:
    for client in clients:
        reply = await client.call(topic(), {"_responder": {"garbage_first": True}}, timeout=10)
        assert "result" in reply
        assert client.stats()["replies_dropped_malformed"] >= 1


async def test_inbox_replies(matrix_broker: RunningBroker, matrix_device: ResponderDevice) -> None:
    for protocol in protocols(matrix_broker):
        options = dict(protocol=protocol, replies="inbox", **matrix_broker.credentials())
        async with MqttRpcClient(matrix_broker.host, matrix_broker.port, **options) as client:
            replies = await asyncio.gather(*(client.call(topic(), {"i": i}, timeout=10) for i in range(20)))
            assert [r["result"]["request"]["i"] for r in replies] == list(range(20))
            assert client.reply_subscriptions == 1


async def test_mqtt5_request_response_properties(matrix_broker: RunningBroker) -> None:
    if not matrix_broker.profile.mqtt5:
        # Documented difference: no MQTT 5, and connect() says so instead of hanging.
        client = MqttRpcClient(
            matrix_broker.host, matrix_broker.port, protocol="5", connect_timeout=3, **matrix_broker.credentials()
        )
        with pytest.raises(NotConnectedError, match='protocol "3.1.1"'):
            await client.connect()
        return
    # A plain MQTT 5 device: it answers only through the Response Topic and Correlation Data.
    options = ["--protocol", "5", "--mqtt5-only", *matrix_broker.device_options()]
    with ResponderDevice.start(matrix_broker, "+/mqtt5/control/set", options=options):
        async with MqttRpcClient(matrix_broker.host, matrix_broker.port, protocol="5", **matrix_broker.credentials()) as client:
            mqtt5_topic = topic("mqtt5")
            reply = await client.call(mqtt5_topic, {"x": 1}, timeout=10)
            assert reply["result"]["topic"] == mqtt5_topic and "request_id" not in reply


async def test_shared_subscriptions_for_responder_pools(matrix_broker: RunningBroker) -> None:
    options = ["--share-group", "pool", *matrix_broker.device_options()]
    group = "+/pooled/control/set"
    support = matrix_broker.profile.shared_subscriptions
    if support == "refused":
        # Documented difference: the broker drops the connection at the SUBSCRIBE; the
        # responder stops with a message that says why instead of reconnecting for ever.
        # With MQTT 5 its CONNACK says so up front.
        for protocol in protocols(matrix_broker):
            command = [str(find_responder()), "--host", matrix_broker.host, "--port", str(matrix_broker.port)]
            command += ["--protocol", protocol, *options, group]
            ended = subprocess.run(command, capture_output=True, text=True, timeout=30)
            assert ended.returncode != 0 and "may not support shared subscriptions" in ended.stderr, ended.stderr
            if protocol == "5":
                assert "CONNACK" in ended.stderr, ended.stderr
        return
    async with MqttRpcClient(matrix_broker.host, matrix_broker.port, **matrix_broker.credentials()) as client:
        with ResponderDevice.start(matrix_broker, group, options=options), ResponderDevice.start(
            matrix_broker, group, options=options
        ):
            calls = [client.call(topic("pooled"), {"i": i}, timeout=3) for i in range(40)]
            results = await asyncio.gather(*calls, return_exceptions=True)
        if support == "yes":
            # Each request went to one member of the pool: one answer each, no duplicate.
            assert all(isinstance(r, dict) for r in results), results
            assert client.stats()["replies_dropped_duplicate"] == 0
        else:
            # Documented difference: `$share/...` is a plain filter here that no topic
            # matches, so the pool never sees a request; calls end by their timeouts.
            assert all(isinstance(r, RpcTimeoutError) for r in results), results
        assert client.pending == 0


async def test_a_rolling_restart_of_a_pool_loses_no_call(matrix_broker: RunningBroker) -> None:
    if matrix_broker.profile.shared_subscriptions != "yes":
        pytest.skip("no shared subscriptions on this broker: no pool to deploy (docs/brokers.md)")
    for protocol in protocols(matrix_broker):
        failures, left = await restart_python_pool(matrix_broker, protocol, 1, **matrix_broker.credentials())
        assert all(stats["leave_unsent"] == 0 for stats in left)
        assert failures == [], (protocol, failures[:3])


async def test_no_responders(matrix_broker: RunningBroker) -> None:
    protocol = "5" if matrix_broker.profile.mqtt5 else "3.1.1"
    options = dict(protocol=protocol, qos=1, **matrix_broker.credentials())
    async with MqttRpcClient(matrix_broker.host, matrix_broker.port, **options) as client:
        started = time.monotonic()
        expected = NoRespondersError if matrix_broker.profile.no_responders else RpcTimeoutError
        with pytest.raises(expected):
            await client.call(topic("nobody"), {}, timeout=30 if matrix_broker.profile.no_responders else 1)
        if matrix_broker.profile.no_responders:
            assert time.monotonic() - started < 10  # the PUBACK, not the 30 s timeout
        assert client.pending == 0


async def test_a_brokers_maximum_packet_size_is_kept_before_publishing() -> None:
    # Mosquitto announces its maximum in the MQTT 5 CONNACK; a larger request would make
    # it drop the connection, so the client refuses it first.
    with MosquittoBroker.start(extra_config=["max_packet_size 2000"]) as broker:
        async with MqttRpcClient(broker.host, broker.port, protocol="5") as client:
            with pytest.raises(PayloadError, match="maximum packet size of 2000"):
                await client.call("dev1/device/control/set", {"blob": "x" * 3000})
            assert client.connected and client.stats()["calls_started"] == 0


def test_a_responder_whose_filter_the_broker_refuses_fails_start_naming_it() -> None:
    # Before, the refused SUBACK counted as granted: the responder said it was serving,
    # and no request ever reached it.
    broker = start_amqtt(taboo_topics=True)
    try:
        responder = Responder(broker.host, broker.port)

        @responder.handle("prohibited")
        async def never(request: dict) -> dict:
            return {}

        async def start() -> None:
            with pytest.raises(SubscriptionRefusedError, match="prohibited"):
                await responder.start()

        asyncio.run(start())
    finally:
        broker.stop()
