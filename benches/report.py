"""Renders a benchmark run (benches/results.json, written by benches/run.py) as
BENCHMARKS.md and the plot benches/calls_per_second.png. The hand-written analysis in
benches/analysis.md is included as it is.

    python benches/report.py [results.json]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["ours", "ours-many", "ours-gather", "limit", "best", "seed", "nats", "faststream", "aws"]
NAMES = {
    "ours": "ours (MqttRpcClient.call)",
    "ours-many": "ours, call_many in waves",
    "ours-gather": "ours, gather of calls in waves",
    "limit": "limit (Rust core, no Python)",
    "best": "best Python (paho-mqtt)",
    "seed": "seed (hand-written, awscrt)",
    "nats": "nats-py request (NATS)",
    "faststream": "FastStream MQTT request",
    "aws": "AWS request-response (awscrt)",
}
PLOT = ROOT / "benches" / "calls_per_second.png"

Runs = List[Dict]


def select(runs: Runs, **match: object) -> Runs:
    return [r for r in runs if all(r[k] == v for k, v in match.items())]


def spread(values: List[float], fmt: str) -> str:
    if not values:
        return "–"
    median = statistics.median(values)
    if len(values) == 1:
        return format(median, fmt)
    return f"{format(median, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def paired_ratios(runs: Runs, qos: int, concurrency: int, a: str, b: str, key: str) -> List[float]:
    """a/b of `key`, paired within each repetition."""
    ratios = []
    for rep in sorted({r["repetition"] for r in runs}):
        x = select(runs, qos=qos, concurrency=concurrency, repetition=rep, client=a)
        y = select(runs, qos=qos, concurrency=concurrency, repetition=rep, client=b)
        if x and y and y[0][key]:
            ratios.append(x[0][key] / y[0][key])
    return ratios


def results_table(runs: Runs, qos: int) -> List[str]:
    lines = [
        "| concurrency | client | calls/s | p50 ms | p99 ms | CPU s / 1,000 calls | peak RSS MB |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for concurrency in sorted({r["concurrency"] for r in runs}):
        for client in ORDER:
            rs = select(runs, qos=qos, concurrency=concurrency, client=client)
            if not rs:
                continue
            lines.append(
                f"| {concurrency} | {NAMES[client]} | {spread([r['calls_per_second'] for r in rs], ',.0f')} "
                f"| {spread([r['p50_ms'] for r in rs], '.3f')} | {spread([r['p99_ms'] for r in rs], '.3f')} "
                f"| {spread([r['cpu_per_1000_calls'] for r in rs], '.4f')} "
                f"| {spread([r['peak_rss_mb'] for r in rs], '.0f')} |"
            )
    return lines


def ratio_table(runs: Runs, qos: int) -> List[str]:
    lines = [
        "| concurrency | ours/limit calls/s | ours/seed calls/s | ours/best calls/s | ours/limit p50 latency "
        "| call_many/limit calls/s | call_many/gather calls/s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for concurrency in sorted({r["concurrency"] for r in select(runs, qos=qos)}):
        cells = [
            spread(paired_ratios(runs, qos, concurrency, "ours", other, "calls_per_second"), ".2f")
            for other in ("limit", "seed", "best")
        ]
        cells.append(spread(paired_ratios(runs, qos, concurrency, "ours", "limit", "p50_ms"), ".2f"))
        for a, b in (("ours-many", "limit"), ("ours-many", "ours-gather")):
            cells.append(spread(paired_ratios(runs, qos, concurrency, a, b, "calls_per_second"), ".2f"))
        lines.append(f"| {concurrency} | " + " | ".join(cells) + " |")
    return lines


def cpu_table(runs: Runs, qos: int) -> List[str]:
    """Client CPU per 1,000 calls, ours beside the alternatives, and ours's paired ratio to each."""
    others = [c for c in ("limit", "nats", "faststream", "aws", "best") if select(runs, qos=qos, client=c)]
    lines = [
        "| concurrency | ours | " + " | ".join(NAMES[c] for c in others) + " | "
        + " | ".join(f"ours/{c}" for c in others) + " |",
        "|---:|---:|" + "---:|" * (2 * len(others)),
    ]
    for concurrency in sorted({r["concurrency"] for r in select(runs, qos=qos)}):
        cells = [
            spread([r["cpu_per_1000_calls"] for r in select(runs, qos=qos, concurrency=concurrency, client=c)], ".4f")
            for c in ["ours", *others]
        ]
        cells += [
            spread(paired_ratios(runs, qos, concurrency, "ours", c, "cpu_per_1000_calls"), ".2f") for c in others
        ]
        lines.append(f"| {concurrency} | " + " | ".join(cells) + " |")
    return lines


def median_ratio(runs: Runs, qos: int, concurrency: int, a: str, b: str, key: str) -> float:
    ratios = paired_ratios(runs, qos, concurrency, a, b, key)
    return statistics.median(ratios) if ratios else float("nan")


