"""``fleet-sim demo``: one simulated van day, end to end, on this machine, as installed.

1. A scenario (a generated town, its stops, GNSS noise, multipath, a tunnel) is written
   as an NMEA log, the day's manifest and the driver's scan log.
2. The fleet's CA, as an operator makes it: ``fleet-ingest ca init``, then ``ca issue``
   for the broker (127.0.0.1), ingest and the demo's monitor. A private Mosquitto starts
   with the fleet's own configuration (docs/mosquitto/: fleet.conf, the two ACLs, the
   share guard plugin, the CA's CRL), its two listeners on free ports of 127.0.0.1:
   mutual TLS, every client named by its certificate, a van only on its own topics,
   acks only from ingest.
3. Ingest, the real service: ``fleet-ingest token create --scope read`` makes the API
   token the summary reads with (the API answers no one without one) and
   ``fleet-ingest enroll-token`` the van's one-time enrollment token; then
   ``fleet-ingest serve`` runs its worker, its HTTP API and enrollment on SQLite.
4. The agent, the real service, as an installer sets it up: ``fleet-agent provision``
   enrolls the van with the token (POD key, TLS key and certificate, the broker's
   address, written into its settings file); ``fleet-agent run`` with those settings
   plays the day at ``speed`` times real time, with the scans (geofences, PODs, durable
   outbox, MQTT uplink), until ingest has acknowledged everything.
5. A backend-team subscriber prints the normalized stream (``fleetstream/v1/...``) as
   stops, PODs and exceptions are stored; a summary compares what the agent committed
   (its exit line) with what ingest stored and acknowledged (its HTTP API and metrics),
   the detected arrivals with the simulator's truth, and the first-attempt success
   (parcels whose first POD is a delivery, docs/outcomes.md) with the outcomes the
   simulator's driver gave.

The demo drives both services as processes, as an installer runs them: it imports
neither, only the contract they share (keys, topics, the telemetry batch it measures on
the wire).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO, cast

import aiomqtt

from firmware_agent.contract.errors import CodecError
from firmware_agent.contract.mqtt import TlsConfig
from firmware_agent.contract.outcomes import Outcome, is_delivery
from firmware_agent.contract.telemetry import decode_batch
from firmware_agent.contract.topics import STREAM_ROOT, status_topic, uplink_topic
from simulator.broker import free_port
from simulator.errors import SimulatorError
from simulator.fleet_broker import (
    FLEET_SERVICES_ACL,
    BrokerTls,
    FleetPorts,
    build_share_guard,
    fleet_mosquitto,
)
from simulator.scenario import ScenarioConfig, generate
from simulator.scenario_dir import write_scenario_dir

DEVICE_ID = "van-0001"
INGEST = "ingest"
# The demo's observer: the normalized stream as a backend team reads it, and (for the
# summary) the van's status and the telemetry it put on the wire. Its rights, on the
# services' listener: the production roles' (fleet-services.acl) and this block.
MONITOR = "demo-monitor"
MONITOR_ACL = f"""
# -- the demo's monitor (simulator/demo.py): reads only.
user {MONITOR}
topic read fleetstream/v1/#
topic read fleet/v1/+/status
topic read fleet/v1/+/telemetry
"""
BIN = Path(sys.executable).parent
# "fleet-agent run: 3602 fixes, 31 scans; committed telemetry=310 events=52 pod=17"
_COMMITTED = re.compile(r"committed telemetry=(\d+) events=(\d+) pod=(\d+)")
_ROWS = re.compile(r'^fleet_ingest_rows\{table="(\w+)"\} ([0-9.e+]+)$', re.MULTILINE)
_PODS = re.compile(r'^fleet_ingest_pods\{chain_status="(\w+)"\} ([0-9.e+]+)$', re.MULTILINE)


class DemoError(SimulatorError, RuntimeError):
    """A service of the demo failed; the message says which and where its log is."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoConfig:
    seed: int = 7
    stops: int = 12
    speed: float = 60.0
    work_dir: Path | None = None
    timeout_s: float = 900.0


