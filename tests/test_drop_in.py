"""The hand-written client's service with one import changed: a module-level client made with
no arguments (the broker from `MQTT_RPC_URL`), connected by its first call, used from one
event loop after another (FastAPI `TestClient` sessions, `asyncio.run()` twice), and closed
and connected again."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from fastapi.testclient import TestClient

from mqtt_rpc import MqttRpcClient, NotConnectedError, SyncMqttRpcClient
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice

# The service of the original post, as its users wrote it, with only the import changed.
SEED_SERVICE = '''
import enum

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from mqtt_rpc import MqttRpcClient  # was: from shared.mqtt.mqtt_rpc import MqttRpcClient


class DeviceControlAction(enum.Enum):
    GET_HEALTH_CHECK = "GET_HEALTH_CHECK"


class DeviceControlRequestEvent(BaseModel):
    action: str


mqtt_rpc_client = MqttRpcClient()
app = FastAPI()


@app.get("/devices/{device_id}/health")
async def health(device_id: str, timeout: int = 10):
    event = DeviceControlRequestEvent(action=DeviceControlAction.GET_HEALTH_CHECK.value)
    try:
        result: dict = await mqtt_rpc_client.call(f"{device_id}/device/control/set", event.json(), timeout=timeout)
    except TimeoutError as error:
        raise HTTPException(status_code=504, detail=str(error))
    return result
'''

# The same client, connected and closed by the app's lifespan (the recommended form).
LIFESPAN_SERVICE = '''
from contextlib import asynccontextmanager

from fastapi import FastAPI

from mqtt_rpc import MqttRpcClient

mqtt_rpc_client = MqttRpcClient()


@asynccontextmanager
async def lifespan(app):
    await mqtt_rpc_client.connect()
    yield
    await mqtt_rpc_client.close()


app = FastAPI(lifespan=lifespan)


@app.get("/devices/{device_id}/health")
async def health(device_id: str):
    return await mqtt_rpc_client.call(f"{device_id}/device/control/set", {"action": "GET_HEALTH_CHECK"})
'''


@pytest.fixture(scope="module")
def own_broker() -> Iterator[MosquittoBroker]:
    # Its own broker: only the camera below answers, every other device is offline.
    with MosquittoBroker.start() as broker:
        yield broker


@pytest.fixture(scope="module")
def camera(own_broker: MosquittoBroker) -> Iterator[ResponderDevice]:
    with ResponderDevice.start(own_broker, "rpi-camera-device/device/control/set") as device:
        yield device


@pytest.fixture
def broker_url(own_broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"mqtt://{own_broker.host}:{own_broker.port}"
    monkeypatch.setenv("MQTT_RPC_URL", url)
    return url


def load_service(source: str, tmp_path: Path) -> Any:
    path = tmp_path / f"service_{uuid.uuid4().hex[:8]}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic 2 deprecates the post's event.json()
def test_the_seed_service_works_with_only_the_import_changed(
    broker_url: str, camera: ResponderDevice, tmp_path: Path
) -> None:
    service = load_service(SEED_SERVICE, tmp_path)
    for session in range(2):  # two TestClient sessions: two event loops, one after the other
        with TestClient(service.app) as http:
            answered = http.get("/devices/rpi-camera-device/health")
            assert answered.status_code == 200, (session, answered.text)
            body = answered.json()
            assert body["result"]["request"] == {"action": "GET_HEALTH_CHECK", "request_id": body["request_id"]}
            silent = http.get("/devices/rpi-offline-device/health", params={"timeout": 1})
            assert silent.status_code == 504
            assert silent.json() == {
                "detail": "MQTT call timed out after 1s for topic 'rpi-offline-device/device/control/set'"
            }
    # One connection served both sessions.
    assert service.mqtt_rpc_client.connected
    assert service.mqtt_rpc_client.pending == 0


def test_a_lifespan_client_serves_two_test_client_sessions(
    broker_url: str, camera: ResponderDevice, own_broker: MosquittoBroker, tmp_path: Path
) -> None:
    service = load_service(LIFESPAN_SERVICE, tmp_path)
    client_id = service.mqtt_rpc_client.client_id
    for _ in range(2):
        with TestClient(service.app) as http:
            response = http.get("/devices/rpi-camera-device/health")
            assert response.status_code == 200, response.text
            assert service.mqtt_rpc_client.connected
        assert not service.mqtt_rpc_client.connected
    assert own_broker.connections(client_id) == 2


def test_a_client_made_at_import_time_works_in_two_asyncio_runs(
    broker_url: str, camera: ResponderDevice
) -> None:
    client = MqttRpcClient()

    async def one_run() -> str:
        reply = await client.call("rpi-camera-device/device/control/set", {"action": "GET_HEALTH_CHECK"})
        return str(reply["result"]["request"]["action"])

    assert asyncio.run(one_run()) == "GET_HEALTH_CHECK"  # connects, leaves it open
    assert asyncio.run(one_run()) == "GET_HEALTH_CHECK"  # another loop, the same connection

    async def closed_and_again() -> str:
        await client.close()
        return await one_run()

    assert asyncio.run(closed_and_again()) == "GET_HEALTH_CHECK"
    # Each loop that used the client had a wake-up socket: those of closed loops are let go.
    open_files = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        asyncio.run(one_run())
    assert len(os.listdir("/proc/self/fd")) <= open_files + 2
    asyncio.run(client.close())


async def test_concurrent_first_calls_share_one_connection(
    broker_url: str, camera: ResponderDevice, own_broker: MosquittoBroker
) -> None:
    client = MqttRpcClient()
    try:
        replies = await asyncio.gather(
            *(client.call("rpi-camera-device/device/control/set", {"i": i}) for i in range(100))
        )
        assert [r["result"]["request"]["i"] for r in replies] == list(range(100))
        assert own_broker.connections(client.client_id) == 1
    finally:
        await client.close()


async def test_a_failed_first_connection_fails_its_calls_and_the_next_call_tries_again(camera: ResponderDevice) -> None:
    with MosquittoBroker.start() as broker:
        client = MqttRpcClient(broker.host, broker.port, connect_timeout=2)
        broker.kill()
        results = await asyncio.gather(
            *(client.call("dev1/device/control/set", {}) for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(r, NotConnectedError) for r in results), results
        broker.restart()
        with ResponderDevice.start(broker, "+/device/control/set"):
            try:
                reply = await client.call("dev1/device/control/set", {"again": True})
                assert reply["result"]["request"]["again"] is True
            finally:
                await client.close()


async def test_explicit_connect_is_idempotent(broker_url: str, own_broker: MosquittoBroker) -> None:
    client = MqttRpcClient()
    await asyncio.gather(client.connect(), client.connect(), client.connect())
    await client.connect()
    assert own_broker.connections(client.client_id) == 1
    await client.close()


def test_sync_client_connects_on_first_call_from_many_threads(
    broker_url: str, camera: ResponderDevice, own_broker: MosquittoBroker
) -> None:
    client = SyncMqttRpcClient()
    replies: list = []
    errors: list = []

    def caller(i: int) -> None:
        try:
            replies.append(client.call("rpi-camera-device/device/control/set", {"i": i}))
        except Exception as error:  # collected, asserted below
            errors.append(error)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(replies) == 16
    assert own_broker.connections(client.client_id) == 1
    client.close()
    assert client.call("rpi-camera-device/device/control/set", {})["result"]  # connects again
    client.close()
    assert own_broker.connections(client.client_id) == 2


def test_the_pytest_example_of_the_readme_runs_in_a_fresh_project(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("```python\nimport pytest\n")
    snippet = readme[start + len("```python\n") : readme.index("```", start + 10)]
    (tmp_path / "test_service.py").write_text(snippet)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_the_drop_in_snippet_of_the_readme_runs(broker_url: str, camera: ResponderDevice, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("```python\nfrom mqtt_rpc import MqttRpcClient\n")
    snippet = readme[start + len("```python\n") : readme.index("```", start + 10)]
    program = tmp_path / "drop_in.py"
    prelude = "import asyncio, json\nfrom pydantic import BaseModel\n\n" \
        "class DeviceControlRequestEvent(BaseModel):\n    action: str\n\n"
    run = '\nprint(json.dumps(asyncio.run(health_check("rpi-camera-device"))))\n'
    program.write_text(prelude + snippet + run)
    result = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["result"]["request"] == {"action": "GET_HEALTH_CHECK", "request_id": reply["request_id"]}


async def test_every_call_method_connects_first(broker_url: str, camera: ResponderDevice) -> None:
    topic = "rpi-camera-device/device/control/set"
    for use in ("stream", "call_all", "gather_all", "call_many", "notify"):
        client = MqttRpcClient()
        try:
            if use == "stream":
                messages = [m async for m in client.stream(topic, {"x": 1})]
                assert messages[-1]["result"]["request"]["x"] == 1
            elif use == "call_all":
                replies = [r async for r in client.call_all(topic, {}, timeout=0.5)]
                assert len(replies) == 1
            elif use == "gather_all":
                assert len(await client.gather_all(topic, {}, timeout=0.5, max_replies=1)) == 1
            elif use == "call_many":
                assert len(await client.call_many([(topic, {}), (topic, {})])) == 2
            else:
                await client.notify(topic, {"note": True})
            assert client.connected, use
        finally:
            await client.close()
