"""The wire contract between host and device: topic names and message schemas (stdlib only).

Both sides import this module and nothing else formats a topic string. Messages are frozen
dataclasses whose ``from_json`` validates every field, so a malformed payload becomes a
``ProtocolError`` with a one-line reason instead of a crash deep in a handler.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import asdict, dataclass
from typing import Any

PREFIX = "edgekit/v1"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TOPIC_KINDS = (
    "state",
    "desired",
    "chunk/request",
    "chunk/response",
    "telemetry",
    "events",
    "infer/request",
    "infer/response",
    "bench/request",
    "bench/response",
    "generate/request",
    "generate/response",
)
#: What a device reports to the host, at QoS 1 (``edgekit serve`` stores them).
REPORT_KINDS = ("state", "telemetry", "events")


class ProtocolError(ValueError):
    """A message or topic that does not follow the contract."""


def _segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise ProtocolError(f"{what} {value!r} must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return value


#: The wildcard segment: every fleet or every device.
ANY = "+"


def topic(fleet: str, device: str, kind: str) -> str:
    """``edgekit/v1/{fleet}/{device}/{kind}``; wildcards are only built by :func:`subscription`."""
    if kind not in TOPIC_KINDS:
        raise ProtocolError(f"unknown topic kind {kind!r} (known: {', '.join(TOPIC_KINDS)})")
    return f"{PREFIX}/{_segment(fleet, 'fleet')}/{_segment(device, 'device id')}/{kind}"


def _filter_segment(value: str, what: str) -> str:
    return value if value == ANY else _segment(value, what)


def subscription(fleet: str, kind: str | None, *, device: str = ANY, share: str | None = None) -> str:
    """A topic filter: ``kind`` of one device, of a fleet's devices (``device=ANY``) or of every fleet
    (``fleet=ANY``); ``kind=None`` is every kind (``#``). ``share``: an MQTT shared subscription
    (``$share/{share}/…``) whose messages the broker splits among the group's clients."""
    if kind is not None and kind not in TOPIC_KINDS:
        raise ProtocolError(f"unknown topic kind {kind!r}")
    name = f"{PREFIX}/{_filter_segment(fleet, 'fleet')}/{_filter_segment(device, 'device id')}/{kind or '#'}"
    if fleet == ANY and device == ANY and kind is None:
        name = f"{PREFIX}/#"
    return f"$share/{_segment(share, 'shared subscription group')}/{name}" if share else name


def acl_pattern(fleet: str, kind: str) -> str:
    """Mosquitto's ACL pattern for ``kind`` of the connected client's own device id (``%u``: its username)."""
    if kind not in TOPIC_KINDS:
        raise ProtocolError(f"unknown topic kind {kind!r}")
    return f"{PREFIX}/{_segment(fleet, 'fleet')}/%u/{kind}"


def subject_of(name: str) -> str:
    """The NATS subject (or subject filter) an MQTT topic (or filter) maps to in nats-server's MQTT gateway:
    '/' → '.', '+' → '*', '#' → '>'. Exact both ways: no segment holds '+' or '#', and nats-server refuses
    an MQTT topic with a '.' in it, so no message on a NATS cluster has one."""
    return name.replace("/", ".").replace("+", "*").replace("#", ">")


def topic_of(subject: str) -> str:
    """The MQTT topic a NATS subject came from: the inverse of :func:`subject_of` for a concrete subject."""
    return subject.replace(".", "/")


def parse_topic(name: str) -> tuple[str, str, str]:
    """(fleet, device, kind) of a concrete topic, or ProtocolError."""
    prefix = PREFIX + "/"
    if not name.startswith(prefix):
        raise ProtocolError(f"topic {name!r} is not under {PREFIX}")
    parts = name[len(prefix) :].split("/", 2)
    if len(parts) != 3 or parts[2] not in TOPIC_KINDS:
        raise ProtocolError(f"topic {name!r} is not edgekit/v1/<fleet>/<device>/<kind>")
    return _segment(parts[0], "fleet"), _segment(parts[1], "device id"), parts[2]


def _no_constant(name: str) -> Any:
    raise ProtocolError(f"payload is not standard JSON ({name} is not a JSON number)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ProtocolError(f"number {text[:40]} is out of range")
    return value


def _load(payload: bytes | str, *, max_bytes: int = 1 << 20) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise ProtocolError(f"payload of {len(payload)} bytes is over the {max_bytes}-byte limit")
    try:
        data = json.loads(payload, parse_constant=_no_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise ProtocolError("payload is nested too deeply") from None
    if not isinstance(data, dict):
        raise ProtocolError("payload must be a JSON object")
    return data


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in data:
        raise ProtocolError(f"missing field {name!r}")
    value = data[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


_SHA = re.compile(r"[0-9a-f]{64}")


def _only(data: dict[str, Any], fields: set[str]) -> dict[str, Any]:
    unknown = set(data) - fields
    if unknown:
        raise ProtocolError(f"unknown fields {sorted(unknown)}")
    return data


def _sha256(data: dict[str, Any], name: str) -> str:
    value = _field(data, name, str)
    if not _SHA.fullmatch(value):
        raise ProtocolError(f"{name} must be 64 lowercase hex characters")
    return value


@dataclass(frozen=True)
class Desired:
    """Retained on ``desired``: the package a device should run. Idempotent: devices converge on it."""

    name: str
    version: str
    sha256: str
    counter: int
    size: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, payload: bytes | str) -> Desired:
        data = _only(_load(payload), {"name", "version", "sha256", "counter", "size"})
        sha = _sha256(data, "sha256")
        counter, size = _field(data, "counter", int), _field(data, "size", int)
        if counter < 0 or size <= 0:
            raise ProtocolError("counter must be >= 0 and size > 0")
        return cls(
            _segment(_field(data, "name", str), "package name"), _field(data, "version", str), sha, counter, size
        )


_HEADER = struct.Struct(">I")


@dataclass(frozen=True)
class ChunkRequest:
    """Device → host on ``chunk/request``: send me ``length`` bytes of package ``sha256`` from ``offset``."""

    request_id: str
    sha256: str
    offset: int
    length: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, payload: bytes | str) -> ChunkRequest:
        data = _only(_load(payload, max_bytes=4096), {"request_id", "sha256", "offset", "length"})
        sha = _sha256(data, "sha256")
        offset, length = _field(data, "offset", int), _field(data, "length", int)
        if not 0 <= offset <= MAX_PACKAGE or not 0 < length <= MAX_CHUNK:
            raise ProtocolError(f"offset must be in 0..{MAX_PACKAGE} and length in 1..{MAX_CHUNK}")
        return cls(_segment(_field(data, "request_id", str), "request_id"), sha, offset, length)


#: Bounds of a bench request: runs per batch size, warm-up runs, batch sizes, and the bench's own time limit.
BENCH_MAX_RUNS = 10_000
BENCH_MAX_WARMUP = 1_000
BENCH_MAX_BATCH = 256
BENCH_MAX_BATCHES = 4
BENCH_MAX_SECONDS = 600.0


@dataclass(frozen=True)
class BenchRequest:
    """Host → device on ``bench/request``: fetch ``package`` (as a desired state names one) into the candidates
    area, verify it as an install would, run it ``runs`` times per batch size after ``warmup`` runs (at most
    ``max_seconds`` in all), answer on ``bench/response``, and delete it. Never installed."""

    id: str
    package: Desired
    runs: int = 200
    warmup: int = 20
    batch_sizes: tuple[int, ...] = (1,)
    max_seconds: float = 120.0

    def to_json(self) -> bytes:
        body = asdict(self) | {"batch_sizes": list(self.batch_sizes)}
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def from_json(cls, payload: bytes | str) -> BenchRequest:
        data = _only(_load(payload, max_bytes=4096), {"id", "package", "runs", "warmup", "batch_sizes", "max_seconds"})
        package = _field(data, "package", dict)
        runs, warmup = _field(data, "runs", int), _field(data, "warmup", int)
        sizes = _field(data, "batch_sizes", list)
        seconds = _field(data, "max_seconds", (int, float))
        if not 1 <= runs <= BENCH_MAX_RUNS or not 0 <= warmup <= BENCH_MAX_WARMUP:
            raise ProtocolError(f"runs must be in 1..{BENCH_MAX_RUNS} and warmup in 0..{BENCH_MAX_WARMUP}")
        if not 1 <= len(sizes) <= BENCH_MAX_BATCHES or any(
            not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= BENCH_MAX_BATCH for b in sizes
        ):
            raise ProtocolError(f"batch_sizes must be 1-{BENCH_MAX_BATCHES} integers in 1..{BENCH_MAX_BATCH}")
        if isinstance(seconds, bool) or not 0 < seconds <= BENCH_MAX_SECONDS:
            raise ProtocolError(f"max_seconds must be in (0, {BENCH_MAX_SECONDS:g}]")
        return cls(_segment(_field(data, "id", str), "bench id"), Desired.from_json(json.dumps(package)), runs,
                   warmup, tuple(sizes), float(seconds))  # fmt: skip


MAX_CHUNK = 4 << 20
MAX_PACKAGE = 1 << 40  # 1 TiB: past any package, and far inside the 64-bit offsets os.pread takes


@dataclass(frozen=True)
class ChunkResponse:
    """Host → device on ``chunk/response``: a 4-byte big-endian header length, a JSON header, then raw bytes.

    Raw bytes instead of base64 keep a 256 KiB chunk at 256 KiB on the wire; ``chunk_sha256`` lets the device
    drop a corrupted chunk and ask again. ``error`` (no data) says why a request cannot be served.
    """

    request_id: str
    sha256: str
    offset: int
    data: bytes | memoryview
    chunk_sha256: str
    error: str | None = None

    def to_bytes(self) -> bytes:
        header = {"request_id": self.request_id, "sha256": self.sha256, "offset": self.offset,
                  "length": len(self.data), "chunk_sha256": self.chunk_sha256, "error": self.error}  # fmt: skip
        head = json.dumps(header, sort_keys=True).encode()
        return b"".join((_HEADER.pack(len(head)), head, self.data))

    @classmethod
    def from_bytes(cls, payload: bytes) -> ChunkResponse:
        if len(payload) < _HEADER.size:
            raise ProtocolError("chunk response shorter than its header length")
        (size,) = _HEADER.unpack_from(payload)
        if size > 4096 or _HEADER.size + size > len(payload):
            raise ProtocolError("chunk response header length is out of range")
        data = _load(bytes(payload[_HEADER.size : _HEADER.size + size]), max_bytes=4096)
        body = memoryview(payload)[_HEADER.size + size :]  # no copy of a 256 KiB chunk
        length = _field(data, "length", int)
        if length != len(body):
            raise ProtocolError(f"chunk response says {length} bytes but carries {len(body)}")
        error = data.get("error")
        if error is not None and not isinstance(error, str):
            raise ProtocolError("field 'error' must be a string or null")
        sha = _sha256(data, "sha256")
        chunk_sha = _sha256(data, "chunk_sha256") if error is None else _field(data, "chunk_sha256", str)
        return cls(_field(data, "request_id", str), sha, _field(data, "offset", int), body, chunk_sha, error)


def dumps(message: dict[str, Any]) -> bytes:
    """JSON for the free-form messages (state, events, telemetry, inference): compact, sorted, no NaN."""
    return json.dumps(message, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def loads(payload: bytes | str, *, max_bytes: int = 1 << 20) -> dict[str, Any]:
    return _load(payload, max_bytes=max_bytes)
