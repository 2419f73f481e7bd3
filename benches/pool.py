"""Does a pool cost anything, and what does the AWS IoT Core preset allow?
`python benches/pool.py [seconds] [runs]`.

Against one Mosquitto and the Rust device: calls per second with 1, 2 and 4 connections
and no limits (256 calls in flight over 64 device topics), in the seed reply mode and in
the inbox mode; then with `limits="aws-iot-core"` (100 publishes per second per
connection). The pool of one is the baseline of its mode. Medians of the runs, as JSON."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
from mqtt_rpc import MqttRpcClient  # noqa: E402
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice  # noqa: E402

TOPICS = [f"bench{i}/device/control/set" for i in range(64)]


async def rate(broker: MosquittoBroker, seconds: float, concurrency: int, **options: object) -> float:
    async with MqttRpcClient(broker.host, broker.port, **options) as client:
        # Warm up: every reply subscription held before the clock starts.
        await asyncio.gather(*(client.call(t, {}) for t in TOPICS))
        done = 0
        deadline = time.perf_counter() + seconds

        async def worker(index: int) -> None:
            nonlocal done
            topic = TOPICS[index % len(TOPICS)]
            while time.perf_counter() < deadline:
                await client.call(topic, {"n": done}, timeout=30)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        return done / (time.perf_counter() - started)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    results: dict = {"seconds": seconds, "runs": runs}
    with MosquittoBroker.start() as broker, ResponderDevice.start(broker, "+/device/control/set"):
        for mode in ("topic", "inbox"):
            for connections in (1, 2, 4):
                rates = [
                    asyncio.run(rate(broker, seconds, 256, replies=mode, connections=connections))
                    for _ in range(runs)
                ]
                results[f"{mode}_{connections}_calls_per_s"] = round(statistics.median(rates))
            base = results[f"{mode}_1_calls_per_s"]
            for connections in (2, 4):
                results[f"{mode}_{connections}_vs_1"] = round(results[f"{mode}_{connections}_calls_per_s"] / base, 2)
        for connections in (1, 2, 4):
            rates = [
                asyncio.run(
                    rate(broker, seconds, 256, replies="inbox", connections=connections, limits="aws-iot-core")
                )
                for _ in range(runs)
            ]
            results[f"aws_preset_{connections}_calls_per_s"] = round(statistics.median(rates))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
