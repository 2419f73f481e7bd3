"""Presence: a call to a device its presence source says is offline fails at once with
`DeviceOfflineError` (or waits for it with ``wait_for_device=``), against Mosquitto, with
AWS IoT Core's lifecycle events published in AWS's format under a test prefix, retained
statuses with a real Last Will, and a source of the application's own. The answering device
is the seed device (the Rust responder), which answers every ``*/device/control/set``."""

from __future__ import annotations

import ast
import asyncio
import uuid
from typing import Any, AsyncIterator, Iterator, Optional

import pytest

from mqtt_rpc import Limits
from prometheus_client import CollectorRegistry, generate_latest

from mqtt_rpc import (
    AwsLifecycle,
    DeviceOfflineError,
    DevicePresence,
    MqttRpcClient,
    NoRespondersError,
    RetainedStatus,
    RpcTimeoutError,
    SyncMqttRpcClient,
)
from mqtt_rpc.metrics import PrometheusCollector
from mqtt_rpc.presence import Report
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice
from presence_events import AwsEvents, StatusDevice
from readme_snippet import run_readme_snippet
from waiting import until


@pytest.fixture
def aws_events(broker: MosquittoBroker) -> Iterator[AwsEvents]:
    events = AwsEvents(broker)
    try:
        yield events
    finally:
        events.stop()


@pytest.fixture
def device(seed_device: ResponderDevice) -> str:
    """A fresh device id; the seed device answers its ``{id}/device/control/set``."""
    return f"cam-{uuid.uuid4().hex[:8]}"


def topic(device: str) -> str:
    return f"{device}/device/control/set"


@pytest.fixture(params=["3.1.1", "5"])
async def aws_client(request: pytest.FixtureRequest, broker: MosquittoBroker, aws_events: AwsEvents) -> AsyncIterator[MqttRpcClient]:
    client = MqttRpcClient(
        broker.host, broker.port, protocol=request.param, presence=AwsLifecycle(prefix=aws_events.prefix)
    )
    async with client:
        yield client
        assert client.pending == 0


def stat(client: Any, name: str) -> int:
    value: int = client.stats()[name]
    return value


async def test_a_call_to_a_device_aws_says_is_offline_fails_at_once(
    aws_client: MqttRpcClient, aws_events: AwsEvents, device: str
) -> None:
    aws_events.publish(device, "connected", 1, 1_700_000_000_000)
    aws_events.publish(device, "disconnected", 1, 1_700_000_005_250, reason="MQTT_KEEP_ALIVE_TIMEOUT")
    await until(lambda: aws_client.presence(device) == DevicePresence(False, 1_700_000_005.25, "MQTT_KEEP_ALIVE_TIMEOUT"), "the disconnect")
    # A 60 s timeout: only the presence check can end the call with this error now.
    with pytest.raises(DeviceOfflineError) as raised:
        await aws_client.call(topic(device), {"action": "GET"}, timeout=60)
    error = raised.value
    assert isinstance(error, NoRespondersError) and isinstance(error, LookupError)
    assert (error.device, error.since, error.reason, error.topic) == (
        device,
        1_700_000_005.25,
        "MQTT_KEEP_ALIVE_TIMEOUT",
        topic(device),
    )
    assert device in str(error) and "MQTT_KEEP_ALIVE_TIMEOUT" in str(error)
    stats = aws_client.stats()
    assert (stats["calls_started"], stats["calls_device_offline"], stats["pending"]) == (1, 1, 0)
    # Connected again (a newer session): called as usual, and answered.
    aws_events.publish(device, "connected", 2, 1_700_000_009_000)
    await until(lambda: (aws_client.presence(device) or DevicePresence(False)).online, "the connect")
    assert (await aws_client.call(topic(device), {"action": "GET"}))["result"]["request"]["action"] == "GET"


async def test_out_of_order_events_are_resolved_by_version_number(
    aws_client: MqttRpcClient, aws_events: AwsEvents, device: str
) -> None:
    # Session 2's connect arrives before session 1's disconnect, whose timestamp is later.
    aws_events.publish(device, "connected", 2, 2_000)
    aws_events.publish(device, "disconnected", 1, 3_000, reason="CONNECTION_LOST")
    marker = f"marker-{uuid.uuid4().hex[:6]}"
    aws_events.publish(marker, "connected", 1, 1)  # published after both: once it is in, so are they
    await until(lambda: aws_client.presence(marker) is not None, "the marker")
    assert aws_client.presence(device) == DevicePresence(True, 2.0, None)
    assert (await aws_client.call(topic(device), {}))["request_id"]
    # Within a version, the later timestamp wins whatever the order of arrival.
    aws_events.publish(device, "disconnected", 2, 5_000, reason="SERVER_INITIATED_DISCONNECT")
    aws_events.publish(device, "connected", 2, 4_000)
    aws_events.publish(marker, "disconnected", 1, 2)
    await until(lambda: not (aws_client.presence(marker) or DevicePresence(True)).online, "the marker")
    assert aws_client.presence(device) == DevicePresence(False, 5.0, "SERVER_INITIATED_DISCONNECT")
    with pytest.raises(DeviceOfflineError):
        await aws_client.call(topic(device), {})


