"""How many requests per second one Python `Responder` with a trivial handler serves,
against the Rust responder, measured in one run by the Rust limit client (no Python on the
calling side): `python benches/responder_rate.py [seconds] [concurrency]`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "python"))
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice  # noqa: E402

PYTHON_RESPONDER = textwrap.dedent(
    """
    import asyncio, sys
    from mqtt_rpc import Responder

    async def main(port):
        responder = Responder("127.0.0.1", port)

        @responder.handle("+/python/control/set")
        async def trivial(request):
            return {"status": "ok"}

        await responder.start()
        print("READY", flush=True)
        await responder.serve()

    asyncio.run(main(int(sys.argv[1])))
    """
)


def limit_client(port: int, topic: str, seconds: float, concurrency: int) -> float:
    out = subprocess.run(
        [str(ROOT / "target/release/mqtt-rpc-bench-limit"), "--port", str(port), "--topic", topic,
         "--concurrency", str(concurrency), "--seconds", str(seconds)],
        capture_output=True, text=True, check=True,
    ).stdout
    result = json.loads(out)
    return result["calls"] / result["seconds"]


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 256
    with MosquittoBroker.start() as broker, ResponderDevice.start(broker, "+/rust/control/set"):
        python = subprocess.Popen([sys.executable, "-c", PYTHON_RESPONDER, str(broker.port)], stdout=subprocess.PIPE, text=True)
        try:
            assert python.stdout is not None and python.stdout.readline().strip() == "READY"
            rates = {"rust": [], "python": []}
            for _ in range(3):  # alternate, three times each
                for kind in ("rust", "python"):
                    rates[kind].append(limit_client(broker.port, f"bench/{kind}/control/set", seconds, concurrency))
        finally:
            python.terminate()
            python.wait()
    for kind, values in rates.items():
        print(f"{kind:>6} responder: median {sorted(values)[1]:,.0f} requests/s  ({', '.join(f'{v:,.0f}' for v in values)})")
    print(f"python/rust: {sorted(rates['python'])[1] / sorted(rates['rust'])[1]:.2f}")


if __name__ == "__main__":
    main()
