"""`mqtt_rpc.testing` for users' own suites: the pytest fixtures and the scriptable device."""

from __future__ import annotations

import time

import pytest

from mqtt_rpc import MqttRpcClient, RemoteError, RpcTimeoutError
from mqtt_rpc.testing import MosquittoBroker, SimulatedDevice


async def test_the_plugins_fixtures_give_a_broker_and_a_scriptable_device(
    mqtt_broker: MosquittoBroker, mqtt_device: SimulatedDevice
) -> None:
    async with MqttRpcClient(mqtt_broker.host, mqtt_broker.port) as client:
        # The plugin's broker is its own: no other device of this suite answers there.
        topic = "dev1/device/control/set"
        assert (await client.call(topic, {}))["result"] == {"status": "ok"}

        mqtt_device.answer(lambda request: {"echo": request["n"]})
        assert (await client.call(topic, {"n": 5}))["result"] == {"echo": 5}

        mqtt_device.answer_late({"late": True}, 0.3)
        started = time.monotonic()
        assert (await client.call(topic, {}))["result"] == {"late": True}
        assert time.monotonic() - started >= 0.3

        mqtt_device.stay_silent()
        with pytest.raises(RpcTimeoutError):
            await client.call(topic, {}, timeout=0.2)

        mqtt_device.fail(409, "conflict", {"why": "busy"})
        with pytest.raises(RemoteError) as raised:
            await client.call(topic, {})
        assert (raised.value.code, raised.value.data) == (409, {"why": "busy"})
        assert [r.get("n") for r in mqtt_device.requests][:2] == [None, 5]
