"""The soak: `ours` makes a million calls (256 at a time) and prints its RSS and `pending`
every 100,000, to show that memory stays flat and nothing is left behind."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from harness import PAYLOAD

from mqtt_rpc import MqttRpcClient

SAMPLE_EVERY = 100_000
CONCURRENCY = 256


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--calls", type=int, default=1_000_000)
    args = parser.parse_args()
    async with MqttRpcClient("127.0.0.1", args.port) as client:
        done = 0

        async def caller(share: int) -> None:
            nonlocal done
            for _ in range(share):
                await client.call(args.topic, PAYLOAD)
                done += 1
                if done % SAMPLE_EVERY == 0:
                    sample = {"calls": done, "rss_mb": round(rss_mb(), 2), "pending": client.pending}
                    print(json.dumps(sample), flush=True)

        await asyncio.gather(*(caller(args.calls // CONCURRENCY) for _ in range(CONCURRENCY)))
        print(json.dumps({"calls": done, "rss_mb": round(rss_mb(), 2), "pending": client.pending, "end": True}))


if __name__ == "__main__":
    asyncio.run(main())
