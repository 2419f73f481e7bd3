"""Beyond the hand-written client: batch calls, the blocking client, retries, and stats."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any, List

import pytest

from mqtt_rpc import (
    ConnectionLostError,
    MqttRpcClient,
    PayloadError,
    RemoteError,
    Retry,
    RpcTimeoutError,
    SyncMqttRpcClient,
)
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice


def fleet(n: int) -> List[str]:
    run = uuid.uuid4().hex[:6]
    return [f"fleet{i}-{run}/device/control/set" for i in range(n)]


async def test_call_many_ten_thousand_across_twenty_topics_in_order(
    client: MqttRpcClient, seed_device: ResponderDevice
) -> None:
    topics = fleet(20)
    requests = [(topics[i % 20], {"i": i}) for i in range(10_000)]
    replies = await client.call_many(requests, timeout=30)
    assert [r["result"]["request"]["i"] for r in replies] == list(range(10_000))
    assert [r["result"]["topic"] for r in replies[:40]] == [topics[i % 20] for i in range(40)]
    assert client.pending == 0
    assert client.stats()["calls_succeeded"] == 10_000


async def test_call_many_returns_exceptions_in_place(client: MqttRpcClient, seed_device: ResponderDevice) -> None:
    answering, silent = fleet(1)[0], f"nobody-{uuid.uuid4().hex[:6]}/silent/control/set"
    requests: List[Any] = []
    for i in range(30):
        if i % 3 == 0:
            requests.append((silent, {"i": i}))
        elif i % 3 == 1:
            requests.append((answering, {"i": i}))
        else:
            requests.append((answering, {"i": i, "_responder": {"error": {"code": i, "message": "no"}}}))
    started = time.monotonic()
    results = await client.call_many(requests, timeout=0.5, return_exceptions=True)
    # Together, not one after another (ten silent calls in turn would take 5 s).
    assert time.monotonic() - started < 4
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, RpcTimeoutError) and "after 0.5s" in str(result)
        elif i % 3 == 1:
            assert result["result"]["request"]["i"] == i
        else:
            assert isinstance(result, RemoteError) and result.code == i
    assert client.pending == 0


async def test_call_many_raises_the_first_failure_and_cancels_the_rest(
    client: MqttRpcClient, seed_device: ResponderDevice
) -> None:
    answering, silent = fleet(1)[0], f"nobody-{uuid.uuid4().hex[:6]}/silent/control/set"
    requests = [(answering, {"_responder": {"error": {"code": 7, "message": "no"}}})] + [(silent, {})] * 10
    with pytest.raises(RemoteError):
        await client.call_many(requests, timeout=30)
    assert client.pending == 0
    assert client.stats()["calls_cancelled"] == 10


async def test_call_many_checks_every_request_before_sending_any(client: MqttRpcClient) -> None:
    requests = [("dev1/device/control/set", {"ok": 1}), ("dev1/+/set", {"bad": "topic"})]
    with pytest.raises(PayloadError, match="request 1 of the batch"):
        await client.call_many(requests)
    assert client.stats()["calls_started"] == 0
    assert await client.call_many([]) == []


def test_the_blocking_client_from_sixteen_threads_without_an_event_loop(
    broker: MosquittoBroker, seed_device: ResponderDevice
) -> None:
    topic = fleet(1)[0]
    errors: List[BaseException] = []
    with SyncMqttRpcClient(broker.host, broker.port) as client:

        def worker(n: int) -> None:
            try:
                for i in range(50):
                    reply = client.call(topic, {"thread": n, "i": i}, timeout=10)
                    assert reply["result"]["request"] == {"thread": n, "i": i, "request_id": reply["request_id"]}
            except BaseException as error:  # reported to the test below
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert client.stats()["calls_succeeded"] == 800

        started = time.monotonic()
        with pytest.raises(RpcTimeoutError, match="after 0.3s"):
            client.call(f"nobody-{uuid.uuid4().hex[:6]}/silent/control/set", {}, timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 5  # never early; the rule is the engine's
        with pytest.raises(RemoteError) as raised:
            client.call(topic, {"_responder": {"error": {"code": 3, "message": "busy"}}})
        assert raised.value.code == 3
        assert client.pending == 0


def test_the_blocking_client_does_not_hold_the_gil_while_waiting(
    broker: MosquittoBroker, seed_device: ResponderDevice
) -> None:
    topic = fleet(1)[0]
    with SyncMqttRpcClient(broker.host, broker.port) as client:
        counted = 0
        done = threading.Event()

        def slow_call() -> None:
            client.call(topic, {"_responder": {"delay_ms": 300}})
            done.set()

        thread = threading.Thread(target=slow_call)
        thread.start()
        while not done.is_set():
            counted += 1  # pure Python work: runs only while the call lets go of the GIL
        thread.join()
        assert counted > 10_000


async def test_a_retry_sends_the_same_request_id_and_succeeds(client: MqttRpcClient, seed_device: ResponderDevice) -> None:
    topic = fleet(1)[0]
    reply = await client.call(
        topic, {"_responder": {"ignore_first": True}}, timeout=3, retry=Retry(attempts=3, backoff=0.05)
    )
    # The device ignored the first attempt and answered the repeat of the same request id.
    assert reply["result"]["seen"] == 2
    assert reply["result"]["request"]["request_id"] == reply["request_id"]
    assert client.stats()["calls_timed_out"] == 1 and client.stats()["calls_succeeded"] == 1


async def test_retries_never_outlive_the_calls_timeout(client: MqttRpcClient) -> None:
    silent = f"nobody-{uuid.uuid4().hex[:6]}/silent/control/set"
    started = time.monotonic()
    with pytest.raises(RpcTimeoutError) as raised:
        await client.call(silent, {}, timeout=2.0, retry=Retry(attempts=4, backoff=0.1))
    elapsed = time.monotonic() - started
    # Four attempts each waiting out the whole timeout would take 8 s.
    assert 2.0 <= elapsed < 5
    assert str(raised.value) == f"MQTT call timed out after 2.0s for topic '{silent}'"
    assert client.stats()["calls_started"] == 4
    assert client.pending == 0


async def test_a_remote_error_is_not_retried_unless_asked(client: MqttRpcClient, seed_device: ResponderDevice) -> None:
    topic = fleet(1)[0]
    failing = {"_responder": {"error": {"code": 1, "message": "no"}}}
    with pytest.raises(RemoteError):
        await client.call(topic, failing, retry=Retry(attempts=3))
    assert client.stats()["calls_started"] == 1
    with pytest.raises(RemoteError):
        await client.call(topic, failing, timeout=3, retry=Retry(attempts=3, backoff=0, on=(RemoteError,)))
    assert client.stats()["calls_started"] == 4


def test_retry_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        Retry(attempts=0)
    assert Retry().on == (RpcTimeoutError, ConnectionLostError)


async def test_stats_count_exactly_what_happened(client: MqttRpcClient, seed_device: ResponderDevice) -> None:
    topic, silent = fleet(1)[0], f"nobody-{uuid.uuid4().hex[:6]}/silent/control/set"
    for i in range(5):
        await client.call(topic, {"i": i})
    for _ in range(2):
        with pytest.raises(RpcTimeoutError):
            await client.call(silent, {}, timeout=0.1)
    with pytest.raises(RemoteError):
        await client.call(topic, {"_responder": {"error": {"code": 1, "message": "x"}}})
    cancelled = asyncio.ensure_future(client.call(silent, {}, timeout=30))
    await asyncio.sleep(0)  # let the call start
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await client.call(topic, {"_responder": {"garbage_first": True, "twice": True}})
    await client.call(topic, {"barrier": True})  # the duplicate above arrived before this answer

    stats = client.stats()
    counts = {k: v for k, v in stats.items() if not k.startswith("latency") and k != "connections"}
    assert counts == {
        "calls_started": 11,
        "calls_succeeded": 7,
        "calls_timed_out": 2,
        "calls_failed_remotely": 1,
        "calls_cancelled": 1,
        "calls_failed": 0,
        "calls_no_responders": 0,
        "calls_rejected": 0,
        "calls_device_offline": 0,
        "calls_waited_for_device": 0,
        "presence_events_malformed": 0,
        "presence_devices": 0,
        "replies_dropped_stray": 0,
        "replies_dropped_duplicate": 1,
        "replies_dropped_malformed": 3,
        "replies_dropped_oversized": 0,
        "progress_received": 0,
        "replies_gathered": 0,
        "calls_throttled": 0,
        "messages_dropped": 0,
        "throttled_wait_ms": 0.0,
        "publish_rate_limit": None,
        "reconnects": 0,
        "takeovers": 0,
        "pending": 0,
        "reply_subscriptions": 2,
        "reply_subscriptions_limit": 1000,
        "interim_dropped": 0,
    }
    # One connection: its own counters are the totals (interim_dropped is the client's).
    [own] = stats["connections"]
    assert own["client_id"] == client.client_id
    assert {k: v for k, v in own.items() if k in counts} == {k: v for k, v in counts.items() if k != "interim_dropped"}
    assert 0 < stats["latency_p50_ms"] <= stats["latency_p90_ms"] <= stats["latency_p99_ms"] < 1000
