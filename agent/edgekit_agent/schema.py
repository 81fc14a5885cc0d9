"""The telemetry and state schemas: every field once, with its type and bounds (stdlib only).

A telemetry field is named here and nowhere else: the agent and the simulator build their message with
:func:`telemetry_message`, the host checks what arrives with :func:`read_telemetry` and stores it in a
column of the same name, and ``fleet status``, ``fleet history --metric``, the HTML report and the
Prometheus gauges read that column by that name. The wire keeps its nested layout (``latency_ms.p50``,
``power.watts``) so agents already deployed stay compatible; ``path`` says where a field sits in it.

Bounds are what a real device can report, with room to spare. A value outside them, a non-finite float,
a boolean where a number belongs or a list where a string belongs makes the whole message invalid: the
host refuses it with the reason rather than storing a number that would break a query or a plot later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edgekit_agent.protocol import ProtocolError

INT64_MAX = 2**63 - 1
MAX_TEXT = 256  # a runtime, a version, a power source: short strings


@dataclass(frozen=True)
class Field:
    name: str  # the one name: wire key (flat fields), store column, status key, metric name
    path: tuple[str, ...]  # where the value sits in the telemetry JSON
    kind: str  # float | int | str | bool
    lo: float = 0.0
    hi: float = float(INT64_MAX)
    help: str = ""

    @property
    def sql(self) -> str:
        return {"float": "DOUBLE PRECISION", "int": "BIGINT", "str": "TEXT", "bool": "INTEGER"}[self.kind]

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "int")


def _f(name: str, kind: str, help_text: str, *, path: tuple[str, ...] = (), lo: float = 0.0, hi: float = 0.0) -> Field:
    return Field(name, path or (name,), kind, lo, hi or float(INT64_MAX), help_text)


TELEMETRY: tuple[Field, ...] = (
    _f("interval_s", "float", "length of the reporting interval", hi=366 * 86400),
    _f("inferences", "int", "inferences run in the interval", hi=2**53),
    _f("errors", "int", "inferences that failed in the interval", hi=2**53),
    _f("throughput_per_s", "float", "inferences per second in the interval", hi=1e9),
    _f("p50_ms", "float", "median inference latency", path=("latency_ms", "p50"), hi=1e7),
    _f("p95_ms", "float", "p95 inference latency", path=("latency_ms", "p95"), hi=1e7),
    _f("p99_ms", "float", "p99 inference latency", path=("latency_ms", "p99"), hi=1e7),
    _f("cpu_percent", "float", "the agent's CPU use (100 = one core)", hi=1e5),
    _f("rss_bytes", "int", "the agent's resident memory", hi=2**50),
    _f("temperature_c", "float", "hottest thermal zone", lo=-273.15, hi=1000),
    _f("power_w", "float", "device power (power_source says measured or estimate)", path=("power", "watts"), hi=1e6),
    _f("power_source", "str", "rapl | hwmon | ina3221 | pmic | estimate | none", path=("power", "source")),
    _f("energy_per_inference_mj", "float", "whole-device energy per inference in the interval", hi=1e12),
    _f("energy_is_estimate", "bool", "1 when power (and so energy) is an estimate"),
    _f("dropped_messages", "int", "messages the agent's outbox had to drop", hi=2**53),
    # a language-model package (generate/request); None on a device that generated nothing in the interval
    _f("generations", "int", "generations finished in the interval", hi=2**53),
    _f("tokens_generated", "int", "new tokens generated in the interval", hi=2**53),
    _f("ttft_p50_ms", "float", "median time to first token", hi=1e7),
    _f("ttft_p95_ms", "float", "p95 time to first token", hi=1e7),
    _f("decode_tokens_per_s", "float", "median decode rate of the interval's generations", hi=1e7),
    _f(
        "energy_per_token_mj", "float", "whole-device energy per generated token (energy_is_estimate says how)", hi=1e12
    ),
    _f("peak_rss_bytes", "int", "the agent's peak resident memory since it started", hi=2**50),
)
BY_NAME = {f.name: f for f in TELEMETRY}
METRICS = tuple(f.name for f in TELEMETRY if f.numeric)  # what ``fleet history --metric`` can plot


def check_value(value: Any, kind: str, where: str, *, lo: float = 0.0, hi: float = float(INT64_MAX)) -> Any:
    """``value`` if it is a ``kind`` within [lo, hi] (None passes), else ProtocolError naming ``where``."""
    if value is None:
        return None
    if kind == "bool":
        if not isinstance(value, bool):
            raise ProtocolError(f"{where} must be true or false, not {type(value).__name__}")
        return value
    if kind == "str":
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise ProtocolError(f"{where} must be a string of at most {MAX_TEXT} characters")
        return value
    ok = int if kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok):
        raise ProtocolError(f"{where} must be {'an integer' if kind == 'int' else 'a number'}, not {value!r:.40}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ProtocolError(f"{where} must be finite")
    if not lo <= value <= hi:
        raise ProtocolError(f"{where} = {value!r:.40} is outside [{lo:g}, {hi:g}]")
    return float(value) if kind == "float" else value


def _at(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = body
    for i, key in enumerate(path):
        if node is None:
            return None
        if not isinstance(node, dict):
            raise ProtocolError(f"{'.'.join(path[:i])} must be an object")
        node = node.get(key)
    return node


def read_telemetry(body: dict[str, Any]) -> dict[str, Any]:
    """Every schema field of a telemetry message by its one name, checked; ProtocolError on the first bad one."""
    return {f.name: check_value(_at(body, f.path), f.kind, ".".join(f.path), lo=f.lo, hi=f.hi) for f in TELEMETRY}


def telemetry_message(values: dict[str, Any]) -> dict[str, Any]:
    """The wire layout of ``values`` (one name per field): what the agent and the simulator publish."""
    unknown = set(values) - set(BY_NAME)
    if unknown:
        raise ValueError(f"not telemetry fields: {sorted(unknown)} (add them to schema.TELEMETRY)")
    message: dict[str, Any] = {}
    for name, value in values.items():
        *parents, leaf = BY_NAME[name].path
        node = message
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return message


def read_package(body: dict[str, Any], *, required: bool = False) -> dict[str, Any] | None:
    """The ``package`` object of a state or telemetry message ({name, version, counter}), checked."""
    package = body.get("package")
    if package is None and not required:
        return None
    if not isinstance(package, dict):
        raise ProtocolError("package must be an object with name, version and counter")
    return {
        "name": check_value(package.get("name"), "str", "package.name"),
        "version": check_value(package.get("version"), "str", "package.version"),
        "counter": check_value(package.get("counter"), "int", "package.counter", hi=INT64_MAX),
    }


def read_state(body: dict[str, Any]) -> dict[str, Any]:
    """A device's retained ``state``: status, profile, runtime, package and capabilities, checked."""
    status = body.get("status")
    if status not in ("online", "offline"):
        raise ProtocolError(f"status must be 'online' or 'offline', not {status!r:.40}")
    capabilities = body.get("capabilities")
    if capabilities is not None and not isinstance(capabilities, dict):
        raise ProtocolError("capabilities must be an object")
    return {
        "status": status,
        "instance": check_value(body.get("instance"), "str", "instance"),  # one agent process
        "connection": check_value(body.get("connection"), "int", "connection"),  # its n-th broker connection
        "profile": check_value(body.get("profile"), "str", "profile"),
        "runtime": check_value(body.get("runtime"), "str", "runtime"),
        "package": read_package(body),
        "capabilities": capabilities or {},
    }
