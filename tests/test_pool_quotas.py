"""A pool of connections behind one client, and the per-connection quotas it keeps on the
client (publish rate, reply subscriptions, payload size), as AWS IoT Core needs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from typing import Dict, Iterator, List, Tuple

import paho.mqtt.client as paho
import pytest

from mqtt_rpc import Limits
from paho.mqtt.enums import CallbackAPIVersion

from mqtt_rpc import MqttRpcClient, PayloadError, RpcTimeoutError
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice


RECORDER = """
import json, sys, time
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

host, port, topic_filter = sys.argv[1], int(sys.argv[2]), sys.argv[3]
arrivals = []

def on_message(client, userdata, message):
    arrived = time.monotonic()
    request = json.loads(message.payload)
    sender = request["reply_to"].split("/")[-2]
    arrivals.append((arrived, sender))
    answer = {"request_id": request["request_id"], "result": {"sender": sender}}
    client.publish(request["reply_to"], json.dumps(answer))

client = paho.Client(CallbackAPIVersion.VERSION2)
client.on_message = on_message
client.on_subscribe = lambda *args: print("READY", flush=True)
client.on_connect = lambda c, *args: c.subscribe(topic_filter, qos=0)
client.connect(host, port)
client.loop_start()
sys.stdin.read()  # until the test closes stdin
client.loop_stop()
print(json.dumps(arrivals), flush=True)
"""


class RecordingDevice:
    """A paho-mqtt device, in its own process (so that the test's event loop cannot delay
    its clock readings), that answers inbox-mode requests and records, for each one, when it
    arrived and which connection sent it (the client id in its ``reply_to``)."""

    def __init__(self, broker: MosquittoBroker, topic_filter: str) -> None:
        self.arrivals: List[Tuple[float, str]] = []
        self._process = subprocess.Popen(
            [sys.executable, "-c", RECORDER, broker.host, str(broker.port), topic_filter],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        assert self._process.stdout.readline().strip() == "READY", "the recording device did not subscribe"

    def stop(self) -> List[Tuple[float, str]]:
        """Stops the device and returns what it recorded."""
        if self._process.poll() is None:
            out, _ = self._process.communicate(input="", timeout=30)
            self.arrivals = [tuple(a) for a in json.loads(out.strip().splitlines()[-1])]
        return self.arrivals

    def most_in_one_second(self) -> Dict[str, int]:
        """For each sender, the most requests that arrived within any one second."""
        by_sender: Dict[str, List[float]] = defaultdict(list)
        for arrived, sender in self.stop():
            by_sender[sender].append(arrived)
        most = {}
        for sender, times in by_sender.items():
            times.sort()
            start, best = 0, 0
            for end, at in enumerate(times):
                while at - times[start] >= 1.0:
                    start += 1
                best = max(best, end - start + 1)
            most[sender] = best
        return most


@pytest.fixture
def recording_device(broker: MosquittoBroker) -> Iterator[RecordingDevice]:
    device = RecordingDevice(broker, "pool/+/control/set")
    yield device
    device.stop()


async def test_a_pool_keeps_every_connection_under_its_publish_rate(
    broker: MosquittoBroker, recording_device: RecordingDevice
) -> None:
    client_id = f"svc-{uuid.uuid4().hex[:6]}"
    async with MqttRpcClient(
        broker.host, broker.port, client_id=client_id, replies="inbox", connections=4, limits=Limits(publishes_per_second=50)
    ) as pool:
        assert pool.client_ids == [f"{client_id}-{i}" for i in range(4)]
        started = time.monotonic()
        replies = await asyncio.gather(*(pool.call(f"pool/dev{i % 20}/control/set", {"i": i}, timeout=20) for i in range(1000)))
        elapsed = time.monotonic() - started
        # Every call succeeded, answered on the connection that sent it.
        assert [r["request_id"] for r in replies] and len(replies) == 1000
        most = recording_device.most_in_one_second()
        assert set(most) == set(pool.client_ids), most
        assert max(most.values()) <= 50, most
        # 1,000 calls at 4 x 50 per second cannot take less than about 4 seconds.
        assert elapsed > 4
        stats = pool.stats()
        assert stats["calls_succeeded"] == 1000 and stats["publish_rate_limit"] == 200
        assert stats["calls_throttled"] > 0 and stats["throttled_wait_ms"] > 0
        per_connection = {c["client_id"]: c for c in stats["connections"]}
        assert sum(c["calls_started"] for c in per_connection.values()) == 1000
        assert all(c["calls_started"] > 0 for c in per_connection.values())
        assert pool.pending == 0


async def test_reply_subscriptions_never_exceed_their_limit(broker: MosquittoBroker, seed_device: ResponderDevice) -> None:
    run = uuid.uuid4().hex[:6]
    topics = [f"cap{i}-{run}/device/control/set" for i in range(40)]
    async with MqttRpcClient(broker.host, broker.port, limits=Limits(max_subscriptions=10)) as client:
        calls = [client.call(topic, {"n": n}, timeout=20) for n in range(3) for topic in topics]
        replies = await asyncio.gather(*calls)
        assert [r["result"]["topic"] for r in replies] == topics * 3
        assert client.reply_subscriptions <= 10 and client.pending == 0
        # The broker's own view, in the order it handled them: never more than 10 held.
        events = broker.subscription_events(client.client_id)
    held, most = set(), 0
    for kind, topic_filter in events:
        (held.add if kind == "subscribe" else held.discard)(topic_filter)
        most = max(most, len(held))
    assert most == 10, events
    # Every device's filter was held at some point (some more than once: evicted while
    # idle, subscribed again for a later call).
    assert {f for kind, f in events if kind == "subscribe"} == {f"{t}/response/+" for t in topics}


async def test_one_dropped_connection_leaves_the_others_calling(
    broker: MosquittoBroker, seed_device: ResponderDevice
) -> None:
    client_id = f"svc-{uuid.uuid4().hex[:6]}"
    events: List[str] = []
    lost = asyncio.Event()

    def on_change(event: object) -> None:
        events.append(f"{event.client_id} {'up' if event.connected else 'down'}")  # type: ignore[attr-defined]
        if not event.connected:  # type: ignore[attr-defined]
            lost.set()

    async with MqttRpcClient(
        broker.host, broker.port, client_id=client_id, connections=4, on_connection_change=on_change
    ) as pool:
        topics = [f"drop{i}-{uuid.uuid4().hex[:6]}/device/control/set" for i in range(8)]
        await asyncio.gather(*(pool.call(t, {}) for t in topics))
        # Another client taking over connection 1's client id makes the broker close it.
        intruder = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{client_id}-1")
        intruder.connect(broker.host, broker.port)
        intruder.loop_start()
        await asyncio.wait_for(lost.wait(), 10)
        intruder.loop_stop()
        intruder.disconnect()
        # Calls go on while connection 1 is away: the others take them.
        replies = await asyncio.gather(*(pool.call(t, {"after": True}, timeout=10) for t in topics * 5))
        assert len(replies) == 40

        async def reconnected() -> None:
            while not pool.connected:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(reconnected(), 15)
        stats = {c["client_id"]: c for c in pool.stats()["connections"]}
        assert stats[f"{client_id}-1"]["reconnects"] >= 1
        assert all(stats[f"{client_id}-{i}"]["reconnects"] == 0 for i in (0, 2, 3))
        assert all(stats[f"{client_id}-{i}"]["calls_failed"] == 0 for i in (0, 2, 3))
        assert f"{client_id}-1 down" in events
        assert pool.pending == 0


async def test_a_call_that_gets_no_turn_before_its_deadline_times_out_by_it(
    broker: MosquittoBroker, device_topic: str
) -> None:
    async with MqttRpcClient(broker.host, broker.port, limits=Limits(publishes_per_second=1)) as client:
        await client.call(device_topic, {})
        started = time.monotonic()
        with pytest.raises(RpcTimeoutError, match="throttled on the client") as raised:
            await client.call(device_topic, {}, timeout=0.3)
        assert 0.25 < time.monotonic() - started < 5
        assert "never sent" in str(raised.value)
        assert client.pending == 0
        # Its turn comes back once the second is over.
        await client.call(device_topic, {}, timeout=2)
        assert client.stats()["calls_throttled"] == 1


async def test_the_aws_iot_core_preset_sets_awss_limits(broker: MosquittoBroker, device_topic: str) -> None:
    async with MqttRpcClient(broker.host, broker.port, limits="aws-iot-core") as client:
        stats = client.stats()
        assert (stats["publish_rate_limit"], stats["reply_subscriptions_limit"]) == (100, 50)
        with pytest.raises(PayloadError, match="maximum packet size of 131072"):
            await client.call(device_topic, {"blob": "x" * 140_000})
        with pytest.raises(PayloadError):
            await client.call("a/b/c/d/e/f/g/h", {})  # its reply topic would have 9 slashes
        assert (await client.call(device_topic, {}))["result"]["topic"] == device_topic
    # A value given explicitly wins over the preset.
    client = MqttRpcClient(broker.host, broker.port, limits=Limits.aws_iot_core(max_subscriptions=20))
    assert client.stats()["reply_subscriptions_limit"] == 20
    with pytest.raises(ValueError, match="limits"):
        MqttRpcClient(broker.host, broker.port, limits="aws")
    with pytest.raises(ValueError, match="connections"):
        MqttRpcClient(broker.host, broker.port, connections=0)
