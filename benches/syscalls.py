"""System calls and context switches per call, for `ours` and the Rust `limit` client: what
the client asks of the kernel for each round trip (BENCHMARKS.md, "Syscalls per call").
Needs `perf` (Debian: linux-perf) and the permission to read syscall tracepoints (root).

    .venv/bin/python benches/syscalls.py                   # 1, 16 and 256 in flight
    .venv/bin/python benches/syscalls.py --concurrency 1 --seconds 5

Each row is one run of `--seconds` under `perf stat`, counted over the whole client process
(start-up included, which is small against thousands of calls) and divided by its calls.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benches"))
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice  # noqa: E402
from run import CLIENTS, CLIENT_COMMANDS, LIMIT  # noqa: E402

SYSCALLS = ["sendto", "writev", "write", "recvfrom", "read", "epoll_wait", "futex"]
EVENTS = [f"syscalls:sys_enter_{name}" for name in SYSCALLS] + ["context-switches"]


def per_call(client: str, port: int, concurrency: int, seconds: float) -> Dict[str, float]:
    common = ["--port", str(port), "--topic", "bench/qos0/control/set"]
    common += ["--concurrency", str(concurrency), "--seconds", str(seconds), "--qos", "0"]
    if client == "limit":
        command = [str(LIMIT), *common]
    else:
        script, *extra = CLIENT_COMMANDS[client]
        command = [sys.executable, str(CLIENTS / script), *extra, *common]
    stat = ["perf", "stat", "-x,", "-e", ",".join(EVENTS), "--", *command]
    finished = subprocess.run(stat, capture_output=True, text=True, cwd=CLIENTS, check=True)
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    counts: Dict[str, float] = {"calls/s": result["calls"] / result["seconds"]}
    for line in finished.stderr.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[0].replace(".", "", 1).isdigit():
            name = fields[2].removeprefix("syscalls:sys_enter_")
            counts[name] = float(fields[0]) / result["calls"]
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,16,256")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    if shutil.which("perf") is None:
        sys.exit("perf is needed (Debian: apt-get install linux-perf)")
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "mqtt-rpc-bench-limit"], cwd=ROOT, check=True)
    columns = ["calls/s", *SYSCALLS, "context-switches"]
    print("| in flight | client | " + " | ".join(columns) + " |")
    print("|---:|---|" + "---:|" * len(columns))
    with MosquittoBroker.start() as broker, ResponderDevice.start(broker, "+/qos0/control/set"):
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            for client in ("ours", "limit"):
                counts = per_call(client, broker.port, concurrency, args.seconds)
                cells = [f"{counts.get(c, 0):,.0f}" if c == "calls/s" else f"{counts.get(c, 0):.2f}" for c in columns]
                print(f"| {concurrency} | {client} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
