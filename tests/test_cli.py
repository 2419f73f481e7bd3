"""The `mqtt-rpc` command line, run as a user runs it: a subprocess, its output, its exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Iterator, List

import pytest

from mqtt_rpc.testing import MosquittoBroker, ResponderDevice, free_port


def mqtt_rpc(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mqtt_rpc", *args], capture_output=True, text=True, timeout=timeout)


def test_help_reads_well() -> None:
    result = mqtt_rpc("--help")
    assert result.returncode == 0
    for command in ("call", "serve", "bench", "demo"):
        assert command in result.stdout
    assert "--timeout" in mqtt_rpc("call", "--help").stdout


def test_call_prints_the_answer_as_json(broker: MosquittoBroker, seed_device: ResponderDevice) -> None:
    topic = f"cli-{uuid.uuid4().hex[:6]}/device/control/set"
    result = mqtt_rpc("call", topic, '{"action": "GET_HEALTH_CHECK"}', "--port", str(broker.port), "--host", broker.host)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["result"]["request"] == {"action": "GET_HEALTH_CHECK", "request_id": reply["request_id"]}


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["nobody/silent/set", "{}", "--timeout", "0.3"], 3, "timed out after 0.3s"),
        (["cli-err/device/control/set", '{"_responder": {"error": {"code": 7, "message": "nope"}}}'], 4, "error 7: nope"),
        (["dev/+/set", "{}"], 2, "wildcard"),
        (["dev/device/control/set", "[1]"], 2, "JSON object"),
    ],
    ids=["timeout", "remote error", "wildcard topic", "not an object"],
)
def test_call_fails_with_a_clear_message_and_exit_code(
    broker: MosquittoBroker, seed_device: ResponderDevice, args: List[str], code: int, message: str
) -> None:
    result = mqtt_rpc("call", *args, "--port", str(broker.port), "--host", broker.host)
    assert result.returncode == code
    assert message in result.stderr and result.stdout == ""


def test_call_without_a_broker_says_so() -> None:
    result = mqtt_rpc("call", "dev/device/control/set", "{}", "--host", "127.0.0.1", "--port", str(free_port()))
    assert result.returncode == 5
    assert "could not connect" in result.stderr and "--host/--port" in result.stderr


@pytest.fixture
def echo_device(broker: MosquittoBroker) -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(
        [sys.executable, "-m", "mqtt_rpc", "serve", "+/echo/control/set", "--echo", "--fail-action", "REBOOT",
         "--port", str(broker.port), "--host", broker.host],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().startswith("serving +/echo/control/set")
    yield process
    process.terminate()
    assert process.wait(timeout=10) in (0, -15, 130)


def test_serve_echo_answers_as_a_test_device(broker: MosquittoBroker, echo_device: subprocess.Popen) -> None:
    result = mqtt_rpc("call", "cam1/echo/control/set", '{"action": "PING"}', "--port", str(broker.port))
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert reply["result"] == {"status": "ok", "echo": {"action": "PING", "request_id": reply["request_id"]}}
    refused = mqtt_rpc("call", "cam1/echo/control/set", '{"action": "REBOOT"}', "--port", str(broker.port))
    assert refused.returncode == 4 and "423" in refused.stderr


def test_bench_runs_and_reports(broker: MosquittoBroker) -> None:
    result = mqtt_rpc("bench", "--calls", "2000", "--concurrency", "32")
    assert result.returncode == 0, result.stderr
    assert "2,000 calls, 32 at a time:" in result.stdout and "calls/s" in result.stdout


def test_demo_runs_end_to_end() -> None:
    result = mqtt_rpc("demo")
    assert result.returncode == 0, result.stderr
    for expected in ("call GET_HEALTH_CHECK (first)", "RemoteError 423", "RpcTimeoutError", "1000 answers, in order",
                     "pending calls left: 0", "stopped the device and the broker."):
        assert expected in result.stdout


@pytest.mark.parametrize("timeout", ["0", "-1", "soon", "inf"])
def test_a_bad_timeout_is_bad_input_not_a_traceback(timeout: str) -> None:
    result = mqtt_rpc("call", "dev/device/control/set", "{}", "--timeout", timeout)
    assert result.returncode == 2
    assert "--timeout" in result.stderr and "Traceback" not in result.stderr


def test_no_responders_has_its_own_exit_code_and_one_line(broker: MosquittoBroker) -> None:
    topic = f"nobody-{uuid.uuid4().hex[:6]}/silent/control/set"
    url = f"mqtt://{broker.host}:{broker.port}?protocol=5&qos=1"
    result = mqtt_rpc("call", topic, "{}", "--url", url, "--timeout", "30")
    assert result.returncode == 6, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "no device is subscribed" in result.stderr


def test_a_request_the_broker_refuses_has_its_own_exit_code() -> None:
    acl = "user service\ntopic readwrite allowed/#\n"
    with MosquittoBroker.start(users={"service": "s3cret"}, acl=acl) as broker:
        url = f"mqtt://service:s3cret@{broker.host}:{broker.port}?protocol=5&qos=1"
        result = mqtt_rpc("call", "forbidden/device/control/set", "{}", "--url", url)
    assert result.returncode == 7, result.stderr
    assert "reason 135 (Not authorized)" in result.stderr and "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr


def test_the_broker_comes_from_the_environment_and_options_win(
    broker: MosquittoBroker, seed_device: ResponderDevice
) -> None:
    topic = f"cli-env-{uuid.uuid4().hex[:6]}/device/control/set"
    environment = {**os.environ, "MQTT_RPC_URL": f"mqtt://{broker.host}:{free_port()}"}
    wrong_port = subprocess.run([sys.executable, "-m", "mqtt_rpc", "call", topic, "{}"], env=environment,
                                capture_output=True, text=True, timeout=60)
    assert wrong_port.returncode == 5 and "Traceback" not in wrong_port.stderr
    right_port = subprocess.run([sys.executable, "-m", "mqtt_rpc", "call", topic, "{}", "--port", str(broker.port)],
                                env=environment, capture_output=True, text=True, timeout=60)
    assert right_port.returncode == 0, right_port.stderr
    bad_url = mqtt_rpc("call", topic, "{}", "--url", "http://broker")
    assert bad_url.returncode == 2 and "mqtt://" in bad_url.stderr


def test_serve_echoes_without_being_told_to(broker: MosquittoBroker) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "mqtt_rpc", "serve", "+/plain/control/set", "--url", f"mqtt://{broker.host}:{broker.port}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().startswith("serving +/plain/control/set")
        result = mqtt_rpc("call", "cam1/plain/control/set", '{"action": "PING"}', "--port", str(broker.port))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["result"]["status"] == "ok"
    finally:
        process.terminate()
        process.wait(timeout=10)
