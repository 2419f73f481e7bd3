"""What the fleet features cost, against their baselines in the same run:
`python benches/fleet_features.py [rounds] [devices]`.

- no responders: how long an MQTT 5 QoS 1 call to a topic nobody subscribes takes to fail
  (its timeout is 10 s), against an answered call to the Rust device on the same client;
- scatter-gather: how many answers per second `gather_all` collects from N Rust devices on
  one group topic (max_replies=N, so a round ends with the last answer), against N
  sequential `call()`s to one device.

Medians of the rounds are printed as JSON."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
from mqtt_rpc import MqttRpcClient, NoRespondersError  # noqa: E402
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice  # noqa: E402


async def measure(broker: MosquittoBroker, rounds: int, devices: int) -> dict:
    group = "fleet/all/status/get"
    async with MqttRpcClient(broker.host, broker.port, protocol="5", qos=1) as client:
        answered, nobody, gather, sequential = [], [], [], []
        for _ in range(rounds):
            started = time.perf_counter()
            await client.call("dev1/device/control/set", {})
            answered.append(time.perf_counter() - started)
            started = time.perf_counter()
            try:
                await client.call(f"nobody-{uuid.uuid4().hex[:6]}/device/x", {}, timeout=10)
            except NoRespondersError:
                nobody.append(time.perf_counter() - started)
            started = time.perf_counter()
            replies = await client.gather_all(group, {}, timeout=10, max_replies=devices)
            gather.append(time.perf_counter() - started)
            assert len(replies) == devices
            started = time.perf_counter()
            for _ in range(devices):
                await client.call("dev1/device/control/set", {})
            sequential.append(time.perf_counter() - started)
    median = statistics.median
    return {
        "rounds": rounds,
        "devices": devices,
        "answered_call_ms": round(median(answered) * 1000, 3),
        "no_responders_ms": round(median(nobody) * 1000, 3),
        "no_responders_vs_answered": round(median(nobody) / median(answered), 2),
        "gather_replies_per_s": round(devices / median(gather)),
        "sequential_calls_per_s": round(devices / median(sequential)),
        "gather_vs_sequential": round(median(sequential) / median(gather), 2),
    }


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    devices = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    with MosquittoBroker.start() as broker, ExitStack() as stack:
        stack.enter_context(ResponderDevice.start(broker, "+/device/control/set", options=["--protocol", "5"]))
        for i in range(devices):
            options = ["--protocol", "5", "--client-id", f"bench-dev{i}"]
            stack.enter_context(ResponderDevice.start(broker, "fleet/all/status/get", options=options))
        print(json.dumps(asyncio.run(measure(broker, rounds, devices)), indent=2))


if __name__ == "__main__":
    main()
