"""Option groups: checked when made, naming the bad field; shared by both clients and the
responder; the 0.x keywords still working with a warning that names the new form; and
`MQTT_RPC_URL`'s flat names mapped into the groups without any warning."""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Dict

import pytest

from mqtt_rpc import TLS, Limits, MqttRpcClient, Reconnect, Replies, Responder, SyncMqttRpcClient
from mqtt_rpc.options import DEPRECATED_KEYWORDS
from mqtt_rpc.testing import MosquittoBroker


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: TLS(ca_certs=3), "ca_certs"),
        (lambda: TLS(certfile="client.pem"), "keyfile"),
        (lambda: TLS(keyfile="client.key"), "certfile"),
        (lambda: TLS(alpn_protocols="x-amzn-mqtt-ca"), "alpn_protocols"),
        (lambda: Limits(max_in_flight=0), "max_in_flight"),
        (lambda: Limits(max_subscriptions=-1), "max_subscriptions"),
        (lambda: Limits(max_packet_size=True), "max_packet_size"),
        (lambda: Limits(publishes_per_second=0), "publishes_per_second"),
        (lambda: Limits(max_unacked_publishes=1.5), "max_unacked_publishes"),
        (lambda: Limits(max_devices=0), "max_devices"),
        (lambda: Limits(aws_rules="yes"), "aws_rules"),
        (lambda: Limits(preset="aws"), "preset"),
        (lambda: Reconnect(min_delay=-1), "min_delay"),
        (lambda: Reconnect(max_delay=float("inf")), "max_delay"),
        (lambda: Reconnect(min_delay=5, max_delay=1), "max_delay"),
        (lambda: Replies("mailbox"), "mode"),
        (lambda: Replies.inbox(prefix=""), "prefix"),
        (lambda: Replies("filter"), "filter"),
        (lambda: Replies.shared_filter(""), "filter"),
    ],
)
def test_a_bad_field_is_a_value_error_naming_it(make: Any, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make()


def test_groups_are_frozen() -> None:
    limits = Limits()
    with pytest.raises(AttributeError):
        limits.max_in_flight = 3  # type: ignore[misc]


@pytest.mark.parametrize("kind", [MqttRpcClient, SyncMqttRpcClient])
def test_both_clients_take_the_same_groups_and_stay_within_about_20_parameters(kind: Any) -> None:
    parameters = [p for p in inspect.signature(kind.__init__).parameters.values() if p.kind != p.VAR_KEYWORD]
    assert len(parameters) - 1 <= 25  # self excluded
    client = kind(
        "127.0.0.1",
        1,
        tls=TLS(alpn_protocols=("x-amzn-mqtt-ca",)),
        limits=Limits(max_in_flight=10, max_subscriptions=7, publishes_per_second=50),
        reconnect=Reconnect(min_delay=0.5, max_delay=5),
        replies=Replies.inbox(prefix="svc/inbox"),
    )
    stats = client.stats()
    assert (stats["reply_subscriptions_limit"], stats["publish_rate_limit"]) == (7, 50)
    assert client._settings["inbox_prefix"] == "svc/inbox" and client._settings["reply_to"] == "inbox"
    assert repr(client).startswith(f"<{kind.__name__} mqtts://127.0.0.1:1")


def test_the_aws_preset_is_a_constructor_of_limits_and_a_string() -> None:
    for limits in (Limits.aws_iot_core(), "aws-iot-core"):
        stats = MqttRpcClient("127.0.0.1", 1, limits=limits).stats()
        assert (stats["publish_rate_limit"], stats["reply_subscriptions_limit"]) == (100, 50)
    # A field set in the preset's constructor wins over the preset.
    assert MqttRpcClient("127.0.0.1", 1, limits=Limits.aws_iot_core(max_subscriptions=20)).stats()["reply_subscriptions_limit"] == 20
    with pytest.raises(ValueError, match="limits"):
        MqttRpcClient("127.0.0.1", 1, limits="aws")


OLD_FORMS: Dict[str, Any] = {
    "ca_certs": None,  # needs a real file: checked below with alpn_protocols instead
    "alpn_protocols": ["x-amzn-mqtt-ca"],
    "max_in_flight": 10,
    "max_reply_subscriptions": 7,
    "max_packet_size": 2048,
    "publishes_per_second": 50,
    "max_unacked_publishes": 5,
    "presence_capacity": 10,
    "aws_topic_rules": True,
    "quotas": "aws-iot-core",
    "reconnect_min_delay": 0.5,
    "reconnect_max_delay": 5.0,
    "reply_to": "inbox",
    "inbox_prefix": "svc/inbox",
    "reply_filter": "+/device/control/set/response/+",
}


@pytest.mark.parametrize("name", [n for n, v in OLD_FORMS.items() if v is not None])
def test_each_old_keyword_still_works_and_warns_naming_the_new_form(name: str) -> None:
    value = OLD_FORMS[name]
    extra: Dict[str, Any] = {"reply_to": "inbox"} if name == "inbox_prefix" else {}
    if name == "presence_capacity":
        extra["presence"] = "reported"
    with pytest.warns(DeprecationWarning) as caught:
        client = MqttRpcClient("127.0.0.1", 1, **{name: value}, **extra)
    said = [str(w.message) for w in caught if name in str(w.message)]
    assert said and DEPRECATED_KEYWORDS[name] in said[0], said
    assert client._settings[name] == value
    assert caught[0].filename == __file__  # the warning points at the caller's line


def test_an_old_keyword_and_its_group_together_are_refused() -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="max_in_flight is given twice"):
        MqttRpcClient("127.0.0.1", 1, limits=Limits(max_in_flight=5), max_in_flight=6)
    with pytest.raises(TypeError, match="colour"):
        MqttRpcClient("127.0.0.1", 1, colour="blue")