@dataclass
class Backend:
    """What a backend team sees on the broker: the stream, the van's status, and (for
    the summary) the telemetry the van put on the wire."""

    out: TextIO
    kinds: Counter[str] = field(default_factory=Counter)
    status_health: dict[str, Any] = field(default_factory=dict)
    telemetry_bytes: int = 0
    telemetry_fixes: int = 0
    telemetry_batches: int = 0
    # The stream's PODs: (device, chain seq) -> (parcel, outcome); a POD said again
    # when its chain links is one POD.
    pods: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)

    async def watch(self, port: int, tls: TlsConfig, ready: asyncio.Event) -> None:
        context = await asyncio.to_thread(tls.context)
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=MONITOR, tls_context=context
        ) as client:
            for kind in ("event", "pod"):
                await client.subscribe(f"{STREAM_ROOT}/+/{kind}", qos=1)
            await client.subscribe(status_topic(DEVICE_ID), qos=1)
            await client.subscribe(uplink_topic(DEVICE_ID, "telemetry"), qos=1)
            ready.set()
            async for message in client.messages:
                if isinstance(message.payload, bytes):
                    self._take(str(message.topic), message.payload)

    def _take(self, topic: str, payload: bytes) -> None:
        leaf = topic.rsplit("/", 1)[-1]
        if leaf == "telemetry":
            try:
                batch = decode_batch(payload)
            except CodecError:
                return
            self.telemetry_bytes += len(payload)
            self.telemetry_fixes += len(batch.points)
            self.telemetry_batches += 1
            return
        doc = json.loads(payload)
        if leaf == "status":
            self.status_health = doc.get("health") or self.status_health
            return
        for m in doc["records"]:
            self.kinds[m.get("type", "pod")] += 1
            if leaf == "pod":
                self.pods[m["device_id"], m["pod_seq"]] = (m["parcel"], m["outcome"])
            self.out.write(_stream_line(m))
        self.out.flush()


def _stream_line(m: dict[str, Any]) -> str:
    kind = m.get("type", "pod")
    where = m.get("stop_id") or ""
    if kind == "pod":
        detail = f"parcel {m['parcel']} {m['outcome']}, {m['verdict']}, signature verified"
    elif kind == "eta":
        detail = f"at {m['eta'][11:19]} (naive {m['eta_baseline'][11:19]}), {m['trigger']}"
    elif kind == "late_risk":
        detail = f"late by {m['late_by_s']:.0f} s (window ends {m['window_end'][11:19]})"
    elif kind == "scan_rejected":
        detail = f"scan rejected: {m.get('reason')}"
    else:
        detail = ", ".join(f"{k}={m[k]}" for k in ("visit", "kind", "by_s", "distance_m") if k in m)
    return f"  {m.get('time', '')[11:19]}  {kind:<14} {where:<6} {detail}\n"


def _truth(path: Path) -> dict[str, datetime]:
    data = json.loads(path.read_text())
    stops = data["stops"] if isinstance(data, dict) else data
    return {s["id"]: datetime.fromisoformat(s["arrival"]) for s in stops}


def _attempt_truth(path: Path) -> dict[str, str]:
    """Parcel -> the outcome the simulator's driver gave its attempt (scans.jsonl)."""
    truth: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        t = json.loads(line)["truth"]
        if t["kind"] == "ok":
            truth[t["parcel"]] = t["outcome"]
    return truth


def first_attempts(pods: dict[tuple[str, int], tuple[str, str]]) -> dict[str, str]:
    """Parcel -> the outcome of its first attempt, from the stream's PODs."""
    first: dict[str, str] = {}
    for _, (parcel, outcome) in sorted(pods.items()):
        first.setdefault(parcel, outcome)
    return first


def _share(outcomes: dict[str, str]) -> tuple[int, int]:
    return sum(is_delivery(cast(Outcome, o)) for o in outcomes.values()), len(outcomes)


def _route_id(manifest: Path) -> str:
    route_id: str = json.loads(manifest.read_text())["route_id"]
    return route_id


async def _run(argv: list[str], log: Path, what: str, *, log_stdout: bool = True) -> str:
    """Run a command to its end; its stderr (and stdout, unless it is a secret) go to
    ``log``, stdout is returned. :class:`DemoError` if it fails."""
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=err
        )
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    if log_stdout:
        with log.open("a") as f:
            f.write(text)
    if proc.returncode != 0:
        raise DemoError(f"{what} failed (exit {proc.returncode}):\n{_tail(log)}")
    return text


