"""The blocking client has the async client's powers, against a real broker and the Rust
device: retries, typed answers, batches, streams, scatter-gather, notifications, and
discovery; all from threads without an event loop."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Iterator, List

import pytest
from pydantic import BaseModel

from mqtt_rpc import (
    PayloadError,
    RemoteError,
    ReplyValidationError,
    Responder,
    Retry,
    RpcTimeoutError,
    SyncMqttRpcClient,
)
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice


@pytest.fixture
def sync_client(broker: MosquittoBroker, seed_device: ResponderDevice) -> Iterator[SyncMqttRpcClient]:
    with SyncMqttRpcClient(broker.host, broker.port, protocol="5", qos=1) as client:
        yield client
        assert client.pending == 0


def topic() -> str:
    return f"sync-{uuid.uuid4().hex[:10]}/device/control/set"


def test_retry_sends_the_same_request_again_until_it_is_answered(sync_client: SyncMqttRpcClient) -> None:
    reply = sync_client.call(topic(), {"_responder": {"ignore_first": True}}, timeout=3, retry=Retry(attempts=3, backoff=0.05))
    # The device saw the request id twice: the first attempt it ignored, the repeat it answered.
    assert reply["result"]["seen"] == 2


def test_retry_gives_up_by_the_calls_timeout(broker: MosquittoBroker) -> None:
    with SyncMqttRpcClient(broker.host, broker.port) as client:
        started = time.monotonic()
        with pytest.raises(RpcTimeoutError, match="after 0.6s"):
            client.call(f"nobody-{uuid.uuid4().hex[:6]}/x/set", {}, timeout=0.6, retry=Retry(attempts=3, backoff=0.05))
        assert time.monotonic() - started >= 0.6
        assert client.stats()["calls_timed_out"] == 3


class Echo(BaseModel):
    topic: str


def test_a_typed_answer_and_a_mismatch(sync_client: SyncMqttRpcClient) -> None:
    where = topic()
    assert sync_client.call(where, {}, response_model=Echo) == Echo(topic=where)
    with pytest.raises(ReplyValidationError):
        sync_client.call(where, {}, response_model=int)


def test_call_many_in_order_with_failures_in_place(sync_client: SyncMqttRpcClient) -> None:
    where = topic()
    requests: List[Any] = [(where, {"i": i}) for i in range(200)]
    requests[7] = (where, {"i": 7, "_responder": {"error": {"code": 7, "message": "no"}}})
    results = sync_client.call_many(requests, timeout=10, return_exceptions=True)
    assert isinstance(results[7], RemoteError) and results[7].code == 7
    assert [r["result"]["request"]["i"] for i, r in enumerate(results) if i != 7] == [i for i in range(200) if i != 7]
    with pytest.raises(RemoteError):
        sync_client.call_many(requests, timeout=10)
    with pytest.raises(PayloadError, match="request 1 of the batch"):
        sync_client.call_many([(where, {}), (where, "not json")])
    typed = sync_client.call_many([(where, {}), (where, {})], response_model=Echo)
    assert typed == [Echo(topic=where)] * 2


def test_stream_yields_progress_then_the_answer(sync_client: SyncMqttRpcClient) -> None:
    messages = list(sync_client.stream(topic(), {"_responder": {"progress_steps": 3}}, timeout=10))
    assert [m.get("progress") for m in messages[:3]] == [1, 2, 3]
    assert "result" in messages[-1] and len(messages) == 4


def test_a_stream_left_early_and_a_quiet_one(sync_client: SyncMqttRpcClient) -> None:
    with sync_client.stream(topic(), {"_responder": {"progress_steps": 50, "delay_ms": 200}}, timeout=10) as stream:
        first = next(stream)
    assert first["progress"] == 1
    quiet = sync_client.stream(topic(), {"_responder": {"delay_ms": 2000}}, timeout=10, idle_timeout=0.2)
    with pytest.raises(RpcTimeoutError, match="neither progress nor an answer"):
        list(quiet)


async def test_call_all_and_gather_all_from_a_thread(broker: MosquittoBroker) -> None:
    group = f"grp-{uuid.uuid4().hex[:6]}/all/set"
    members = []
    for n in range(3):
        member = Responder(broker.host, broker.port, client_id=f"m{n}-{uuid.uuid4().hex[:4]}")

        @member.handle(group)
        async def answer(request: dict) -> dict:
            return {"ok": True}

        await member.start()
        members.append(member)
    results: List[Any] = []

    def blocking_side() -> None:
        with SyncMqttRpcClient(broker.host, broker.port) as client:
            results.append(sorted(r["responder"] for r in client.call_all(group, {}, timeout=1)))
            results.append(sorted(r["responder"] for r in client.gather_all(group, {}, timeout=5, max_replies=3)))

    thread = threading.Thread(target=blocking_side)
    thread.start()
    while thread.is_alive():
        await _pause()
    for member in members:
        await member.close()
    ids = sorted(m.client_id or "" for m in members)
    assert results == [ids, ids]


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.01)


def test_notify_and_discovery(broker: MosquittoBroker, seed_device: ResponderDevice) -> None:
    with SyncMqttRpcClient(broker.host, broker.port) as client:
        client.notify(topic(), {"event": "hello"})
        assert seed_device.wait_for_line(lambda line: line.startswith("NOTIFICATION") and "hello" in line)
        assert client.discover("nobody-by-this-name", timeout=0.2) == []


def test_the_blocking_client_reaches_into_no_other_class() -> None:
    import ast
    from pathlib import Path

    import mqtt_rpc

    source = (Path(mqtt_rpc.__file__).parent / "sync.py").read_text()
    reached = {
        node.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    }
    assert reached == set(), reached