def test_the_presence_prefix_keyword_becomes_an_aws_lifecycle() -> None:
    with pytest.warns(DeprecationWarning, match="AwsLifecycle"):
        MqttRpcClient("127.0.0.1", 1, presence="aws-lifecycle", presence_prefix="test/events")


def test_the_responder_takes_the_tls_and_limits_groups() -> None:
    responder = Responder("127.0.0.1", 1, tls=TLS(alpn_protocols=("x",)), limits=Limits(max_subscriptions=3))
    assert responder._options["tls"] and responder._options["max_subscriptions"] == 3
    with pytest.raises(ValueError, match="max_in_flight"):
        Responder("127.0.0.1", 1, limits=Limits(max_in_flight=3))
    with pytest.warns(DeprecationWarning, match="TLS"):
        Responder("127.0.0.1", 1, alpn_protocols=["x"])


def test_urls_keep_their_flat_names_and_warn_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "mqtt://127.0.0.1:1?max_in_flight=9&reply_to=inbox&inbox_prefix=x/in&quotas=aws-iot-core&reconnect_min_delay=2&alpn_protocols=a,b"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        for client in (MqttRpcClient.from_url(url), SyncMqttRpcClient.from_url(url)):
            s = client._settings
            assert (s["max_in_flight"], s["reply_to"], s["inbox_prefix"], s["reconnect_min_delay"]) == (9, "inbox", "x/in", 2)
            assert s["tls"] and list(s["alpn_protocols"]) == ["a", "b"]
            assert client.stats()["reply_subscriptions_limit"] == 50  # the preset's
        monkeypatch.setenv("MQTT_RPC_URL", url)
        assert MqttRpcClient()._settings["max_in_flight"] == 9
        assert Responder.from_url("mqtt://127.0.0.1:1?quotas=aws-iot-core&ca_certs=/nowhere.pem")._options["max_subscriptions"] == 50
    with pytest.raises(ValueError, match="reply_to"):
        MqttRpcClient.from_url("mqtt://127.0.0.1:1?reply_to=mailbox")


async def test_grouped_options_work_against_a_broker(broker: MosquittoBroker, device_topic: str) -> None:
    async with MqttRpcClient(broker.host, broker.port, replies="inbox", limits=Limits(max_in_flight=2)) as client:
        replies = [await client.call(device_topic, {"i": i}) for i in range(3)]
        assert [r["result"]["request"]["i"] for r in replies] == [0, 1, 2]
        assert broker.subscribes(client.client_id) == [f"mqtt-rpc/inbox/{client.client_id}/+"]


def test_the_readmes_options_snippet_runs(broker: MosquittoBroker, tmp_path: Any) -> None:
    import trustme

    from readme_snippet import run_readme_snippet

    # The files it names, in the fresh project it runs in (it connects to nothing).
    ca = trustme.CA()
    client_cert = ca.issue_cert("web-service")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client_cert.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    (tmp_path / "client.pem").write_bytes(b"".join(blob.bytes() for blob in client_cert.cert_chain_pems))
    run_readme_snippet("from mqtt_rpc import TLS, Limits, MqttRpcClient, Reconnect, Replies", broker, tmp_path)
