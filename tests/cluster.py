"""A real clustered broker on loopback for the `cluster` tests: three NATS servers joined by
routes, each with its MQTT listener, and JetStream clustered across them (NATS keeps MQTT
sessions and QoS 1 state in JetStream, replicated over the three). nats-server is a Debian
package that scripts/setup installs with the broker matrix."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

from mqtt_rpc.testing import free_port, mqtt_handshake


class NatsCluster:
    """`size` NATS nodes; node i speaks MQTT on `mqtt_ports[i]` (127.0.0.1 only)."""

    def __init__(self, size: int = 3) -> None:
        program = shutil.which("nats-server")
        if program is None:
            raise RuntimeError("nats-server is not installed: scripts/setup installs the broker matrix")
        self._workdir = tempfile.TemporaryDirectory(prefix="mqtt-rpc-cluster-")
        self.mqtt_ports = [free_port() for _ in range(size)]
        routes = [free_port() for _ in range(size)]
        self._processes: List[Optional["subprocess.Popen[bytes]"]] = []
        for node in range(size):
            others = ", ".join(f"nats-route://127.0.0.1:{routes[i]}" for i in range(size) if i != node)
            config = Path(self._workdir.name) / f"n{node}.conf"
            config.write_text(
                f"server_name: n{node}\n"
                f"listen: 127.0.0.1:{free_port()}\n"
                f"cluster {{ name: mqtt_rpc_cluster, listen: 127.0.0.1:{routes[node]}, routes: [{others}] }}\n"
                f'jetstream {{ store_dir: "{self._workdir.name}/js{node}" }}\n'
                # Sessions replicated on every node: losing one keeps a quorum of them.
                f"mqtt {{ listen: 127.0.0.1:{self.mqtt_ports[node]}, stream_replicas: {size} }}\n"
            )
            log = open(Path(self._workdir.name) / f"n{node}.log", "wb")
            self._processes.append(subprocess.Popen([program, "-c", str(config)], stdout=log, stderr=log))
        self.wait_until_ready(60)

    @property
    def addresses(self) -> List[Tuple[str, int]]:
        return [("127.0.0.1", port) for port in self.mqtt_ports]

    def wait_until_ready(self, timeout: float) -> None:
        """Until every running node accepts an MQTT session (JetStream has its leader)."""
        deadline = time.monotonic() + timeout
        for node, port in enumerate(self.mqtt_ports):
            if self._processes[node] is None:
                continue
            while not mqtt_handshake("127.0.0.1", port, f"probe-{os.getpid()}-{node}"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"NATS node {node} did not accept MQTT in {timeout}s:\n{self.log(node)}")
                time.sleep(0.2)

    def log(self, node: int) -> str:
        return (Path(self._workdir.name) / f"n{node}.log").read_text(errors="replace")[-3000:]

    def kill(self, node: int) -> None:
        """Ends one node at once (SIGKILL): its clients' connections drop."""
        process = self._processes[node]
        if process is not None:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            self._processes[node] = None

    def stop(self) -> None:
        for node in range(len(self._processes)):
            process = self._processes[node]
            if process is not None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                self._processes[node] = None
        self._workdir.cleanup()

    def __enter__(self) -> "NatsCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