def _tail(log: Path, lines: int = 20) -> str:
    """The end of a service's log, for an error message (the log may be in a temporary
    directory that is gone once the demo stops)."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _get(url: str, token: str | None = None) -> str:
    request = urllib.request.Request(url)  # noqa: S310 (our own localhost)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
        body: bytes = response.read()
    return body.decode()


async def _until_healthy(url: str, service: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        if service.returncode is not None:
            raise DemoError(f"fleet-ingest serve exited ({service.returncode}):\n{_tail(log)}")
        with contextlib.suppress(OSError):
            if json.loads(await asyncio.to_thread(_get, url + "/health"))["status"] == "ok":
                return
        await asyncio.sleep(0.2)
    raise DemoError(f"fleet-ingest serve did not become healthy in 60 s:\n{_tail(log)}")


async def run_demo(config: DemoConfig, out: TextIO) -> dict[str, Any]:
    """Run the day; returns the summary figures (also printed to ``out``)."""
    with contextlib.ExitStack() as stack:
        work = config.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        day = work / "day"
        scenario = generate(ScenarioConfig(seed=config.seed, n_stops=config.stops, talker="GN"))
        summary = write_scenario_dir(scenario, day, device_id=DEVICE_ID)
        out.write(f"day: {summary.line()}\n")
        van = work / "van"
        van.mkdir(parents=True, exist_ok=True)
        (van / "manifest.json").write_bytes((day / "manifest.json").read_bytes())
        # The package's settings file, before provisioning fills in who and where.
        (van / "agent.toml").write_text(f"state_dir = '{van}'\n", encoding="utf-8")
        tls = await _fleet_ca(work)
        broker_pid, ports = await _start_broker(stack, work, tls)
        out.write(
            f"broker: mosquitto with docs/mosquitto/'s configuration, mutual TLS with the "
            f"fleet CA's certificates: vans on 127.0.0.1:{ports.vans}, services on "
            f"127.0.0.1:{ports.services}\n"
        )
        http_port = free_port()
        ingest_toml = work / "ingest.toml"
        pki = work / "pki"
        ingest_toml.write_text(
            f'[database]\nurl = "sqlite:///{work / "ingest.db"}"\n'
            f'[mqtt]\nport = {ports.services}\nclient_id = "demo-ingest"\n'
            f'tls_ca = "{work / "ca" / "ca.pem"}"\ntls_cert = "{pki / f"{INGEST}.pem"}"\n'
            f'tls_key = "{pki / f"{INGEST}.key"}"\n'
            f"[http]\nport = {http_port}\n"
            f'[ca]\ndir = "{work / "ca"}"\nbroker_host = "127.0.0.1"\n'
            f'broker_port = {ports.vans}\nreload_command = "kill -HUP {broker_pid}"\n',
            encoding="utf-8",
        )
        ingest = [str(BIN / "fleet-ingest")]
        enrollment = await _run(
            [*ingest, "enroll-token", "--device", DEVICE_ID, "--expires", "1h",
             "--config", str(ingest_toml)],
            work / "ingest.log",
            "fleet-ingest enroll-token",
            log_stdout=False,
        )  # fmt: skip
        enroll_token = enrollment.split()[1]
        # What an operator does for a dashboard: a token that may only read.
        made = await _run(
            [*ingest, "token", "create", "--scope", "read", "--name", "demo summary",
             "--expires", "1d", "--config", str(ingest_toml)],
            work / "ingest.log",
            "fleet-ingest token create",
            log_stdout=False,
        )  # fmt: skip
        return await _serve_and_drive(
            config, work, ports, http_port, summary, out, (made.strip(), enroll_token)
        )


async def _fleet_ca(work: Path) -> BrokerTls:
    """The fleet CA in ``work/ca`` and the services' certificates in ``work/pki``, made
    with ``fleet-ingest ca`` as an operator makes them; the broker's files."""
    pki, log = work / "pki", work / "ingest.log"
    ca = [str(BIN / "fleet-ingest"), "ca"]
    await _run([*ca, "init", "--ca-dir", str(work / "ca"), "--name", "fleet demo CA"], log,
               "fleet-ingest ca init")  # fmt: skip
    for service, extra in (
        ("broker", ["--ip", "127.0.0.1"]),
        ("ingest", []),
        ("backend", ["--name", MONITOR]),
    ):
        argv = [*ca, "issue", "--ca-dir", str(work / "ca"), "--service", service, *extra,
                "--out-dir", str(pki)]  # fmt: skip
        await _run(argv, log, f"fleet-ingest ca issue --service {service}")
    return BrokerTls(
        ca=work / "ca" / "ca.pem",
        cert=pki / "127.0.0.1.pem",
        key=pki / "127.0.0.1.key",
        crl=work / "ca" / "crl.pem",
    )


