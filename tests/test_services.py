"""Discovery and health of named responders: PING, INFO and STATS answered by every
instance (Python `Responder` and the Rust device alike), addressed to all, one name or one
instance; the client's `discover`, `ping`, `service_stats` (async and blocking) and the
`mqtt-rpc services` command. Each test has its own service prefix, so that responders of
other tests on the shared broker are not seen."""

from __future__ import annotations

import ast
import asyncio
import json
import sys
import uuid
from contextlib import AsyncExitStack
from typing import Any, Dict, List

import pytest

from mqtt_rpc import MqttRpcClient, PayloadError, RemoteError, Responder, RpcHandlerError, SyncMqttRpcClient
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice
from readme_snippet import run_readme_snippet

PROTOCOLS = ["3.1.1", "5"]


def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}/_srv"


def named(broker: MosquittoBroker, name: str, version: str, service_prefix: str, **options: Any) -> Responder:
    return Responder(broker.host, broker.port, name=name, version=version, service_prefix=service_prefix, **options)


async def fleet(stack: AsyncExitStack, broker: MosquittoBroker, service_prefix: str, protocol: str) -> List[Responder]:
    """Two instances of "camera", one of "lights", and one unnamed responder (never seen)."""
    responders = [
        named(broker, "camera", "1.4.0", service_prefix, protocol=protocol, metadata={"site": "north"}),
        named(broker, "camera", "1.4.0", service_prefix, protocol=protocol, metadata={"site": "south"}),
        named(broker, "lights", "2.0.1", service_prefix, protocol=protocol),
        Responder(broker.host, broker.port, protocol=protocol, service_prefix=service_prefix),
    ]
    for responder in responders[:2]:

        @responder.handle("+/camera/set", description="point and shoot")
        async def camera(request: Dict[str, Any]) -> Any:
            return {"ok": True}

        @responder.handle("+/camera/get")
        async def snapshot(request: Dict[str, Any]) -> Any:
            return {"ok": True}

    @responders[2].handle("+/lights/set", description="on or off")
    async def lights(request: Dict[str, Any]) -> Any:
        return {"ok": True}

    @responders[3].handle("+/other/set")
    async def other(request: Dict[str, Any]) -> Any:
        return {"ok": True}

    for responder in responders:
        await stack.enter_async_context(responder)
    return responders


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_discover_finds_every_named_instance_and_what_it_serves(broker: MosquittoBroker, protocol: str) -> None:
    service_prefix = prefix()
    async with AsyncExitStack() as stack:
        camera_a, camera_b, lights, _ = await fleet(stack, broker, service_prefix, protocol)
        client = MqttRpcClient(broker.host, broker.port, protocol=protocol, service_prefix=service_prefix)
        await stack.enter_async_context(client)

        found = await client.discover()
        # Every named instance answers once, sorted by name then id; the unnamed one never.
        assert [(service["name"], service["id"]) for service in found] == sorted(
            [("camera", camera_a.client_id), ("camera", camera_b.client_id), ("lights", lights.client_id)]
        )
        by_id = {service["id"]: service for service in found}
        assert by_id[camera_a.client_id]["metadata"] == {"site": "north"}
        assert by_id[camera_b.client_id]["version"] == "1.4.0"
        assert by_id[lights.client_id]["version"] == "2.0.1"
        assert by_id[camera_b.client_id]["endpoints"] == [
            {"filter": "+/camera/set", "description": "point and shoot", "share_group": None},
            {"filter": "+/camera/get", "description": None, "share_group": None},
        ]
        assert by_id[lights.client_id]["endpoints"] == [
            {"filter": "+/lights/set", "description": "on or off", "share_group": None}
        ]
        assert all(service["type"] == "io.mqtt-rpc.info" and service["started"].endswith("Z") for service in found)

        cameras = await client.discover(name="camera")
        assert sorted(service["id"] for service in cameras) == sorted([camera_a.client_id, camera_b.client_id])
        one = await client.discover("camera", instance=camera_a.client_id)
        assert [service["id"] for service in one] == [camera_a.client_id]

        pings = await client.ping()
        assert [(ping["name"], ping["id"], ping["version"]) for ping in pings] == [
            (service["name"], service["id"], service["version"]) for service in found
        ]
        assert set(pings[0]) == {"type", "name", "id", "version"}
        assert await client.ping("nobody-by-this-name", timeout=0.2) == []


