"""What discovery costs, against an ordinary scatter-gather in the same run:
`python benches/discovery.py [rounds] [devices]`.

N Rust devices, each a named service ("camera", `--service`) that also answers a group
topic. Per round: how long until every device's INFO answer is in (a gather on the INFO
control topic with max_replies=N, so a round ends with the last answer), against a
`gather_all` of the same N devices on their group topic (answered by the echo handler).
`discover()` itself always collects for its whole timeout (1 s by default): these figures
say how much of that second a fleet of N needs. Medians of the rounds, as JSON."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
from mqtt_rpc import MqttRpcClient, _core  # noqa: E402
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice  # noqa: E402

GROUP = "fleet/all/status/get"
PREFIX = "mqtt-rpc/_srv"


async def measure(broker: MosquittoBroker, rounds: int, devices: int) -> dict:
    info_topic = _core.control_topic(PREFIX, "INFO", "camera")
    async with MqttRpcClient(broker.host, broker.port) as client:
        assert len(await client.discover("camera")) == devices  # every device is up
        gather, info = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            assert len(await client.gather_all(GROUP, {}, timeout=10, max_replies=devices)) == devices
            gather.append(time.perf_counter() - started)
            started = time.perf_counter()
            assert len(await client.gather_all(info_topic, {}, timeout=10, max_replies=devices)) == devices
            info.append(time.perf_counter() - started)
    median = statistics.median
    return {
        "rounds": rounds,
        "devices": devices,
        "all_info_answers_ms": round(median(info) * 1000, 2),
        "all_group_answers_ms": round(median(gather) * 1000, 2),
        "info_vs_group": round(median(info) / median(gather), 2),
    }


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    devices = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    with MosquittoBroker.start() as broker, ExitStack() as stack:
        for i in range(devices):
            options = ["--client-id", f"bench-cam{i}", "--service", "camera", "--service-version", "1.0"]
            stack.enter_context(ResponderDevice.start(broker, GROUP, options=options))
        print(json.dumps(asyncio.run(measure(broker, rounds, devices)), indent=2))


if __name__ == "__main__":
    main()
