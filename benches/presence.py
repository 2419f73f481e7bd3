"""What presence costs and what it saves, in one run: `python benches/presence.py [reps]`.

One Mosquitto, one Rust device answering `+/device/control/set`, one client process.

- Hot path: calls per second to an online device, 16 in flight for 3 s, by a client
  without presence against one with a presence source (`presence="reported"`, the device
  reported online: every call looks its device up). Repetitions alternate (and which goes
  first); the median of the per-repetition ratios is given.
- An offline device: how long a call takes to fail when the device is known offline
  (`DeviceOfflineError`, nothing sent) against the fastest other early failure, MQTT 5 QoS 1
  "No matching subscribers" (`NoRespondersError` from the broker's PUBACK), one call at a
  time; without either (AWS IoT Core sends no reason 16) the call waits its whole timeout.

Medians, as JSON."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
from mqtt_rpc import DeviceOfflineError, MqttRpcClient, NoRespondersError  # noqa: E402
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice  # noqa: E402

TOPIC = "dev1/device/control/set"
SILENT = "gone/silent/control/set"
IN_FLIGHT = 16
SECONDS = 3.0


async def calls_per_second(client: MqttRpcClient) -> float:
    done = 0
    end = time.perf_counter() + SECONDS

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < end:
            await client.call(TOPIC, '{"action": "GET"}', timeout=10)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return done / (time.perf_counter() - started)


async def failure_ms(client: MqttRpcClient, topic: str, error: type, calls: int) -> float:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        try:
            await client.call(topic, "{}", timeout=10)
        except error:
            times.append(time.perf_counter() - started)
        else:
            raise AssertionError(f"{topic} was answered")
    return statistics.median(times) * 1000


async def measure(broker: MosquittoBroker, reps: int) -> dict:
    # Inbox replies: each client gets only its own (in the seed mode both would receive
    # every reply from dev1, and drop the other's).
    plain = MqttRpcClient(broker.host, broker.port, replies="inbox")
    aware = MqttRpcClient(broker.host, broker.port, replies="inbox", presence="reported")
    mqtt5 = MqttRpcClient(broker.host, broker.port, protocol="5", qos=1, presence="reported")
    async with plain, aware, mqtt5:
        aware.report_presence("dev1", True)
        mqtt5.report_presence("cam9", False, reason="CONNECTION_LOST")
        for client in (plain, aware):
            await calls_per_second(client)  # warm-up: subscriptions, caches
        rows = []
        for rep in range(reps):
            # Alternating which goes first, so that drift favours neither.
            if rep % 2:
                with_presence = await calls_per_second(aware)
                without = await calls_per_second(plain)
            else:
                without = await calls_per_second(plain)
                with_presence = await calls_per_second(aware)
            rows.append((without, with_presence))
        offline = await failure_ms(mqtt5, "cam9/device/control/set", DeviceOfflineError, 2000)
        no_responders = await failure_ms(mqtt5, SILENT, NoRespondersError, 2000)
    median = statistics.median
    return {
        "reps": reps,
        "calls_per_s_without_presence": round(median(r[0] for r in rows)),
        "calls_per_s_with_presence": round(median(r[1] for r in rows)),
        "with_vs_without": round(median(r[1] / r[0] for r in rows), 3),
        "device_offline_error_ms": round(offline, 3),
        "no_responders_puback_ms": round(no_responders, 3),
        "offline_vs_puback": round(offline / no_responders, 3),
    }


def main() -> None:
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    with MosquittoBroker.start() as broker, ResponderDevice.start(broker, "+/device/control/set"):
        print(json.dumps(asyncio.run(measure(broker, reps)), indent=2))


if __name__ == "__main__":
    main()
