"""Several broker addresses: a connect tries them in order, a lost connection moves to the
next node, `connected_to` says where the client is. Two independent Mosquitto brokers stand
in for two nodes here (both sides fail over, so they meet again); tests/test_cluster.py runs
the same on a real cluster."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Tuple

import pytest

from mqtt_rpc import Reconnect

from mqtt_rpc import (
    ConnectionLostError,
    MqttRpcClient,
    NotConnectedError,
    Responder,
    RpcTimeoutError,
    SyncMqttRpcClient,
)
from mqtt_rpc.testing import MosquittoBroker, free_port


def address(broker: MosquittoBroker) -> Tuple[str, int]:
    return (broker.host, broker.port)


async def test_a_connect_tries_each_address_in_order(broker: MosquittoBroker) -> None:
    nobody = ("127.0.0.1", free_port())  # refuses connections
    async with MqttRpcClient(hosts=[nobody, address(broker)], connect_timeout=5) as client:
        assert client.connected_to == address(broker)
    assert client.connected_to is None
    with pytest.raises(NotConnectedError, match=str(nobody[1])):
        await MqttRpcClient(hosts=[nobody], connect_timeout=5).connect()


def test_the_blocking_client_and_the_url_take_several_nodes(broker: MosquittoBroker, monkeypatch: Any) -> None:
    nobody = ("127.0.0.1", free_port())
    monkeypatch.setenv("MQTT_RPC_URL", f"mqtt://{nobody[0]}:{nobody[1]},{broker.host}:{broker.port}")
    with SyncMqttRpcClient() as client:
        assert client.connected_to == address(broker)


async def test_calls_fail_over_to_the_next_node_when_one_dies() -> None:
    with MosquittoBroker.start() as first, MosquittoBroker.start() as second:
        nodes = [address(first), address(second)]
        responder = Responder(hosts=nodes)

        @responder.handle("+/failover/set")
        async def answer(request: Dict[str, Any]) -> Any:
            return {"n": request["n"]}

        async with responder, MqttRpcClient(hosts=nodes, reconnect=Reconnect(max_delay=0.5)) as client:
            assert client.connected_to == responder.connected_to == address(first)
            assert (await client.call("d/failover/set", {"n": 0}))["result"] == {"n": 0}
            first.kill()
            # Every call made while the node is gone ends by its own deadline: answered
            # (once the client and the responder are on the second node) or timed out.
            outcomes: List[str] = []
            give_up = time.monotonic() + 30
            while not outcomes or outcomes[-1] != "answered":
                assert time.monotonic() < give_up, f"no answer after failing over: {outcomes}"
                n = len(outcomes) + 1
                try:
                    reply = await client.call("d/failover/set", {"n": n}, timeout=1)
                    assert reply["result"] == {"n": n}  # its own answer, never another's
                    outcomes.append("answered")
                except (RpcTimeoutError, ConnectionLostError, NotConnectedError) as error:
                    outcomes.append(type(error).__name__)
            assert client.connected_to == address(second)
            assert responder.connected_to == address(second)
            stats = client.stats()
            assert stats["replies_dropped_duplicate"] == 0 and client.pending == 0


async def test_each_connection_of_a_pool_finds_a_node(broker: MosquittoBroker, device_topic: str) -> None:
    nobody = ("127.0.0.1", free_port())
    async with MqttRpcClient(hosts=[nobody, address(broker)], connections=3) as client:
        assert client._core.connected_to == [address(broker)] * 3
        assert client.connected_to == address(broker)
        replies = await client.call_many([(device_topic, {"n": n}) for n in range(6)])
        assert [reply["result"]["request"]["n"] for reply in replies] == list(range(6))


def test_the_command_line_takes_several_nodes_in_its_url(broker: MosquittoBroker, device_topic: str) -> None:
    import json
    import subprocess
    import sys

    url = f"mqtt://127.0.0.1:{free_port()},{broker.host}:{broker.port}"
    result = subprocess.run(
        [sys.executable, "-m", "mqtt_rpc", "call", device_topic, '{"a": 1}', "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["result"]["request"]["a"] == 1
