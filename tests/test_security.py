"""TLS, mutual TLS, passwords and ACLs against a real Mosquitto: what works, and the clear,
typed error for each way it can go wrong."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from mqtt_rpc import TLS, Limits, Replies
import trustme

from mqtt_rpc import (
    BrokerRefusedError,
    MqttRpcClient,
    NotConnectedError,
    PayloadError,
    RpcTimeoutError,
    TlsError,
)
from mqtt_rpc.testing import MosquittoBroker, ResponderDevice, free_port


class Pki:
    """A CA, the broker's certificate for 127.0.0.1, and a client certificate, as PEM files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        client = self.ca.issue_cert("web-service@example.com")
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.server_cert = self._write("server.pem", b"".join(b.bytes() for b in server.cert_chain_pems))
        self.server_key = self._write("server.key", server.private_key_pem.bytes())
        self.client_cert = self._write("client.pem", b"".join(b.bytes() for b in client.cert_chain_pems))
        self.client_key = self._write("client.key", client.private_key_pem.bytes())

    def _write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


class TlsBroker:
    def __init__(self, broker: MosquittoBroker, tls_port: int) -> None:
        self.broker, self.host, self.tls_port = broker, broker.host, tls_port


@pytest.fixture(scope="module")
def tls_broker(pki: Pki) -> Iterator[TlsBroker]:
    """Mosquitto with a plain listener (for the device) and a mutual-TLS listener."""
    tls_port = free_port()
    tls_listener = [
        f"listener {tls_port} 127.0.0.1",
        f"cafile {pki.ca_file}",
        f"certfile {pki.server_cert}",
        f"keyfile {pki.server_key}",
        "require_certificate true",
    ]
    with MosquittoBroker.start(extra_config=tls_listener) as broker:
        with ResponderDevice.start(broker, "+/device/control/set"):
            yield TlsBroker(broker, tls_port)


def device() -> str:
    return f"dev-{uuid.uuid4().hex[:8]}/device/control/set"


async def test_calls_work_over_mutual_tls(tls_broker: TlsBroker, pki: Pki) -> None:
    client = MqttRpcClient(
        tls_broker.host, tls_broker.tls_port, tls=TLS(ca_certs=pki.ca_file, certfile=pki.client_cert, keyfile=pki.client_key)
    )
    async with client:
        reply = await client.call(device(), {"over": "tls"})
        assert reply["result"]["request"]["over"] == "tls"


@pytest.mark.parametrize(
    "files, message",
    [
        ({"certfile": None, "keyfile": None}, "alert|certificate"),
        ({"ca_certs": "other-ca"}, "UnknownIssuer|invalid peer certificate"),
        ({"certfile": "other-client"}, "alert|certificate"),
        ({"ca_certs": "/nonexistent/ca.pem"}, "cannot read the CA file /nonexistent/ca.pem"),
        ({"keyfile": "not-a-key"}, "no usable private key"),
        ({"keyfile": "other-key"}, "cannot be used together|alert|certificate"),
    ],
    ids=["no client certificate", "unknown CA", "client certificate of another CA", "missing CA file",
         "key file without a key", "key of another certificate"],
)
async def test_each_tls_failure_is_a_typed_error_from_connect(
    tls_broker: TlsBroker, pki: Pki, tmp_path: Path, files: dict, message: str
) -> None:
    other = trustme.CA()
    other_client = other.issue_cert("intruder@example.com")
    substitutes = {
        "other-ca": pki._write(f"other-ca-{tmp_path.name}.pem", other.cert_pem.bytes()),
        "other-client": pki._write(f"other-client-{tmp_path.name}.pem", other_client.cert_chain_pems[0].bytes()),
        "other-key": pki._write(f"other-key-{tmp_path.name}.pem", other_client.private_key_pem.bytes()),
        "not-a-key": pki.ca_file,
    }
    settings = {"ca_certs": pki.ca_file, "certfile": pki.client_cert, "keyfile": pki.client_key}
    for name, value in files.items():
        settings[name] = substitutes.get(value, value) if value else None
    client = MqttRpcClient(tls_broker.host, tls_broker.tls_port, tls=True, connect_timeout=20, **settings)
    started = time.monotonic()
    with pytest.raises(TlsError, match=message) as raised:
        await client.connect()
    assert isinstance(raised.value, NotConnectedError) and isinstance(raised.value, ConnectionError)
    assert time.monotonic() - started < 10  # the handshake's answer, not the connect timeout


