"""The day's manifest: the route, its ordered stops, their geofences and parcels.

The JSON contract is documented in ``docs/manifest.schema.json`` (JSON Schema 2020-12);
the names below are the stable contract, and extra keys are allowed and preserved.

:func:`parse_manifest` validates a decoded JSON document into a :class:`Manifest` and
raises :class:`ManifestError` naming the first offending field (``stops[3].radius_m:
...``). Validation is written out here rather than with a schema library because the
van's base install stays small and because the checks go beyond a schema: unique ids,
finite coordinates, windows that end after they start, polygons that close.
The van keeps the current one on disk (:mod:`firmware_agent.manifest_store`).

On the wire (the retained ``manifest`` topic) a manifest is its JSON, or that JSON
gzip-compressed (RFC 1952; recognised by its first two bytes, 1f 8b, which no JSON
text starts with): :func:`loads_manifest` takes either, and inflates at most
:data:`MAX_MANIFEST_BYTES`. A payload is at most :data:`MAX_MANIFEST_PAYLOAD_BYTES`,
within the shipped broker's ``message_size_limit``; :func:`encode_manifest_payload`
makes the payload and checks that limit before anything is sent (``fleet-ingest
publish-manifest``).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from firmware_agent.contract.errors import ContractError
from firmware_agent.contract.outcomes import is_card_code
from firmware_agent.contract.parcels import canonical_code
from firmware_agent.contract.wirejson import finite_number

STOP_TYPES = frozenset({"house", "apartment", "business", "locker", "other"})
MAX_STOPS = 10_000
MAX_PARCELS_PER_STOP = 500
# 500 km of road at a vertex every 10 m. 200,000 until the payload limit below: never
# deliverable (~5 MB of JSON), and the geofence's route index grows with it.
MAX_ROUTE_VERTICES = 50_000
MAX_RADIUS_M = 5_000.0
MAX_MANIFEST_BYTES = 32 * 1024 * 1024
# A manifest payload on the wire, as sent (gzip-compressed or not). The shipped broker
# takes 1 MiB (docs/mosquitto/fleet.conf's message_size_limit), and 1 MB leaves room
# for the topic and properties on a broker that limits whole packets to 1 MiB (EMQX's
# default). Gzip carries the documented maximum, 10,000 stops (1-3 parcels each, 60 %
# with windows) with a 50,000-vertex route, in ~634 KB (3.1 MB of JSON); 2,000 stops
# and a 5,000-vertex route take ~96 KB.
MAX_MANIFEST_PAYLOAD_BYTES = 1_000_000
# Every stop and route vertex lies within this distance of the first stop (of the first
# route vertex without stops), east-west and north-south in the van's local plane: a
# day's work, not a continent. The geofence engine works in an equirectangular plane
# around that point, whose east-west scale is off by ~10 % at this distance at mid
# latitudes, and this bounds what indexing the geometry may cost.
MAX_REACH_M = 500_000.0
_GZIP_MAGIC = b"\x1f\x8b"
_M_PER_DEG = math.pi * 6_371_008.8 / 180.0


class ManifestError(ContractError, ValueError):
    """A manifest is malformed; ``where`` names the offending field."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}" if where else problem)
        self.where = where
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Stop:
    """One planned stop. ``radius_m`` is set even for a polygon (its bounding circle)."""

    id: str
    index: int
    lat: float
    lon: float
    radius_m: float
    type: str
    parcels: tuple[str, ...]
    polygon: tuple[tuple[float, float], ...] | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True, slots=True)
class Manifest:
    """A validated manifest. ``raw`` is the document as received, for storage."""

    route_id: str
    device_id: str
    date: date
    stops: tuple[Stop, ...]
    route: tuple[tuple[float, float], ...] | None  # (lat, lon) vertices
    raw: Mapping[str, Any] = field(compare=False, repr=False)

    def stop(self, stop_id: str) -> Stop | None:
        for stop in self.stops:
            if stop.id == stop_id:
                return stop
        return None

    def parcel_index(self) -> dict[str, Stop]:
        """Canonical parcel code -> the stop it belongs to."""
        return {code: stop for stop in self.stops for code in stop.parcels}


