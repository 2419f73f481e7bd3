"""The device side: the Python `Responder`, and pools of responders sharing the requests."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from typing import Any, AsyncIterator, Dict, Iterator, List

import pytest

from mqtt_rpc import (
    BrokerRefusedError,
    MqttRpcClient,
    RemoteError,
    Responder,
    Retry,
    RpcHandlerError,
    RpcTimeoutError,
)
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice


def publish_raw(broker: MosquittoBroker, topic: str, payload: bytes) -> None:
    """Publishes bytes as they are (QoS 0) over a bare MQTT 3.1.1 connection: the way to
    send what no well-behaved client would."""

    def remaining_length(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n % 128, n // 128
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("!H", len(data)) + data

    with socket.create_connection((broker.host, broker.port), timeout=5) as conn:
        body = string("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 60) + string(f"raw-{uuid.uuid4().hex[:8]}")
        conn.sendall(bytes([0x10]) + remaining_length(len(body)) + body)
        assert conn.recv(4)[:2] == b"\x20\x02"  # CONNACK
        body = string(topic) + payload
        conn.sendall(bytes([0x30]) + remaining_length(len(body)) + body)
        conn.sendall(b"\xe0\x00")  # DISCONNECT


@pytest.fixture
async def served(broker: MosquittoBroker) -> Any:
    """A Python responder with async, sync and failing handlers, and what it received."""
    received: List[Dict[str, Any]] = []
    responder = Responder(broker.host, broker.port, max_concurrency=50)

    @responder.handle("+/py/control/set")
    async def control(request: Dict[str, Any]) -> Dict[str, Any]:
        received.append(request)
        if request.get("fail") == "typed":
            raise RpcHandlerError(-32001, "camera busy", {"retry_after": 5})
        if request.get("fail") == "crash":
            raise KeyError("lens")
        if "sleep" in request:
            await asyncio.sleep(request["sleep"])
        return {"status": "ok", "echo": request.get("n")}

    @responder.handle("+/py/sync/set")
    def blocking(request: Dict[str, Any]) -> Dict[str, Any]:
        received.append(request)
        time.sleep(request.get("sleep", 0))  # a blocking handler: it runs in a worker thread
        return {"thread": threading.current_thread() is not threading.main_thread()}

    async with responder:
        yield responder, received


async def test_python_responder_answers_async_and_sync_handlers(served: Any, client: MqttRpcClient) -> None:
    responder, received = served
    device = f"cam-{uuid.uuid4().hex[:6]}"
    reply = await client.call(f"{device}/py/control/set", {"n": 1})
    assert reply == {"request_id": reply["request_id"], "result": {"status": "ok", "echo": 1}}
    assert received[-1] == {"n": 1, "request_id": reply["request_id"]}
    reply = await client.call(f"{device}/py/sync/set", {})
    assert reply["result"] == {"thread": True}


async def test_handler_errors_reach_the_caller_as_remote_errors(
    served: Any, client: MqttRpcClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="mqtt_rpc")
    topic = f"cam-{uuid.uuid4().hex[:6]}/py/control/set"
    with pytest.raises(RemoteError) as raised:
        await client.call(topic, {"fail": "typed"})
    assert (raised.value.code, raised.value.message, raised.value.data) == (-32001, "camera busy", {"retry_after": 5})
    with pytest.raises(RemoteError) as raised:
        await client.call(topic, {"fail": "crash"})
    assert raised.value.code == -32603 and "KeyError" in raised.value.message
    # A crash is a bug in the application: logged at ERROR with its traceback, not hidden.
    (crash,) = [r for r in caplog.records if r.name == "mqtt_rpc" and r.levelno == logging.ERROR]
    assert crash.exc_info is not None and crash.exc_info[0] is KeyError


async def test_a_slow_handler_does_not_hold_up_the_others(served: Any, client: MqttRpcClient) -> None:
    topic = f"cam-{uuid.uuid4().hex[:6]}/py/control/set"
    slow = asyncio.ensure_future(client.call(topic, {"sleep": 30.0}, timeout=60))
    await asyncio.sleep(0)  # let the slow call start
    await asyncio.gather(*(client.call(topic, {"n": i}) for i in range(20)))
    assert not slow.done()  # the others were answered while the slow one still ran
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow


async def test_a_thousand_concurrent_calls_across_ten_devices(served: Any, client: MqttRpcClient) -> None:
    run = uuid.uuid4().hex[:6]
    topics = [f"d{i}-{run}/py/control/set" for i in range(10)]
    replies = await asyncio.gather(*(client.call(topics[n % 10], {"n": n}) for n in range(1000)))
    assert [r["result"]["echo"] for r in replies] == list(range(1000))


async def test_malformed_requests_are_dropped_and_counted(
    served: Any, client: MqttRpcClient, broker: MosquittoBroker
) -> None:
    responder, _ = served
    topic = f"cam-{uuid.uuid4().hex[:6]}/py/control/set"
    before = responder.stats()["dropped_malformed"]
    for junk in (b"not json", b"[1, 2]", b'"text"'):
        await asyncio.get_running_loop().run_in_executor(None, publish_raw, broker, topic, junk)
    # The responder keeps serving: and it handles one connection's messages in order.
    reply = await client.call(topic, {"n": 9})
    assert reply["result"]["echo"] == 9
    assert responder.stats()["dropped_malformed"] - before == 3


async def test_notifications_run_the_handler_and_get_no_answer(served: Any, client: MqttRpcClient) -> None:
    responder, received = served
    topic = f"cam-{uuid.uuid4().hex[:6]}/py/control/set"
    sent_before = responder.stats()["answers_sent"]
    await client.notify(topic, {"event": "door opened"})
    await client.call(topic, {"n": 1})  # handled after the notification
    assert {"event": "door opened"} in received
    assert responder.stats()["answers_sent"] - sent_before == 1  # the call's answer only
    assert client.stats()["replies_dropped_stray"] == 0


@pytest.fixture
def pool(broker: MosquittoBroker) -> Iterator[List[ResponderDevice]]:
    devices = [
        ResponderDevice.start(
            broker,
            "+/pool/control/set",
            options=["--protocol", "5", "--share-group", "workers", "--client-id", f"worker-{i}-{uuid.uuid4().hex[:4]}"],
        )
        for i in range(3)
    ]
    yield devices
    for device in devices:
        device.stop()


async def test_a_pool_in_one_share_group_answers_each_request_once(
    broker: MosquittoBroker, pool: List[ResponderDevice]
) -> None:
    topic = f"job-{uuid.uuid4().hex[:6]}/pool/control/set"
    async with MqttRpcClient(broker.host, broker.port, protocol="5") as client:
        replies = await client.call_many([(topic, {"n": n}) for n in range(3000)], timeout=30)
        assert [r["result"]["request"]["n"] for r in replies] == list(range(3000))
        served_by = Counter(r["result"]["responder"] for r in replies)
        assert len(served_by) == 3 and min(served_by.values()) > 0
        # Exactly once: no second answer to any request.
        stats = client.stats()
        assert stats["replies_dropped_duplicate"] == 0 and stats["replies_dropped_stray"] == 0


async def test_python_responders_in_one_share_group_split_the_requests(broker: MosquittoBroker) -> None:
    served_by: Counter = Counter()
    responders = []
    for name in ("a", "b"):
        responder = Responder(broker.host, broker.port, protocol="5", share_group="py-workers")

        @responder.handle("+/pypool/control/set")
        async def work(request: Dict[str, Any], name: str = name) -> str:
            served_by[name] += 1
            return name

        await responder.start()
        responders.append(responder)
    try:
        topic = f"job-{uuid.uuid4().hex[:6]}/pypool/control/set"
        async with MqttRpcClient(broker.host, broker.port, protocol="5") as client:
            replies = await client.call_many([(topic, {"n": n}) for n in range(400)])
            assert Counter(r["result"] for r in replies) == served_by
            assert sum(served_by.values()) == 400 and set(served_by) == {"a", "b"}
            assert client.stats()["replies_dropped_duplicate"] == 0
    finally:
        for responder in responders:
            await responder.close()


async def test_a_repeated_request_gets_the_same_answer_without_a_second_run(
    broker: MosquittoBroker, client: MqttRpcClient
) -> None:
    runs = 0
    responder = Responder(broker.host, broker.port)

    @responder.handle("+/once/control/set")
    async def move_motor(request: Dict[str, Any]) -> Dict[str, Any]:
        nonlocal runs
        runs += 1  # the side effect that must not happen twice
        await asyncio.sleep(0.4)
        return {"moved": runs}

    async with responder:
        topic = f"motor-{uuid.uuid4().hex[:6]}/once/control/set"
        # The first attempt times out while the handler runs; the retry (same request_id)
        # arrives while it still runs and gets that run's answer.
        reply = await client.call(topic, {"steps": 10}, timeout=5, retry=Retry(attempts=2, attempt_timeout=0.2, backoff=0))
        assert reply["result"] == {"moved": 1} and runs == 1
        # The same request once more, after the answer: answered again from the cache.
        body = json.dumps({"steps": 10, "request_id": reply["request_id"]}).encode()
        await asyncio.get_running_loop().run_in_executor(None, publish_raw, broker, topic, body)
        await client.call(topic, {"barrier": True})  # the broker delivered the repeat before this
        assert runs == 2  # the barrier ran; the repeat did not
        assert responder.stats()["repeats_answered_from_cache"] == 2
        # Each copy of the request got its answer: the call took one, two were duplicates.
        assert client.stats()["replies_dropped_duplicate"] == 2


@pytest.mark.parametrize("how", ["timeout", "task cancelled"])
async def test_cancellation_reaches_the_devices_handler(broker: MosquittoBroker, how: str) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()
    responder = Responder(broker.host, broker.port)

    @responder.handle("+/long/control/set")
    async def long_job(request: Dict[str, Any]) -> str:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "done"

    async with responder, MqttRpcClient(broker.host, broker.port, cancel_on_abandon=True) as client:
        topic = f"job-{uuid.uuid4().hex[:6]}/long/control/set"
        if how == "timeout":
            with pytest.raises(RpcTimeoutError):
                await client.call(topic, {}, timeout=0.5)
        else:
            call = asyncio.ensure_future(client.call(topic, {}, timeout=30))
            await asyncio.wait_for(started.wait(), 5)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        await asyncio.wait_for(cancelled.wait(), 5)
        assert client.pending == 0
        assert responder.stats()["handlers_cancelled"] == 1
        assert responder.stats()["answers_sent"] == 0


@pytest.fixture
async def reporting(broker: MosquittoBroker) -> AsyncIterator[Responder]:
    responder = Responder(broker.host, broker.port)

    @responder.handle("+/progress/control/set")
    async def update(request: Dict[str, Any], report: Any) -> Dict[str, Any]:
        for step in range(1, request.get("steps", 0) + 1):
            report({"step": step})
            await asyncio.sleep(request.get("pause", 0))
        if request.get("then_quiet"):
            await asyncio.sleep(30)
        while request.get("forever"):
            report("still working")
            await asyncio.sleep(0.05)
        return {"updated": True}

    await responder.start()
    yield responder
    await responder.close_now()  # some handlers here never end by themselves


async def test_stream_yields_progress_then_the_answer(reporting: Responder, client: MqttRpcClient) -> None:
    topic = f"fw-{uuid.uuid4().hex[:6]}/progress/control/set"
    messages = [m async for m in client.stream(topic, {"steps": 5}, timeout=5)]
    assert [m.get("progress") for m in messages[:5]] == [{"step": s} for s in range(1, 6)]
    assert messages[5]["result"] == {"updated": True} and len(messages) == 6
    assert {m["request_id"] for m in messages} == {messages[5]["request_id"]}
    # call() ignores the progress and returns the answer.
    assert (await client.call(topic, {"steps": 3}))["result"] == {"updated": True}
    assert client.stats()["progress_received"] == 8 and client.pending == 0


async def test_stream_from_the_rust_device(client: MqttRpcClient, seed_device: ResponderDevice) -> None:
    topic = f"fw-{uuid.uuid4().hex[:6]}/device/control/set"
    messages = [m async for m in client.stream(topic, {"_responder": {"progress_steps": 3}})]
    assert [m.get("progress") for m in messages] == [1, 2, 3, None]


async def test_idle_timeout_fires_when_the_device_goes_quiet(reporting: Responder, client: MqttRpcClient) -> None:
    topic = f"fw-{uuid.uuid4().hex[:6]}/progress/control/set"
    received = []
    started = time.monotonic()
    with pytest.raises(RpcTimeoutError, match="neither progress nor an answer for 0.3s"):
        async for message in client.stream(topic, {"steps": 1, "then_quiet": True}, timeout=10, idle_timeout=0.3):
            received.append(message)
    assert len(received) == 1 and time.monotonic() - started < 6  # idle, not the 10 s timeout
    assert client.pending == 0


async def test_timeout_bounds_a_device_that_reports_forever(reporting: Responder, client: MqttRpcClient) -> None:
    topic = f"fw-{uuid.uuid4().hex[:6]}/progress/control/set"
    started = time.monotonic()
    with pytest.raises(RpcTimeoutError, match="after 0.6s"):
        async for _ in client.stream(topic, {"forever": True}, timeout=0.6, idle_timeout=0.3):
            pass
    assert 0.6 <= time.monotonic() - started < 5
    assert client.pending == 0


async def test_the_wait_queue_bound_holds_under_a_burst(broker: MosquittoBroker) -> None:
    # Requests arrive in batches of up to a thousand per loop turn: the bound must count a
    # request from the moment it is taken, or a whole batch slips past it.
    release = asyncio.Event()
    responder = Responder(broker.host, broker.port, max_concurrency=4, max_queued=100)

    @responder.handle("burst/+/set")
    async def slow(request: dict) -> dict:
        await release.wait()
        return {"ok": True}

    burst = 2_000
    async with responder:
        async with MqttRpcClient(broker.host, broker.port) as client:
            calls = asyncio.ensure_future(
                client.call_many([("burst/d/set", {"i": i}) for i in range(burst)], timeout=60, return_exceptions=True)
            )
            def taken() -> int:  # requests the responder has handed a task or refused
                stats = responder.stats()
                return int(stats["requests_overloaded"] + stats["handlers_running_or_waiting"])

            while taken() < burst:
                await asyncio.sleep(0.01)
            assert responder.stats()["requests_overloaded"] == burst - 104
            release.set()
            results = await calls
    answered = [r for r in results if isinstance(r, dict)]
    overloaded = [r for r in results if isinstance(r, RemoteError) and r.code == -32000]
    assert (len(answered), len(overloaded)) == (104, burst - 104)


async def test_closing_writes_every_answer_given_before_disconnecting(broker: MosquittoBroker) -> None:
    # A responder leaving a pool (a rolling deploy) answers what it runs, then leaves.
    started, release = asyncio.Semaphore(0), asyncio.Event()
    client_id = f"leaving-{uuid.uuid4().hex[:6]}"
    responder = Responder(broker.host, broker.port, client_id=client_id)

    @responder.handle("leaving/+/set")
    async def slow(request: dict) -> dict:
        started.release()
        await release.wait()
        return {"n": request["n"]}

    await responder.start()
    async with MqttRpcClient(broker.host, broker.port) as client:
        calls = [asyncio.ensure_future(client.call("leaving/d/set", {"n": n}, timeout=30)) for n in range(10)]
        for _ in range(10):
            await asyncio.wait_for(started.acquire(), 10)
        closing = asyncio.ensure_future(responder.close(grace=10))
        release.set()
        await closing
        replies = await asyncio.gather(*calls)
    assert [r["result"]["n"] for r in replies] == list(range(10))
    assert responder.stats()["answers_sent"] == 10
    broker.sync_log()
    assert f"Client {client_id} disconnected." in broker.lines, "the responder left without a DISCONNECT"


@pytest.fixture(scope="module")
def locked_broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker.start(users={"device": "s3cret"}, acl="user device\ntopic readwrite allowed/#\n") as running:
        yield running


async def test_a_wrong_password_fails_start_as_the_client_does(locked_broker: MosquittoBroker) -> None:
    responder = Responder(locked_broker.host, locked_broker.port, username="device", password="wrong")

    @responder.handle("allowed/+/set")
    async def never(request: dict) -> dict:
        return {}

    with pytest.raises(BrokerRefusedError):
        await responder.start()


async def test_a_result_that_is_not_json_is_answered_as_the_handlers_error(broker: MosquittoBroker) -> None:
    # NaN and infinities have no JSON form: the caller must hear why, not wait its timeout.
    responder = Responder(broker.host, broker.port)

    @responder.handle("+/nan/set")
    async def nan(request: Dict[str, Any]) -> Any:
        return {"value": float(request["value"])}

    async with responder, MqttRpcClient(broker.host, broker.port) as client:
        for value in ("nan", "inf"):
            with pytest.raises(RemoteError) as failed:
                await client.call("d/nan/set", {"value": value})
            assert failed.value.code == -32603 and "JSON" in failed.value.message