async def _start_broker(
    stack: contextlib.ExitStack, work: Path, tls: BrokerTls
) -> tuple[int, FleetPorts]:
    """The fleet's broker (:func:`fleet_mosquitto`) in ``work/broker`` with ``tls``;
    stopped when ``stack`` closes. Its pid (SIGHUP re-reads the CRL) and ports."""
    guard = await asyncio.to_thread(build_share_guard, work / "broker")
    services_acl = work / "fleet-services.acl"
    services_acl.write_text(
        FLEET_SERVICES_ACL.read_text(encoding="utf-8") + MONITOR_ACL, encoding="utf-8"
    )
    ports = FleetPorts.free()
    broker = fleet_mosquitto(
        work / "broker", tls, guard=guard, ports=ports, services_acl=services_acl
    )
    await asyncio.to_thread(broker.start)
    stack.callback(broker.stop)
    assert broker.process is not None
    return broker.process.pid, ports


async def _serve_and_drive(  # noqa: PLR0917 (private: the demo's steps in order)
    config: DemoConfig,
    work: Path,
    ports: FleetPorts,
    http_port: int,
    summary: Any,
    out: TextIO,
    tokens: tuple[str, str],
) -> dict[str, Any]:
    token, enroll_token = tokens
    api = f"http://127.0.0.1:{http_port}"
    ingest_log = work / "ingest.log"
    with ingest_log.open("ab") as log:
        service = await asyncio.create_subprocess_exec(
            str(BIN / "fleet-ingest"), "serve", "--config", str(work / "ingest.toml"),
            stdout=log, stderr=log,
        )  # fmt: skip
    backend = Backend(out)
    ready = asyncio.Event()
    pki = work / "pki"
    monitor = TlsConfig(
        ca_file=work / "ca" / "ca.pem",
        cert_file=pki / f"{MONITOR}.pem",
        key_file=pki / f"{MONITOR}.key",
    )
    watcher = asyncio.create_task(
        backend.watch(ports.services, monitor, ready), name="demo-backend"
    )
    try:
        await _until_healthy(api, service, ingest_log)
        async with asyncio.timeout(10):
            await ready.wait()
        out.write(f"ingest: fleet-ingest serve on SQLite, API on {api}\n")
        agent_log = work / "agent.log"
        day = work / "day"
        settings = work / "van" / "agent.toml"
        provisioned = await _run(
            [str(BIN / "fleet-agent"), "provision", "--enroll", api, "--token", enroll_token,
             "--config", str(settings), "--no-receiver"],
            agent_log,
            "fleet-agent provision",
        )  # fmt: skip
        out.write(f"van: fleet-agent provision: {provisioned.splitlines()[0]}\n")
        pace = (
            f"at {config.speed:g}x ({summary.duration_s / 60 / config.speed:.1f} min)"
            if config.speed > 0
            else "as fast as it can"
        )
        out.write(
            f"agent: {DEVICE_ID} plays the day {pace}; the backend's stream as ingest stores it:\n"
        )
        async with asyncio.timeout(config.timeout_s):
            await _run(
                [str(BIN / "fleet-agent"), "run", "--config", str(settings),
                 "--nmea-file", str(day / "nmea.log"), "--scans-file", str(day / "scans.jsonl"),
                 "--speed", str(config.speed), "--exit-when-drained"],
                agent_log,
                "fleet-agent run",
            )  # fmt: skip
        await asyncio.sleep(0.5)  # the last republished lines
        return await _summary(api, token, backend, day, agent_log, out)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        if service.returncode is None:
            service.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(20):
                    await service.wait()
            except TimeoutError:
                service.kill()
                await service.wait()