def _str(obj: Mapping[str, Any], key: str, where: str, *, max_len: int = 200) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}{key}", "must be a non-empty string")
    if len(value) > max_len:
        raise ManifestError(f"{where}{key}", f"longer than {max_len} characters")
    return value


def _number(value: Any, where: str, lo: float, hi: float) -> float:
    # bool is an int subclass; true/false is never a coordinate.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ManifestError(where, "must be a number")
    if not finite_number(value):
        raise ManifestError(where, f"must be within [{lo:g}, {hi:g}], got a non-finite number")
    number = float(value)
    if not lo <= number <= hi:
        raise ManifestError(where, f"must be within [{lo:g}, {hi:g}], got {value!r}")
    return number


def _utc(value: Any, where: str) -> datetime:
    if not isinstance(value, str):
        raise ManifestError(where, "must be an ISO 8601 UTC timestamp string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as err:
        raise ManifestError(where, f"not an ISO 8601 timestamp: {value!r}") from err
    if parsed.tzinfo is None or parsed.utcoffset() != UTC.utcoffset(None):
        raise ManifestError(where, f"must be UTC (Z or +00:00): {value!r}")
    return parsed.astimezone(UTC)


def _polygon(value: Any, where: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(value, list) or not 3 <= len(value) <= 1000:
        raise ManifestError(where, "must be a list of 3 to 1000 [lat, lon] vertices")
    vertices = []
    for i, vertex in enumerate(value):
        if not isinstance(vertex, list) or len(vertex) != 2:
            raise ManifestError(f"{where}[{i}]", "must be [lat, lon]")
        vertices.append(
            (
                _number(vertex[0], f"{where}[{i}][0]", -90, 90),
                _number(vertex[1], f"{where}[{i}][1]", -180, 180),
            )
        )
    if vertices[0] == vertices[-1]:
        vertices.pop()  # a closed ring repeats its first vertex; we store it open
    if len(set(vertices)) < 3:
        raise ManifestError(where, "needs at least 3 distinct vertices")
    return tuple(vertices)


def _bounding_radius_m(lat: float, lon: float, polygon: Sequence[tuple[float, float]]) -> float:
    cos_lat = math.cos(math.radians(lat))
    return max(
        math.hypot((vlat - lat) * _M_PER_DEG, (vlon - lon) * _M_PER_DEG * cos_lat)
        for vlat, vlon in polygon
    )


def _check_reach(stops: Sequence[Stop], route: Sequence[tuple[float, float]] | None) -> None:
    """:class:`ManifestError` for the first stop or route vertex farther than
    :data:`MAX_REACH_M` from the origin of the van's plane (the first stop, else the
    first route vertex), east-west or north-south, as the plane measures it."""
    if stops:
        lat0, lon0 = stops[0].lat, stops[0].lon
    elif route:
        lat0, lon0 = route[0]
    else:
        return
    kx = _M_PER_DEG * math.cos(math.radians(lat0))
    points = [(f"stops[{s.index}]", s.lat, s.lon) for s in stops]
    points += [(f"route.coordinates[{i}]", lat, lon) for i, (lat, lon) in enumerate(route or ())]
    for where, lat, lon in points:
        reach_m = max(abs(lat - lat0) * _M_PER_DEG, abs(lon - lon0) * kx)
        if reach_m > MAX_REACH_M:
            raise ManifestError(
                where,
                f"is {reach_m / 1000:,.0f} km from the first point of the day; every stop "
                f"and route vertex must lie within {MAX_REACH_M / 1000:,.0f} km of it",
            )


def _stop(raw: Any, index: int) -> Stop:
    where = f"stops[{index}]."
    if not isinstance(raw, dict):
        raise ManifestError(f"stops[{index}]", "must be an object")
    stop_id = _str(raw, "id", where, max_len=100)
    lat = _number(raw.get("lat"), f"{where}lat", -90, 90)
    lon = _number(raw.get("lon"), f"{where}lon", -180, 180)
    polygon = _polygon(raw["polygon"], f"{where}polygon") if "polygon" in raw else None
    if "radius_m" in raw:
        radius_m = _number(raw["radius_m"], f"{where}radius_m", 1.0, MAX_RADIUS_M)
    elif polygon is not None:
        radius_m = _bounding_radius_m(lat, lon, polygon)
        if radius_m > MAX_RADIUS_M:
            raise ManifestError(f"{where}polygon", f"spans more than {MAX_RADIUS_M:g} m")
    else:
        raise ManifestError(f"{where}radius_m", "required unless a polygon is given")
    stop_type = raw.get("type")
    if not isinstance(stop_type, str):
        raise ManifestError(f"{where}type", f"must be one of {sorted(STOP_TYPES)}")
    if stop_type not in STOP_TYPES:
        stop_type = "other"  # a new kind of place is not a reason to refuse the day
    parcels = raw.get("parcels")
    if not isinstance(parcels, list) or len(parcels) > MAX_PARCELS_PER_STOP:
        raise ManifestError(f"{where}parcels", f"must be a list of <= {MAX_PARCELS_PER_STOP}")
    codes = []
    for i, parcel in enumerate(parcels):
        if not isinstance(parcel, str) or not parcel.strip() or len(parcel) > 100:
            raise ManifestError(f"{where}parcels[{i}]", "must be a non-empty code string")
        code = canonical_code(parcel)
        if is_card_code(code):
            raise ManifestError(
                f"{where}parcels[{i}]",
                f"{code[:40]!r} is a reason card's code, never a parcel's",
            )
        codes.append(code)
    has_start, has_end = "window_start" in raw, "window_end" in raw
    window_start = window_end = None
    if has_start != has_end:
        raise ManifestError(f"{where}window_start", "window_start and window_end go together")
    if has_start:
        window_start = _utc(raw["window_start"], f"{where}window_start")
        window_end = _utc(raw["window_end"], f"{where}window_end")
        if window_end <= window_start:
            raise ManifestError(f"{where}window_end", "must be after window_start")
    known = {"id", "lat", "lon", "radius_m", "polygon", "type", "parcels"}
    known |= {"window_start", "window_end"}
    return Stop(
        id=stop_id,
        index=index,
        lat=lat,
        lon=lon,
        radius_m=radius_m,
        type=stop_type,
        parcels=tuple(codes),
        polygon=polygon,
        window_start=window_start,
        window_end=window_end,
        extra={k: v for k, v in raw.items() if k not in known},
    )


def _route(raw: Any) -> tuple[tuple[float, float], ...]:
    if not isinstance(raw, dict) or raw.get("type") != "LineString":
        raise ManifestError("route", 'must be a GeoJSON {"type": "LineString", ...}')
    coords = raw.get("coordinates")
    if not isinstance(coords, list) or not 2 <= len(coords) <= MAX_ROUTE_VERTICES:
        raise ManifestError("route.coordinates", f"must hold 2 to {MAX_ROUTE_VERTICES} points")
    vertices = []
    for i, point in enumerate(coords):
        # GeoJSON positions are [lon, lat(, alt)].
        if not isinstance(point, list) or not 2 <= len(point) <= 3:
            raise ManifestError(f"route.coordinates[{i}]", "must be [lon, lat]")
        lon = _number(point[0], f"route.coordinates[{i}][0]", -180, 180)
        lat = _number(point[1], f"route.coordinates[{i}][1]", -90, 90)
        vertices.append((lat, lon))
    return tuple(vertices)


def parse_manifest(doc: Any) -> Manifest:
    """Validate a decoded manifest document; :class:`ManifestError` names what is wrong."""
    if not isinstance(doc, dict):
        raise ManifestError("", "a manifest must be a JSON object")
    route_id = _str(doc, "route_id", "")
    device_id = _str(doc, "device_id", "", max_len=100)
    raw_date = _str(doc, "date", "", max_len=10)
    try:
        day = date.fromisoformat(raw_date)
    except ValueError as err:
        raise ManifestError("date", f"not an ISO date (YYYY-MM-DD): {raw_date!r}") from err
    raw_stops = doc.get("stops")
    if not isinstance(raw_stops, list) or len(raw_stops) > MAX_STOPS:
        raise ManifestError("stops", f"must be a list of at most {MAX_STOPS} stops")
    stops = tuple(_stop(raw, i) for i, raw in enumerate(raw_stops))
    seen_ids: set[str] = set()
    seen_parcels: dict[str, str] = {}
    for stop in stops:
        if stop.id in seen_ids:
            raise ManifestError(f"stops[{stop.index}].id", f"duplicate stop id {stop.id!r}")
        seen_ids.add(stop.id)
        for code in stop.parcels:
            if code in seen_parcels:
                raise ManifestError(
                    f"stops[{stop.index}].parcels",
                    f"parcel {code!r} is also on stop {seen_parcels[code]!r}",
                )
            seen_parcels[code] = stop.id
    route = _route(doc["route"]) if doc.get("route") is not None else None
    _check_reach(stops, route)
    return Manifest(
        route_id=route_id, device_id=device_id, date=day, stops=stops, route=route, raw=doc
    )


def inflate_manifest(data: bytes) -> bytes:
    """A manifest payload's JSON bytes: ``data`` itself, or ``data`` gunzipped if it is
    gzip (starts 1f 8b). Inflates at most :data:`MAX_MANIFEST_BYTES`, so a small
    payload that would inflate to gigabytes is refused after that many, not held."""
    if not data.startswith(_GZIP_MAGIC):
        return data
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing only
    try:
        out = inflater.decompress(data, MAX_MANIFEST_BYTES + 1)
    except zlib.error as err:
        raise ManifestError("", f"not valid gzip: {err}") from err
    if len(out) > MAX_MANIFEST_BYTES:
        raise ManifestError("", f"inflates to more than {MAX_MANIFEST_BYTES} bytes")
    if not inflater.eof:
        raise ManifestError("", "not valid gzip: truncated")
    if inflater.unused_data:
        raise ManifestError("", "not valid gzip: data after the end of the stream")
    return out


def encode_manifest_payload(
    manifest: Manifest, *, compress: bool | None = None, limit: int = MAX_MANIFEST_PAYLOAD_BYTES
) -> bytes:
    """The ``manifest`` topic's payload for a validated manifest: its document as
    compact JSON, gzip-compressed if ``compress`` (``None``: only if the JSON alone is
    over ``limit``, so that an agent older than the gzip form still reads what it can).

    :class:`ManifestError` if the payload is over ``limit`` (the broker would refuse it
    and cut the publisher off), naming both sizes.
    """
    text = json.dumps(manifest.raw, ensure_ascii=False, separators=(",", ":"))
    payload = text.encode("utf-8")
    plain_bytes = len(payload)
    compressed = bool(compress or (compress is None and plain_bytes > limit))
    if compressed:
        payload = gzip_payload(payload)
    if len(payload) > limit:
        size = (
            f"{len(payload):,} bytes gzipped ({plain_bytes:,} as JSON)"
            if compressed
            else f"{plain_bytes:,} bytes of JSON"
        )
        raise ManifestError(
            "",
            f"the payload is {size}, over the {limit:,}-byte limit of a manifest payload "
            f"({len(manifest.stops):,} stops, "
            f"{len(manifest.route) if manifest.route else 0:,} route vertices): "
            "send fewer stops or a simpler route",
        )
    return payload


def gzip_payload(data: bytes) -> bytes:
    """``data`` gzip-compressed, reproducibly (no time, no file name in the header)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return deflater.compress(data) + deflater.flush()


def decode_manifest(data: bytes | str) -> Any:
    """The JSON document of a manifest (bytes from MQTT or a file, or text; bytes may
    be its gzip form, :func:`inflate_manifest`), not yet validated."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError("", f"larger than {MAX_MANIFEST_BYTES} bytes")
    if isinstance(data, bytes):
        data = inflate_manifest(data)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise ManifestError("", f"not valid JSON: {err}") from err


def loads_manifest(data: bytes | str) -> Manifest:
    """Decode and validate a manifest: JSON, or its gzip form (:func:`decode_manifest`)."""
    return parse_manifest(decode_manifest(data))


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file; :class:`ManifestError` also for I/O errors."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ManifestError(str(path), f"cannot read: {err.strerror or err}") from err
    return loads_manifest(data)