async def test_service_stats_count_each_handlers_answers_and_errors_exactly(broker: MosquittoBroker) -> None:
    service_prefix = prefix()
    responder = named(broker, "counter", "1", service_prefix)

    @responder.handle("+/count/set")
    async def count(request: Dict[str, Any]) -> Any:
        if request.get("refuse"):
            raise RpcHandlerError(-32001, "refused", {"why": "asked to"})
        if request.get("crash"):
            raise ValueError("bad input")
        return {"ok": True}

    @responder.handle("+/idle/set")
    async def idle(request: Dict[str, Any]) -> Any:
        return None

    async with responder, MqttRpcClient(broker.host, broker.port, service_prefix=service_prefix) as client:
        for _ in range(3):
            await client.call("d/count/set", {})
        with pytest.raises(RemoteError):
            await client.call("d/count/set", {"refuse": True})
        with pytest.raises(RemoteError):
            await client.call("d/count/set", {"crash": True})
        [stats] = await client.service_stats("counter")

    counting, idling = stats["endpoints"]
    assert stats["id"] == responder.client_id and stats["type"] == "io.mqtt-rpc.stats"
    assert (counting["filter"], counting["requests"], counting["errors"]) == ("+/count/set", 5, 2)
    assert counting["last_error"] == "-32603: ValueError: bad input"
    assert counting["processing_ms_total"] > 0
    assert counting["processing_ms_average"] == pytest.approx(counting["processing_ms_total"] / 5)
    assert (idling["requests"], idling["errors"], idling["processing_ms_average"], idling["last_error"]) == (0, 0, None, None)
    # The responder's own counters come along (this STATS request is its first control request).
    assert stats["counters"]["requests"] == 5 and stats["counters"]["control_requests"] == 1
    # The same numbers as Responder.stats(), which is read locally.
    local = responder.stats()["handlers"]["+/count/set"]
    assert (local["requests"], local["errors"], local["last_error"]) == (5, 2, counting["last_error"])


async def test_the_rust_device_answers_discovery_too(broker: MosquittoBroker) -> None:
    service_prefix = prefix()
    options = ["--service", "rusty", "--service-version", "0.9.1", "--service-prefix", service_prefix]
    with ResponderDevice.start(broker, "+/rusty/set", options=options):
        async with MqttRpcClient(broker.host, broker.port, service_prefix=service_prefix) as client:
            await client.call("d1/rusty/set", {})
            await client.call("d2/rusty/set", {})
            [info] = await client.discover()
            [stats] = await client.service_stats("rusty", instance=info["id"])
    assert (info["name"], info["version"]) == ("rusty", "0.9.1")
    assert [endpoint["filter"] for endpoint in info["endpoints"]] == ["+/rusty/set"]
    assert (stats["endpoints"][0]["requests"], stats["endpoints"][0]["errors"]) == (2, 0)


async def test_the_blocking_client_discovers_as_the_async_one(broker: MosquittoBroker) -> None:
    service_prefix = prefix()
    async with AsyncExitStack() as stack:
        responders = await fleet(stack, broker, service_prefix, "3.1.1")

        def ask() -> Any:
            with SyncMqttRpcClient(broker.host, broker.port, service_prefix=service_prefix) as client:
                return client.discover(), client.ping("lights"), client.service_stats("camera")

        found, pings, stats = await asyncio.to_thread(ask)
    assert [service["id"] for service in found] == sorted(r.client_id for r in responders[:2]) + [responders[2].client_id]
    assert [ping["id"] for ping in pings] == [responders[2].client_id]
    assert len(stats) == 2 and all(s["endpoints"][0]["filter"] == "+/camera/set" for s in stats)


async def test_names_that_cannot_be_a_topic_level_are_refused_before_anything_is_sent(broker: MosquittoBroker) -> None:
    for bad in ("a/b", "+", "", "#"):
        with pytest.raises(ValueError):
            Responder(broker.host, broker.port, name=bad)
    with pytest.raises(ValueError, match="name="):
        Responder(broker.host, broker.port, version="1.0")
    async with MqttRpcClient(broker.host, broker.port) as client:
        with pytest.raises(PayloadError, match="one topic level"):
            await client.discover("a/b")
        with pytest.raises(PayloadError, match="instance"):
            await client.ping(instance="x")
        assert client.stats()["calls_started"] == 0


