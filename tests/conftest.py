"""Fixtures: a real Mosquitto broker on a free loopback port, the Rust responder as the
device, and connected clients that must end every test with nothing pending."""

from __future__ import annotations

import os
import sysconfig
import uuid
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest

import mqtt_rpc

from mqtt_rpc import MqttRpcClient
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice
from raw_device import RawDevice


def pytest_sessionstart(session: pytest.Session) -> None:
    # scripts/test-wheel runs the suite against the installed wheel: make sure it is that.
    if os.environ.get("MQTT_RPC_EXPECT_INSTALLED"):
        site_packages = Path(sysconfig.get_paths()["platlib"]).resolve()
        if not Path(mqtt_rpc.__file__).resolve().is_relative_to(site_packages):
            raise pytest.UsageError(f"expected the installed wheel, imported {mqtt_rpc.__file__}")


SEED_DEVICES = "+/device/control/set"
MQTT5_DEVICES = "+/mqtt5/control/set"


@pytest.fixture(scope="session")
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker.start() as running:
        yield running


@pytest.fixture(scope="session")
def seed_device(broker: MosquittoBroker) -> Iterator[ResponderDevice]:
    """A device that answers by the seed convention on `*/device/control/set`."""
    with ResponderDevice.start(broker, SEED_DEVICES) as device:
        yield device


@pytest.fixture(scope="session")
def mqtt5_device(broker: MosquittoBroker) -> Iterator[ResponderDevice]:
    """A plain MQTT 5 device on `*/mqtt5/control/set`: it answers only through the
    Response Topic and Correlation Data, and puts no request_id in its answer."""
    with ResponderDevice.start(broker, MQTT5_DEVICES, options=["--protocol", "5", "--mqtt5-only"]) as device:
        yield device


@pytest.fixture
def raw_device(request: pytest.FixtureRequest, broker: MosquittoBroker) -> Iterator[RawDevice]:
    """A device written with paho-mqtt that records requests as they arrived; parametrize
    indirectly with ``(protocol, topic_filter)``."""
    protocol, topic_filter = request.param
    device = RawDevice(broker, topic_filter, protocol)
    try:
        yield device
    finally:
        device.stop()


@pytest.fixture
def device_topic(seed_device: ResponderDevice) -> str:
    """The request topic of a fresh device, answered by the seed device."""
    return f"dev-{uuid.uuid4().hex[:12]}/device/control/set"


@pytest.fixture
def silent_topic(broker: MosquittoBroker) -> str:
    """A request topic nobody answers."""
    return f"nobody-{uuid.uuid4().hex[:12]}/silent/control/set"


@pytest.fixture(params=["3.1.1", "5"])
async def client(request: pytest.FixtureRequest, broker: MosquittoBroker) -> AsyncIterator[MqttRpcClient]:
    """A connected client, once per protocol version; it must end the test with nothing pending."""
    async with MqttRpcClient(broker.host, broker.port, protocol=request.param) as c:
        yield c
        assert c.pending == 0, f"{c.pending} calls left pending"
