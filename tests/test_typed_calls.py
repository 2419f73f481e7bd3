"""pydantic models in and out: a model as the payload, `response_model` on the answer, a
typed error that keeps the raw reply, and a package that works without pydantic."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import AsyncIterator, Dict, List

import pytest
from pydantic import BaseModel

from mqtt_rpc import MqttRpcClient, MqttRpcError, PayloadError, ReplyValidationError, SyncMqttRpcClient
from mqtt_rpc.testing import MosquittoBroker, SimulatedDevice

DEVICE = "cam1/typed/control/set"


class Command(BaseModel):
    action: str
    level: int = 0


class Camera(BaseModel):
    name: str
    fps: int


@pytest.fixture
async def device(broker: MosquittoBroker) -> AsyncIterator[SimulatedDevice]:
    async with SimulatedDevice(broker, "cam1/typed/control/set") as simulated:
        yield simulated


async def test_a_model_is_sent_as_its_json(client: MqttRpcClient, device: SimulatedDevice) -> None:
    device.answer(lambda request: {"seen": request})
    reply = await client.call(DEVICE, Command(action="ZOOM", level=3))
    assert reply["result"]["seen"] == {"action": "ZOOM", "level": 3, "request_id": reply["request_id"]}
    await client.notify(DEVICE, Command(action="NOTE"))
    replies = await client.call_many([(DEVICE, Command(action="A")), (DEVICE, {"action": "B"})])
    assert [r["result"]["seen"]["action"] for r in replies] == ["A", "B"]


async def test_response_model_returns_the_result_as_that_model(client: MqttRpcClient, device: SimulatedDevice) -> None:
    device.answer({"name": "front door", "fps": 25})
    camera = await client.call(DEVICE, Command(action="DESCRIBE"), response_model=Camera)
    assert camera == Camera(name="front door", fps=25)


async def test_response_model_takes_any_type_a_type_adapter_takes(client: MqttRpcClient, device: SimulatedDevice) -> None:
    device.answer([{"name": "a", "fps": 1}, {"name": "b", "fps": "2"}])
    cameras = await client.call(DEVICE, {}, response_model=List[Camera])
    assert cameras == [Camera(name="a", fps=1), Camera(name="b", fps=2)]
    device.answer({"x": 1})
    assert await client.call(DEVICE, {}, response_model=Dict[str, int]) == {"x": 1}
    replies = await client.call_many([(DEVICE, {}), (DEVICE, {})], response_model=Dict[str, int])
    assert replies == [{"x": 1}, {"x": 1}]


async def test_an_answer_that_does_not_validate_keeps_the_raw_reply(client: MqttRpcClient, device: SimulatedDevice) -> None:
    device.answer({"name": "front door", "fps": "fast"})
    with pytest.raises(ReplyValidationError, match="fps") as raised:
        await client.call(DEVICE, {}, response_model=Camera)
    error = raised.value
    assert isinstance(error, ValueError) and isinstance(error, MqttRpcError)
    assert error.reply["result"] == {"name": "front door", "fps": "fast"}
    assert error.errors[0]["loc"] == ("fps",)
    replies = await client.call_many([(DEVICE, {})], response_model=Camera, return_exceptions=True)
    assert isinstance(replies[0], ReplyValidationError)


def test_the_sync_client_validates_too(broker: MosquittoBroker) -> None:
    import asyncio
    import threading

    ready = threading.Event()
    stop = threading.Event()

    def serve() -> None:
        async def run() -> None:
            async with SimulatedDevice(broker, "cam2/typed/control/set") as simulated:
                simulated.answer({"name": "yard", "fps": 5})
                ready.set()
                while not stop.is_set():
                    await asyncio.sleep(0.02)

        asyncio.run(run())

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert ready.wait(10)
        with SyncMqttRpcClient(broker.host, broker.port) as client:
            assert client.call("cam2/typed/control/set", Command(action="X"), response_model=Camera) == Camera(
                name="yard", fps=5
            )
    finally:
        stop.set()
        thread.join()


async def test_a_dict_that_is_not_json_names_its_index_in_a_batch(client: MqttRpcClient) -> None:
    with pytest.raises(PayloadError, match="request 1 of the batch"):
        await client.call_many([(DEVICE, {"ok": 1}), (DEVICE, {"bad": object()})])
    assert client.pending == 0


def test_without_pydantic_the_package_works_and_response_model_says_what_to_install(broker: MosquittoBroker) -> None:
    program = textwrap.dedent(
        f"""
        import asyncio, sys
        sys.modules["pydantic"] = None  # as if it were not installed
        from mqtt_rpc import MqttRpcClient

        async def main():
            async with MqttRpcClient("{broker.host}", {broker.port}) as client:
                try:
                    await client.call("cam9/typed/control/set", {{}}, timeout=5, response_model=dict)
                except ImportError as error:
                    print("ImportError:", error)
                assert client.pending == 0  # refused before anything was sent

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "ImportError: response_model needs pydantic" in result.stdout
