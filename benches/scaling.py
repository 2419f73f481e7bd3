"""Beyond one broker, measured: `python benches/scaling.py [repetitions] [throughput|failover]`
(both parts unless one is named).

- Calls per second through a three-node NATS cluster (the `ours` client on node 0, the Rust
  device on node 1: every request and answer crosses a route), against the same client and
  device both on node 0, in the same run and alternating; at 1, 16 and 256 in flight.
- Failover: a client given every node (`hosts=`), calling in a loop with a 0.2 s timeout
  (the resolution of the figure); its node is killed; the time until a call is answered
  again from another node. Against
  the same client failing over between two plain Mosquitto brokers (no cluster state to
  recover: what the client itself takes).

Medians of the repetitions, printed as JSON; docs/scaling.md quotes them."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benches"))
from cluster import NatsCluster  # noqa: E402
from mqtt_rpc import MqttRpcClient, MqttRpcError, Responder  # noqa: E402
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice  # noqa: E402
from run import run_client_with  # noqa: E402

LEVELS = (1, 16, 256)
TOPIC = "bench/qos0/control/set"


def throughput(repetitions: int) -> Dict[str, Any]:
    rows: Dict[Tuple[str, int], List[float]] = {}
    with NatsCluster(3) as cluster:
        ports = cluster.mqtt_ports
        # Subscriptions are cluster-wide: each device has its own topics, so that each
        # request is answered once, by the device on the node meant.
        node = [SimpleNamespace(host="127.0.0.1", port=port) for port in ports]
        devices = [ResponderDevice.start(node[0], "local/+/control/set"), ResponderDevice.start(node[1], "bench/+/control/set")]
        try:
            for repetition in range(repetitions):
                for concurrency in LEVELS:
                    for where, topic in (("one node", "local/qos0/control/set"), ("across the cluster", TOPIC)):
                        result = run_client_with(Path(sys.executable), "ours", ports[0], topic, concurrency, 3.0, 0)
                        rows.setdefault((where, concurrency), []).append(result["calls_per_second"])
                        print(f"rep {repetition + 1} {where:<19} c={concurrency:<4} {result['calls_per_second']:>9,.0f} calls/s", file=sys.stderr)
        finally:
            for device in devices:
                device.stop()
    out: Dict[str, Any] = {}
    for concurrency in LEVELS:
        local, across = rows[("one node", concurrency)], rows[("across the cluster", concurrency)]
        out[str(concurrency)] = {
            "one_node_calls_per_s": round(statistics.median(local)),
            "across_calls_per_s": round(statistics.median(across)),
            "across_vs_one_node": round(statistics.median(a / b for a, b in zip(across, local)), 2),
        }
    return out


async def time_to_fail_over(nodes: List[Tuple[str, int]], kill: Callable[[], None], responder_nodes: List[Tuple[str, int]]) -> float:
    """Seconds from the caller's node dying to its next answered call."""
    responder = Responder(hosts=responder_nodes)

    @responder.handle("+/failover/set")
    async def answer(request: Dict[str, Any]) -> Any:
        return {}

    async with responder, MqttRpcClient(hosts=nodes, reconnect_max_delay=1.0) as client:
        await client.call("d/failover/set", {}, timeout=5)
        kill()
        killed = time.monotonic()
        while True:
            try:
                await client.call("d/failover/set", {}, timeout=0.2)
                return time.monotonic() - killed
            except MqttRpcError:
                if time.monotonic() - killed > 120:
                    raise


def failover(repetitions: int) -> Dict[str, Any]:
    cluster_times, mosquitto_times = [], []
    for repetition in range(repetitions):
        with NatsCluster(3) as cluster:
            nodes = cluster.addresses
            # The responder is on node 1 alone: what is measured is the caller's failover.
            elapsed = asyncio.run(time_to_fail_over(nodes, lambda: cluster.kill(0), [nodes[1]]))
            cluster_times.append(elapsed)
        with MosquittoBroker.start() as first, MosquittoBroker.start() as second:
            pair = [(first.host, first.port), (second.host, second.port)]
            mosquitto_times.append(asyncio.run(time_to_fail_over(pair, first.kill, pair)))
        print(f"rep {repetition + 1} failover: cluster {cluster_times[-1]:.2f} s, Mosquitto pair {mosquitto_times[-1]:.2f} s", file=sys.stderr)
    return {
        "nats_cluster_s": round(statistics.median(cluster_times), 2),
        "nats_cluster_all_s": [round(t, 2) for t in cluster_times],
        "mosquitto_pair_s": round(statistics.median(mosquitto_times), 2),
        "mosquitto_pair_all_s": [round(t, 2) for t in mosquitto_times],
    }


def main() -> None:
    repetitions = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    parts = sys.argv[2:] or ["throughput", "failover"]
    results: Dict[str, Any] = {"repetitions": repetitions}
    if "throughput" in parts:
        results["throughput"] = throughput(repetitions)
    if "failover" in parts:
        results["failover"] = failover(repetitions)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
