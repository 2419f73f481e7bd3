"""What tracing costs a call: the "ours" client without instrumentation and "ours-traced"
(`MqttRpcInstrumentor` on, spans to the OpenTelemetry SDK's batch processor and a
discarding exporter), alternately against one Mosquitto and one Rust responder. Ratios
(traced / plain) are paired within a repetition, then their median is taken. (What the
seam costs when nothing is instrumented is a before/after question: `benches/ab.py`.)

    .venv/bin/python benches/tracing.py --repetitions 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benches"))
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice  # noqa: E402
from run import run_client  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,16,256")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "mqtt-rpc-responder"], cwd=ROOT, check=True)
    runs: List[Dict[str, float]] = []
    topic = "bench/qos0/control/set"
    with MosquittoBroker.start() as broker, ResponderDevice.start(broker, "+/+/control/set"):
        for repetition in range(args.repetitions):
            for concurrency in levels:
                order = ["ours", "ours-traced"] if (repetition + concurrency) % 2 == 0 else ["ours-traced", "ours"]
                for name in order:
                    result = run_client(name, broker.port, topic, concurrency, args.seconds, 0)
                    runs.append({"traced": name == "ours-traced", "concurrency": concurrency, "rep": repetition, **result})
                    print(f"rep {repetition + 1} c={concurrency:<4} {name:<12} {result['calls_per_second']:>9,.0f} calls/s"
                          f"  cpu/1k {result['cpu_per_1000_calls']:.4f} s", flush=True)
    print(f"\ntraced / plain, medians of {args.repetitions} paired repetitions ({args.seconds:g} s each):")
    print("| in flight | calls/s plain | calls/s traced | calls/s ratio | CPU/1k plain | CPU/1k traced | CPU ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency in levels:
        def pick(traced: bool, key: str) -> List[float]:
            rows = sorted((r for r in runs if r["traced"] == traced and r["concurrency"] == concurrency), key=lambda r: r["rep"])
            return [r[key] for r in rows]

        rate, cpu = "calls_per_second", "cpu_per_1000_calls"
        rate_ratio = statistics.median(t / p for t, p in zip(pick(True, rate), pick(False, rate)))
        cpu_ratio = statistics.median(t / p for t, p in zip(pick(True, cpu), pick(False, cpu)))
        print(f"| {concurrency} | {statistics.median(pick(False, rate)):,.0f} | {statistics.median(pick(True, rate)):,.0f}"
              f" | {rate_ratio:.2f} | {statistics.median(pick(False, cpu)):.4f} | {statistics.median(pick(True, cpu)):.4f}"
              f" | {cpu_ratio:.2f} |")


if __name__ == "__main__":
    main()
