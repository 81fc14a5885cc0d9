"""The wire contract between host and device: topic names and message schemas (stdlib only).

Both sides import this module and nothing else formats a topic string. Messages are frozen
dataclasses whose ``from_json`` validates every field, so a malformed payload becomes a
``ProtocolError`` with a one-line reason instead of a crash deep in a handler.
"""

from __future__ import annotations

import json
import re
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
)


class ProtocolError(ValueError):
    """A message or topic that does not follow the contract."""


def _segment(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise ProtocolError(f"{what} {value!r} must be 1-64 characters of letters, digits, '.', '_' or '-'")
    return value


def topic(fleet: str, device: str, kind: str) -> str:
    """``edgekit/v1/{fleet}/{device}/{kind}``; wildcards are only built by :func:`subscription`."""
    if kind not in TOPIC_KINDS:
        raise ProtocolError(f"unknown topic kind {kind!r} (known: {', '.join(TOPIC_KINDS)})")
    return f"{PREFIX}/{_segment(fleet, 'fleet')}/{_segment(device, 'device id')}/{kind}"


def subscription(fleet: str, kind: str, *, device: str = "+") -> str:
    if kind not in TOPIC_KINDS:
        raise ProtocolError(f"unknown topic kind {kind!r}")
    dev = device if device == "+" else _segment(device, "device id")
    return f"{PREFIX}/{_segment(fleet, 'fleet')}/{dev}/{kind}"


def parse_topic(name: str) -> tuple[str, str, str]:
    """(fleet, device, kind) of a concrete topic, or ProtocolError."""
    prefix = PREFIX + "/"
    if not name.startswith(prefix):
        raise ProtocolError(f"topic {name!r} is not under {PREFIX}")
    parts = name[len(prefix) :].split("/", 2)
    if len(parts) != 3 or parts[2] not in TOPIC_KINDS:
        raise ProtocolError(f"topic {name!r} is not edgekit/v1/<fleet>/<device>/<kind>")
    return _segment(parts[0], "fleet"), _segment(parts[1], "device id"), parts[2]


def _load(payload: bytes | str, *, max_bytes: int = 1 << 20) -> dict[str, Any]:
    if len(payload) > max_bytes:
        raise ProtocolError(f"payload of {len(payload)} bytes is over the {max_bytes}-byte limit")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"payload is not JSON: {exc}") from None
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
        data = _load(payload)
        unknown = set(data) - {"name", "version", "sha256", "counter", "size"}
        if unknown:
            raise ProtocolError(f"unknown fields {sorted(unknown)}")
        sha = _field(data, "sha256", str)
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise ProtocolError("sha256 must be 64 lowercase hex characters")
        counter, size = _field(data, "counter", int), _field(data, "size", int)
        if counter < 0 or size <= 0:
            raise ProtocolError("counter must be >= 0 and size > 0")
        return cls(
            _segment(_field(data, "name", str), "package name"), _field(data, "version", str), sha, counter, size
        )
