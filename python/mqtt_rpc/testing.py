"""Real parts for tests and demos: a Mosquitto broker on a free loopback port, a scriptable
`SimulatedDevice` (a Python `Responder`), and the Rust test responder. No mocks: each is the
real program. With mqtt-rpc installed, pytest gets the fixtures `mqtt_broker` (a Mosquitto
for the session) and `mqtt_device` (a fresh simulated device per test).

    with MosquittoBroker.start() as broker:
        async with SimulatedDevice(broker, "+/device/control/set") as device:
            device.fail(423, "busy")
            async with MqttRpcClient(broker.host, broker.port) as client:
                ...

Mosquitto is found on the PATH (Debian/Ubuntu: `apt-get install mosquitto`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["MosquittoBroker", "SimulatedDevice", "ResponderDevice", "free_port", "find_responder", "mqtt_handshake"]


def mqtt_handshake(
    host: str, port: int, client_id: str, username: Optional[str] = None, password: Optional[str] = None
) -> bool:
    """Connects with a bare MQTT 3.1.1 CONNECT and disconnects; True if the broker accepted
    it (a CONNACK with return code 0). For readiness probes, without any MQTT library."""

    def text(value: str) -> bytes:
        data = value.encode()
        return len(data).to_bytes(2, "big") + data

    flags = 0x02 | (0x80 if username else 0) | (0x40 if password else 0)
    body = text("MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big") + text(client_id)
    body += (text(username) if username else b"") + (text(password) if password else b"")
    try:
        with socket.create_connection((host, port), timeout=2) as probe:
            probe.sendall(bytes([0x10, len(body)]) + body)
            ack = probe.recv(4)
            accepted = len(ack) == 4 and ack[0] == 0x20 and ack[3] == 0
            if accepted:
                probe.sendall(b"\xe0\x00")  # DISCONNECT
            return accepted
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_mosquitto() -> str:
    found = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.path.exists(p)), None
    )
    if not found:
        raise FileNotFoundError("mosquitto is not installed: run `apt-get install -y mosquitto`")
    return found


class MosquittoBroker:
    """A Mosquitto process listening on 127.0.0.1 only, with the log lines it has written.

    Its log records every SUBSCRIBE and UNSUBSCRIBE, so a test can ask the broker itself
    what a client subscribed (`subscribes(client_id)`), rather than trusting the client.
    """

    def __init__(self, port: int, config: Path, workdir: "tempfile.TemporaryDirectory[str]") -> None:
        self.host = "127.0.0.1"
        self.port = port
        self.config = config
        self.lines: List[str] = []
        self._changed = threading.Condition()
        self._workdir = workdir
        self.process = self._launch()

    @classmethod
    def start(
        cls,
        timeout: float = 10,
        extra_config: Sequence[str] = (),
        persistent: bool = False,
        users: Optional[Dict[str, str]] = None,
        acl: Optional[str] = None,
    ) -> "MosquittoBroker":
        """Starts Mosquitto on a free port; `extra_config` lines are added to its config.
        A `persistent` broker saves its sessions when stopped cleanly (`terminate`) and
        restores them on `restart`. With `users` (name: password) only they may connect;
        `acl` is the text of a Mosquitto ACL file (``user service\ntopic readwrite #``)."""
        workdir = tempfile.TemporaryDirectory(prefix="mqtt-rpc-mosquitto-")
        port = free_port()
        config = Path(workdir.name) / "mosquitto.conf"
        if users is not None:
            passwords = Path(workdir.name) / "passwords"
            passwords.touch()
            for name, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(passwords), name, password], check=True)
            extra_config = ["allow_anonymous false", f"password_file {passwords}", *extra_config]
        if acl is not None:
            acl_file = Path(workdir.name) / "acl"
            acl_file.write_text(acl)
            extra_config = [f"acl_file {acl_file}", *extra_config]
        config.write_text(
            "\n".join(
                [
                    f"listener {port} 127.0.0.1",
                    "allow_anonymous true" if not any("allow_anonymous" in c for c in extra_config) else "",
                    # stderr is unbuffered: the log is read line by line as it is written.
                    "log_dest stderr",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "log_type subscribe",
                    "log_type unsubscribe",
                    "log_timestamp false",
                    "max_queued_messages 100000",
                    # Started as root, Mosquitto would switch to the `mosquitto` user, which
                    # cannot read the caller's private files (TLS keys, password files).
                    "user root" if os.geteuid() == 0 else "",
                    # Mosquitto leaves Nagle's algorithm on towards clients by default: small
                    # replies then wait up to 40 ms for a delayed ACK.
                    "set_tcp_nodelay true",
                    *(["persistence true", "autosave_interval 0", f"persistence_location {workdir.name}/"]
                      if persistent else []),
                    *extra_config,
                    "",
                ]
            )
        )
        broker = cls(port, config, workdir)
        broker._wait_running(timeout)
        return broker

    @property
    def workdir(self) -> Path:
        """This broker's own folder (its config lives there)."""
        return Path(self._workdir.name)

    def _launch(self) -> "subprocess.Popen[str]":
        process = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Each process writes into its own list: after a restart, lines of the old process
        # that its reader had not read yet must not land in the new process's log.
        threading.Thread(target=self._read_log, args=(process, self.lines), name="mosquitto-log", daemon=True).start()
        return process

    def _read_log(self, process: "subprocess.Popen[str]", lines: List[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def _wait_running(self, timeout: float) -> None:
        # The log's "running" line says the listener is open.
        running = self.wait_for_line(lambda line: line.startswith("mosquitto version") and line.endswith(" running"), timeout)
        if not running:
            self.stop()
            raise RuntimeError("mosquitto did not start: " + " | ".join(self.lines))

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 10) -> bool:
        """Waits until a line of the log (since the last start) satisfies `predicate`."""
        with self._changed:
            return self._changed.wait_for(lambda: any(predicate(line) for line in self.lines), timeout)

    def kill(self) -> None:
        """Stops the broker at once (SIGKILL), as a crash would; `restart()` brings it back."""
        self.process.kill()
        self.process.wait()

    def terminate(self, timeout: float = 30) -> None:
        """Stops the broker cleanly (SIGTERM: it saves its persistence file, if it has one);
        `restart()` brings it back."""
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, timeout: float = 10) -> None:
        """Starts the broker again on the same port with the same config (stopping it cleanly
        first if it runs); the log starts afresh."""
        if self.process.poll() is None:
            self.terminate()
        with self._changed:
            self.lines = []
        self.process = self._launch()
        self._wait_running(timeout)

    def subscribes(self, client_id: str) -> List[str]:
        """The filters `client_id` subscribed, one entry per SUBSCRIBE topic."""
        return [f for kind, f in self.subscription_events(client_id) if kind == "subscribe"]

    def unsubscribes(self, client_id: str) -> List[str]:
        """The filters `client_id` unsubscribed."""
        return [f for kind, f in self.subscription_events(client_id) if kind == "unsubscribe"]

    def sync_log(self, timeout: float = 10) -> None:
        """Returns once every line the broker logged before this call has been read: a
        probe connects, and Mosquitto, which handles one thing at a time, logs the new
        connection after everything it did before."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as probe:
            accepted = f"New connection from 127.0.0.1:{probe.getsockname()[1]} "
            self.wait_for_line(lambda line: line.startswith(accepted), timeout)

    def subscription_events(self, client_id: str) -> List[Tuple[str, str]]:
        """`client_id`'s subscribes and unsubscribes in the order the broker handled them,
        up to now: ``("subscribe", filter)`` or ``("unsubscribe", filter)``. Mosquitto logs
        a subscription as "<client id> <qos> <filter>", an unsubscription as "<client id>
        <filter>"."""
        self.sync_log()
        events = []
        for parts in (line.split(" ") for line in list(self.lines)):
            if len(parts) == 3 and parts[0] == client_id and parts[1].isdigit():
                events.append(("subscribe", parts[2]))
            elif len(parts) == 2 and parts[0] == client_id:
                events.append(("unsubscribe", parts[1]))
        return events

    def connections(self, client_id: str) -> int:
        """How many times `client_id` connected, up to now. Mosquitto logs each accepted
        CONNECT as "New client connected from <address> as <client id> (p<version>, ...)"."""
        self.sync_log()
        marker = f" as {client_id} ("
        return sum(1 for line in list(self.lines) if line.startswith("New client connected from ") and marker in line)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.terminate()
        self._workdir.cleanup()

    def __enter__(self) -> "MosquittoBroker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_responder(repository: Optional[Path] = None) -> Path:
    """The `mqtt-rpc-responder` binary: `$MQTT_RPC_RESPONDER`, or built with cargo in the
    repository (a no-op when it is up to date)."""
    configured = os.environ.get("MQTT_RPC_RESPONDER")
    if configured:
        return Path(configured)
    root = repository or Path(__file__).resolve().parents[2]
    if not (root / "Cargo.toml").exists():
        raise FileNotFoundError(
            "mqtt-rpc-responder not found: set MQTT_RPC_RESPONDER to its path "
            "(cargo build --release --bin mqtt-rpc-responder)"
        )
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "mqtt-rpc-responder"], cwd=root, check=True)
    return root / "target" / "release" / "mqtt-rpc-responder"


