"""Configuration from `MQTT_RPC_URL` and `from_url()`: the forms, which setting wins, the
errors a bad URL gets before any network activity, and passwords kept out of every message."""

from __future__ import annotations

import logging
from typing import Iterator

import pytest

from mqtt_rpc import BrokerRefusedError, Limits, MqttRpcClient, NotConnectedError, Responder, SyncMqttRpcClient
from mqtt_rpc.testing import MosquittoBroker, free_port


@pytest.fixture(autouse=True)
def no_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MQTT_RPC_URL", raising=False)


def settings(client: MqttRpcClient) -> dict:
    return client._settings


def test_unset_means_localhost_1883() -> None:
    client = MqttRpcClient()
    assert (settings(client)["host"], settings(client)["port"], settings(client)["tls"]) == ("localhost", 1883, False)


def test_the_url_gives_host_port_credentials_and_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MQTT_RPC_URL",
        "mqtt://web%40svc:p%3Ass@broker.example:1999?client_id=web-1&protocol=5&qos=1&reply_to=inbox"
        "&timeout=5&fail_fast=true&alpn_protocols=a,b&publishes_per_second=50",
    )
    s = settings(MqttRpcClient())
    assert (s["host"], s["port"], s["username"], s["password"]) == ("broker.example", 1999, "web@svc", "p:ss")
    assert (s["client_id"], s["protocol"], s["qos"], s["reply_to"]) == ("web-1", "5", 1, "inbox")
    assert (s["timeout"], s["fail_fast"], s["alpn_protocols"], s["publishes_per_second"]) == (5.0, True, ["a", "b"], 50)


def test_mqtts_means_tls_on_8883() -> None:
    s = settings(MqttRpcClient.from_url("mqtts://broker.example?ca_certs=/etc/ca.pem"))
    assert (s["port"], s["tls"], s["ca_certs"]) == (8883, True, "/etc/ca.pem")


def test_keyword_arguments_win_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_RPC_URL", "mqtt://broker.example:1999?client_id=web-1&qos=1")
    s = settings(MqttRpcClient(port=1884, qos=0))
    assert (s["host"], s["port"], s["client_id"], s["qos"]) == ("broker.example", 1884, "web-1", 0)
    s = settings(MqttRpcClient.from_url("mqtt://other:1000?client_id=a", client_id="b"))
    assert (s["host"], s["port"], s["client_id"]) == ("other", 1000, "b")


def test_an_explicit_host_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_RPC_URL", "mqtts://broker.example:1999?client_id=web-1")
    s = settings(MqttRpcClient("127.0.0.1"))
    assert (s["host"], s["port"], s["tls"]) == ("127.0.0.1", 1883, False)
    assert s["client_id"] != "web-1"


def test_a_preset_never_overrides_a_value_asked_for() -> None:
    # Equal to the default, but asked for: kept (the preset's would be 50 and 128 KB).
    limits = Limits.aws_iot_core(max_subscriptions=1000, max_packet_size=1024 * 1024)
    s = settings(MqttRpcClient("h", limits=limits))
    assert (s["max_reply_subscriptions"], s["max_packet_size"], s["publishes_per_second"]) == (1000, 1024 * 1024, 100)
    s = settings(MqttRpcClient.from_url("mqtt://h?quotas=aws-iot-core&max_reply_subscriptions=20"))
    assert (s["max_reply_subscriptions"], s["max_packet_size"]) == (20, 128 * 1024)


@pytest.mark.parametrize(
    "url, names",
    [
        ("http://broker", "http://"),
        ("broker:1883", "scheme"),
        ("mqtt://broker:99999", "'99999'"),
        ("mqtt://broker:port", "'port'"),
        ("mqtt://broker:0", "'0'"),
        ("mqtt://broker?colour=blue", "'colour'"),
        ("mqtt://broker?qos=one", "qos"),
        ("mqtt://broker?qos=2", "qos"),
        ("mqtt://broker?fail_fast=maybe", "fail_fast"),
        ("mqtt://broker?timeout=-1", "timeout"),
        ("mqtt://broker?reply_to=mailbox", "reply_to"),
        ("mqtt://broker?qos=1&qos=0", "qos"),
        ("mqtt://broker/some/path", "path"),
        ("mqtt://", "host"),
        ("mqtt://broker?share_group=x", "'share_group'"),  # a responder's option, not a client's
    ],
)
def test_a_bad_url_is_a_value_error_naming_what_is_wrong(url: str, names: str) -> None:
    with pytest.raises(ValueError, match=names.replace("?", r"\?")):
        MqttRpcClient.from_url(url)


