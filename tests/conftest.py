"""Fixtures: a real Mosquitto broker on a free loopback port, the Rust responder as the
device, and connected clients that must end every test with nothing pending."""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import time
import threading
import uuid
from pathlib import Path
from typing import AsyncIterator, Iterator, List

import pytest

from mqtt_rpc import MqttRpcClient

ROOT = Path(__file__).resolve().parents[1]
SEED_DEVICES = "+/device/control/set"
MQTT5_DEVICES = "+/mqtt5/control/set"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )
    if not found:
        pytest.exit("mosquitto is not installed: run `apt-get install -y mosquitto` (see .ci/run)", 2)
    return found


def responder_binary() -> Path:
    configured = os.environ.get("MQTT_RPC_RESPONDER")
    if configured:
        return Path(configured)
    binary = ROOT / "target" / "release" / "mqtt-rpc-responder"
    # cargo only rebuilds what changed: cheap when .ci/run already built it.
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "--bin", "mqtt-rpc-responder"], cwd=ROOT, check=True
    )
    return binary


class Broker:
    """A running Mosquitto, with the log lines it has written so far."""

    def __init__(self, host: str, port: int, process: subprocess.Popen) -> None:
        self.host = host
        self.port = port
        self.process = process
        self.lines: List[str] = []
        self.running = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))
            if " running" in line:
                self.running.set()

    def subscribes(self, client_id: str) -> List[str]:
        """The filters `client_id` subscribed, one per SUBSCRIBE topic, from the broker's log."""
        # Mosquitto logs a subscription as "<client id> <qos> <filter>".
        return [
            parts[2]
            for parts in (line.split(" ") for line in list(self.lines))
            if len(parts) == 3 and parts[0] == client_id and parts[1].isdigit()
        ]

    def unsubscribes(self, client_id: str) -> List[str]:
        """The filters `client_id` unsubscribed; logged as "<client id> <filter>"."""
        return [
            parts[1]
            for parts in (line.split(" ") for line in list(self.lines))
            if len(parts) == 2 and parts[0] == client_id
        ]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    workdir = tmp_path_factory.mktemp("mosquitto")
    port = free_port()
    config = workdir / "mosquitto.conf"
    config.write_text(
        "\n".join(
            [
                f"listener {port} 127.0.0.1",
                "allow_anonymous true",
                # Logged to stderr, which is unbuffered: the fixture reads it line by line
                # (the "running" notice says the listener is open).
                "log_dest stderr",
                "log_type error",
                "log_type warning",
                "log_type information",
                "log_type subscribe",
                "log_type unsubscribe",
                "log_timestamp false",
                "max_queued_messages 100000",
                "",
            ]
        )
    )
    process = subprocess.Popen(
        [find_mosquitto(), "-c", str(config)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    broker = Broker("127.0.0.1", port, process)
    try:
        if not broker.running.wait(timeout=10):
            raise RuntimeError("mosquitto did not start: " + " | ".join(broker.lines))
        yield broker
    finally:
        process.terminate()
        process.wait(timeout=10)


def start_responder(broker: Broker, *args: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [str(responder_binary()), "--host", broker.host, "--port", str(broker.port), *args],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 15
    assert process.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], deadline - time.monotonic())
        if not ready:
            break
        line = process.stdout.readline()
        if line.strip() == "READY":
            return process
        if not line:
            break
    process.kill()
    raise RuntimeError(f"the responder {args} did not become ready")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(scope="session")
def seed_device(broker: Broker) -> Iterator[subprocess.Popen]:
    """A device that answers by the seed convention on `*/device/control/set`."""
    process = start_responder(broker, SEED_DEVICES)
    yield process
    stop(process)


@pytest.fixture(scope="session")
def mqtt5_device(broker: Broker) -> Iterator[subprocess.Popen]:
    """A plain MQTT 5 device on `*/mqtt5/control/set`: it answers only through the
    Response Topic and Correlation Data, and puts no request_id in its answer."""
    process = start_responder(broker, "--protocol", "5", "--mqtt5-only", MQTT5_DEVICES)
    yield process
    stop(process)


@pytest.fixture
def device_topic(seed_device: subprocess.Popen) -> str:
    """A request topic of a fresh device (answered by the seed device)."""
    return f"dev-{uuid.uuid4().hex[:12]}/device/control/set"


@pytest.fixture
def silent_topic(broker: Broker) -> str:
    """A request topic nobody answers."""
    return f"nobody-{uuid.uuid4().hex[:12]}/silent/control/set"


async def assert_clean(client: MqttRpcClient) -> None:
    assert client.pending == 0, f"{client.pending} calls left pending"


@pytest.fixture(params=["3.1.1", "5"])
async def client(request: pytest.FixtureRequest, broker: Broker) -> AsyncIterator[MqttRpcClient]:
    """A connected client, once per protocol version; it must end the test with nothing pending."""
    async with MqttRpcClient(broker.host, broker.port, protocol=request.param) as c:
        yield c
        await assert_clean(c)
