"""Connections drop: reconnects keep their promises. Each test here owns its broker, since
it kills or restarts it."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from typing import AsyncIterator, Iterator, List

import pytest

from mqtt_rpc import Reconnect

from mqtt_rpc import ConnectionEvent, ConnectionLostError, MqttRpcClient, NotConnectedError, RpcTimeoutError
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice

DEVICES = "+/device/control/set"


@pytest.fixture
def own_broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker.start() as broker:
        yield broker


@pytest.fixture
def own_device(own_broker: MosquittoBroker) -> Iterator[ResponderDevice]:
    with ResponderDevice.start(own_broker, DEVICES) as device:
        yield device


class Watched:
    """A client with its connection events, to wait on them instead of sleeping."""

    def __init__(self, broker: MosquittoBroker, **options: object) -> None:
        self.events: List[ConnectionEvent] = []
        self.changed = asyncio.Event()
        self.client = MqttRpcClient(
            broker.host,
            broker.port,
            reconnect=Reconnect(min_delay=0.05, max_delay=0.2),
            on_connection_change=self._on_change,
            **options,  # type: ignore[arg-type]
        )

    def _on_change(self, event: ConnectionEvent) -> None:
        self.events.append(event)
        self.changed.set()

    async def until(self, connected: bool, count: int = 1, timeout: float = 15) -> None:
        async def wait() -> None:
            while sum(e.connected == connected for e in self.events) < count:
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout)


@pytest.fixture(params=["3.1.1", "5"])
async def watched(request: pytest.FixtureRequest, own_broker: MosquittoBroker) -> AsyncIterator[Watched]:
    w = Watched(own_broker, protocol=request.param)
    await w.client.connect()
    yield w
    await w.client.close(grace=0)
    assert w.client.pending == 0


def topic() -> str:
    return f"dev-{uuid.uuid4().hex[:8]}/device/control/set"


async def restart_in_background(broker: MosquittoBroker) -> None:
    await asyncio.get_running_loop().run_in_executor(None, broker.restart)


async def test_a_broker_crash_under_load_ends_every_call_within_its_timeout(
    watched: Watched, own_broker: MosquittoBroker, own_device: ResponderDevice
) -> None:
    client, device_topic, timeout = watched.client, topic(), 3.0
    completed = 0
    halfway = asyncio.Event()
    outcomes: List[str] = []

    async def caller(n: int) -> None:
        nonlocal completed
        for i in range(n):
            started = time.monotonic()
            try:
                await client.call(device_topic, {"i": i}, timeout=timeout)
                outcomes.append("ok")
            except (RpcTimeoutError, ConnectionLostError) as error:
                outcomes.append(type(error).__name__)
            # Nothing waits past its own timeout, whatever the network does.
            assert time.monotonic() - started < timeout + 5
            completed += 1
            if completed == 500:
                halfway.set()

    load = asyncio.gather(*(caller(100) for _ in range(20)))
    await halfway.wait()
    own_broker.kill()
    await watched.until(connected=False)
    await restart_in_background(own_broker)
    await load

    assert len(outcomes) == 2000
    assert outcomes.count("ok") >= 1000, f"{outcomes.count('ok')} calls succeeded"
    assert client.pending == 0
    await watched.until(connected=True, count=2)
    assert await asyncio.get_running_loop().run_in_executor(None, own_device.wait_until_ready)
    # After the broker is back, calls succeed and the reply filter exists on it again.
    reply = await client.call(device_topic, {"after": True}, timeout=5)
    assert reply["result"]["request"]["after"] is True
    assert f"{device_topic}/response/+" in own_broker.subscribes(client.client_id)
    assert client.stats()["reconnects"] == 1


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_calls_made_while_disconnected_wait_for_the_connection(protocol: str) -> None:
    # A broker that keeps sessions across a restart, and a device with a persistent session,
    # so that the device is subscribed whenever the broker is up: what is measured is the
    # client alone holding its calls until it is connected and subscribed again.
    with MosquittoBroker.start(persistent=True) as broker:
        device_options = ["--qos", "1", "--client-id", f"device-{uuid.uuid4().hex[:6]}", "--session-expiry", "3600"]
        with ResponderDevice.start(broker, DEVICES, options=device_options):
            watched = Watched(broker, protocol=protocol, qos=1)
            client, device_topic = watched.client, topic()
            await client.connect()
            await client.call(device_topic, {"before": True})
            await asyncio.get_running_loop().run_in_executor(None, broker.terminate)
            await watched.until(connected=False)
            assert not client.connected
            held = [asyncio.ensure_future(client.call(device_topic, {"i": i}, timeout=15)) for i in range(20)]
            fresh_topic = topic()
            fresh = asyncio.ensure_future(client.call(fresh_topic, {"new topic": True}, timeout=15))
            await asyncio.sleep(0)  # let the calls start
            assert client.pending == 21
            await restart_in_background(broker)
            replies = await asyncio.gather(*held, fresh)
            assert [r["result"]["request"].get("i") for r in replies[:20]] == list(range(20))
            assert replies[20]["result"]["topic"] == fresh_topic
            assert client.connected and client.pending == 0
            await client.close()


async def test_fail_fast_fails_calls_at_once_while_disconnected(
    own_broker: MosquittoBroker, own_device: ResponderDevice
) -> None:
    watched = Watched(own_broker, fail_fast=True)
    await watched.client.connect()
    own_broker.kill()
    await watched.until(connected=False)
    started = time.monotonic()
    with pytest.raises(NotConnectedError, match="fail_fast"):
        await watched.client.call(topic(), {}, timeout=30)
    assert time.monotonic() - started < 10  # at once, not by its 30 s timeout
    await restart_in_background(own_broker)
    await watched.until(connected=True, count=2)
    assert await asyncio.get_running_loop().run_in_executor(None, own_device.wait_until_ready)
    assert (await watched.client.call(topic(), {"back": True}))["result"]["request"]["back"] is True
    await watched.client.close()


async def test_a_call_in_flight_when_the_connection_drops_ends_by_its_timeout(
    watched: Watched, own_broker: MosquittoBroker, own_device: ResponderDevice
) -> None:
    call = asyncio.ensure_future(
        watched.client.call(topic(), {"_responder": {"delay_ms": 5000}}, timeout=1.0)
    )
    await asyncio.sleep(0)  # let the call start
    own_broker.kill()
    started = time.monotonic()
    with pytest.raises(RpcTimeoutError):
        await call
    assert time.monotonic() - started < 4  # by its own 1 s timeout, not the device's 5 s
    assert watched.client.pending == 0


async def test_connection_changes_are_reported_and_logged(
    watched: Watched, own_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mqtt_rpc")
    own_broker.kill()
    await watched.until(connected=False)
    await restart_in_background(own_broker)
    await watched.until(connected=True, count=2)
    first, lost, back = watched.events[:3]
    client_id = watched.client.client_id
    assert first == ConnectionEvent(connected=True, reconnect=False, session_present=False, client_id=client_id)
    assert not lost.connected and lost.reason and lost.client_id == client_id
    assert back.connected and back.reconnect
    messages = [r.getMessage() for r in caplog.records if r.name == "mqtt_rpc"]
    assert any("lost" in m for m in messages) and any("reconnected" in m for m in messages)
    assert [r.levelname for r in caplog.records if "lost" in r.getMessage()] == ["WARNING"]


async def test_close_waits_for_calls_in_flight(own_broker: MosquittoBroker, own_device: ResponderDevice) -> None:
    client = MqttRpcClient(own_broker.host, own_broker.port)
    await client.connect()
    answered = asyncio.ensure_future(client.call(topic(), {"_responder": {"delay_ms": 300}}))
    silent = asyncio.ensure_future(client.call("nobody/silent/set", {}, timeout=30))
    await asyncio.sleep(0)  # let the calls start
    started = time.monotonic()
    await client.close(grace=1.0)
    assert 0.9 <= time.monotonic() - started < 6  # the grace, not the silent call's 30 s
    assert (await answered)["result"]["topic"].startswith("dev-")
    with pytest.raises(ConnectionLostError):
        await silent
    assert client.pending == 0
    # DISCONNECT was sent: the broker saw a clean disconnect, not a dropped socket.
    assert own_broker.wait_for_line(lambda line: line == f"Client {client.client_id} disconnected.", 5)


async def test_a_client_dropped_without_close_lets_its_connection_go(own_broker: MosquittoBroker) -> None:
    loop = asyncio.get_running_loop()
    watched_before = len(loop._selector.get_map())  # type: ignore[attr-defined]
    client = MqttRpcClient(own_broker.host, own_broker.port)
    await client.connect()
    client_id = client.client_id
    assert len(loop._selector.get_map()) == watched_before + 1  # type: ignore[attr-defined]
    del client
    gc.collect()
    # Its tasks stopped and its socket closed: the broker sees the connection end.
    assert own_broker.wait_for_line(lambda line: client_id in line and "closed its connection" in line, 10)
    await asyncio.sleep(0)  # one turn of the loop runs the scheduled remove_reader
    assert len(loop._selector.get_map()) == watched_before  # type: ignore[attr-defined]


async def test_with_a_kept_session_an_answer_sent_while_away_completes_the_call() -> None:
    # MQTT 5, QoS 1, the default session expiry: the broker keeps the client's session (and
    # persists it across its own restart), so the reply published while the client is away
    # is delivered when it is back, and no reply filter needs subscribing again.
    with MosquittoBroker.start(persistent=True) as broker:
        device_options = ["--qos", "1", "--client-id", f"device-{uuid.uuid4().hex[:6]}", "--session-expiry", "3600"]
        with ResponderDevice.start(broker, DEVICES, options=device_options) as responder:
            watched = Watched(broker, protocol="5", qos=1)
            client, device_topic = watched.client, topic()
            await client.connect()
            slow = asyncio.ensure_future(client.call(device_topic, {"_responder": {"delay_ms": 1500}}, timeout=15))
            # Same publisher, same topic: once this answer is back, the device has the slow request.
            await client.call(device_topic, {"barrier": True})
            await asyncio.get_running_loop().run_in_executor(None, broker.terminate)
            await watched.until(connected=False)
            await restart_in_background(broker)
            reply = await slow
            assert reply["result"]["request"]["_responder"] == {"delay_ms": 1500}
            await watched.until(connected=True, count=2)
            assert watched.events[-1].session_present
            # The broker kept the reply filter: the client subscribed it again only if a
            # reconnect found no session (one can reach the broker while it shuts down).
            resubscribed = f"{device_topic}/response/+" in broker.subscribes(client.client_id)
            sessionless = any(e.connected and e.reconnect and not e.session_present for e in watched.events)
            assert resubscribed == sessionless, watched.events
            assert await asyncio.get_running_loop().run_in_executor(None, responder.wait_until_ready)
            assert (await client.call(device_topic, {"after": True}))["result"]["request"]["after"] is True
            await client.close()


async def test_an_idle_client_keeps_its_connection_with_pings(
    own_broker: MosquittoBroker, own_device: ResponderDevice
) -> None:
    # Mosquitto drops a client silent for 1.5 keep-alives, checking every few seconds (a
    # silent client with a 1 s keep-alive was dropped after 5.4 s here): two idle clients,
    # one per protocol, must still be there after 8 s.
    async with MqttRpcClient(own_broker.host, own_broker.port, keepalive=1, protocol="3.1.1") as v311, MqttRpcClient(
        own_broker.host, own_broker.port, keepalive=1, protocol="5"
    ) as v5:
        ids = {v311.client_id, v5.client_id}
        dropped = await asyncio.to_thread(
            own_broker.wait_for_line, lambda line: "exceeded timeout" in line and any(i in line for i in ids), 8
        )
        assert not dropped and v311.connected and v5.connected
        for client in (v311, v5):
            reply = await client.call(topic(), {"after": "idle"}, timeout=5)
            assert reply["result"]["request"]["after"] == "idle"
            assert client.stats()["reconnects"] == 0
