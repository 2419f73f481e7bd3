"""The Python face: typing files that ship, stubs that match the module, any event loop."""

from __future__ import annotations

import ast
import asyncio
import threading
from pathlib import Path

import pytest

import mqtt_rpc
from mqtt_rpc import MqttRpcClient, _core
from mqtt_rpc.testing import MosquittoBroker

PACKAGE = Path(mqtt_rpc.__file__).parent


def test_the_package_ships_its_typing_files() -> None:
    assert (PACKAGE / "py.typed").exists()
    assert (PACKAGE / "_core.pyi").exists()


def test_the_stubs_describe_what_the_native_module_has() -> None:
    stubs = ast.parse((PACKAGE / "_core.pyi").read_text())
    for node in stubs.body:
        if isinstance(node, ast.ClassDef):
            native = getattr(_core, node.name)
            for member in node.body:
                if isinstance(member, ast.FunctionDef) and member.name != "__init__":
                    assert hasattr(native, member.name), f"{node.name}.{member.name} is in the stubs only"
    native_methods = {name for name in dir(_core.CoreClient) if not name.startswith("_")}
    stub_methods = {
        member.name
        for node in stubs.body
        if isinstance(node, ast.ClassDef) and node.name == "CoreClient"
        for member in node.body
        if isinstance(member, ast.FunctionDef)
    }
    assert native_methods <= stub_methods, f"not in the stubs: {native_methods - stub_methods}"


def test_every_error_is_exported_and_catchable_as_a_builtin() -> None:
    assert issubclass(mqtt_rpc.RpcTimeoutError, TimeoutError)
    assert issubclass(mqtt_rpc.NotConnectedError, ConnectionError)
    assert issubclass(mqtt_rpc.ConnectionLostError, ConnectionError)
    assert issubclass(mqtt_rpc.PayloadError, ValueError)
    for name in mqtt_rpc.__all__:
        value = getattr(mqtt_rpc, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, mqtt_rpc.MqttRpcError)


async def test_one_client_serves_callers_on_two_event_loops(broker: MosquittoBroker, device_topic: str) -> None:
    async with MqttRpcClient(broker.host, broker.port) as client:
        other_loop_replies: list = []

        def other_thread() -> None:
            async def calls() -> None:
                other_loop_replies.extend(
                    await asyncio.gather(*(client.call(device_topic, {"loop": "other", "i": i}) for i in range(50)))
                )

            asyncio.run(calls())

        thread = threading.Thread(target=other_thread)
        thread.start()
        here = await asyncio.gather(*(client.call(device_topic, {"loop": "main", "i": i}) for i in range(50)))
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        assert [r["result"]["request"]["i"] for r in here] == list(range(50))
        assert [r["result"]["request"]["loop"] for r in other_loop_replies] == ["other"] * 50
        assert client.pending == 0


@pytest.mark.parametrize("port", [0, 70000, -1])
def test_a_bad_port_is_a_value_error(port: int) -> None:
    with pytest.raises(ValueError, match="port"):
        MqttRpcClient("127.0.0.1", port)


def test_the_stats_sample_of_the_readme_has_todays_keys() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    sample = readme[readme.index("client.stats()\n# {") : readme.index("```", readme.index("client.stats()\n# {"))]
    documented = set(re.findall(r"'(\w+)':", sample)) - {"client_id"}
    assert documented == set(mqtt_rpc.MqttRpcClient("localhost").stats())


def test_the_documented_defaults_are_the_cores() -> None:
    # One source of defaults: the Rust core's. The Python signatures show them for the
    # reader and must say the same.
    import inspect

    from mqtt_rpc import Responder, _core

    from mqtt_rpc.options import group_defaults

    client = inspect.signature(mqtt_rpc.MqttRpcClient.__init__).parameters
    responder = inspect.signature(Responder.__init__).parameters
    # Options in a group (Limits, Reconnect, Replies, ...) show their defaults there.
    in_groups = {**group_defaults(), "presence_prefix": mqtt_rpc.AwsLifecycle().prefix}
    for name, value in _core.client_defaults().items():
        documented = client[name].default if name in client else in_groups[name]
        assert documented == value, name
        if name in responder:
            assert responder[name].default == value, name
    for name, value in _core.responder_defaults().items():
        assert responder[name].default == value, name


def test_an_unknown_option_is_refused_by_name() -> None:
    from mqtt_rpc import _core

    with pytest.raises(ValueError, match='unknown option "colour"'):
        _core.CoreClient({"host": "localhost", "colour": "blue"})
    with pytest.raises(ValueError, match="keepalive"):
        _core.CoreClient({"keepalive": "soon"})
