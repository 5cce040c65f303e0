"""One fix and one event of each kind, followed field by field from the van to the row.

The real agent plays a short scripted day (NMEA a receiver could send, two scans, a
real .tflite model) through its real outbox and uplink into a private Mosquitto, where
the real ingest worker checks and stores it (SQLite and PostgreSQL) and republishes it
on the fleetstream. The agent is subclassed only to keep what it handled: each fix the
decoder gave its pipeline and each record the pipeline returned. The test then finds
every record again, at every place a backend can read it:

- the stored row, read with the backend's own driver (``raw``) and through the store;
- the ``fleetstream`` record ingest republished;
- the HTTP API (the track for positions, arrivals, the parcel's PODs).

A telemetry point must equal the fix it came from at the contract's resolution (time to
the millisecond, coordinates 1e-7 degree, altitude 0.1 m, speed 1 cm/s, course and HDOP
0.1), with ``mode``, ``quality`` and ``sats_used`` exact; the fields a point does not
carry are named once in :mod:`firmware_agent.contract.records`. The day's receiver
output varies every field from fix to fix (altitude, HDOP, satellites, DGPS or not, 2D
or 3D), so a column swapped or dropped anywhere on the way shows.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from cloud_ingest.api import create_app
from cloud_ingest.store.base import Pod, Position, Store, event_from_json
from cloud_ingest.store.postgres import PostgresStore
from cloud_ingest.store.sqlite import SqliteStore
from firmware_agent.agent import Agent, AgentConfig
from firmware_agent.contract.fix import Fix, FixMode
from firmware_agent.contract.keys import load_or_create_device_key
from firmware_agent.contract.records import (
    EVENT_TYPES,
    EventRecord,
    PodRecord,
    Record,
    TelemetryPoint,
)
from firmware_agent.contract.times import format_utc
from firmware_agent.feedback import LogFeedback, Signal
from firmware_agent.scan.types import Scan
from firmware_agent.sources import Clock, FixSource
from firmware_agent.uplink.mqtt import UplinkConfig
from tests.apiauth import bearer
from tests.broker import Mosquitto
from tests.nmea import line
from tests.pg import fresh_database
from tests.test_eta_tracker import tiny_model
from tests.uplinkday import Watcher, raw_public_key, run_day
from tests.vanday import T0, latlon, route_line

DEVICE = "van-path"
SSCC = "106141412345678908"  # GS1's own example SSCC
# The day starts at a quarter past a whole second: a time cut to the second shows.
START = T0 + timedelta(milliseconds=250)


# -- the day ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Leg:
    """``seconds`` at ``speed_mps`` along ``course_deg`` (0 north, 90 east)."""

    seconds: int
    speed_mps: float
    course_deg: float = 90.0


# Drive east to S1 and stand there (arrival, late for its window, a POD and a rejected
# scan); drive on and stand 200 s by the road (halt, halt end); leave the route 150 m
# north for a minute (deviation, its end), by S1b without stopping (stop_passed); S2,
# never reached, is due in ten minutes: the model's ETAs put it past its window (eta,
# late_risk).
LEGS = (
    Leg(40, 10.0),
    Leg(30, 0.0),
    Leg(25, 10.0),
    Leg(200, 0.0),
    Leg(15, 10.0, 0.0),
    Leg(60, 10.0),
    Leg(15, 10.0, 180.0),
    Leg(30, 10.0),
)


def _path() -> Iterator[tuple[float, float, float, float]]:
    """(x, y, speed_mps, course_deg) each second of the day, metres from ORIGIN."""
    x, y = -400.0, 0.0
    for leg in LEGS:
        for _ in range(leg.seconds):
            yield x, y, leg.speed_mps, leg.course_deg
            x += leg.speed_mps * math.sin(math.radians(leg.course_deg))
            y += leg.speed_mps * math.cos(math.radians(leg.course_deg))


def _nmea_angle(value: float, width: int, hemis: str) -> str:
    degrees = int(abs(value))
    minutes = (abs(value) - degrees) * 60.0
    return f"{degrees:0{width}d}{minutes:09.6f},{hemis[0] if value >= 0 else hemis[1]}"


def day_nmea() -> bytes:
    """RMC, GGA and GSA each second; every field a fix has varies over the day."""
    out = []
    for i, (x, y, speed, course) in enumerate(_path()):
        t = START + timedelta(seconds=i)
        hms = t.strftime("%H%M%S.") + f"{t.microsecond // 10000:02d}"
        lat, lon = latlon(x, y)
        where = f"{_nmea_angle(lat, 2, 'NS')},{_nmea_angle(lon, 3, 'EW')}"
        sats = 5 + i % 7
        quality = 2 if i % 5 == 0 else 1
        hdop = 0.7 + (i % 13) / 10
        alt_m = 512.3 + 0.7 * (i % 11)
        mode = 2 if i % 9 == 4 else 3
        knots = speed / 0.514444
        faa = "D" if quality == 2 else "A"
        date = t.strftime("%d%m%y")
        prns = ",".join(f"{p:02d}" for p in range(1, sats + 1)) + "," * (12 - sats)
        out += [
            line(f"GPRMC,{hms},A,{where},{knots:.3f},{course:.1f},{date},,,{faa}"),
            line(f"GPGGA,{hms},{where},{quality},{sats:02d},{hdop:.1f},{alt_m:.1f},M,47.0,M,,"),
            line(f"GPGSA,A,{mode},{prns},{hdop + 0.6:.1f},{hdop:.1f},1.1"),
        ]
    return b"".join(out)


def day_manifest() -> dict[str, Any]:
    def stop(stop_id: str, x: float, **extra: Any) -> dict[str, Any]:
        lat, lon = latlon(x)
        return {"id": stop_id, "lat": lat, "lon": lon, "radius_m": 35, "type": "house", **extra}

    return {
        "route_id": "R-path",
        "device_id": DEVICE,
        "date": START.date().isoformat(),
        "route": route_line([-1000.0, 0.0, 4000.0]),
        "stops": [
            stop(
                "S1",
                0.0,
                parcels=[SSCC],
                window_start=format_utc(START - timedelta(hours=1)),
                window_end=format_utc(START - timedelta(minutes=30)),
            ),
            # On the detour, 150 m north of the route: driven past at 10 m/s.
            {**stop("S1b", 400.0, parcels=[]), "lat": latlon(400.0, 150.0)[0]},
            stop(
                "S2",
                3500.0,
                parcels=[],
                window_start=format_utc(START),
                window_end=format_utc(START + timedelta(minutes=10)),
            ),
        ],
    }


def day_scans() -> str:
    at_s1 = START + timedelta(seconds=55)
    scans = [(at_s1, "]C100" + SSCC), (at_s1 + timedelta(seconds=3), "not a parcel \x07")]
    return "".join(
        json.dumps({"time": format_utc(t), "raw": raw, "source": "serial"}) + "\n"
        for t, raw in scans
    )


# -- the run ---------------------------------------------------------------------------


@dataclass
class Watched:
    """Each fix the agent's pipeline was given (its fix source, wrapped) and each
    record the pipeline returned (the agent's ``on_records``)."""

    source: FixSource
    fixes: list[Fix] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.source.live

    def describe(self) -> str:
        return f"watched {self.source.describe()}"

    async def readings(self, clock: Clock) -> AsyncIterator[Fix | Scan]:
        async for reading in self.source.readings(clock):
            if isinstance(reading, Fix):
                self.fixes.append(reading)
            yield reading


@dataclass
class DayPath:
    """What one run left at each place: the van's side and ingest's."""

    backend: str
    fixes: list[Fix]
    records: list[Record]
    rows: dict[str, list[dict[str, Any]]]  # table -> rows, read with the driver
    track: list[Position]
    pods: list[Pod]
    stream: dict[str, list[dict[str, Any]]]  # fleetstream leaf -> records
    http_track: list[dict[str, Any]]
    http_arrivals: list[dict[str, Any]]
    http_pods: list[dict[str, Any]]
    seqs: dict[str, list[int]] = field(default_factory=dict)
    signals: list[Signal] = field(default_factory=list)  # the driver feedback played


def _sql_rows(backend: str, where: str, table: str) -> list[dict[str, Any]]:
    """Every row of ``table`` as column -> value, read with the backend's own driver
    (``where``: the SQLite file or the PostgreSQL DSN)."""
    statement = f"SELECT * FROM {table} ORDER BY device_id, seq"
    if backend == "sqlite":
        with sqlite3.connect(where) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(statement)]
    with psycopg.connect(where, row_factory=dict_row) as conn:
        return list(conn.execute(statement.encode()))