async def test_a_call_that_waits_for_its_device_is_sent_when_it_connects(
    aws_client: MqttRpcClient, aws_events: AwsEvents, device: str
) -> None:
    aws_events.publish(device, "disconnected", 7, 1_000, reason="CONNECTION_LOST")
    await until(lambda: aws_client.presence(device) is not None, "the disconnect")
    call = asyncio.ensure_future(aws_client.call(topic(device), {"n": 1}, timeout=30, wait_for_device=30))
    await until(lambda: stat(aws_client, "calls_waited_for_device") == 1, "the call to wait")
    assert aws_client.pending == 1 and not call.done()
    aws_events.publish(device, "connected", 8, 2_000)
    reply = await call
    assert reply["result"]["request"]["n"] == 1
    assert stat(aws_client, "calls_device_offline") == 0


async def test_a_wait_for_a_device_ends_with_the_calls_usual_timeout(
    aws_client: MqttRpcClient, aws_events: AwsEvents, device: str
) -> None:
    aws_events.publish(device, "disconnected", 1, 1_000)
    await until(lambda: aws_client.presence(device) is not None, "the disconnect")
    # The device does not come online within the call's timeout: the usual timeout error.
    with pytest.raises(RpcTimeoutError, match=f"timed out after 0.3s for topic '{topic(device)}'"):
        await aws_client.call(topic(device), {}, timeout=0.3, wait_for_device=10)
    # A wait shorter than the timeout ends when it does: the device is still offline.
    with pytest.raises(DeviceOfflineError, match="did not come online while the call waited"):
        await aws_client.call(topic(device), {}, timeout=30, wait_for_device=0.05)
    stats = aws_client.stats()
    assert (stats["calls_waited_for_device"], stats["calls_timed_out"], stats["calls_device_offline"]) == (2, 1, 1)


async def test_devices_never_mentioned_are_called_as_before(aws_client: MqttRpcClient, aws_events: AwsEvents, device: str) -> None:
    other = f"other-{uuid.uuid4().hex[:6]}"
    aws_events.publish(other, "disconnected", 1, 1)
    await until(lambda: aws_client.presence(other) is not None, "the other device's event")
    assert aws_client.presence(device) is None
    assert (await aws_client.call(topic(device), {"x": 1}))["result"]["request"]["x"] == 1
    assert stat(aws_client, "calls_device_offline") == 0


async def test_malformed_events_are_dropped_counted_and_never_name_a_device_from_the_topic(
    aws_client: MqttRpcClient, aws_events: AwsEvents, device: str, caplog: pytest.LogCaptureFixture
) -> None:
    aws_events.publish(None, "disconnected", 1, 1, topic_id=device)  # no clientId
    aws_events.raw(f"disconnected/{device}", b"not json")
    aws_events.raw(f"disconnected/{device}", b'{"clientId": "' + device.encode() + b'", "eventType": "gone"}')
    aws_events.raw(f"disconnected/{device}", b'{"clientId": "' + device.encode() + b'", "eventType": "disconnected"}')
    await until(lambda: stat(aws_client, "presence_events_malformed") == 4, "four drops")
    assert aws_client.presence(device) is None
    assert (await aws_client.call(topic(device), {}))["request_id"]
    dropped = [r for r in caplog.records if "presence event" in r.getMessage()]
    assert len(dropped) == 1  # said once; the counter says how many followed


async def test_a_device_whose_last_will_fires_is_seen_offline(broker: MosquittoBroker, device: str) -> None:
    template = f"presence-{uuid.uuid4().hex[:8]}/{{device}}/status"
    status = StatusDevice(broker, template.format(device=device))
    try:
        async with MqttRpcClient(broker.host, broker.port, presence=RetainedStatus(topic=template)) as client:
            # The retained "online" arrives with the subscription.
            await until(lambda: client.presence(device) is not None, "the retained status")
            assert client.presence(device) == DevicePresence(True)
            assert (await client.call(topic(device), {}))["request_id"]
            status.vanish()  # no DISCONNECT: the broker publishes the Last Will
            await until(lambda: not (client.presence(device) or DevicePresence(True)).online, "the Last Will")
            with pytest.raises(DeviceOfflineError) as raised:
                await client.call(topic(device), {}, timeout=60)
            assert raised.value.since is None and raised.value.reason is None
    finally:
        status.stop()


async def test_a_presence_source_of_your_own(broker: MosquittoBroker, device: str) -> None:
    online = asyncio.Event()

    class Fleet:
        async def run(self, report: Report) -> None:
            report(device, False, since=1_700_000_000.5, reason="battery")
            await online.wait()
            report(device, True)
            await asyncio.Event().wait()  # runs until the client closes

    async with MqttRpcClient(broker.host, broker.port, presence=Fleet()) as client:
        await until(lambda: client.presence(device) is not None, "the source's first report")
        with pytest.raises(DeviceOfflineError) as raised:
            await client.call(topic(device), {})
        assert (raised.value.since, raised.value.reason) == (1_700_000_000.5, "battery")
        waiting = asyncio.ensure_future(client.call(topic(device), {"n": 2}, wait_for_device=30))
        await until(lambda: stat(client, "calls_waited_for_device") == 1, "the call to wait")
        online.set()
        assert (await waiting)["result"]["request"]["n"] == 2


