"""Correlation under load: every caller gets its own answer and nothing else."""

from __future__ import annotations

import asyncio
import json
import logging
import random

import pytest

from mqtt_rpc import Limits

from mqtt_rpc import MqttRpcClient, RpcTimeoutError

from mqtt_rpc.testing import MosquittoBroker


async def test_two_clients_never_receive_each_others_replies(broker: MosquittoBroker, device_topic: str) -> None:
    async with MqttRpcClient(broker.host, broker.port) as a, MqttRpcClient(broker.host, broker.port) as b:

        async def calls(client: MqttRpcClient, name: str) -> None:
            replies = await asyncio.gather(*(client.call(device_topic, {"who": name, "i": i}) for i in range(300)))
            for i, reply in enumerate(replies):
                assert reply["result"]["request"]["who"] == name
                assert reply["result"]["request"]["i"] == i
                assert reply["result"]["request"]["request_id"] == reply["request_id"]

        await asyncio.gather(calls(a, "a"), calls(b, "b"))
        for client in (a, b):
            stats = client.stats()
            assert stats["calls_succeeded"] == 300
            assert client.pending == 0
            # Both hold the same reply filter, so each may see the other's replies: dropped.
            assert stats["replies_dropped_stray"] <= 300
            assert stats["replies_dropped_malformed"] == 0


async def test_garbage_and_wrong_id_replies_are_dropped_and_the_real_answer_wins(
    client: MqttRpcClient, device_topic: str
) -> None:
    reply = await client.call(device_topic, {"n": 1, "_responder": {"garbage_first": True}})
    assert reply["result"]["request"]["n"] == 1
    # Not JSON, a JSON array, and an object naming another request_id: all on this call's topic.
    stats = client.stats()
    assert stats["replies_dropped_malformed"] == 3
    assert stats["calls_succeeded"] == 1


async def test_each_kind_of_dropped_reply_is_logged_once(
    broker: MosquittoBroker, device_topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Counted, not raised, and not silent either: one WARNING per kind, then only the count.
    caplog.set_level(logging.WARNING, logger="mqtt_rpc")
    async with MqttRpcClient(broker.host, broker.port) as client:
        for n in range(3):
            await client.call(device_topic, {"n": n, "_responder": {"garbage_first": True, "twice": True}})
        await client.call(device_topic, {"n": "barrier"})  # the last duplicate came before this answer
        stats = client.stats()
    assert (stats["replies_dropped_malformed"], stats["replies_dropped_duplicate"]) == (9, 3)
    for counter in ("replies_dropped_malformed", "replies_dropped_duplicate"):
        (record,) = [r for r in caplog.records if counter in r.getMessage()]
        assert record.levelno == logging.WARNING and client.client_id in record.getMessage()


async def test_duplicate_replies_are_dropped(client: MqttRpcClient, device_topic: str) -> None:
    first = await client.call(device_topic, {"n": 1, "_responder": {"twice": True}})
    # The device sends the duplicate before answering the next call: once that answer is
    # here, the duplicate has been handled.
    second = await client.call(device_topic, {"n": 2})
    assert (first["result"]["request"]["n"], second["result"]["request"]["n"]) == (1, 2)
    assert client.stats()["replies_dropped_duplicate"] == 1
    assert client.stats()["replies_dropped_stray"] == 0
    assert client.stats()["calls_succeeded"] == 2


async def test_replies_out_of_order_reach_their_own_callers(client: MqttRpcClient, device_topic: str) -> None:
    delays = [random.Random(i).randrange(0, 300) for i in range(40)]
    replies = await asyncio.gather(
        *(client.call(device_topic, {"i": i, "_responder": {"delay_ms": d}}) for i, d in enumerate(delays))
    )
    assert [r["result"]["request"]["i"] for r in replies] == list(range(40))


async def test_a_thousand_concurrent_calls(client: MqttRpcClient, device_topic: str) -> None:
    replies = await asyncio.gather(*(client.call(device_topic, {"i": i}) for i in range(1000)))
    assert [r["result"]["request"]["i"] for r in replies] == list(range(1000))
    assert len({r["request_id"] for r in replies}) == 1000
    assert client.pending == 0


async def test_calls_beyond_max_in_flight_wait_for_a_slot(broker: MosquittoBroker, device_topic: str) -> None:
    async with MqttRpcClient(broker.host, broker.port, limits=Limits(max_in_flight=4)) as client:
        replies = await asyncio.gather(*(client.call(device_topic, {"i": i}) for i in range(50)))
        assert [r["result"]["request"]["i"] for r in replies] == list(range(50))
        assert client.pending == 0


async def test_calls_waiting_for_a_slot_count_as_pending_and_keep_their_deadline(
    broker: MosquittoBroker, silent_topic: str
) -> None:
    async with MqttRpcClient(broker.host, broker.port, limits=Limits(max_in_flight=4)) as client:
        calls = [asyncio.ensure_future(client.call(silent_topic, {"i": i}, timeout=0.3)) for i in range(10)]
        await asyncio.sleep(0)  # let every call start
        assert client.pending == 10
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(r, RpcTimeoutError) for r in results), results
        assert client.pending == 0


async def test_many_device_topics_at_once(client: MqttRpcClient, seed_device: object) -> None:
    topics = [f"fleet{i}-{id(client)}/device/control/set" for i in range(30)]
    replies = await asyncio.gather(*(client.call(t, {"k": k}) for k in range(10) for t in topics))
    assert [(r["result"]["topic"], r["result"]["request"]["k"]) for r in replies] == [
        (t, k) for k in range(10) for t in topics
    ]


async def test_a_reply_reaches_python_exactly_as_the_device_wrote_it(client: MqttRpcClient, device_topic: str) -> None:
    # The reply's dict is built straight from its JSON text: every JSON type, integers
    # beyond 64 bits signed, escapes, non-ASCII keys and the device's key order must come
    # through as Python's own json module reads them.
    sent = (
        '{"z": 1, "a": [true, false, null, -7, 18446744073709551615, -9223372036854775808, 1.5e300, 0.1],'
        ' "\\u00e9t\\u00e9": "\\u2603 \\ud83d\\ude00 \\"quoted\\" \\\\ \\n", "nested": {"deep": [[[{}]]], "empty": {}}}'
    )
    reply = await client.call(device_topic, sent)
    echoed = dict(reply["result"]["request"])
    del echoed["request_id"]
    expected = json.loads(sent)
    assert echoed == expected and list(echoed) == list(expected)
    assert [type(v) for v in echoed["a"]] == [type(v) for v in expected["a"]]  # True stays a bool
    assert list(reply) == ["request_id", "result"] and isinstance(reply["request_id"], str)
