"""The `mqtt-rpc` command line: call a device, list the services that are up, serve as a
test device, measure, or run the demo. Each command prints what it does and exits non-zero
with one line on stderr that says what went wrong: 2 bad input, 3 timeout (or no service
answered), 4 the device answered an error, 5 no connection (or it was lost), 6 no
responders (MQTT 5, QoS 1: nobody subscribes to the topic), 7 the broker refused the
request (MQTT 5 reason code). The broker comes from `--url`, else `MQTT_RPC_URL`, else
localhost:1883; `--host`, `--port` and the other options win."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from . import __version__
from .client import MqttRpcClient
from .options import group_arguments
from .errors import (
    ConnectionLostError,
    NoRespondersError,
    NotConnectedError,
    PayloadError,
    PublishRejectedError,
    RemoteError,
    RpcTimeoutError,
)
from .responder import DEFAULT_GRACE, Responder, RpcHandlerError

EXIT_BAD_INPUT, EXIT_TIMEOUT, EXIT_REMOTE_ERROR, EXIT_NO_CONNECTION = 2, 3, 4, 5
EXIT_NO_RESPONDERS, EXIT_REJECTED = 6, 7
DEMO_FILTER = "+/device/control/set"


def positive_seconds(text: str) -> float:
    """argparse type of a timeout: a bad one is bad input (exit 2), not a traceback."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, not {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def connection_arguments(parser: argparse.ArgumentParser) -> None:
    # Defaults are None: only what is given overrides --url / MQTT_RPC_URL.
    group = parser.add_argument_group("broker")
    group.add_argument("--url", help="broker URL, mqtt[s]://[user[:password]@]host[:port][?option=value...] "
                       "(default: $MQTT_RPC_URL, else mqtt://localhost:1883)")
    group.add_argument("--host", help="broker host (overrides the URL's; default: localhost)")
    group.add_argument("--port", type=int, help="broker port (default: 1883)")
    group.add_argument("--protocol", choices=["3.1.1", "5"], help="MQTT version (default: 3.1.1)")
    group.add_argument("--qos", type=int, choices=[0, 1])
    group.add_argument("--username")
    group.add_argument("--password")
    group.add_argument("--client-id", help="default: a unique id; {pid}, {hostname} and {random} are filled in")
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true", default=None, help="connect with TLS (implied by the files below)")
    tls.add_argument("--ca-certs", help="PEM file of the CAs to trust (default: the system's)")
    tls.add_argument("--certfile", help="client certificate (PEM), for mutual TLS")
    tls.add_argument("--keyfile", help="client private key (PEM)")


def connection_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The options given on the command line, and nothing else."""
    given = dict(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        protocol=args.protocol,
        qos=args.qos,
        username=args.username,
        password=args.password,
        tls=args.tls,
        ca_certs=args.ca_certs,
        certfile=args.certfile,
        keyfile=args.keyfile,
    )
    return {name: value for name, value in given.items() if value is not None}


def make(kind: Any, args: argparse.Namespace, **options: Any) -> Any:
    """A client or responder from --url (or MQTT_RPC_URL), with the given options on top."""
    options.update(connection_options(args))
    options = group_arguments(options)  # the command line's flat names, in their groups
    if args.url:
        return kind.from_url(args.url, **options)
    return kind(**options)


def fail(code: int, message: str) -> int:
    print(f"mqtt-rpc: {message}", file=sys.stderr)
    return code


class CommandFailed(Exception):
    """Ends a command with this exit code and one line on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


async def connected_client(args: argparse.Namespace, **options: Any) -> MqttRpcClient:
    """A client from the command line's options, connected."""
    try:
        client: MqttRpcClient = make(MqttRpcClient, args, **options)
    except ValueError as error:
        raise CommandFailed(EXIT_BAD_INPUT, str(error)) from None
    try:
        await client.connect()
    except NotConnectedError as error:
        message = f"{error} (is a broker running there? try --url or --host/--port)"
        raise CommandFailed(EXIT_NO_CONNECTION, message) from None
    return client


# --- call -------------------------------------------------------------------------------