async def test_plain_mqtt_to_a_tls_listener_fails_within_the_connect_timeout(tls_broker: TlsBroker) -> None:
    client = MqttRpcClient(tls_broker.host, tls_broker.tls_port, connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(NotConnectedError):
        await client.connect()
    assert time.monotonic() - started < 8


@pytest.fixture(scope="module")
def password_broker() -> Iterator[MosquittoBroker]:
    # The service may publish requests and read replies; "guest" may do nothing with replies.
    # Everyone may read their own inbox (%c: the client id) and nobody else's.
    acl = (
        "pattern read mqtt-rpc/inbox/%c/#\n\n"
        "user service\ntopic readwrite #\n\n"
        "user guest\ntopic write +/device/control/set\n"
    )
    with MosquittoBroker.start(users={"service": "s3cret", "guest": "guest"}, acl=acl) as broker:
        yield broker


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_username_and_password(password_broker: MosquittoBroker, protocol: str) -> None:
    good = MqttRpcClient(password_broker.host, password_broker.port, username="service", password="s3cret", protocol=protocol)
    await good.connect()
    assert good.connected
    await good.close()

    bad = MqttRpcClient(password_broker.host, password_broker.port, username="service", password="wrong", protocol=protocol)
    with pytest.raises(BrokerRefusedError, match="refused") as raised:
        await bad.connect()
    assert isinstance(raised.value, ConnectionError)


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_a_client_the_acl_denies_replies_never_reads_them(password_broker: MosquittoBroker, protocol: str) -> None:
    # Mosquitto grants the subscription but delivers nothing the ACL forbids: the device
    # answers, the service reads its reply, the guest's call times out and leaves nothing.
    device_options = ["--username", "service", "--password", "s3cret"]
    with ResponderDevice.start(password_broker, "+/device/control/set", options=device_options):
        async with MqttRpcClient(
            password_broker.host, password_broker.port, username="service", password="s3cret", protocol=protocol
        ) as service, MqttRpcClient(
            password_broker.host, password_broker.port, username="guest", password="guest", protocol=protocol
        ) as guest:
            topic = device()
            assert (await service.call(topic, {"who": "service"}))["result"]["request"]["who"] == "service"
            with pytest.raises(RpcTimeoutError):
                await guest.call(topic, {"who": "guest"}, timeout=0.5)
            assert guest.pending == 0 and guest.stats()["replies_dropped_stray"] == 0


async def test_with_inbox_replies_an_acl_keeps_each_clients_replies_its_own(password_broker: MosquittoBroker) -> None:
    device_options = ["--username", "service", "--password", "s3cret"]
    with ResponderDevice.start(password_broker, "+/device/control/set", options=device_options):
        host, port = password_broker.host, password_broker.port
        async with MqttRpcClient(host, port, username="guest", password="guest", replies="inbox") as owner:
            inbox = f"mqtt-rpc/inbox/{owner.client_id}/+"
            # Another guest subscribes to the owner's inbox: the broker accepts the SUBSCRIBE
            # but delivers it none of the owner's replies.
            async with MqttRpcClient(host, port, username="guest", password="guest", replies=Replies.shared_filter(inbox)) as snoop:
                assert password_broker.subscribes(snoop.client_id) == [inbox]
                topic = device()
                replies = await asyncio.gather(*(owner.call(topic, {"n": n}) for n in range(10)))
                assert [r["result"]["request"]["n"] for r in replies] == list(range(10))
                await owner.call(topic, {"last": True})
                assert snoop.stats()["replies_dropped_stray"] == 0


def test_for_aws_iot_sets_what_aws_iot_core_wants(pki: Pki) -> None:
    client = MqttRpcClient.for_aws_iot(
        "example-ats.iot.eu-west-1.amazonaws.com",
        pki.client_cert,
        pki.client_key,
        pki.ca_file,
        client_id="web-service-1",
        port=443,
        connections=4,
    )
    assert client.client_ids == [f"web-service-1-{i}" for i in range(4)]
    stats = client.stats()
    # AWS's per-connection quotas, for each of the pool's connections.
    assert (stats["publish_rate_limit"], stats["reply_subscriptions_limit"]) == (400, 200)
    assert all(c["publish_rate_limit"] == 100 for c in stats["connections"])


async def test_aws_topic_rules_refuse_topics_aws_would_drop(broker: MosquittoBroker) -> None:
    async with MqttRpcClient(broker.host, broker.port, limits=Limits(aws_rules=True)) as client:
        with pytest.raises(PayloadError, match="slashes"):
            await client.call("a/b/c/d/e/f/g", {})
        assert client.stats()["calls_started"] == 0
