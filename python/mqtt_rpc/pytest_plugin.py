"""pytest fixtures for testing your own service against a real broker and a simulated device
(registered through the `pytest11` entry point when mqtt-rpc is installed):

    async def test_my_endpoint(mqtt_broker, mqtt_device):
        mqtt_device.answer({"status": "ok"})
        async with MqttRpcClient(mqtt_broker.host, mqtt_broker.port) as client:
            assert (await client.call("dev1/device/control/set", {}))["result"] == {"status": "ok"}

`mqtt_device` needs an asyncio test runner (pytest-asyncio, or anyio's plugin)."""

from __future__ import annotations

from typing import Any, AsyncIterator, Callable, Iterator, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])

import pytest

from .testing import MosquittoBroker, SimulatedDevice

_fixture: Any
try:  # pytest-asyncio's strict mode wants its own decorator for async fixtures
    from pytest_asyncio import fixture as _fixture
except ImportError:  # anyio's plugin, or pytest-asyncio's auto mode, take pytest's
    _fixture = pytest.fixture


def async_fixture(function: F) -> F:
    return cast(F, _fixture(function))


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[MosquittoBroker]:
    """A Mosquitto on a free loopback port, for the whole test session."""
    with MosquittoBroker.start() as broker:
        yield broker


@async_fixture
async def mqtt_device(mqtt_broker: MosquittoBroker) -> AsyncIterator[SimulatedDevice]:
    """A simulated device answering `+/device/control/set` with {"status": "ok"}; script it
    with `answer`, `answer_late`, `stay_silent` and `fail`."""
    async with SimulatedDevice(mqtt_broker, "+/device/control/set") as device:
        yield device