async def call_command(args: argparse.Namespace) -> int:
    client = await connected_client(args, reply_to=args.reply_to)
    try:
        reply = await client.call(args.topic, args.payload, timeout=args.timeout)
    except PayloadError as error:
        return fail(EXIT_BAD_INPUT, str(error))
    except RpcTimeoutError as error:
        return fail(EXIT_TIMEOUT, f"{error}: is a device subscribed to this topic?")
    except RemoteError as error:
        print(json.dumps({"code": error.code, "message": error.message, "data": error.data}), file=sys.stderr)
        return fail(EXIT_REMOTE_ERROR, f"the device answered with error {error.code}: {error.message}")
    except NoRespondersError as error:
        return fail(EXIT_NO_RESPONDERS, f"{error}: no device is subscribed to this topic (the broker said so)")
    except PublishRejectedError as error:
        return fail(EXIT_REJECTED, f"the broker refused the request: reason {error.reason_code} ({error.reason})")
    except (ConnectionLostError, NotConnectedError) as error:
        return fail(EXIT_NO_CONNECTION, f"the connection was lost: {error}")
    finally:
        await client.close(grace=0)
    print(json.dumps(reply, indent=2))
    return 0


# --- services ---------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns as wide as their widest cell, separated by two spaces; None shows as "-"."""
    cells = [list(header)] + [["-" if cell is None else str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells)


def services_table(found: List[Dict[str, Any]]) -> str:
    rows = []
    for service in found:
        filters = ", ".join(str(endpoint.get("filter")) for endpoint in service.get("endpoints", []))
        rows.append((service.get("name"), service.get("id"), service.get("version"), service.get("started"), filters))
    return table(("NAME", "ID", "VERSION", "STARTED", "FILTERS"), rows)


def stats_table(found: List[Dict[str, Any]]) -> str:
    rows = []
    for service in found:
        for endpoint in service.get("endpoints", []):
            average = endpoint.get("processing_ms_average")
            rows.append((
                service.get("name"),
                service.get("id"),
                endpoint.get("filter"),
                endpoint.get("requests"),
                endpoint.get("errors"),
                None if average is None else f"{average:.2f}",
                endpoint.get("last_error"),
            ))
    return table(("NAME", "ID", "FILTER", "REQUESTS", "ERRORS", "AVG MS", "LAST ERROR"), rows)


async def services_command(args: argparse.Namespace) -> int:
    client = await connected_client(args, **({"service_prefix": args.service_prefix} if args.service_prefix else {}))
    name = args.stats or args.name
    try:
        if args.stats:
            found = await client.service_stats(name, timeout=args.timeout)
        else:
            found = await client.discover(name, timeout=args.timeout)
    except PayloadError as error:
        return fail(EXIT_BAD_INPUT, str(error))
    except (ConnectionLostError, NotConnectedError) as error:
        return fail(EXIT_NO_CONNECTION, f"the connection was lost: {error}")
    finally:
        await client.close(grace=0)
    if not found:
        which = f"named {name!r}" if name else "at all"
        return fail(EXIT_TIMEOUT, f"no service {which} answered within {args.timeout}s")
    if args.json:
        print(json.dumps(found, indent=2))
    else:
        print(stats_table(found) if args.stats else services_table(found))
    return 0


# --- serve ------------------------------------------------------------------------------


def echo_responder(args: argparse.Namespace) -> Responder:
    options: Dict[str, Any] = {"share_group": args.share_group} if args.share_group else {}
    if args.name:
        options.update(name=args.name, version=args.service_version)
    if args.service_prefix:
        options.update(service_prefix=args.service_prefix)
    responder: Responder = make(Responder, args, **options)
    fail_action = args.fail_action

    @responder.handle(args.filter)
    async def echo(request: Dict[str, Any]) -> Dict[str, Any]:
        if fail_action is not None and request.get("action") == fail_action:
            raise RpcHandlerError(423, f"{fail_action} refused by the test device", {"action": fail_action})
        # As the Rust test device: a request may ask to be answered after a while.
        steering = request.get("_responder")
        delay = steering.get("delay_ms") if isinstance(steering, dict) else None
        if isinstance(delay, (int, float)) and delay > 0:
            await asyncio.sleep(min(delay, 60_000) / 1000)
        return {"status": "ok", "echo": request}

    return responder


async def serve_command(args: argparse.Namespace) -> int:
    if not args.grace > 0:
        return fail(EXIT_BAD_INPUT, f"--grace must be a positive number of seconds, not {args.grace:g}")
    try:
        responder = echo_responder(args)
    except ValueError as error:
        return fail(EXIT_BAD_INPUT, str(error))
    try:
        await responder.start()
    except NotConnectedError as error:
        return fail(EXIT_NO_CONNECTION, str(error))
    print(f"serving {args.filter} on {responder._address} (Ctrl-C or SIGTERM leaves, a second one stops)", flush=True)
    try:
        await responder.serve_until_signal(args.grace)
    finally:
        await responder.close_now()
    stats = responder.stats()
    if stats.get("leave_ms") or stats.get("leave_answered"):
        print(f"left in {stats['leave_ms']} ms: {stats['leave_answered']} answers sent during the leave, "
              f"{stats['leave_unsent']} not delivered", file=sys.stderr, flush=True)
    return 0


# --- bench and demo: a broker and a device of their own ---------------------------------


class OwnSetup:
    """A Mosquitto on a free loopback port and an echo device in a child process."""

    def __init__(self, fail_action: Optional[str] = None) -> None:
        from .testing import MosquittoBroker

        self.broker = MosquittoBroker.start()
        command = [sys.executable, "-m", "mqtt_rpc", "serve", DEMO_FILTER, "--echo", "--port", str(self.broker.port),
                   "--host", self.broker.host]
        if fail_action:
            command += ["--fail-action", fail_action]
        self.device = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.device.stdout is not None
        line = self.device.stdout.readline()
        if not line.startswith("serving"):
            self.close()
            raise RuntimeError("the simulated device did not start")

    def close(self) -> None:
        self.device.terminate()
        self.device.wait(timeout=10)
        self.broker.stop()


async def measure(client: MqttRpcClient, topic: str, calls: int, concurrency: int) -> Dict[str, float]:
    latencies: List[float] = []
    remaining = calls

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await client.call(topic, {"action": "PING"})
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "calls_per_second": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }


