"""A pool of responders on a shared subscription, deployed the way Kubernetes does it: one
member at a time replaced, each old one told to go (`close(grace)`, or SIGTERM to a
process) while eight callers keep calling. Nothing may be lost: a leaving member
unsubscribes first, answers what it had, and ends its session; a crashed one costs only
the time the broker needs to notice."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Tuple

import pytest

from mqtt_rpc import MqttRpcClient, Responder
from mqtt_rpc.testing import MosquittoBroker, find_responder

CALLERS = 8
FILTER = "+/pool/control/set"


@pytest.fixture(scope="module")
def pool_broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker.start() as running:
        yield running


class Callers:
    """Eight callers calling the pool in a loop, each call checked to get its own answer."""

    def __init__(self, client: MqttRpcClient, delay_ms: int = 30) -> None:
        self.client = client
        self.delay_ms = delay_ms
        self.answered = 0
        self.failures: List[Tuple[float, str]] = []
        self.started_at: List[float] = []
        self._running = True
        self._tasks: List["asyncio.Task[None]"] = []

    def start(self) -> None:
        self._tasks = [asyncio.ensure_future(self._call(n)) for n in range(CALLERS)]

    async def _call(self, caller: int) -> None:
        n = 0
        while self._running:
            n += 1
            topic = f"c{caller}/pool/control/set"
            started = time.monotonic()
            request = {"n": n, "_responder": {"delay_ms": self.delay_ms}}
            try:
                reply = await self.client.call(topic, request, timeout=3)
            except Exception as error:  # every failure counts, whatever its kind
                self.failures.append((started, f"{type(error).__name__}: {error}"))
                assert len(self.failures) < 1000, self.failures[:3]
                await asyncio.sleep(0)  # a failure at once must not starve the loop
                continue
            result = reply["result"]
            echoed = result.get("echo", result.get("request", result))
            assert echoed["n"] == n, (reply, n)
            self.answered += 1

    async def until_answered(self, more: int) -> None:
        target = self.answered + more
        give_up = time.monotonic() + 30
        while self.answered < target:
            assert time.monotonic() < give_up, f"the pool stopped answering ({self.failures[-3:]})"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._running = False
        await asyncio.gather(*self._tasks)


def python_member(broker: Any, group: str, protocol: str, qos: int, **credentials: str) -> Responder:
    member = Responder(broker.host, broker.port, protocol=protocol, qos=qos, share_group=group, **credentials)

    @member.handle(FILTER)
    async def control(request: Dict[str, Any]) -> Dict[str, Any]:
        await asyncio.sleep(request["_responder"]["delay_ms"] / 1000)
        return {"request": request}

    return member


async def rolling_restart(
    callers: Callers, members: List[Any], start: Callable[[], Awaitable[Any]], leave: Callable[[Any], Awaitable[None]]
) -> None:
    """Each member in turn: a replacement starts, then the old one leaves (maxSurge 1)."""
    for index in range(len(members)):
        await callers.until_answered(40)
        replacement = await start()
        old, members[index] = members[index], replacement
        await leave(old)
    await callers.until_answered(40)


async def restart_python_pool(
    broker: Any, protocol: str, qos: int, **credentials: str
) -> Tuple[List[Tuple[float, str]], List[Dict[str, Any]]]:
    """A pool of 3 in-process members restarted one by one under 8 callers: the calls that
    failed, and each leaving member's stats."""
    group = f"g{uuid.uuid4().hex[:6]}"

    async def start() -> Responder:
        member = python_member(broker, group, protocol, qos, **credentials)
        await member.start()
        return member

    left: List[Dict[str, Any]] = []

    async def leave(member: Responder) -> None:
        await member.close(grace=10)
        left.append(member.stats())

    members = [await start() for _ in range(3)]
    async with MqttRpcClient(broker.host, broker.port, protocol=protocol, qos=qos, **credentials) as client:
        callers = Callers(client)
        callers.start()
        await rolling_restart(callers, members, start, leave)
        await callers.stop()
    for member in members:
        await member.close()
    return callers.failures, left


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
@pytest.mark.parametrize("qos", [0, 1])
async def test_a_rolling_restart_of_a_pool_loses_no_call(pool_broker: MosquittoBroker, protocol: str, qos: int) -> None:
    failures, left = await restart_python_pool(pool_broker, protocol, qos)
    assert failures == []
    # Every leaving member answered what it had started, and said so.
    assert [s["leave_unsent"] for s in left] == [0, 0, 0]
    assert all(s["leave_answered"] >= 0 and s["leave_ms"] < 10_000 for s in left)


def spawn(command: List[str]) -> "subprocess.Popen[str]":
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process


async def until_ready(process: "subprocess.Popen[str]", ready: Callable[[str], bool]) -> None:
    assert process.stdout is not None
    line = await asyncio.get_running_loop().run_in_executor(None, process.stdout.readline)
    assert ready(line), (line, process.poll())


async def sigterm(process: "subprocess.Popen[str]") -> str:
    process.send_signal(signal.SIGTERM)
    _, errors = await asyncio.get_running_loop().run_in_executor(None, process.communicate)
    assert process.returncode == 0, errors
    return errors