def row_time(row: dict[str, Any]) -> datetime:
    """A row's time: SQLite stores UTC microseconds, PostgreSQL a timestamptz."""
    if "time_us" in row:
        return datetime.fromtimestamp(0, UTC) + timedelta(microseconds=row["time_us"])
    value = row["time"]
    assert isinstance(value, datetime)
    return value


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def path(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> DayPath:
    tmp = tmp_path_factory.mktemp(f"path-{request.param}")
    state = tmp / "van"
    state.mkdir()
    (state / "manifest.json").write_text(json.dumps(day_manifest()))
    public_key = raw_public_key(load_or_create_device_key(state / "device.key"))
    (tmp / "day.nmea").write_bytes(day_nmea())
    (tmp / "scans.jsonl").write_text(day_scans())
    (tmp / "eta.tflite").write_bytes(tiny_model(1.5, "path-model"))

    with fresh_database() if request.param == "postgres" else nullcontext("") as dsn:
        where = dsn or str(tmp / "ingest.db")

        def open_store() -> Store:
            return PostgresStore(dsn) if dsn else SqliteStore(where)

        async def main() -> DayPath:
            with Mosquitto(tmp / "broker") as broker:
                config = AgentConfig(
                    state_dir=state,
                    uplink=UplinkConfig(device_id=DEVICE, port=broker.port),
                    nmea_file=tmp / "day.nmea",
                    scans_file=tmp / "scans.jsonl",
                    eta_model=tmp / "eta.tflite",
                    exit_when_drained=True,
                )
                watched = Watched(config.sources()[0])
                feedback = LogFeedback()
                agent = Agent(
                    config, gnss=watched, on_records=watched.records.extend, feedback=feedback
                )
                async with open_store() as store, Watcher(broker.port) as watcher:
                    await store.migrate()
                    await store.register_device(DEVICE, public_key)
                    await run_day(store, config, port=broker.port, agent=agent)
                    await watcher.settle()
                    http = httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=create_app(store)),
                        base_url="http://ingest",
                        headers=await bearer(store, "read"),
                    )
                    async with http:
                        span = {
                            "start": format_utc(START - timedelta(minutes=1)),
                            "end": format_utc(START + timedelta(hours=1)),
                        }
                        track = await http.get(f"/v1/devices/{DEVICE}/track", params=span)
                        arrivals = await http.get(f"/v1/devices/{DEVICE}/arrivals")
                        pods = await http.get(f"/v1/pods/{SSCC}")
                    for response in (track, arrivals, pods):
                        assert response.status_code == 200, response.text
                    rows = {
                        table: await asyncio.to_thread(_sql_rows, request.param, where, table)
                        for table in ("positions", "stop_events", "pods")
                    }
                    return DayPath(
                        backend=request.param,
                        fixes=watched.fixes,
                        records=watched.records,
                        rows=rows,
                        track=await store.track(DEVICE, START, START + timedelta(hours=1)),
                        pods=await store.pods_by_parcel(SSCC),
                        stream={
                            leaf: watcher.fleetstream(leaf, DEVICE)
                            for leaf in ("position", "event", "pod")
                        },
                        http_track=track.json()["positions"],
                        http_arrivals=arrivals.json(),
                        http_pods=pods.json()["pods"],
                        signals=feedback.signals,
                    )

        return asyncio.run(main())