async def bench_command(args: argparse.Namespace) -> int:
    print("starting mosquitto and an echo device...", flush=True)
    setup = OwnSetup()
    try:
        async with MqttRpcClient(setup.broker.host, setup.broker.port) as client:
            await measure(client, "bench/device/control/set", min(1000, args.calls), args.concurrency)  # warm-up
            result = await measure(client, "bench/device/control/set", args.calls, args.concurrency)
        print(
            f"{args.calls:,} calls, {args.concurrency} at a time: {result['calls_per_second']:,.0f} calls/s, "
            f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms"
        )
        print("(a Python device on the same machine; scripts/bench compares clients properly)")
    finally:
        setup.close()
    return 0


async def demo_command(args: argparse.Namespace) -> int:
    print("starting mosquitto and a simulated device on free loopback ports...", flush=True)
    setup = OwnSetup(fail_action="REBOOT")
    try:
        broker = setup.broker
        async with MqttRpcClient(broker.host, broker.port) as client:
            print(f"connected to mosquitto at {broker.host}:{broker.port} as {client.client_id}\n")

            def show(label: str, started: float, outcome: str) -> None:
                print(f"{label:<34} {(time.perf_counter() - started) * 1000:8.2f} ms  {outcome}")

            device = "rpi-camera-device/device/control/set"
            started = time.perf_counter()
            reply = await client.call(device, '{"action": "GET_HEALTH_CHECK"}', timeout=10)
            show("call GET_HEALTH_CHECK (first)", started, json.dumps(reply))
            started = time.perf_counter()
            reply = await client.call(device, {"action": "GET_HEALTH_CHECK"}, timeout=10)
            show("call GET_HEALTH_CHECK (again)", started, f"request_id={reply['request_id']}")
            started = time.perf_counter()
            try:
                await client.call(device, {"action": "REBOOT"})
            except RemoteError as error:
                show("call REBOOT (the device refuses)", started, f"RemoteError {error.code}: {error.message}")
            started = time.perf_counter()
            try:
                await client.call("rpi-offline-device/silent/control/set", {"action": "GET_HEALTH_CHECK"}, timeout=0.5)
            except RpcTimeoutError as error:
                show("call an offline device", started, f"RpcTimeoutError: {error}")
            started = time.perf_counter()
            replies = await client.call_many([(device, {"action": "PING", "i": i}) for i in range(1000)])
            show("call_many: 1,000 requests", started, f"{len(replies)} answers, in order")
            for concurrency, calls in ((1, 300), (64, 5000)):
                result = await measure(client, device, calls, concurrency)
                print(
                    f"\n{calls:,} calls, {concurrency} at a time: {result['calls_per_second']:,.0f} calls/s, "
                    f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms",
                    end="",
                )
            print(f"\n\npending calls left: {client.pending}")
    finally:
        setup.close()
    print("stopped the device and the broker.")
    return 0