async def run_cli(*args: str) -> "tuple[int, str, str]":
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mqtt_rpc", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_services_command_prints_a_table_and_statistics(broker: MosquittoBroker) -> None:
    service_prefix = prefix()
    where = ["--host", broker.host, "--port", str(broker.port), "--service-prefix", service_prefix]
    async with AsyncExitStack() as stack:
        camera_a, camera_b, lights = (await fleet(stack, broker, service_prefix, "3.1.1"))[:3]
        client = await stack.enter_async_context(MqttRpcClient(broker.host, broker.port))
        await client.call("d/camera/set", {})

        code, out, err = await run_cli("services", *where)
        assert code == 0, err
        header, *rows = out.splitlines()
        assert header.split() == ["NAME", "ID", "VERSION", "STARTED", "FILTERS"]
        assert sorted(row.split()[1] for row in rows) == sorted([camera_a.client_id, camera_b.client_id, lights.client_id])
        assert any(row.split()[0] == "lights" and row.split()[2] == "2.0.1" and row.endswith("+/lights/set") for row in rows)

        code, out, err = await run_cli("services", "--stats", "camera", *where)
        assert code == 0, err
        header, *rows = out.splitlines()
        assert header.split()[:6] == ["NAME", "ID", "FILTER", "REQUESTS", "ERRORS", "AVG"]
        # Two cameras, two filters each; the one call went to both (no share group).
        assert len(rows) == 4
        requests = {(row.split()[1], row.split()[2]): int(row.split()[3]) for row in rows}
        assert requests[(camera_a.client_id, "+/camera/set")] == 1
        assert requests[(camera_b.client_id, "+/camera/get")] == 0

        code, out, err = await run_cli("services", "--name", "lights", "--json", *where)
        assert code == 0, err
        assert [service["id"] for service in json.loads(out)] == [lights.client_id]

        code, out, err = await run_cli("services", "--name", "nobody", "--timeout", "0.2", *where)
        assert code == 3 and out == "" and "no service named 'nobody' answered" in err


def test_the_services_snippet_of_the_readme_runs(tmp_path: Any) -> None:
    # A broker of its own: on the shared one the session's test device also answers
    # `+/device/control/set`, and discovery would list other tests' services.
    with MosquittoBroker.start() as broker:
        result = run_readme_snippet("import asyncio\n\nimport mqtt_rpc\n", broker, tmp_path)
    call, info, stats = result.stdout.splitlines()
    answer = ast.literal_eval(call)["result"]
    assert answer["status"] == "ok" and 0 < answer["seconds_left"] <= 5
    assert info.startswith("camera-control mqtt-rpc-") and " 1.4.0 " in info and "camera actions" in info
    assert stats == "1 request(s), 0 error(s)"


def test_a_command_line_test_device_can_be_a_named_service(broker: MosquittoBroker) -> None:
    import subprocess

    service_prefix = prefix()
    where = ["--host", broker.host, "--port", str(broker.port)]
    device = subprocess.Popen(
        [sys.executable, "-m", "mqtt_rpc", "serve", "+/cli/set", "--name", "echo-svc", "--service-version", "3.2",
         "--service-prefix", service_prefix, *where],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert device.stdout is not None and device.stdout.readline().startswith("serving +/cli/set")
        run = [sys.executable, "-m", "mqtt_rpc"]
        called = subprocess.run([*run, "call", "d/cli/set", "{}", *where], capture_output=True, text=True, timeout=60)
        assert called.returncode == 0, called.stderr
        listed = subprocess.run(
            [*run, "services", "--stats", "echo-svc", "--json", "--service-prefix", service_prefix, *where],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        [stats] = json.loads(listed.stdout)
        assert (stats["name"], stats["version"]) == ("echo-svc", "3.2")
        assert [(e["filter"], e["requests"]) for e in stats["endpoints"]] == [("+/cli/set", 1)]
    finally:
        device.terminate()
        device.wait(timeout=10)
