"""The way services meet AWS IoT Core in production, tried on Mosquitto: several workers
started from one configuration (one client id each, or a takeover fight the client
recognises and slows down), a subscription quota that counts every filter, and one CONNECT
a second per client id."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from typing import List, Optional, Set, Tuple

import pytest

from mqtt_rpc import Reconnect

from mqtt_rpc import (
    ConnectionEvent,
    ConnectionLostError,
    MqttRpcClient,
    NotConnectedError,
    Responder,
    RpcTimeoutError,
)
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice

FIGHT_SECONDS = 8


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_two_clients_sharing_an_id_settle_to_about_one_connect_a_second(
    broker: MosquittoBroker, seed_device: ResponderDevice, protocol: str, caplog: pytest.LogCaptureFixture
) -> None:
    client_id = f"web-service-{uuid.uuid4().hex[:6]}"
    caplog.set_level(logging.DEBUG, logger="mqtt_rpc")
    events: List[ConnectionEvent] = []
    first = MqttRpcClient(broker.host, broker.port, client_id=client_id, protocol=protocol, on_connection_change=events.append)
    second = MqttRpcClient(broker.host, broker.port, client_id=client_id, protocol=protocol)
    await first.connect()
    await second.connect()  # takes the id over: the broker closes the first connection
    outcomes: List[str] = []

    async def keep_calling(client: MqttRpcClient, name: str) -> None:
        n = 0
        deadline = time.monotonic() + FIGHT_SECONDS
        while time.monotonic() < deadline:
            n += 1
            topic = f"{name}{n}-{uuid.uuid4().hex[:6]}/device/control/set"
            try:
                reply = await client.call(topic, {"n": n}, timeout=1)
            except (RpcTimeoutError, ConnectionLostError, NotConnectedError) as error:
                outcomes.append(type(error).__name__)
            else:
                # Never another call's answer.
                assert reply["result"]["topic"] == topic and reply["result"]["request"]["n"] == n
                outcomes.append("answered")

    await asyncio.gather(*(keep_calling(c, name) for c, name in ((first, "a"), (second, "b")) for _ in range(4)))
    connects = broker.connections(client_id)
    stats = [first.stats()["takeovers"], second.stats()["takeovers"]]
    # The metrics export the same count, once per client.
    assert exported_takeovers(first) == (stats[0], stats[0])
    await first.close(grace=0)
    await second.close(grace=0)
    # 77 CONNECTs in 6 s before the backoff learned to hold: now about one a second or fewer.
    assert 2 < connects <= FIGHT_SECONDS * 1.5 + 2, connects
    assert sum(stats) >= 1, stats
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    taken_over = [m for m in errors if "taken over" in m and client_id in m]
    assert taken_over, errors
    # Once per episode, not once per loss.
    assert len(taken_over) <= 2, taken_over
    assert any(event.taken_over and not event.connected for event in events) or stats[0] == 0
    assert first.pending == second.pending == 0
    assert outcomes, "calls were made"


def exported_takeovers(client: MqttRpcClient) -> Tuple[float, float]:
    """`takeovers` as a Prometheus scrape and an OpenTelemetry reading show it."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from mqtt_rpc.metrics import OpenTelemetryMetrics, PrometheusCollector

    registry = CollectorRegistry()
    registry.register(PrometheusCollector(client))
    scraped = [
        sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.name == "mqtt_rpc_client_takeovers_total"
    ]
    reader = InMemoryMetricReader()
    OpenTelemetryMetrics(client, meter_provider=MeterProvider(metric_readers=[reader]))
    data = reader.get_metrics_data()
    assert data is not None
    read = [
        point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "mqtt_rpc.client.takeovers"
        for point in metric.data.data_points
    ]
    assert len(scraped) == len(read) == 1, (scraped, read)
    return scraped[0], read[0]