async def _summary(  # noqa: PLR0917 (private: the demo's figures)
    api: str, token: str, backend: Backend, day: Path, agent_log: Path, out: TextIO
) -> dict[str, Any]:
    found = _COMMITTED.search(await asyncio.to_thread(agent_log.read_text, errors="replace"))
    if found is None:
        raise DemoError(f"the agent's summary line is missing:\n{_tail(agent_log)}")
    committed = dict(zip(("telemetry", "events", "pod"), map(int, found.groups()), strict=True))
    metrics = await asyncio.to_thread(_get, api + "/metrics", token)
    rows = {table: int(float(n)) for table, n in _ROWS.findall(metrics)}
    pods = {status: int(float(n)) for status, n in _PODS.findall(metrics)}
    stored = {"telemetry": rows["positions"], "events": rows["stop_events"], "pod": rows["pods"]}
    gaps = json.loads(await asyncio.to_thread(_get, f"{api}/v1/devices/{DEVICE_ID}/gaps", token))
    acks: dict[str, int] = gaps["acks"]
    truth = await asyncio.to_thread(_truth, day / "stops.json")
    route_id = await asyncio.to_thread(_route_id, day / "manifest.json")
    arrived = json.loads(
        await asyncio.to_thread(_get, f"{api}/v1/routes/{route_id}/arrivals", token)
    )
    arrivals = {a["stop_id"]: datetime.fromisoformat(a["time"]) for a in arrived}
    errors_s = [(arrivals[s] - t).total_seconds() for s, t in truth.items() if s in arrivals]
    attempts = await asyncio.to_thread(_attempt_truth, day / "scans.jsonl")
    succeeded, attempted = _share(first_attempts(backend.pods))
    true_succeeded, true_attempted = _share(attempts)
    bytes_per_fix = (
        backend.telemetry_bytes / backend.telemetry_fixes if backend.telemetry_fixes else 0.0
    )
    out.write("\nsummary\n")
    out.write(f"  {'stream':<10} {'committed':>9} {'stored':>7} {'acked seq':>9}\n")
    for stream in ("telemetry", "events", "pod"):
        out.write(f"  {stream:<10} {committed[stream]:>9} {stored[stream]:>7} {acks[stream]:>9}\n")
    median_s = sorted(errors_s)[len(errors_s) // 2] if errors_s else float("nan")
    out.write(
        f"  arrivals: {len(arrivals)} of {len(truth)} stops detected, "
        f"median error {median_s:+.1f} s (detected - true)\n"
        f"  PODs: {rows['pods']} stored, chain pending {pods.get('pending', 0)}, "
        f"broken {pods.get('broken', 0)}; quarantined messages: {rows['quarantine']}\n"
        f"  first-attempt success: {succeeded} of {attempted} parcels "
        f"({100 * succeeded / max(attempted, 1):.1f} %); simulator's truth: "
        f"{true_succeeded} of {true_attempted} "
        f"({100 * true_succeeded / max(true_attempted, 1):.1f} %)\n"
        f"  telemetry on the wire: {bytes_per_fix:.1f} bytes per fix "
        f"({backend.telemetry_fixes} fixes in {backend.telemetry_batches} batches)\n"
    )
    health = backend.status_health
    if health.get("eta_model") not in (None, "off"):
        out.write(
            f"  ETAs: {health.get('eta_model')} on {health.get('eta_backend')}: "
            f"{backend.kinds['eta']} eta and {backend.kinds['late_risk']} late_risk events\n"
        )
    ok = committed == stored and all(acks[s] == committed[s] for s in committed)
    out.write(f"  {'OK: every record stored exactly once' if ok else 'MISMATCH'}\n")
    return {
        "committed": committed,
        "stored": stored,
        "acks": acks,
        "arrivals": len(arrivals),
        "stops": len(truth),
        "quarantined": rows["quarantine"],
        "first_attempt_success": (succeeded, attempted),
        "first_attempt_success_truth": (true_succeeded, true_attempted),
        "bytes_per_fix": bytes_per_fix,
        "ok": ok,
    }
