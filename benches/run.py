"""The mqtt-rpc benchmark: calls/s, latency, CPU and memory of four clients against one
Mosquitto and the Rust responder, all started here on free loopback ports.

    scripts/bench                      # the full run: writes BENCHMARKS.md and the plot
    scripts/bench --quick              # one repetition, shorter runs, no soak

Clients (benches/clients/, and src/bin/bench_limit.rs):
  ours         MqttRpcClient.call on asyncio, `concurrency` callers in a closed loop
  ours-gather  waves of `concurrency` calls in one asyncio.gather
  ours-many    waves of one call_many of `concurrency` requests
  seed         the hand-written client this project replaces (per-call subscribe, awscrt)
  best         a careful paho-mqtt client: one wildcard subscription, a dict of futures
  limit        the Rust core with no Python: what the broker and device allow
  faststream   FastStream's MQTT broker, `broker.request()` with MQTT 5 (a Response Topic
               per request), against Rust devices serving MQTT 5
  nats         nats-py's `request()` against nats-server, answered by two nats-py devices
               (benches/clients/nats_device.py) in a queue group: the NATS alternative
  aws          AWS's request-response client (awscrt.mqtt_request_response), as the AWS
               IoT SDKs use it, on an awscrt MQTT 3.1.1 connection

Each measurement is one fresh process of one client at one concurrency: a warm-up, then
`--seconds` of `concurrency` callers calling in a loop. Repetitions alternate the clients
(rotating their order), and ratios are paired within a repetition before taking medians,
so that the machine's drift hits every client alike. The soak runs `ours` for a million
calls and samples its RSS and `pending` every 100,000.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
import contextlib
import socket
import time
from typing import Dict, Iterator, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = ROOT / "benches" / "clients"
LIMIT = ROOT / "target" / "release" / "mqtt-rpc-bench-limit"
CLIENT_COMMANDS = {
    "ours": ["ours.py"],
    "ours-traced": ["ours_traced.py"],
    "ours-gather": ["ours_waves.py", "--mode", "gather"],
    "ours-many": ["ours_waves.py", "--mode", "many"],
    "seed": ["seed_awscrt.py"],
    "best": ["best_paho.py"],
    "faststream": ["faststream_mqtt.py"],
    "nats": ["nats_request.py"],
    "aws": ["aws_request_response.py"],
}
#: Clients whose requests need an MQTT 5 device (a Response Topic to answer through).
MQTT5_CLIENTS = {"faststream"}


def topic_for(name: str, qos: int) -> str:
    """The request topic a client calls: each QoS and protocol has its own device."""
    return f"bench/{'v5' if name in MQTT5_CLIENTS else ''}qos{qos}/control/set"

sys.path.insert(0, str(ROOT / "python"))
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice, free_port  # noqa: E402


@contextlib.contextmanager
def nats_service(devices: int = 2) -> Iterator[int]:
    """nats-server on a free loopback port with `devices` nats-py devices answering
    `bench.>` in a queue group; yields the port."""
    port = free_port()
    server = subprocess.Popen(
        ["nats-server", "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    answering: List[subprocess.Popen[str]] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nats-server did not start") from None
                time.sleep(0.05)
        for _ in range(devices):
            device = subprocess.Popen(
                [sys.executable, str(CLIENTS / "nats_device.py"), "--port", str(port)],
                stdout=subprocess.PIPE,
                text=True,
                cwd=CLIENTS,
            )
            answering.append(device)
            assert device.stdout is not None and device.stdout.readline().strip() == "READY"
        yield port
    finally:
        for process in [*answering, server]:
            process.kill()
            process.wait()


def run_client(name: str, port: int, topic: str, concurrency: int, seconds: float, qos: int) -> Dict[str, float]:
    return run_client_with(Path(sys.executable), name, port, topic, concurrency, seconds, qos)


def run_client_with(
    python: Path,
    name: str,
    port: int,
    topic: str,
    concurrency: int,
    seconds: float,
    qos: int,
    extra: Sequence[str] = (),
) -> Dict[str, float]:
    """One measurement of client `name`, its Python clients run by `python` (with `extra`
    arguments, such as ``--protocol 5``)."""
    common = ["--port", str(port), "--topic", topic, "--concurrency", str(concurrency)]
    common += ["--seconds", str(seconds), "--qos", str(qos), *extra]
    if name == "limit":
        command = [str(LIMIT), *common]
    else:
        script, *extra = CLIENT_COMMANDS[name]
        command = [str(python), str(CLIENTS / script), *extra, *common]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, cwd=CLIENTS)
        try:
            process.wait(timeout=seconds * 4 + 120)
        except subprocess.TimeoutExpired:
            process.kill()  # a stuck client must not stall the whole run
            process.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{name} at concurrency {concurrency} failed ({process.returncode}): {stderr[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["calls_per_second"] = result["calls"] / result["seconds"]
    result["cpu_per_1000_calls"] = result["cpu_seconds"] / result["calls"] * 1000
    return result


def median_and_spread(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def soak(port: int, topic: str, calls: int) -> List[Dict[str, float]]:
    process = subprocess.run(
        [sys.executable, str(CLIENTS / "soak.py"), "--port", str(port), "--topic", topic, "--calls", str(calls)],
        capture_output=True,
        check=True,
        cwd=CLIENTS,
    )
    return [json.loads(line) for line in process.stdout.decode().splitlines() if line.startswith("{")]


def machine() -> Dict[str, str]:
    model = ""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[:1]
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": f"{os.cpu_count()} cores, {model}",
        "memory_gb": str(round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)),
        "os": platform.platform(),
        "python": platform.python_version(),
        "broker": mosquitto[0] if mosquitto else "mosquitto",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="ours,ours-gather,ours-many,seed,best,limit,faststream,nats,aws")
    parser.add_argument("--concurrency", default="1,16,256,1024")
    parser.add_argument("--qos", default="0,1")
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--soak-calls", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="1 repetition of 1 s, QoS 0, no soak")
    parser.add_argument("--results", type=Path, default=ROOT / "benches" / "results.json")
    args = parser.parse_args()
    if args.quick:
        args.repetitions, args.seconds, args.qos, args.soak_calls = 1, 1.0, "0", 0
    clients = args.clients.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    qos_levels = [int(q) for q in args.qos.split(",")]

    runs: List[Dict[str, object]] = []
    soak_samples: Optional[List[Dict[str, float]]] = None
    print("starting mosquitto and three responders (QoS 0, QoS 1, MQTT 5)...", flush=True)
    with contextlib.ExitStack() as services:
        broker = services.enter_context(MosquittoBroker.start())
        services.enter_context(ResponderDevice.start(broker, "+/qos0/control/set"))
        services.enter_context(ResponderDevice.start(broker, "+/qos1/control/set", options=["--qos", "1"]))
        if MQTT5_CLIENTS & set(clients):
            for qos in qos_levels:
                v5 = ["--protocol", "5", "--qos", str(qos)]
                services.enter_context(ResponderDevice.start(broker, f"+/v5qos{qos}/control/set", options=v5))
        ports = {name: broker.port for name in clients}
        if "nats" in clients:
            ports["nats"] = services.enter_context(nats_service())
        for qos in qos_levels:
            for repetition in range(args.repetitions):
                for concurrency in levels:
                    # Rotate the order each repetition so no client always runs first or last.
                    shift = (repetition + levels.index(concurrency)) % len(clients)
                    for name in clients[shift:] + clients[:shift]:
                        topic = topic_for(name, qos)
                        result = run_client(name, ports[name], topic, concurrency, args.seconds, qos)
                        runs.append(
                            {"client": name, "qos": qos, "concurrency": concurrency, "repetition": repetition, **result}
                        )
                        print(
                            f"qos {qos} rep {repetition + 1} c={concurrency:<5} {name:<6}"
                            f" {result['calls_per_second']:>10,.0f} calls/s  p50 {result['p50_ms']:7.3f} ms"
                            f"  p99 {result['p99_ms']:7.3f} ms  cpu/1k {result['cpu_per_1000_calls']:.3f} s"
                            f"  rss {result['peak_rss_mb']:.0f} MB",
                            flush=True,
                        )
        if args.soak_calls:
            print(f"soak: {args.soak_calls:,} calls with `ours`...", flush=True)
            soak_samples = soak(broker.port, "bench/qos0/control/set", args.soak_calls)
            for sample in soak_samples:
                print(f"  {sample}", flush=True)

    report = {"machine": machine(), "settings": vars(args) | {"results": str(args.results)}, "runs": runs}
    report["soak"] = soak_samples
    args.results.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.results}; render with: python benches/report.py {args.results}")


if __name__ == "__main__":
    main()
