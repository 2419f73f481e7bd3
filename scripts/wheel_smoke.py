"""The installed package's smoke test, as a user meets it: run by `scripts/test-wheel` with
the interpreter of a fresh virtual environment that holds only the wheel, and no Rust
toolchain on the PATH. Against a real Mosquitto: connect, call a `Responder`, a timeout,
a blocking call, the CLI's version. Exits non-zero, saying what failed."""

import asyncio
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import mqtt_rpc
from mqtt_rpc import MqttRpcClient, Responder, RpcTimeoutError, SyncMqttRpcClient
from mqtt_rpc.testing import MosquittoBroker


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"smoke test failed: {what}")


async def calls(broker: MosquittoBroker) -> None:
    responder = Responder(broker.host, broker.port)

    @responder.handle("+/device/control/set")
    async def control(request: dict) -> dict:
        return {"status": "ok", "action": request["action"]}

    async with responder:
        async with MqttRpcClient(broker.host, broker.port, protocol="5") as client:
            reply = await client.call("cam1/device/control/set", {"action": "GET_HEALTH_CHECK"}, timeout=10)
            check(reply["result"] == {"status": "ok", "action": "GET_HEALTH_CHECK"}, f"the answer: {reply}")
            try:
                await client.call("nobody/silent/control/set", {}, timeout=0.3)
                check(False, "a call nobody answers did not time out")
            except RpcTimeoutError as error:
                check(str(error) == "MQTT call timed out after 0.3s for topic 'nobody/silent/control/set'", str(error))
            check(client.pending == 0, "calls left pending")
        # Code without an event loop, from a worker thread while the responder serves here.
        blocking = await asyncio.get_running_loop().run_in_executor(None, blocking_call, broker)
        check(blocking["result"]["action"] == "PING", f"the blocking call's answer: {blocking}")


def blocking_call(broker: MosquittoBroker) -> dict:
    with SyncMqttRpcClient(broker.host, broker.port) as client:
        return client.call("cam2/device/control/set", {"action": "PING"}, timeout=10)


def main() -> None:
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    check(Path(mqtt_rpc.__file__).resolve().is_relative_to(site_packages), f"mqtt_rpc imported from {mqtt_rpc.__file__}")
    check(shutil.which("cargo") is None, "cargo is on the PATH: the wheel must work without a Rust toolchain")
    cli = subprocess.run([sys.executable, "-m", "mqtt_rpc", "--version"], capture_output=True, text=True, check=True)
    check(cli.stdout.strip() == f"mqtt-rpc {mqtt_rpc.__version__}", f"mqtt-rpc --version says {cli.stdout!r}")
    with MosquittoBroker.start() as broker:
        asyncio.run(calls(broker))
    print(f"smoke test passed: mqtt-rpc {mqtt_rpc.__version__} on Python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