# --- the parser ---------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="mqtt-rpc",
        description="Request/response over MQTT: call a device and print its answer, act as a test "
        "device, measure, or run the demo.",
    )
    top.add_argument("--version", action="version", version=f"mqtt-rpc {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    call = commands.add_parser("call", help="call a device and print its answer as JSON",
                               description="Publish PAYLOAD (a JSON object) to TOPIC with a fresh request_id "
                               "and print the device's answer.")
    call.add_argument("topic", help='request topic, e.g. "dev1/device/control/set"')
    call.add_argument("payload", help='JSON object, e.g. \'{"action": "GET_HEALTH_CHECK"}\'')
    call.add_argument("--timeout", type=positive_seconds, default=10, help="seconds to wait for the answer (default: 10)")
    call.add_argument("--reply-to", choices=["topic", "inbox"], default="topic", help="reply topic convention")
    connection_arguments(call)

    serve = commands.add_parser("serve", help="answer requests as a test device (an echo)",
                                description="Answer every request on FILTER with "
                                '{"status": "ok", "echo": <request>} until stopped; with --fail-action, '
                                "answer requests of that action with an error instead.")
    serve.add_argument("filter", help='request topic filter, e.g. "+/device/control/set"')
    serve.add_argument("--echo", action="store_true", help="answer with the request (the default; kept for scripts)")
    serve.add_argument("--fail-action", metavar="ACTION", help='answer requests whose "action" is ACTION with an error')
    serve.add_argument("--share-group", help="join this shared-subscription group (a pool of devices)")
    serve.add_argument("--name", help="a service name: answer discovery and health requests (mqtt-rpc services)")
    serve.add_argument("--service-version", help="the version discovery tells (with --name)")
    serve.add_argument("--service-prefix", help="where discovery requests come (default: mqtt-rpc/_srv)")
    serve.add_argument("--grace", type=float, default=DEFAULT_GRACE, metavar="SECONDS",
                       help=f"on SIGTERM or Ctrl-C, leave gracefully within this long (default: {DEFAULT_GRACE:g})")
    connection_arguments(serve)

    services = commands.add_parser("services", help="list the named responders that are up, or their statistics",
                                   description="Ask every named responder (or those named --name) for its INFO "
                                   "and print a table; with --stats NAME, each instance's requests, errors and "
                                   "processing time per filter.")
    services.add_argument("--name", help="only the instances of this service")
    services.add_argument("--stats", metavar="NAME", help="the statistics of this service's instances")
    services.add_argument("--timeout", type=positive_seconds, default=1.0,
                          help="seconds to collect answers (default: 1)")
    services.add_argument("--service-prefix", help="the responders' service_prefix (default: mqtt-rpc/_srv)")
    services.add_argument("--json", action="store_true", help="print the answers as JSON instead of a table")
    connection_arguments(services)

    bench = commands.add_parser("bench", help="a short benchmark against a broker and device of its own")
    bench.add_argument("--calls", type=int, default=20_000)
    bench.add_argument("--concurrency", type=int, default=256)

    commands.add_parser("demo", help="start a broker and a simulated device, call it, print the answers",
                        description="Needs Mosquitto on the PATH (apt-get install mosquitto).")
    return top


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    command = {"call": call_command, "services": services_command, "serve": serve_command, "bench": bench_command, "demo": demo_command}
    try:
        return asyncio.run(command[args.command](args))
    except CommandFailed as failed:
        return fail(failed.code, str(failed))
    except KeyboardInterrupt:
        return 130
    except FileNotFoundError as error:  # no mosquitto for bench/demo
        return fail(EXIT_NO_CONNECTION, str(error))