class ResponderDevice:
    """The Rust responder answering requests on `filters`; see src/bin/responder.rs for how
    a request steers its own answer (`"_responder": {"delay_ms", "silent", "twice",
    "error", "garbage_first", "ignore_first"}`). Its output lines (READY after each
    subscription, NOTIFICATION for each notification) are collected in `lines`."""

    def __init__(self, process: "subprocess.Popen[str]") -> None:
        self.process = process
        self.lines: List[str] = []
        self._changed = threading.Condition()
        self._ready_seen = 0
        threading.Thread(target=self._read_output, name="responder-output", daemon=True).start()

    @classmethod
    def start(
        cls, broker: MosquittoBroker, *filters: str, options: Sequence[str] = (), timeout: float = 15
    ) -> "ResponderDevice":
        # A test device leaves within 5 s of SIGTERM (a device's default is 25 s), even with
        # its broker killed under it and runs it can no longer answer.
        grace = [] if "--grace" in options else ["--grace", "5"]
        process = subprocess.Popen(
            [str(find_responder()), "--host", broker.host, "--port", str(broker.port), *grace, *options, *filters],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        device = cls(process)
        if not device.wait_until_ready(timeout):
            process.kill()
            process.wait()
            raise RuntimeError(f"the responder for {filters} did not become ready (exit code {process.poll()})")
        return device

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 10) -> bool:
        """Waits until a line of its output satisfies `predicate`."""
        with self._changed:
            return self._changed.wait_for(lambda: any(predicate(line) for line in self.lines), timeout)

    def wait_until_ready(self, timeout: float = 15) -> bool:
        """Waits for the responder's next READY line: it prints one each time its filters
        are subscribed (at start, and after every reconnect)."""
        with self._changed:
            wanted = self._ready_seen + 1
            ready = self._changed.wait_for(lambda: self.lines.count("READY") >= wanted, timeout)
            if ready:
                self._ready_seen = wanted
            return ready

    def stop(self) -> None:
        """SIGTERM: the device leaves gracefully (within its grace), then exits."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "ResponderDevice":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SimulatedDevice:
    """A device for your own tests, in Python (no Rust binary needed): it answers requests on
    `topic_filter`, and each test scripts what it does next.

        async with SimulatedDevice(broker, "+/device/control/set") as device:
            device.answer({"status": "ok"})              # every request, until told otherwise
            device.answer_late({"status": "ok"}, 2.0)    # after 2 s
            device.stay_silent()                         # never answer: the caller times out
            device.fail(423, "camera is recording")      # the caller gets RemoteError
            ...
            device.requests                              # what it received, oldest first

    A result may also be a function of the request: ``device.answer(lambda r: {"echo": r})``.
    """

    def __init__(self, broker: "MosquittoBroker", topic_filter: str = "+/device/control/set", **options: Any) -> None:
        from .responder import Responder, RpcHandlerError

        self.requests: List[Dict[str, Any]] = []
        self._script: Callable[[Dict[str, Any]], Awaitable[Any]] = self._answering(lambda request: {"status": "ok"})
        self._responder = Responder(broker.host, broker.port, **options)
        self._error_type = RpcHandlerError

        @self._responder.handle(topic_filter)
        async def handle(request: Dict[str, Any]) -> Any:
            self.requests.append(request)
            return await self._script(request)

    @staticmethod
    def _answering(result: Any, delay: float = 0.0) -> Callable[[Dict[str, Any]], Awaitable[Any]]:
        async def respond(request: Dict[str, Any]) -> Any:
            if delay:
                await asyncio.sleep(delay)
            return result(request) if callable(result) else result

        return respond

    def answer(self, result: Any) -> None:
        """Answer every request with `result` (or `result(request)`)."""
        self._script = self._answering(result)

    def answer_late(self, result: Any, delay: float) -> None:
        """Answer after `delay` seconds."""
        self._script = self._answering(result, delay)

    def stay_silent(self) -> None:
        """Never answer."""

        async def silent(request: Dict[str, Any]) -> Any:
            await asyncio.Event().wait()  # until the device is closed

        self._script = silent

    def fail(self, code: int, message: str, data: Any = None) -> None:
        """Answer with an error object: the caller gets `RemoteError(code, message, data)`."""

        async def failing(request: Dict[str, Any]) -> Any:
            raise self._error_type(code, message, data)

        self._script = failing

    async def start(self) -> "SimulatedDevice":
        await self._responder.start()
        return self

    async def close(self) -> None:
        await self._responder.close_now()

    async def __aenter__(self) -> "SimulatedDevice":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
