"""The broker's share of the cost: the same client, device and load on every broker of the
matrix (tests/brokers.py starts them on loopback): `python benches/brokers.py [seconds] [runs]`.

Calls per second and p50 latency at 1 and at 64 calls in flight, MQTT 3.1.1 QoS 0 (which
every broker of the matrix has), against the Rust device; Mosquitto is the baseline.
Medians of the runs, as JSON."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "tests"))
from brokers import STARTERS, RunningBroker  # noqa: E402
from mqtt_rpc import MqttRpcClient  # noqa: E402
from mqtt_rpc.testing import ResponderDevice  # noqa: E402


async def measure(broker: RunningBroker, seconds: float, concurrency: int) -> tuple:
    async with MqttRpcClient(broker.host, broker.port, **broker.credentials()) as client:
        topics = [f"bench{i}/device/control/set" for i in range(max(concurrency, 1))]
        await asyncio.gather(*(client.call(t, {}) for t in topics))
        latencies = []
        deadline = time.perf_counter() + seconds

        async def worker(topic: str) -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await client.call(topic, {}, timeout=30)
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(t) for t in topics))
        return len(latencies) / (time.perf_counter() - started), statistics.median(latencies) * 1000


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results: dict = {"seconds": seconds, "runs": runs}
    for name, start in STARTERS.items():
        broker = start()
        try:
            with ResponderDevice.start(broker, "+/device/control/set", options=broker.device_options()):
                entry = {"version": broker.version}
                for concurrency in (1, 64):
                    samples = [asyncio.run(measure(broker, seconds, concurrency)) for _ in range(runs)]
                    entry[f"calls_per_s_at_{concurrency}"] = round(statistics.median(s[0] for s in samples))
                    entry[f"p50_ms_at_{concurrency}"] = round(statistics.median(s[1] for s in samples), 3)
                results[name] = entry
        finally:
            broker.stop()
    base = results["mosquitto"]
    for name in STARTERS:
        for concurrency in (1, 64):
            key = f"calls_per_s_at_{concurrency}"
            results[name][f"vs_mosquitto_at_{concurrency}"] = round(results[name][key] / base[key], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