async def test_device_of_names_the_device_and_none_skips_the_check(broker: MosquittoBroker, aws_events: AwsEvents, device: str) -> None:
    def device_of(request_topic: str) -> Optional[str]:
        return None if request_topic.startswith("skip-") else request_topic.split("/")[0].removeprefix("x-")

    async with MqttRpcClient(
        broker.host, broker.port, presence=AwsLifecycle(prefix=aws_events.prefix), device_of=device_of
    ) as client:
        aws_events.publish(device, "disconnected", 1, 1)
        await until(lambda: client.presence(device) is not None, "the disconnect")
        with pytest.raises(DeviceOfflineError):
            await client.call(topic(f"x-{device}"), {})
        results = await client.call_many([(topic(f"x-{device}"), {}), (topic(f"skip-{device}"), {})], return_exceptions=True)
        assert isinstance(results[0], DeviceOfflineError) and results[1]["request_id"]
        messages = [m async for m in client.stream(topic(f"skip-{device}"), {})]
        assert messages[-1]["request_id"]


async def test_presence_from_the_url(broker: MosquittoBroker, aws_events: AwsEvents, device: str) -> None:
    url = f"mqtt://{broker.host}:{broker.port}?presence=aws-lifecycle&presence_prefix={aws_events.prefix}"
    async with MqttRpcClient.from_url(url) as client:
        aws_events.publish(device, "disconnected", 3, 30, reason="CLIENT_INITIATED_DISCONNECT")
        await until(lambda: client.presence(device) is not None, "the disconnect")
        with pytest.raises(DeviceOfflineError, match="CLIENT_INITIATED_DISCONNECT"):
            await client.call(topic(device), {})


def test_the_blocking_client(broker: MosquittoBroker, device: str) -> None:
    with SyncMqttRpcClient(broker.host, broker.port, presence="reported") as client:
        client.report_presence(device, False, reason="maintenance")
        assert client.presence(device) == DevicePresence(False, None, "maintenance")
        with pytest.raises(DeviceOfflineError, match="maintenance"):
            client.call(topic(device), {})
        client.report_presence(device, True)
        assert client.call(topic(device), {"b": 1})["result"]["request"]["b"] == 1
        # The exporters show the new outcome and gauge.
        registry = CollectorRegistry()
        registry.register(PrometheusCollector(client))
        scraped = generate_latest(registry).decode()
        me = f'client_id="{client.client_id}"'
        assert f'mqtt_rpc_client_calls_total{{{me},outcome="device_offline"}} 1.0' in scraped
        assert f"mqtt_rpc_client_presence_devices{{{me}}} 1.0" in scraped


async def test_the_presence_cache_is_bounded(broker: MosquittoBroker, aws_events: AwsEvents) -> None:
    async with MqttRpcClient(broker.host, broker.port, presence=AwsLifecycle(prefix=aws_events.prefix), limits=Limits(max_devices=10)) as client:
        for n in range(200):
            aws_events.publish(f"flood-{n}", "disconnected", 1, n)
        await until(lambda: client.presence("flood-199") is not None, "the last event")
        assert stat(client, "presence_devices") == 10
        assert client.presence("flood-0") is None  # forgotten: called as unknown


def test_bad_presence_options_are_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="presence must be"):
        MqttRpcClient("localhost", presence="sparkplug")
    with pytest.raises(ValueError, match="need presence="):
        MqttRpcClient("localhost", presence_prefix="x/y")
    with pytest.raises(ValueError, match="exactly one level"):
        MqttRpcClient("localhost", presence=RetainedStatus(topic="status/all"))
    with pytest.raises(ValueError, match="must differ"):
        MqttRpcClient("localhost", presence=RetainedStatus(online="x", offline="x"))
    with pytest.raises(ValueError, match="another source"):
        MqttRpcClient("localhost", presence="retained-status", presence_prefix="a/b")
    with pytest.raises(TypeError, match="presence must be"):
        MqttRpcClient("localhost", presence=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no presence source"):
        MqttRpcClient("localhost").report_presence("cam1", False)
    with pytest.raises(ValueError, match="wait_for_device"):
        asyncio.run(MqttRpcClient("localhost").call("a/b", {}, wait_for_device=-1))
    class Source:
        async def run(self, report: Report) -> None: ...

    with pytest.raises(ValueError, match="event loop"):
        SyncMqttRpcClient("localhost", presence=Source())


def test_the_readme_snippet_runs(broker: MosquittoBroker, tmp_path: Any) -> None:
    result = run_readme_snippet("import asyncio\n\nfrom mqtt_rpc import DeviceOfflineError", broker, tmp_path)
    offline, answer, known = result.stdout.splitlines()
    assert offline == "offline: door1 battery low"
    assert ast.literal_eval(answer) == {"locked": True}
    assert known == "DevicePresence(online=True, since=None, reason=None)"

