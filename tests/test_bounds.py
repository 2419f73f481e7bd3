"""Every queue the network or a caller can fill has a bound and a policy when full: floods
from a device (progress messages, scatter-gather answers) while the event loop is blocked
or the consumer lags are dropped and counted, never held without limit, and a call's own
outcome is never among what is dropped."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from mqtt_rpc import Limits

from mqtt_rpc import MqttRpcClient, Responder, RpcTimeoutError
from mqtt_rpc.streams import MAX_BUFFERED_MESSAGES
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice

#: The Rust side's bound on interim messages waiting for one loop (src/python/bridge.rs).
MAX_QUEUED_INTERIM = 16_384
FLOOD = 60_000  # under the test device's own send queue, so that all of it is sent


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def topic() -> str:
    return f"flood-{uuid.uuid4().hex[:8]}/device/control/set"


async def test_a_progress_flood_while_the_loop_is_blocked_is_bounded(
    broker: MosquittoBroker, seed_device: ResponderDevice, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mqtt_rpc")
    async with MqttRpcClient(broker.host, broker.port) as client:
        before = resident_bytes()
        stream = client.stream(topic(), {"_responder": {"progress_steps": FLOOD}}, timeout=60)
        # Block the loop (as a slow synchronous handler would) until every progress message
        # has reached the client: what the loop could not take is dropped, not held.
        expected_drops = FLOOD - MAX_QUEUED_INTERIM
        deadline = time.monotonic() + 30
        while client.stats()["interim_dropped"] < expected_drops and time.monotonic() < deadline:
            time.sleep(0.02)
        grown = resident_bytes() - before
        assert client.stats()["interim_dropped"] == expected_drops
        assert grown < 30 * 1024 * 1024, f"the process grew by {grown / 1e6:.0f} MB"
        messages = [message async for message in stream]
        # What the loop was given reached the stream (which may drop more, if the consumer
        # lags behind its own bound), then the answer.
        assert "result" in messages[-1]
        assert len(messages) - 1 + stream.dropped == MAX_QUEUED_INTERIM
        assert client.pending == 0
    # Hundreds of thousands dropped, one line said.
    assert len([r for r in caplog.records if "interim_dropped" in r.getMessage()]) == 1


async def test_a_consumer_that_lags_keeps_the_newest_messages_and_the_answer(
    broker: MosquittoBroker, seed_device: ResponderDevice
) -> None:
    steps = MAX_BUFFERED_MESSAGES + 5_000
    async with MqttRpcClient(broker.host, broker.port) as client:
        stream = client.stream(topic(), {"_responder": {"progress_steps": steps}}, timeout=60)
        while client.pending:  # the loop runs; nobody iterates the stream yet
            await asyncio.sleep(0.01)
        messages = [message async for message in stream]
        progress = [m["progress"] for m in messages[:-1]]
        assert "result" in messages[-1]
        assert stream.dropped == steps - len(progress) > 0
        assert len(progress) == MAX_BUFFERED_MESSAGES
        assert progress == list(range(steps - MAX_BUFFERED_MESSAGES + 1, steps + 1))  # the newest, in order


async def test_an_oversized_reply_is_dropped_and_the_session_lives_on(broker: MosquittoBroker) -> None:
    # MQTT 3.1.1 cannot tell the broker the client's limit. A reply over it used to end the
    # connection, and the persistent session redelivered it on every reconnect, for ever.
    responder = Responder(broker.host, broker.port, qos=1)

    @responder.handle("big/+/set")
    async def answer(request: dict) -> dict:
        return {"blob": "x" * (200 * 1024) if request.get("big") else "small"}

    options = dict(qos=1, session_expiry=3600, limits=Limits(max_packet_size=64 * 1024))
    async with responder, MqttRpcClient(broker.host, broker.port, **options) as client:  # type: ignore[arg-type]
        with pytest.raises(RpcTimeoutError):
            await client.call("big/d/set", {"big": True}, timeout=2)
        replies = [await client.call("big/d/set", {"i": i}) for i in range(20)]
        assert [r["result"]["blob"] for r in replies] == ["small"] * 20
        stats = client.stats()
        assert (stats["replies_dropped_oversized"], stats["reconnects"]) == (1, 0)


CALLER = """
import asyncio, json, sys
from mqtt_rpc import Limits, MqttRpcClient, RemoteError

async def main(port, count):
    async with MqttRpcClient("127.0.0.1", port, limits=Limits(max_in_flight=count)) as client:
        results = await client.call_many(
            [("blocked/d/set", {"i": i}) for i in range(count)], timeout=60, return_exceptions=True
        )
    answered = sum(isinstance(r, dict) for r in results)
    overloaded = sum(isinstance(r, RemoteError) and r.code == -32000 for r in results)
    print(json.dumps({"answered": answered, "overloaded": overloaded}))

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


async def test_requests_for_a_blocked_responder_are_bounded_and_refused_at_once(broker: MosquittoBroker) -> None:
    import json
    import subprocess
    import sys

    burst = MAX_QUEUED_INTERIM + 3_000
    responder = Responder(broker.host, broker.port, max_queued=burst)

    @responder.handle("blocked/+/set")
    async def answer(request: dict) -> dict:
        return {"i": request["i"]}

    async with responder:
        caller = subprocess.Popen(
            [sys.executable, "-c", CALLER, str(broker.port), str(burst)], stdout=subprocess.PIPE, text=True
        )
        # The responder's loop is blocked while the whole burst arrives: what does not fit
        # is answered "overloaded" by the core at once, not queued without bound.
        deadline = time.monotonic() + 60
        while responder.stats()["requests"] < burst and time.monotonic() < deadline:
            time.sleep(0.02)
        assert responder.stats()["dropped_overloaded"] == burst - MAX_QUEUED_INTERIM
        out, _ = await asyncio.get_running_loop().run_in_executor(None, caller.communicate)
    assert json.loads(out) == {"answered": MAX_QUEUED_INTERIM, "overloaded": burst - MAX_QUEUED_INTERIM}