def targets(runs: Runs, soak: List[Dict] | None) -> List[str]:
    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = ["| target | measured (QoS 0, medians of paired ratios) | |", "|---|---:|---|"]
    checks: List[Tuple[str, float, bool]] = []
    if select(runs, qos=0, concurrency=256):
        r = median_ratio(runs, 0, 256, "ours", "limit", "calls_per_second")
        checks.append(("ours/limit ≥ 0.8 in calls/s at concurrency 256", r, r >= 0.8))
        r = median_ratio(runs, 0, 256, "ours-many", "limit", "calls_per_second")
        checks.append(("ours/limit ≥ 0.9 with call_many at concurrency 256", r, r >= 0.9))
        r = median_ratio(runs, 0, 256, "ours", "seed", "calls_per_second")
        checks.append(("ours/seed ≥ 8 at concurrency 256", r, r >= 8))
        r = median_ratio(runs, 0, 256, "ours", "best", "calls_per_second")
        checks.append(("ours/best-Python ≥ 2.5 at concurrency 256", r, r >= 2.5))
    if select(runs, qos=0, concurrency=1):
        r = median_ratio(runs, 0, 1, "ours", "limit", "p50_ms")
        checks.append(("p50 latency at concurrency 1 within 1.3× of the limit's", r, r <= 1.3))
    for text, value, ok in checks:
        if value != value:  # NaN: a client of the ratio was not in this run
            lines.append(f"| {text} | not measured | |")
        else:
            lines.append(f"| {text} | {value:.2f} | {verdict(ok)} |")
    if soak:
        base = next((s for s in soak if s["calls"] == 100_000), soak[0])
        end = soak[-1]
        growth = end["rss_mb"] / base["rss_mb"] - 1
        lines.append(
            f"| RSS at the end of the soak within 10% of RSS at 100,000 calls | {growth:+.1%} | "
            f"{verdict(abs(growth) <= 0.10)} |"
        )
    return lines


def plot(runs: Runs) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot drawn", file=sys.stderr)
        return False
    qos_levels = sorted({r["qos"] for r in runs})
    fig, axes = plt.subplots(1, len(qos_levels), figsize=(6.5 * len(qos_levels), 4.8), squeeze=False)
    for ax, qos in zip(axes[0], qos_levels):
        for client in ORDER:
            levels = sorted({r["concurrency"] for r in select(runs, qos=qos, client=client)})
            if not levels:
                continue
            values = [[r["calls_per_second"] for r in select(runs, qos=qos, client=client, concurrency=c)] for c in levels]
            medians = [statistics.median(v) for v in values]
            errors = [[m - min(v) for m, v in zip(medians, values)], [max(v) - m for m, v in zip(medians, values)]]
            ax.errorbar(levels, medians, yerr=errors, marker="o", capsize=3, label=NAMES[client])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("calls in flight (concurrency)")
        ax.set_ylabel("calls per second (median, min–max)")
        ax.set_title(f"request/response through Mosquitto, QoS {qos}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    return True


def main() -> None:
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benches" / "results.json"
    report = json.loads(source.read_text())
    runs, soak, machine, settings = report["runs"], report.get("soak"), report["machine"], report["settings"]
    drew = plot(runs)
    out = [
        "# Benchmarks",
        "",
        "Request/response round trips through one Mosquitto to the Rust responder, all on this",
        "machine's loopback. Reproduce with `scripts/bench` (it starts its own broker and device;",
        "`scripts/bench --quick` for a short run). Numbers are medians of "
        f"{settings['repetitions']} repetitions of {settings['seconds']:g} s each, with (min–max);",
        "ratios are paired within a repetition, then the median taken. The clients alternate, in",
        "rotating order. Client, broker and device share the machine's cores.",
        "",
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine.items()],
        "",
        "The clients:",
        "",
        "- **ours**: `MqttRpcClient.call`, `concurrency` coroutines calling in a loop on one asyncio loop.",
        "- **ours, call_many / gather in waves**: `concurrency` calls at a time, the next wave when",
        "  the last has ended, made with one `call_many` or with `asyncio.gather` of `call`s.",
        "- **limit**: the same round trips from Rust (`src/bin/bench_limit.rs`, the crate's core), no Python.",
        "- **best Python**: paho-mqtt on the asyncio loop, TCP_NODELAY, one wildcard reply",
        "  subscription made at connect, a dict of futures (`benches/clients/best_paho.py`).",
        "- **seed**: the hand-written client of the original post on awscrt: subscribe per call and",
        "  wait for the SUBACK, publish, `wait_for`, unsubscribe (`benches/clients/seed_awscrt.py`).",
        "- **nats-py request**: the NATS alternative, `await nc.request(subject, payload)` against",
        "  nats-server, answered by two nats-py devices in a queue group (`benches/clients/nats_request.py`);",
        "  core NATS has no QoS, so its QoS 1 rows repeat the same requests.",
        "- **FastStream MQTT request**: `await broker.request(payload, topic)` with MQTT 5 (a Response",
        "  Topic per request), against Rust devices serving MQTT 5 (`benches/clients/faststream_mqtt.py`).",
        "- **AWS request-response**: `awscrt.mqtt_request_response`, the client the AWS IoT SDKs use",
        "  for shadows and jobs, on an awscrt 3.1.1 connection (`benches/clients/aws_request_response.py`).",
        "",
        "## Targets",
        "",
        *targets(runs, soak),
        "",
    ]
    if drew:
        out += ["![calls per second against concurrency](benches/calls_per_second.png)", ""]
    for qos in sorted({r["qos"] for r in runs}):
        out += [f"## QoS {qos}", "", "### Ratios", "", *ratio_table(runs, qos), ""]
        out += ["### Client CPU seconds per 1,000 calls", "", *cpu_table(runs, qos), "", "### Results", ""]
        out += [*results_table(runs, qos), ""]
    if soak:
        out += [
            "## Soak",
            "",
            f"`ours`, {soak[-1]['calls']:,} calls, 256 in flight (`benches/clients/soak.py`):",
            "",
            "| calls | RSS MB | pending |",
            "|---:|---:|---:|",
            *[f"| {s['calls']:,} | {s['rss_mb']:.1f} | {s['pending']} |" for s in soak],
            "",
        ]
    analysis = ROOT / "benches" / "analysis.md"
    if analysis.exists():
        out += [analysis.read_text().rstrip(), ""]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(out))
    print(f"wrote BENCHMARKS.md{' and ' + str(PLOT.relative_to(ROOT)) if drew else ''}")


if __name__ == "__main__":
    main()
