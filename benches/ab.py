"""Before/after: the `ours` benchmark client (benches/clients/ours.py) built from two
versions of mqtt-rpc, run alternately against one Mosquitto and one Rust responder, so that
a change to the core is judged by ratios measured in the same run.

    .venv/bin/python benches/ab.py --before 1acec66            # that commit vs the working tree
    .venv/bin/python benches/ab.py --before v0.1.0 --after HEAD --repetitions 7

Each side is built as a wheel (maturin, release) from a `git worktree` of its commit (the
working tree as it is for "after" by default) and installed into its own virtualenv; the
responder and broker are the working tree's, shared by both. Each repetition runs both sides
at every concurrency, in alternating order; ratios (after / before) are paired within a
repetition, then their median is taken. Prints a table; `--json PATH` also writes the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(ROOT / "benches"))
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice  # noqa: E402
from run import run_client_with  # noqa: E402


def build(ref: Optional[str], work: Path, name: str) -> Path:
    """A virtualenv with mqtt-rpc built from `ref` (None: the working tree); its python."""
    source = ROOT
    if ref is not None:
        source = work / f"src-{name}"
        subprocess.run(["git", "worktree", "add", "--detach", "-f", str(source), ref], cwd=ROOT, check=True)
    wheels = work / f"wheels-{name}"
    shutil.rmtree(wheels, ignore_errors=True)
    environment = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target" / f"ab-{name}"))
    environment.pop("VIRTUAL_ENV", None)
    maturin = ROOT / ".venv" / "bin" / "maturin"
    subprocess.run([str(maturin), "build", "--release", "-q", "-o", str(wheels)], cwd=source, env=environment, check=True)
    venv = work / f"venv-{name}"
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    python = venv / "bin" / "python"
    wheel = next(wheels.glob("*.whl"))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    if ref is not None:
        subprocess.run(["git", "worktree", "remove", "--force", str(source)], cwd=ROOT, check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a commit, tag or branch")
    parser.add_argument("--after", default=None, help="default: the working tree")
    parser.add_argument("--concurrency", default="1,16,256")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--qos", type=int, default=0)
    parser.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--keep", type=Path, default=None, help="build into this folder and keep the virtualenvs")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "mqtt-rpc-responder"], cwd=ROOT, check=True)

    runs: List[Dict[str, object]] = []
    with tempfile.TemporaryDirectory() as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        pythons = {
            "before": build(args.before, work, "before"),
            "after": build(args.after, work, "after"),
        }
        topic = f"bench/qos{args.qos}/control/set"
        device_options = ["--qos", str(args.qos)]
        if args.protocol == "5":
            device_options += ["--protocol", "5"]
        with MosquittoBroker.start() as broker, ResponderDevice.start(broker, "+/+/control/set", options=device_options):
            for repetition in range(args.repetitions):
                for concurrency in levels:
                    order = ["before", "after"] if (repetition + concurrency) % 2 == 0 else ["after", "before"]
                    for side in order:
                        result = run_client_with(
                            pythons[side],
                            "ours",
                            broker.port,
                            topic,
                            concurrency,
                            args.seconds,
                            args.qos,
                            ["--protocol", args.protocol],
                        )
                        runs.append({"side": side, "concurrency": concurrency, "repetition": repetition, **result})
                        print(
                            f"rep {repetition + 1} c={concurrency:<4} {side:<6} {result['calls_per_second']:>9,.0f} calls/s"
                            f"  p50 {result['p50_ms']:.3f} ms  cpu/1k {result['cpu_per_1000_calls']:.4f} s",
                            flush=True,
                        )

    print(f"\nafter / before, medians of {args.repetitions} paired repetitions ({args.seconds:g} s each, MQTT {args.protocol}, QoS {args.qos}):")
    print("| in flight | calls/s before | calls/s after | calls/s ratio | CPU/1k before | CPU/1k after | CPU ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for concurrency in levels:
        def pick(side: str, key: str) -> List[float]:
            rows = [r for r in runs if r["side"] == side and r["concurrency"] == concurrency]
            return [float(r[key]) for r in sorted(rows, key=lambda r: int(r["repetition"]))]  # type: ignore[arg-type]

        before_rate, after_rate = pick("before", "calls_per_second"), pick("after", "calls_per_second")
        before_cpu, after_cpu = pick("before", "cpu_per_1000_calls"), pick("after", "cpu_per_1000_calls")
        rate_ratio = statistics.median(a / b for a, b in zip(after_rate, before_rate))
        cpu_ratio = statistics.median(a / b for a, b in zip(after_cpu, before_cpu))
        print(
            f"| {concurrency} | {statistics.median(before_rate):,.0f} | {statistics.median(after_rate):,.0f}"
            f" | {rate_ratio:.2f} | {statistics.median(before_cpu):.4f} | {statistics.median(after_cpu):.4f}"
            f" | {cpu_ratio:.2f} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": vars(args), "runs": runs}, indent=1, default=str))


if __name__ == "__main__":
    main()
