"""Timeouts, cancellation, connecting and closing: nothing hangs, nothing leaks."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from typing import List

import pytest

from mqtt_rpc import ConnectionEvent, ConnectionLostError, MqttRpcClient, NotConnectedError, RpcTimeoutError

from mqtt_rpc.testing import MosquittoBroker, free_port


@pytest.mark.parametrize("timeout, shown", [(0.5, "0.5"), (1, "1"), (0.25, "0.25")])
async def test_timeout_raises_the_old_error_on_time_and_leaves_nothing(
    client: MqttRpcClient, silent_topic: str, timeout: float, shown: str
) -> None:
    started = time.monotonic()
    with pytest.raises(RpcTimeoutError) as raised:
        await client.call(silent_topic, '{"action": "GET_HEALTH_CHECK"}', timeout=timeout)
    elapsed = time.monotonic() - started
    assert str(raised.value) == f"MQTT call timed out after {shown}s for topic '{silent_topic}'"
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.topic == silent_topic and raised.value.timeout == timeout
    # Never before its deadline; exactly at it is the engine's rule (tests/simulation.rs).
    assert timeout <= elapsed < timeout + 5
    assert client.pending == 0
    assert client.stats()["calls_timed_out"] == 1


async def test_the_default_timeout_is_the_clients(broker: MosquittoBroker, silent_topic: str) -> None:
    async with MqttRpcClient(broker.host, broker.port, timeout=0.3) as client:
        with pytest.raises(RpcTimeoutError, match=r"after 0\.3s"):
            await client.call(silent_topic, "{}")


async def test_a_late_answer_after_the_timeout_is_dropped(client: MqttRpcClient, device_topic: str) -> None:
    with pytest.raises(RpcTimeoutError):
        await client.call(device_topic, {"_responder": {"delay_ms": 400}}, timeout=0.1)
    # The device answers calls in the order their delays end: this answer comes after the late one.
    await client.call(device_topic, {"_responder": {"delay_ms": 600}})
    assert client.stats()["replies_dropped_stray"] == 1
    assert client.pending == 0


async def test_cancelling_the_caller_removes_its_pending_call_at_once(
    client: MqttRpcClient, silent_topic: str
) -> None:
    task = asyncio.ensure_future(client.call(silent_topic, "{}", timeout=30))
    await asyncio.sleep(0)  # let the call start
    assert client.pending == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.pending == 0
    assert client.stats()["calls_cancelled"] == 1


async def test_wait_for_around_call_cancels_cleanly(client: MqttRpcClient, silent_topic: str) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(client.call(silent_topic, "{}", timeout=30), 0.2)
    assert client.pending == 0


async def test_a_call_before_connect_connects_first(broker: MosquittoBroker, device_topic: str) -> None:
    client = MqttRpcClient(broker.host, broker.port)
    try:
        reply = await client.call(device_topic, {"action": "PING"})
        assert reply["result"]["request"]["action"] == "PING"
        assert client.connected
    finally:
        await client.close()
    assert client.pending == 0


async def test_a_call_after_close_connects_again(broker: MosquittoBroker, device_topic: str) -> None:
    client = MqttRpcClient(broker.host, broker.port)
    await client.connect()
    await client.close()
    await client.close()  # closing twice is harmless
    assert not client.connected
    try:
        reply = await client.call(device_topic, "{}")
        assert "result" in reply and client.connected
    finally:
        await client.close()


async def test_a_refused_connection_raises_connection_error_quickly() -> None:
    port = free_port()  # nothing listens there
    client = MqttRpcClient("127.0.0.1", port, connect_timeout=30)
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}") as raised:
        await client.connect()
    assert isinstance(raised.value, NotConnectedError)
    assert time.monotonic() - started < 10  # refused at once, not by the 30 s connect timeout
    with pytest.raises(NotConnectedError):
        await client.call("dev1/device/control/set", "{}")


async def test_close_fails_pending_calls_with_connection_lost(broker: MosquittoBroker, silent_topic: str) -> None:
    client = MqttRpcClient(broker.host, broker.port)
    await client.connect()
    calls = [asyncio.ensure_future(client.call(silent_topic, {"i": i}, timeout=30)) for i in range(10)]
    await asyncio.sleep(0)  # let the calls start
    assert client.pending == 10
    await client.close(grace=0)
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, ConnectionLostError) for r in results), results
    assert client.pending == 0
    assert not client.connected


async def test_the_default_client_id_is_unique(broker: MosquittoBroker) -> None:
    a, b = MqttRpcClient(broker.host, broker.port), MqttRpcClient(broker.host, broker.port)
    assert a.client_id != b.client_id
    # Two replicas with default ids stay connected side by side.
    await a.connect()
    await b.connect()
    assert a.connected and b.connected
    await a.close()
    await b.close()


EXIT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from mqtt_rpc import MqttRpcClient

    async def main(port, close):
        client = MqttRpcClient("127.0.0.1", port)
        await client.connect()
        answered = [client.call("dev-exit/device/control/set", {"i": i}) for i in range(50)]
        silent = [asyncio.ensure_future(client.call("nobody-exit/silent/control/set", {}, timeout=30))
                  for _ in range(50)]
        await asyncio.gather(*answered)
        await asyncio.sleep(0)
        if close:
            await client.close()
            await asyncio.gather(*silent, return_exceptions=True)
        # else: exit with 50 calls in flight and the client open

    asyncio.run(main(int(sys.argv[1]), sys.argv[2] == "close"))
    """
)


def test_the_interpreter_exits_cleanly_with_calls_in_flight(broker: MosquittoBroker, seed_device: object) -> None:
    runs = [
        subprocess.Popen([sys.executable, "-c", EXIT_SCRIPT, str(broker.port), mode], stderr=subprocess.PIPE)
        for mode in ["close", "leave-open"] * 6
    ]
    for run in runs:
        _, stderr = run.communicate(timeout=60)
        assert run.returncode == 0, stderr.decode(errors="replace")


async def test_an_on_connection_change_that_raises_is_logged_not_lost(
    broker: MosquittoBroker, device_topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The application's callback failing must not pass unnoticed, nor stop the client.
    caplog.set_level(logging.ERROR, logger="mqtt_rpc")

    def broken(event: ConnectionEvent) -> None:
        raise RuntimeError("a bug in the application's callback")

    def logged() -> List[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "mqtt_rpc" and r.exc_info and r.exc_info[0] is RuntimeError]

    async with MqttRpcClient(broker.host, broker.port, on_connection_change=broken) as client:
        deadline = time.monotonic() + 10
        while not logged() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert (await client.call(device_topic, {}))["result"]["topic"] == device_topic
    assert len(logged()) == 1 and logged()[0].levelno == logging.ERROR
