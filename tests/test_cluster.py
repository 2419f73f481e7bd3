"""Beyond one broker, on a real cluster: three NATS servers (routes, clustered JetStream,
an MQTT listener each) started on loopback. A caller on node 0 reaches responders on nodes
1 and 2; then node 0 dies and the caller fails over. NATS has no shared subscriptions, so
each responder serves its own filter. Run alone with `pytest -m cluster`; it needs the broker
matrix's nats-server, so `-m "not brokers"` leaves it out too."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, List, Tuple

import pytest

from mqtt_rpc import Reconnect

from cluster import NatsCluster
from mqtt_rpc import ConnectionLostError, MqttRpcClient, NotConnectedError, Responder, RpcTimeoutError

pytestmark = [pytest.mark.brokers, pytest.mark.cluster]

#: How long a failover may take, at most: reconnect backoff plus JetStream's leader election
#: when the dead node led it (measured by benches/scaling.py; seconds, not minutes).
FAILOVER_BOUND = 30.0


@pytest.fixture
def cluster() -> Any:
    with NatsCluster(3) as running:
        yield running


async def serving(node: Tuple[str, int], topic_filter: str, release: "asyncio.Event") -> Responder:
    responder = Responder(*node, client_id=f"cluster-{topic_filter.split('/')[1]}")

    @responder.handle(topic_filter)
    async def answer(request: Dict[str, Any]) -> Any:
        if request.get("slow"):
            await release.wait()
        return {"n": request["n"]}

    await responder.start()
    return responder


async def test_calls_cross_the_cluster_and_fail_over_when_the_callers_node_dies(cluster: NatsCluster) -> None:
    nodes = cluster.addresses
    release = asyncio.Event()
    responders = [await serving(nodes[1], "+/alpha/set", release), await serving(nodes[2], "+/beta/set", release)]
    try:
        async with MqttRpcClient(hosts=nodes, reconnect=Reconnect(max_delay=1.0)) as client:
            assert client.connected_to == nodes[0]
            # Published on node 0, answered from nodes 1 and 2.
            for n in range(20):
                topic = "d/alpha/set" if n % 2 else "d/beta/set"
                assert (await client.call(topic, {"n": n}, timeout=5))["result"] == {"n": n}

            # Calls in flight when the node dies keep their own deadlines.
            in_flight = [
                asyncio.ensure_future(client.call("d/alpha/set", {"n": 100 + n, "slow": True}, timeout=3))
                for n in range(5)
            ]
            await asyncio.sleep(0)  # let them be published
            cluster.kill(0)
            killed = time.monotonic()
            release.set()
            for n, outcome in enumerate(await asyncio.gather(*in_flight, return_exceptions=True)):
                if isinstance(outcome, dict):
                    assert outcome["result"] == {"n": 100 + n}
                else:
                    assert isinstance(outcome, (RpcTimeoutError, ConnectionLostError)), repr(outcome)

            # New calls: each ends by its deadline, until the client is on another node.
            outcomes: List[str] = []
            while not outcomes or outcomes[-1] != "answered":
                assert time.monotonic() - killed < FAILOVER_BOUND, f"not failed over: {outcomes}"
                n = len(outcomes)
                try:
                    reply = await client.call("d/beta/set", {"n": n}, timeout=2)
                    assert reply["result"] == {"n": n}
                    outcomes.append("answered")
                except (RpcTimeoutError, ConnectionLostError, NotConnectedError) as error:
                    outcomes.append(type(error).__name__)
            assert client.connected_to in (nodes[1], nodes[2])
            for n in range(20):
                topic = "d/alpha/set" if n % 2 else "d/beta/set"
                assert (await client.call(topic, {"n": n}, timeout=5))["result"] == {"n": n}
            # Nothing was answered twice, nothing answered another call.
            assert client.stats()["replies_dropped_duplicate"] == 0
            assert client.pending == 0
    finally:
        for responder in responders:
            await responder.close_now()