def test_a_bad_environment_url_says_it_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQTT_RPC_URL", "mqtt://u:hunter2@broker:80x")
    with pytest.raises(ValueError, match="MQTT_RPC_URL") as raised:
        MqttRpcClient()
    assert "hunter2" not in str(raised.value)


def test_one_url_configures_a_client_and_a_responder(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each takes its own options from the shared variable and passes over the other's.
    monkeypatch.setenv("MQTT_RPC_URL", "mqtt://broker.example?client_id=svc&timeout=5&share_group=workers")
    assert settings(MqttRpcClient())["timeout"] == 5.0
    responder = Responder()
    assert (responder._options["host"], responder._options["share_group"]) == ("broker.example", "workers")
    with pytest.raises(ValueError, match="'timeout'"):
        Responder.from_url("mqtt://broker.example?timeout=5")  # given directly: the responder has no timeout


async def test_a_client_from_the_environment_connects_with_its_settings(
    broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch, seed_device: object
) -> None:
    monkeypatch.setenv("MQTT_RPC_URL", f"mqtt://{broker.host}:{broker.port}?client_id=url-web-1&protocol=5")
    async with MqttRpcClient() as client:
        reply = await client.call("url-dev/device/control/set", {"x": 1})
        assert reply["result"]["request"]["x"] == 1
    assert broker.connections("url-web-1") == 1
    assert any(" as url-web-1 (p5," in line for line in broker.lines)


def test_the_sync_client_reads_the_environment(
    broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch, seed_device: object
) -> None:
    monkeypatch.setenv("MQTT_RPC_URL", f"mqtt://{broker.host}:{broker.port}")
    with SyncMqttRpcClient() as client:
        assert client.call("url-sync/device/control/set", {"y": 2})["result"]["request"]["y"] == 2
    with SyncMqttRpcClient.from_url(f"mqtt://{broker.host}:{broker.port}?timeout=3") as client:
        assert client._timeout == 3.0


async def test_mqtts_against_a_plain_listener_fails_in_connect(broker: MosquittoBroker) -> None:
    client = MqttRpcClient.from_url(f"mqtts://{broker.host}:{broker.port}?connect_timeout=3")
    with pytest.raises(NotConnectedError):
        await client.connect()


@pytest.fixture(scope="module")
def password_broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker.start(users={"service": "right-one"}) as running:
        yield running


async def test_credentials_from_the_url_log_in(password_broker: MosquittoBroker) -> None:
    url = f"mqtt://service:right-one@{password_broker.host}:{password_broker.port}"
    async with MqttRpcClient.from_url(url) as client:
        assert client.connected


async def test_the_password_appears_in_no_log_repr_or_error(
    password_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mqtt_rpc")
    secret = "hunter2-wrong"
    client = MqttRpcClient.from_url(f"mqtt://service:{secret}@{password_broker.host}:{password_broker.port}")
    assert secret not in repr(client) and "service@" in repr(client)
    with pytest.raises(BrokerRefusedError) as raised:
        await client.connect()
    unreachable = MqttRpcClient.from_url(f"mqtt://service:{secret}@127.0.0.1:{free_port()}?connect_timeout=2")
    with pytest.raises(NotConnectedError) as unreached:
        await unreachable.call("dev/device/control/set", {})
    responder = Responder.from_url(f"mqtt://service:{secret}@{password_broker.host}:{password_broker.port}")
    assert secret not in repr(responder)
    for text in (str(raised.value), str(unreached.value), caplog.text):
        assert secret not in text


def test_a_url_may_name_the_nodes_of_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    from mqtt_rpc import config

    settings = config.parse_url("mqtts://svc:secret@n1:8884,n2,n3:9000?client_id=web-1", config.CLIENT_OPTIONS)
    assert settings["hosts"] == [("n1", 8884), ("n2", 8883), ("n3", 9000)]
    assert (settings["username"], settings["password"], settings["tls"], settings["client_id"]) == ("svc", "secret", True, "web-1")
    with pytest.raises(ValueError, match="port"):
        config.parse_url("mqtt://n1:1883,n2:http", config.CLIENT_OPTIONS)
    monkeypatch.setenv("MQTT_RPC_URL", "mqtt://n1:1883,n2:1884")
    assert "mqtt://n1:1883,n2:1884" in repr(MqttRpcClient())
    # An explicit host wins over the URL's nodes, as over its one host.
    assert "mqtt://elsewhere:1883 " in repr(MqttRpcClient("elsewhere"))
    with pytest.raises(ValueError, match="not both"):
        MqttRpcClient("elsewhere", hosts=[("n1", 1883)])
