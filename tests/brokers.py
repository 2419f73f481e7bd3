"""The brokers of the compatibility matrix, each started on free loopback ports with a
config written here, and what each one is known to support (asserted by test_brokers.py,
written up in docs/brokers.md).

Mosquitto comes from `mqtt_rpc.testing`; RabbitMQ (its MQTT plugin), NATS server (its MQTT
listener, which needs JetStream and a server name) and ejabberd (mod_mqtt) are Debian
packages; amqtt is a PyPI package. scripts/setup installs them all."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set

from mqtt_rpc.testing import MosquittoBroker, free_port, mqtt_handshake


@dataclass(frozen=True)
class Profile:
    """What a broker does where request/response over MQTT depends on it."""

    name: str
    mqtt5: bool
    #: "yes"; "ignored": `$share/...` is taken as a plain topic filter that nothing
    #: matches; "refused": the broker closes the connection at such a SUBSCRIBE.
    shared_subscriptions: str
    #: Answers an MQTT 5 QoS 1 publish nobody subscribes with PUBACK reason 16.
    no_responders: bool
    username: Optional[str] = None
    password: Optional[str] = None


@dataclass
class RunningBroker:
    profile: Profile
    host: str
    port: int
    version: str
    _stop: object = field(repr=False, default=None)

    def credentials(self) -> Dict[str, str]:
        if self.profile.username is None:
            return {}
        return {"username": self.profile.username, "password": self.profile.password or ""}

    def device_options(self) -> List[str]:
        """Options for the Rust test device to log in."""
        creds = self.credentials()
        return ["--username", creds["username"], "--password", creds["password"]] if creds else []

    def stop(self) -> None:
        if callable(self._stop):
            self._stop()


def wait_for_mqtt(host: str, port: int, timeout: float, username: Optional[str] = None, password: Optional[str] = None) -> None:
    """Waits until the broker answers an MQTT 3.1.1 CONNECT with a successful CONNACK."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if mqtt_handshake(host, port, f"probe-{os.getpid()}", username, password):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the broker on {host}:{port} did not accept an MQTT connection in {timeout}s")


def _require(program: str) -> str:
    path = shutil.which(program) or (program if os.path.exists(program) else None)
    if path is None:
        raise RuntimeError(f"{program} is not installed: scripts/setup installs the broker matrix")
    return path


def _version(command: List[str], pick: int = -1) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
        words = (out.stdout + out.stderr).split()
        return words[pick] if words else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# Erlang nodes (RabbitMQ, ejabberd) listen for their distribution protocol too: only on
# loopback, like everything the tests start.
_ERLANG_LOOPBACK = "-kernel inet_dist_use_interface {127,0,0,1}"


def _erlang_env(home: str) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({"HOME": home, "ERL_EPMD_ADDRESS": "127.0.0.1"})
    return env