def of_kind(records: Iterable[Record], kind: type[Any]) -> list[Any]:
    return [r for r in records if isinstance(r, kind)]


def by_seq(items: Iterable[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The last item said about each seq (the stream is at least once)."""
    return {int(item["seq"]): item for item in items}


# -- the checks -------------------------------------------------------------------------


def test_the_day_makes_a_record_of_every_kind(path: DayPath) -> None:
    kinds = {type(r) for r in path.records}
    assert kinds >= {TelemetryPoint, PodRecord, *EVENT_TYPES.values()}, (
        f"the scripted day misses {sorted(t.__name__ for t in set(EVENT_TYPES.values()) - kinds)}"
    )
    fixes = [f for f in path.fixes if f.has_position]
    # The day varies what the checks below compare.
    assert {f.mode for f in fixes} == {FixMode.FIX_2D, FixMode.FIX_3D}
    assert {f.quality for f in fixes} == {1, 2}
    assert len({f.sats_used for f in fixes}) == 7
    assert len({f.hdop for f in fixes}) == 13
    assert {f.alt_m is None for f in fixes} >= {False}


def test_the_driver_feedback_plays_each_scans_outcome(path: DayPath) -> None:
    """The parcel of S1 scanned at S1 (a POD), then garbage (unreadable)."""
    assert path.signals == [Signal.RECORDED, Signal.UNREADABLE]


def test_a_point_is_its_fix_at_wire_resolution(path: DayPath) -> None:
    fixes = {f.time: f for f in path.fixes if f.time is not None}
    points = of_kind(path.records, TelemetryPoint)
    assert len(points) > 20
    for point in points:
        fix = fixes[point.time]
        assert fix.lat is not None
        assert fix.lon is not None
        assert point.time == fix.time
        assert point.time.microsecond == 250_000
        assert abs(point.lat - fix.lat) <= 0.5e-7 + 1e-12
        assert abs(point.lon - fix.lon) <= 0.5e-7 + 1e-12
        assert point.mode == fix.mode
        assert point.quality == fix.quality
        assert point.sats_used == fix.sats_used
        for name, step in (("alt_m", 0.1), ("speed_mps", 0.01), ("course_deg", 0.1), ("hdop", 0.1)):
            sent, had = getattr(point, name), getattr(fix, name)
            assert (sent is None) == (had is None), name
            if had is not None:
                assert abs(sent - had) <= step / 2 + 1e-9, (name, sent, had)


def test_every_point_reaches_the_row_the_store_the_stream_and_the_track(path: DayPath) -> None:
    points = of_kind(path.records, TelemetryPoint)
    rows = path.rows["positions"]
    # One row per point, in the van's order: the outbox's telemetry seqs are 1, 2, ...
    assert [r["seq"] for r in rows] == list(range(1, len(points) + 1))
    stored = {p.seq: p for p in path.track}
    stream = by_seq(path.stream["position"])
    http = by_seq(path.http_track)
    assert sorted(stored) == sorted(stream) == sorted(http) == [r["seq"] for r in rows]
    for seq, (point, row) in enumerate(zip(points, rows, strict=True), start=1):
        want = point.to_json()
        # The row's own columns, as the database holds them.
        columns = {k: row[k] for k in want if k != "time"}
        assert columns == {k: v for k, v in want.items() if k != "time"}, (path.backend, seq)
        assert row_time(row) == point.time
        assert row["device_id"] == DEVICE
        # The store's read, the stream's record and the HTTP track: the same point.
        assert stored[seq].point == point
        assert stored[seq].historical == stream[seq]["historical"] == http[seq]["historical"]
        for said in (stream[seq], http[seq]):
            assert {k: said[k] for k in want} == want
            assert said["device_id"] == DEVICE


def test_every_event_reaches_the_row_and_the_stream(path: DayPath) -> None:
    events = of_kind(path.records, EventRecord)
    rows = path.rows["stop_events"]
    assert [r["seq"] for r in rows] == list(range(1, len(events) + 1))
    stream = by_seq(path.stream["event"])
    assert sorted(stream) == [r["seq"] for r in rows]
    for seq, (event, row) in enumerate(zip(events, rows, strict=True), start=1):
        # The stored record decodes to the van's record, and says its own kind.
        assert event_from_json(row["record"]) == event, (path.backend, seq)
        assert row["type"] == event.type
        assert row_time(row) == event.time
        said = stream[seq]
        assert {k: said[k] for k in event.to_json()} == event.to_json()
        assert (said["device_id"], said["seq"]) == (DEVICE, seq)
    arrivals = [e for e in events if e.type == "arrival"]
    assert [a["record"] for a in path.http_arrivals] == [a.to_json() for a in arrivals]


def test_the_pod_reaches_the_row_the_stream_and_the_api(path: DayPath) -> None:
    [record] = of_kind(path.records, PodRecord)
    [row] = path.rows["pods"]
    assert row["jws"] == record.jws
    assert row["pod_seq"] == record.seq
    assert row["parcel"] == record.parcel
    assert row["stop_id"] == record.stop_id
    assert row["verdict"] == record.verdict
    assert row["distance_m"] == record.distance_m
    assert row_time(row) == record.time
    [stored] = path.pods
    assert stored.record == record
    assert stored.chain_status == "ok"
    [said] = by_seq(path.stream["pod"]).values()
    assert said["pod_seq"] == record.seq
    assert said["time"] == format_utc(record.time)
    assert {k: said[k] for k in ("stop_id", "parcel", "verdict", "distance_m", "jws")} == {
        "stop_id": record.stop_id,
        "parcel": record.parcel,
        "verdict": record.verdict,
        "distance_m": record.distance_m,
        "jws": record.jws,
    }
    [api] = path.http_pods
    assert api["verification"]["verified"] is True
    assert (api["pod_seq"], api["jws"], api["distance_m"]) == (
        record.seq,
        record.jws,
        record.distance_m,
    )
    assert datetime.fromisoformat(api["time"]) == record.time