async def test_two_responders_sharing_an_id_say_so_and_back_off(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    client_id = f"device-svc-{uuid.uuid4().hex[:6]}"
    caplog.set_level(logging.WARNING, logger="mqtt_rpc")
    responders = [responder_with_handlers(1, host=broker.host, port=broker.port, client_id=client_id, protocol="5") for _ in range(2)]
    for responder in responders:
        await responder.start()
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline and sum(r.stats()["takeovers"] for r in responders) < 2:
        await asyncio.sleep(0.05)
    for responder in responders:
        await responder.close()
    assert sum(r.stats()["takeovers"] for r in responders) >= 2
    assert broker.connections(client_id) <= 8
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("taken over" in m and client_id in m for m in errors), errors


WORKER = """
import asyncio, json, os
from mqtt_rpc import MqttRpcClient

async def main():
    client = MqttRpcClient()          # everything from MQTT_RPC_URL
    reply = await client.call(f"w{os.getpid()}/device/control/set", {})
    print(json.dumps({"client_id": client.client_id, "pid": os.getpid(), "topic": reply["result"]["topic"]}))
    await client.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("encoded", [False, True], ids=["raw-braces", "percent-encoded"])
def test_workers_started_from_one_url_each_get_their_own_client_id(
    broker: MosquittoBroker, seed_device: ResponderDevice, encoded: bool
) -> None:
    placeholder = "%7Bpid%7D" if encoded else "{pid}"
    run = uuid.uuid4().hex[:6]
    url = f"mqtt://{broker.host}:{broker.port}?client_id=worker-{run}-{placeholder}"
    environment = {**os.environ, "MQTT_RPC_URL": url}
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER], env=environment, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    said = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        said.append(json.loads(out))
    ids = [s["client_id"] for s in said]
    assert ids == [f"worker-{run}-{s['pid']}" for s in said] and len(set(ids)) == 2
    # Each connected once, under its own id: nobody took anybody over.
    assert [broker.connections(i) for i in ids] == [1, 1]


def test_client_id_placeholders_are_expanded_once_and_checked_before_connecting() -> None:
    client = MqttRpcClient("127.0.0.1", 1, client_id="svc-{hostname}-{pid}-{random}")
    expanded = client.client_id
    assert expanded.startswith("svc-") and f"-{os.getpid()}-" in expanded and "{" not in expanded
    random_part = expanded.rsplit("-", 1)[1]
    assert len(random_part) == 8 and random_part == random_part.lower()
    assert MqttRpcClient("127.0.0.1", 1, client_id="svc-{random}").client_id != MqttRpcClient(
        "127.0.0.1", 1, client_id="svc-{random}"
    ).client_id
    pool = MqttRpcClient("127.0.0.1", 1, client_id="svc-{pid}", connections=3)
    assert pool.client_ids == [f"svc-{os.getpid()}-{i}" for i in range(3)]
    with pytest.raises(ValueError, match=r"\{worker\}"):
        MqttRpcClient("127.0.0.1", 1, client_id="svc-{worker}")
    with pytest.raises(ValueError, match=r"\{worker\}"):
        MqttRpcClient.from_url("mqtt://127.0.0.1:1?client_id=svc-%7Bworker%7D")
    with pytest.raises(ValueError, match="128"):
        MqttRpcClient("127.0.0.1", 1, client_id="x" * 129, limits="aws-iot-core")
    with pytest.raises(ValueError, match="pool suffix"):
        MqttRpcClient("127.0.0.1", 1, client_id="x" * 127, limits="aws-iot-core", connections=2)
    assert MqttRpcClient("127.0.0.1", 1, client_id="x" * 129).client_id == "x" * 129  # not AWS: allowed
    responder = Responder("127.0.0.1", 1, client_id="dev-{pid}")
    assert responder.client_id == f"dev-{os.getpid()}"
    with pytest.raises(ValueError, match=r"\{nope\}"):
        Responder("127.0.0.1", 1, client_id="dev-{nope}")


async def test_a_client_id_kept_across_reconnects_and_reopening(broker: MosquittoBroker, device_topic: str) -> None:
    client = MqttRpcClient(broker.host, broker.port, client_id="keep-{random}")
    expanded = client.client_id
    await client.call(device_topic, {})
    await client.close()
    await client.call(device_topic, {})  # connects again: the same id
    assert client.client_id == expanded and broker.connections(expanded) == 2
    await client.close()


def held_at_most(events: List[Tuple[str, str]]) -> int:
    """The most filters held at once, replaying the broker's subscribe and unsubscribe log."""
    held: Set[str] = set()
    most = 0
    for kind, topic_filter in events:
        (held.add if kind == "subscribe" else held.discard)(topic_filter)
        most = max(most, len(held))
    return most


@pytest.mark.parametrize("reply_to", ["topic", "inbox"])
async def test_the_aws_preset_counts_the_presence_filter_in_its_50(
    broker: MosquittoBroker, seed_device: ResponderDevice, reply_to: str
) -> None:
    run = uuid.uuid4().hex[:6]
    topics = [f"aws{i}-{run}/device/control/set" for i in range(60)]
    async with MqttRpcClient(
        broker.host, broker.port, limits="aws-iot-core", presence="aws-lifecycle", replies=reply_to
    ) as client:
        replies = await asyncio.gather(*(client.call(topic, {"i": i}, timeout=30) for i, topic in enumerate(topics)))
        assert [r["result"]["topic"] for r in replies] == topics
        events = broker.subscription_events(client.client_id)
    assert "$aws/events/presence/+/+" in {f for _, f in events}
    most = held_at_most(events)
    assert most <= 50, events
    if reply_to == "topic":
        assert most == 50  # the quota was used to its last place, not past it


def responder_with_handlers(count: int, **options: object) -> Responder:
    responder = Responder(**options)  # type: ignore[arg-type]
    for i in range(count):

        @responder.handle(f"quota/h{i}/+/set")
        async def handler(request: dict) -> dict:
            return {}

    return responder


async def test_a_responder_over_the_subscription_quota_is_refused_before_subscribing(broker: MosquittoBroker) -> None:
    client_id = f"dev-{uuid.uuid4().hex[:6]}"
    over = responder_with_handlers(48, host=broker.host, port=broker.port, client_id=client_id, limits="aws-iot-core", name="svc")
    with pytest.raises(ValueError, match=r"needs 51 subscriptions \(48 handler filters and 3 discovery filters\).*allows 50"):
        await over.start()
    assert broker.connections(client_id) == 0 and broker.subscribes(client_id) == []
    # 47 handler filters and the 3 of discovery fill the quota exactly: served.
    fits = responder_with_handlers(47, host=broker.host, port=broker.port, client_id=client_id, limits="aws-iot-core", name="svc")
    async with fits:
        assert len(broker.subscribes(client_id)) == 50
    # Without the preset nothing is counted.
    async with responder_with_handlers(60, host=broker.host, port=broker.port):
        pass
    # The preset's topic rules apply to handler filters: an answer two levels deeper than
    # a request on a/b/c/d/e/f would have 7 slashes, one on a/b/c/d/e/f/g 8.
    deep = responder_with_handlers(0, host=broker.host, port=broker.port, limits="aws-iot-core")

    @deep.handle("a/b/c/d/e/f/g")
    async def too_deep(request: dict) -> dict:
        return {}

    with pytest.raises(ValueError, match="slashes"):
        await deep.start()


class ClosingProxy:
    """A TCP relay to the broker that closes each connection right after the broker's
    first answer (the CONNACK), as a broker taking the connection away would, and notes
    when each connection arrived."""

    def __init__(self, broker: MosquittoBroker) -> None:
        self.broker = broker
        self.arrivals: List[float] = []
        self.server: Optional[asyncio.base_events.Server] = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.arrivals.append(time.monotonic())
        broker_reader, broker_writer = await asyncio.open_connection(self.broker.host, self.broker.port)
        connect = await client_reader.read(65536)
        broker_writer.write(connect)
        connack = await broker_reader.read(65536)
        client_writer.write(connack)
        await client_writer.drain()
        for writer in (client_writer, broker_writer):
            writer.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()


async def test_connects_under_the_aws_preset_are_at_least_a_second_apart(broker: MosquittoBroker) -> None:
    proxy = ClosingProxy(broker)
    port = await proxy.start()
    # Even with a reconnect delay shorter than AWS allows, CONNECTs keep one second apart.
    client = MqttRpcClient("127.0.0.1", port, limits="aws-iot-core", reconnect=Reconnect(min_delay=0.05))
    await client.connect()
    while len(proxy.arrivals) < 5:
        await asyncio.sleep(0.05)
    await client.close(grace=0)
    proxy.close()
    gaps = [later - earlier for earlier, later in zip(proxy.arrivals, proxy.arrivals[1:])]
    # A lower bound the client guarantees (the clock only adds to it on a busy machine).
    assert min(gaps) >= 0.98, gaps
