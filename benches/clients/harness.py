"""The measuring loop every Python benchmark client shares, so that they differ only in how
a call is made: `concurrency` callers call in a loop, first for a warm-up, then for the
measured seconds; then one JSON line: calls, seconds, cpu_seconds, p50_ms, p99_ms, peak_rss_mb."""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any, Awaitable, Callable, List, Tuple

PAYLOAD = '{"action": "GET_HEALTH_CHECK"}'
Call = Callable[[str, str], Awaitable[object]]


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--qos", type=int, default=0)
    parser.add_argument("--protocol", default="3.1.1", help="MQTT version, for clients that speak both")
    return parser.parse_args()


def peak_rss_mb() -> float:
    """This process's own peak resident memory (VmHWM). Not the parent's wait4 figure: on
    Linux that one also counts what the forking parent held before exec."""
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime


Batch = Callable[[str, int], Awaitable[object]]


async def waves(batch: Batch, topic: str, concurrency: int, seconds: float) -> List[float]:
    """`concurrency` calls at a time, in waves: each wave starts when the last one ended;
    every call of a wave is counted with the wave's latency."""
    until = time.perf_counter() + seconds
    latencies: List[float] = []
    clock = time.perf_counter
    while clock() < until:
        started = clock()
        await batch(topic, concurrency)
        latencies.extend([clock() - started] * concurrency)
    return latencies


async def callers(call: Call, topic: str, concurrency: int, seconds: float) -> List[float]:
    until = time.perf_counter() + seconds
    latencies: List[float] = []

    async def caller() -> None:
        clock = time.perf_counter
        while clock() < until:
            started = clock()
            await call(topic, PAYLOAD)
            latencies.append(clock() - started)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies


def percentile_ms(latencies: List[float], fraction: float) -> float:
    ordered = sorted(latencies)
    index = min(len(ordered), max(1, -(-len(ordered) * fraction // 1))) - 1
    return ordered[int(index)] * 1000


Connect = Callable[[argparse.Namespace], Awaitable[Tuple[Any, Callable[[], Awaitable[None]]]]]


async def measure(connect: Connect, in_waves: bool = False) -> None:
    args = arguments()
    call, close = await connect(args)
    load = waves if in_waves else callers
    await load(call, args.topic, args.concurrency, args.warmup)
    cpu_before, started = cpu_seconds(), time.perf_counter()
    latencies = await load(call, args.topic, args.concurrency, args.seconds)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
    await close()
    print(
        json.dumps(
            {
                "calls": len(latencies),
                "seconds": seconds,
                "cpu_seconds": cpu,
                "p50_ms": percentile_ms(latencies, 0.5),
                "p99_ms": percentile_ms(latencies, 0.99),
                "peak_rss_mb": peak_rss_mb(),
            }
        ),
        flush=True,
    )


def run(connect: Connect, in_waves: bool = False) -> None:
    """Measures `connect`'s call with closed-loop callers, or (`in_waves`) its batch call."""
    asyncio.run(measure(connect, in_waves))