@pytest.mark.parametrize("kind", ["mqtt-rpc serve", "rust device"])
@pytest.mark.parametrize("protocol,qos", [("5", 1), ("3.1.1", 0)])
async def test_members_stopped_by_sigterm_leave_gracefully(
    pool_broker: MosquittoBroker, kind: str, protocol: str, qos: int
) -> None:
    group = f"g{uuid.uuid4().hex[:6]}"
    where = ["--host", pool_broker.host, "--port", str(pool_broker.port), "--protocol", protocol, "--qos", str(qos)]
    if kind == "rust device":
        command = [str(find_responder()), *where, "--share-group", group, FILTER]
        ready = lambda line: line.strip() == "READY"  # noqa: E731
    else:
        command = [sys.executable, "-m", "mqtt_rpc", "serve", FILTER, "--share-group", group, *where]
        ready = lambda line: line.startswith("serving")  # noqa: E731

    async def start() -> "subprocess.Popen[str]":
        process = spawn(command)
        await until_ready(process, ready)
        return process

    said: List[str] = []

    async def leave(process: "subprocess.Popen[str]") -> None:
        said.append(await sigterm(process))

    members = [await start() for _ in range(3)]
    try:
        async with MqttRpcClient(pool_broker.host, pool_broker.port, protocol=protocol, qos=qos) as client:
            callers = Callers(client, delay_ms=50)
            callers.start()
            await rolling_restart(callers, members, start, leave)
            await callers.stop()
    finally:
        for member in members:
            member.terminate()
            member.communicate()
    assert callers.failures == []
    if kind == "rust device":
        assert all("0 unsent" in text for text in said), said
    else:
        assert all("0 not delivered" in text for text in said), said


async def test_a_crashed_member_costs_only_until_the_broker_notices(pool_broker: MosquittoBroker) -> None:
    """MQTT 5, where a member's session outliving it kept its share of the requests queued
    for it: in a share group its session now ends with its connection."""
    group = f"g{uuid.uuid4().hex[:6]}"
    keepalive = 2
    url = f"mqtt://{pool_broker.host}:{pool_broker.port}?keepalive={keepalive}&protocol=5"
    command = [sys.executable, "-m", "mqtt_rpc", "serve", FILTER, "--share-group", group, "--url", url]
    members = [spawn(command) for _ in range(3)]
    for member in members:
        await until_ready(member, lambda line: line.startswith("serving"))
    try:
        async with MqttRpcClient(pool_broker.host, pool_broker.port, protocol="5", qos=1) as client:
            callers = Callers(client, delay_ms=20)
            callers.start()
            await callers.until_answered(40)
            members[0].kill()
            killed = time.monotonic()
            await asyncio.sleep(1.5 * keepalive + 3)  # a window to observe, not to synchronise
            await callers.until_answered(40)
            await callers.stop()
    finally:
        for member in members:
            member.kill()
            member.communicate()
    late = [why for started, why in callers.failures if started > killed + 1.5 * keepalive]
    assert late == [], late


@pytest.mark.parametrize("protocol,qos", [("5", 1), ("3.1.1", 0)])
async def test_a_leaving_member_delivers_every_answer_it_started_20_times(
    pool_broker: MosquittoBroker, protocol: str, qos: int
) -> None:
    async with MqttRpcClient(pool_broker.host, pool_broker.port, protocol=protocol, qos=qos) as client:
        for round in range(20):
            group = f"g{uuid.uuid4().hex[:6]}"
            member = Responder(pool_broker.host, pool_broker.port, protocol=protocol, qos=qos, share_group=group)
            running = 0
            all_running = asyncio.Event()

            @member.handle(FILTER)
            async def slow(request: Dict[str, Any]) -> Dict[str, Any]:
                nonlocal running
                running += 1
                if running == 10:
                    all_running.set()
                await asyncio.sleep(0.1)
                return {"n": request["n"]}

            await member.start()
            calls = [asyncio.ensure_future(client.call(f"r{round}/pool/control/set", {"n": n}, timeout=10)) for n in range(10)]
            await asyncio.wait_for(all_running.wait(), 10)
            await member.close(grace=5)
            replies = await asyncio.gather(*calls)
            assert [r["result"]["n"] for r in replies] == list(range(10)), round
            stats = member.stats()
            assert (stats["answers_sent"], stats["leave_answered"], stats["leave_unsent"]) == (10, 10, 0), stats


async def test_a_leave_with_the_broker_gone_returns_within_its_grace_and_says_what_was_lost() -> None:
    with MosquittoBroker.start() as broker:
        member = Responder(broker.host, broker.port, protocol="5", qos=1, share_group="g")
        started = asyncio.Event()

        @member.handle(FILTER)
        async def slow(request: Dict[str, Any]) -> Dict[str, Any]:
            started.set()
            await asyncio.sleep(0.3)
            return {}

        await member.start()
        client = MqttRpcClient(broker.host, broker.port, protocol="5", qos=1)
        call = asyncio.ensure_future(client.call("d/pool/control/set", {}, timeout=5))
        await asyncio.wait_for(started.wait(), 10)
        broker.kill()
        # It never hangs: the grace, and no wait for a DISCONNECT nobody can receive.
        await asyncio.wait_for(member.close(grace=1), timeout=15)
        assert member.stats()["leave_unsent"] >= 1
        await asyncio.gather(call, return_exceptions=True)
        await client.close(grace=0)


async def test_a_grace_that_is_not_positive_is_refused(pool_broker: MosquittoBroker) -> None:
    member = python_member(pool_broker, "g", "5", 0)
    await member.start()
    for grace in (0, -1):
        with pytest.raises(ValueError, match="grace"):
            await member.close(grace=grace)
    await member.close()


def test_a_share_group_member_ends_its_session_with_its_connection(
    pool_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    assert python_member(pool_broker, "g", "5", 0)._options["session_expiry"] == 0
    assert Responder(pool_broker.host, pool_broker.port, protocol="5")._options["session_expiry"] is None  # the core's 60 s
    Responder(pool_broker.host, pool_broker.port, protocol="5", share_group="g", session_expiry=30)
    assert any("session_expiry=30" in r.getMessage() for r in caplog.records)