def _running(name: str) -> Set[int]:
    """The process ids of the programs called `name` running now."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == name:
                found.add(int(entry.name))
        except OSError:  # it ended meanwhile
            continue
    return found


def _stop_started_since(name: str, before: Set[int]) -> None:
    """Stops the `name` processes that were not running before: an Erlang node starts the
    port mapper daemon (epmd) on its own, detached, and leaves it running after it stops."""
    for pid in _running(name) - before:
        try:
            os.kill(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass


def _stop_process(process: subprocess.Popen, workdir: tempfile.TemporaryDirectory) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    workdir.cleanup()


MOSQUITTO = Profile("mosquitto", mqtt5=True, shared_subscriptions="yes", no_responders=True)
RABBITMQ = Profile("rabbitmq", mqtt5=False, shared_subscriptions="ignored", no_responders=False)
NATS = Profile("nats", mqtt5=False, shared_subscriptions="ignored", no_responders=False)
EJABBERD = Profile(
    "ejabberd",
    mqtt5=True,
    shared_subscriptions="refused",
    no_responders=True,
    username="service@localhost",
    password="s3cret",
)
AMQTT = Profile("amqtt", mqtt5=False, shared_subscriptions="ignored", no_responders=False)

PROFILES = {p.name: p for p in (MOSQUITTO, RABBITMQ, NATS, EJABBERD, AMQTT)}


def start_mosquitto() -> RunningBroker:
    broker = MosquittoBroker.start()
    version = _version([shutil.which("mosquitto") or "mosquitto", "-h"], pick=2)
    return RunningBroker(MOSQUITTO, broker.host, broker.port, version, broker.stop)


def start_nats() -> RunningBroker:
    program = _require("nats-server")
    workdir = tempfile.TemporaryDirectory(prefix="mqtt-rpc-nats-")
    port, client_port = free_port(), free_port()
    config = Path(workdir.name) / "nats.conf"
    config.write_text(
        f"listen: 127.0.0.1:{client_port}\n"
        # MQTT's QoS 1 and sessions live in JetStream, which needs a server name.
        "server_name: mqtt_rpc_matrix\n"
        f'jetstream {{ store_dir: "{workdir.name}/js" }}\n'
        f"mqtt {{ listen: 127.0.0.1:{port} }}\n"
    )
    process = subprocess.Popen([program, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_mqtt("127.0.0.1", port, 30)
    version = _version([program, "--version"]).lstrip("v")
    return RunningBroker(NATS, "127.0.0.1", port, version, lambda: _stop_process(process, workdir))


def start_amqtt(taboo_topics: bool = False) -> RunningBroker:
    """amqtt; with `taboo_topics` its TopicTabooPlugin refuses subscriptions to
    "prohibited", "top-secret" and "data/classified" (SUBACK 0x80)."""
    program = _require(str(Path(sys.executable).with_name("amqtt")))
    workdir = tempfile.TemporaryDirectory(prefix="mqtt-rpc-amqtt-")
    port = free_port()
    config = Path(workdir.name) / "amqtt.yaml"
    config.write_text(
        "listeners:\n"
        "  default:\n"
        "    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n"
        "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
        "    allow_anonymous: true\n"
        + ("  amqtt.plugins.topic_checking.TopicTabooPlugin: {}\n" if taboo_topics else "")
    )
    process = subprocess.Popen([program, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_mqtt("127.0.0.1", port, 30)
    from importlib.metadata import version as package_version

    return RunningBroker(AMQTT, "127.0.0.1", port, package_version("amqtt"), lambda: _stop_process(process, workdir))


def start_rabbitmq() -> RunningBroker:
    program = _require("/usr/lib/rabbitmq/bin/rabbitmq-server")
    workdir = tempfile.TemporaryDirectory(prefix="mqtt-rpc-rabbitmq-")
    base = Path(workdir.name)
    port, amqp_port, dist_port = free_port(), free_port(), free_port()
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{amqp_port}\n"
        f"mqtt.listeners.tcp.default = 127.0.0.1:{port}\n"
        "mqtt.allow_anonymous = true\n"
        "loopback_users = none\n"
    )
    (base / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
    env = _erlang_env(workdir.name)
    node = f"mqttrpc{port}@localhost"
    env.update(
        {
            "RABBITMQ_NODENAME": node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": _ERLANG_LOOPBACK,
        }
    )
    epmd_before = _running("epmd")
    process = subprocess.Popen([program], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_mqtt("127.0.0.1", port, 90)
    version = Path(next(Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*"))).name.split("-")[-1]

    def stop() -> None:
        ctl = "/usr/lib/rabbitmq/bin/rabbitmqctl"
        subprocess.run([ctl, "-n", node, "stop"], env=env, capture_output=True, timeout=60)
        _stop_process(process, workdir)
        _stop_started_since("epmd", epmd_before)

    return RunningBroker(RABBITMQ, "127.0.0.1", port, version, stop)


def start_ejabberd() -> RunningBroker:
    program = _require("ejabberdctl")
    workdir = tempfile.TemporaryDirectory(prefix="mqtt-rpc-ejabberd-")
    base = Path(workdir.name)
    port = free_port()
    (base / "spool").mkdir()
    (base / "logs").mkdir()
    (base / "modules.d").mkdir()
    (base / "ejabberd.yml").write_text(
        "hosts: [localhost]\n"
        "loglevel: warning\n"
        "auth_method: [internal]\n"
        "listen:\n"
        f"  - {{port: {port}, ip: '127.0.0.1', module: mod_mqtt, backlog: 1000}}\n"
        "acl:\n"
        "  local:\n"
        "    user_regexp: ''\n"
        "access_rules:\n"
        "  register_local:\n"
        "    allow: all\n"
        "modules:\n"
        "  mod_mqtt:\n"
        "    max_queue: 100000\n"
        "    access_publish:\n"
        '      "#": [allow]\n'
        "    access_subscribe:\n"
        '      "#": [allow]\n'
    )
    # ejabberdctl reads its settings from this file, not from the environment.
    ctl_config = base / "ejabberdctl.cfg"
    ctl_config.write_text(
        f'ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 {_ERLANG_LOOPBACK}"\n'
        f"EJABBERD_PID_PATH={base}/ejabberd.pid\n"
        f"EJABBERD_CONFIG_PATH={base}/ejabberd.yml\n"
        f"CONTRIB_MODULES_CONF_DIR={base}/modules.d\n"
    )
    # Started by root, ejabberdctl runs ejabberd as the `ejabberd` user: it owns the files.
    if os.geteuid() == 0:
        subprocess.run(["chown", "-R", "ejabberd:", str(base)], check=True)
        os.chmod(base, 0o755)
    node = f"mqttrpc{port}@localhost"
    ctl = [program, "--ctl-config", str(ctl_config), "--node", node]
    env = _erlang_env(workdir.name)
    epmd_before = _running("epmd")
    process = subprocess.Popen(
        [*ctl, "--spool", str(base / "spool"), "--logs", str(base / "logs"), "foreground"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        registered = subprocess.run([*ctl, "register", "service", "localhost", "s3cret"], env=env, capture_output=True, text=True)
        if registered.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    wait_for_mqtt("127.0.0.1", port, 30, EJABBERD.username, EJABBERD.password)
    version = _version(["dpkg-query", "-W", "-f=${Version}", "ejabberd"]).split("-")[0]

    def stop() -> None:
        subprocess.run([*ctl, "stop"], env=env, capture_output=True, timeout=60)
        _stop_process(process, workdir)
        _stop_started_since("epmd", epmd_before)

    return RunningBroker(EJABBERD, "127.0.0.1", port, version, stop)


STARTERS = {
    "mosquitto": start_mosquitto,
    "rabbitmq": start_rabbitmq,
    "nats": start_nats,
    "ejabberd": start_ejabberd,
    "amqtt": start_amqtt,
}
