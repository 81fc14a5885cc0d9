"""The fleet store: what devices reported (state, telemetry, events), what was deployed, rollout state.

One schema for SQLite (the default, a file next to you) and PostgreSQL (``postgresql://…``, for several
serve workers and large fleets). Plain DB-API through ``sqlite3`` / ``psycopg``: eight tables and a dozen
queries do not need an ORM, and the agent-facing code stays free of one.

Every device message is stored under the sha256 of its topic + payload: a QoS1 redelivery (same bytes)
hits the primary key and is ignored (``ON CONFLICT DO NOTHING``, both engines), so ingest is idempotent
and a serve restart or a second worker never double-counts.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edgekit.errors import EdgekitError


class StoreUnreachable(EdgekitError):
    pass


class UnknownDevice(EdgekitError):
    pass


SCHEMA = [
    """CREATE TABLE IF NOT EXISTS devices (
        fleet TEXT NOT NULL, device TEXT NOT NULL, profile TEXT, status TEXT,
        package_name TEXT, package_version TEXT, package_counter BIGINT, runtime TEXT,
        capabilities TEXT, labels TEXT NOT NULL DEFAULT '{}', last_seen DOUBLE PRECISION,
        PRIMARY KEY (fleet, device))""",
    """CREATE TABLE IF NOT EXISTS telemetry (
        fleet TEXT NOT NULL, device TEXT NOT NULL, digest TEXT NOT NULL, t DOUBLE PRECISION NOT NULL,
        received DOUBLE PRECISION NOT NULL, package_version TEXT, runtime TEXT, interval_s DOUBLE PRECISION,
        inferences BIGINT, errors BIGINT, throughput DOUBLE PRECISION, p50 DOUBLE PRECISION,
        p95 DOUBLE PRECISION, p99 DOUBLE PRECISION, cpu_percent DOUBLE PRECISION, rss_bytes BIGINT,
        temperature_c DOUBLE PRECISION, power_w DOUBLE PRECISION, power_source TEXT,
        energy_mj DOUBLE PRECISION, energy_is_estimate INTEGER, dropped BIGINT,
        PRIMARY KEY (fleet, device, digest))""",
    "CREATE INDEX IF NOT EXISTS telemetry_by_time ON telemetry (fleet, device, received)",
    """CREATE TABLE IF NOT EXISTS events (
        fleet TEXT NOT NULL, device TEXT NOT NULL, digest TEXT NOT NULL, t DOUBLE PRECISION NOT NULL,
        received DOUBLE PRECISION NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (fleet, device, digest))""",
    "CREATE INDEX IF NOT EXISTS events_by_time ON events (fleet, received)",
    """CREATE TABLE IF NOT EXISTS deployments (
        fleet TEXT NOT NULL, device TEXT NOT NULL, t DOUBLE PRECISION NOT NULL, name TEXT NOT NULL,
        version TEXT NOT NULL, sha256 TEXT NOT NULL, counter BIGINT NOT NULL, size BIGINT NOT NULL,
        path TEXT, rollout TEXT, PRIMARY KEY (fleet, device, t))""",
    """CREATE TABLE IF NOT EXISTS rollouts (
        id TEXT PRIMARY KEY, fleet TEXT NOT NULL, status TEXT NOT NULL, created DOUBLE PRECISION NOT NULL,
        updated DOUBLE PRECISION NOT NULL, body TEXT NOT NULL)""",
]

TELEMETRY_COLUMNS = (
    "fleet", "device", "digest", "t", "received", "package_version", "runtime", "interval_s", "inferences", "errors",
    "throughput", "p50", "p95", "p99", "cpu_percent", "rss_bytes", "temperature_c", "power_w", "power_source",
    "energy_mj", "energy_is_estimate", "dropped",
)  # fmt: skip
METRICS = ("p50", "p95", "p99", "throughput", "inferences", "errors", "cpu_percent", "rss_bytes", "power_w",
           "energy_mj", "temperature_c")  # fmt: skip


def digest(topic: str, payload: bytes) -> str:
    return hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()[:32]


def parse_time(value: Any, default: float) -> float:
    """A device's ISO-8601 ``time`` as epoch seconds; its absence or garbage falls back to arrival time."""
    if not isinstance(value, str):
        return default
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


@dataclass(frozen=True)
class Message:
    """One device message as received: the ingest unit."""

    fleet: str
    device: str
    kind: str  # state | telemetry | events
    body: dict[str, Any]
    digest: str
    received: float


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _telemetry_row(m: Message) -> tuple:
    b = m.body
    latency = b.get("latency_ms") if isinstance(b.get("latency_ms"), dict) else {}
    power = b.get("power") if isinstance(b.get("power"), dict) else {}
    package = b.get("package") if isinstance(b.get("package"), dict) else {}
    return (
        m.fleet, m.device, m.digest, parse_time(b.get("time"), m.received), m.received,
        str(package.get("version")) if package.get("version") is not None else None,
        b.get("runtime") if isinstance(b.get("runtime"), str) else None,
        _num(b.get("interval_s")), _int(b.get("inferences")), _int(b.get("errors")), _num(b.get("throughput_per_s")),
        _num(latency.get("p50")), _num(latency.get("p95")), _num(latency.get("p99")), _num(b.get("cpu_percent")),
        _int(b.get("rss_bytes")), _num(b.get("temperature_c")), _num(power.get("watts")),
        power.get("source") if isinstance(power.get("source"), str) else None,
        _num(b.get("energy_per_inference_mj")), 1 if b.get("energy_is_estimate") else 0,
        _int(b.get("dropped_messages")),
    )  # fmt: skip


class Store:
    """A connection to the fleet database. One per thread: the serve writer owns its own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine, self._conn = _connect(url)
        self._lock = threading.Lock()
        with self.tx() as cur:
            for statement in SCHEMA:
                cur.execute(statement)

    # -- plumbing -------------------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.engine == "postgresql" else sql

    @contextmanager
    def tx(self) -> Iterator[Any]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                yield _Cursor(cur, self._sql)
                self._conn.commit()
            except BaseException:
                self._conn.rollback()
                raise
            finally:
                cur.close()

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self.tx() as cur:
            cur.execute(sql, tuple(params))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def close(self) -> None:
        self._conn.close()

    # -- ingest ---------------------------------------------------------------------------------------
    def ingest(self, messages: list[Message]) -> int:
        """Store a batch in one transaction; returns how many were new (duplicates are ignored)."""
        telemetry = [_telemetry_row(m) for m in messages if m.kind == "telemetry"]
        events = [
            (m.fleet, m.device, m.digest, parse_time(m.body.get("time"), m.received), m.received,
             str(m.body.get("kind", "unknown"))[:64], json.dumps(m.body, sort_keys=True))
            for m in messages if m.kind == "events"
        ]  # fmt: skip
        # Device rows are locked in one (fleet, device) order per transaction, each device's states (in
        # arrival order) then its last_seen: two workers touching overlapping devices in different orders
        # deadlocked on PostgreSQL.
        states: dict[tuple[str, str], list[Message]] = {}
        for m in messages:
            if m.kind == "state":
                states.setdefault((m.fleet, m.device), []).append(m)
        seen = {(m.fleet, m.device): m.received for m in messages if m.kind != "state"}
        new = 0
        with self.tx() as cur:
            if telemetry:
                cols = ", ".join(TELEMETRY_COLUMNS)
                marks = ", ".join("?" * len(TELEMETRY_COLUMNS))
                new += cur.insert_many(f"INSERT INTO telemetry ({cols}) VALUES ({marks}) ON CONFLICT DO NOTHING",
                                       telemetry)  # fmt: skip
            if events:
                new += cur.insert_many(
                    "INSERT INTO events (fleet, device, digest, t, received, kind, body) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT DO NOTHING",
                    events,
                )
            for fleet, device in sorted(states.keys() | seen.keys()):
                for m in states.get((fleet, device), []):
                    self._upsert_state(cur, m)
                if (fleet, device) in seen:
                    received = seen[(fleet, device)]
                    cur.execute(
                        "UPDATE devices SET last_seen = ? WHERE fleet = ? AND device = ? AND (last_seen IS NULL "
                        "OR last_seen < ?)",
                        (received, fleet, device, received),
                    )
        return new + sum(len(v) for v in states.values())

    def _upsert_state(self, cur: Any, m: Message) -> None:
        b = m.body
        status = b.get("status") if b.get("status") in ("online", "offline") else "unknown"
        profile = b.get("profile") if isinstance(b.get("profile"), str) else None
        cur.execute(
            "INSERT INTO devices (fleet, device, profile, status, last_seen) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (fleet, device) DO UPDATE SET status = excluded.status, last_seen = excluded.last_seen, "
            "profile = COALESCE(excluded.profile, devices.profile)",
            (m.fleet, m.device, profile, status, m.received),
        )
        if status != "online":
            return  # the last will is composed at connect time: its package field may be stale
        package = b.get("package") if isinstance(b.get("package"), dict) else None
        caps = b.get("capabilities") if isinstance(b.get("capabilities"), dict) else {}
        cur.execute(
            "UPDATE devices SET package_name = ?, package_version = ?, package_counter = ?, runtime = ?, "
            "capabilities = ? WHERE fleet = ? AND device = ?",
            (
                package.get("name") if package else None,
                str(package.get("version")) if package else None,
                _int(package.get("counter")) if package else None,
                b.get("runtime") if isinstance(b.get("runtime"), str) else None,
                json.dumps(caps, sort_keys=True),
                m.fleet,
                m.device,
            ),
        )

    # -- devices and groups ---------------------------------------------------------------------------
    def devices(self, fleet: str, device: str | None = None) -> list[dict[str, Any]]:
        if device is None:
            rows = self.query("SELECT * FROM devices WHERE fleet = ? ORDER BY device", (fleet,))
        else:
            rows = self.query("SELECT * FROM devices WHERE fleet = ? AND device = ?", (fleet, device))
        for row in rows:
            row["labels"] = json.loads(row["labels"] or "{}")
            row["capabilities"] = json.loads(row["capabilities"] or "{}")
        return rows

    def device(self, fleet: str, device: str) -> dict[str, Any]:
        found = self.devices(fleet, device)
        if found:
            return found[0]
        known = [r["device"] for r in self.devices(fleet)]
        hint = f"known: {', '.join(known[:10])}{' …' if len(known) > 10 else ''}" if known else "none has reported yet"
        raise UnknownDevice(
            f"unknown device {device!r} in fleet {fleet!r} ({hint}); is the agent running and edgekit serve "
            "ingesting into this --db?"
        )

    def label(self, fleet: str, device: str, labels: dict[str, str | None]) -> dict[str, str]:
        current = self.device(fleet, device)["labels"]
        for key, value in labels.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        with self.tx() as cur:
            cur.execute(
                "UPDATE devices SET labels = ? WHERE fleet = ? AND device = ?",
                (json.dumps(current, sort_keys=True), fleet, device),
            )
        return current

    def group(self, fleet: str, group: str) -> list[dict[str, Any]]:
        """``all``, a profile name, or a ``key=value`` label selector."""
        rows = self.devices(fleet)
        if group == "all":
            return rows
        if "=" in group:
            key, _, value = group.partition("=")
            return [r for r in rows if r["labels"].get(key) == value]
        return [r for r in rows if r["profile"] == group or r["labels"].get("group") == group]

    # -- deployments ----------------------------------------------------------------------------------
    def record_deployment(self, fleet: str, device: str, desired: Any, path: Path | None, rollout: str | None) -> None:
        with self.tx() as cur:
            cur.execute(
                "INSERT INTO deployments (fleet, device, t, name, version, sha256, counter, size, path, rollout) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (fleet, device, time.time(), desired.name, desired.version, desired.sha256, desired.counter,
                 desired.size, str(path) if path else None, rollout),
            )  # fmt: skip

    def deployments(self, fleet: str, device: str | None = None) -> list[dict[str, Any]]:
        if device is None:
            return self.query("SELECT * FROM deployments WHERE fleet = ? ORDER BY t", (fleet,))
        return self.query("SELECT * FROM deployments WHERE fleet = ? AND device = ? ORDER BY t", (fleet, device))

    # -- telemetry and events -------------------------------------------------------------------------
    def telemetry(self, fleet: str, device: str | None = None, since: float = 0.0) -> list[dict[str, Any]]:
        if device is None:
            return self.query(
                "SELECT * FROM telemetry WHERE fleet = ? AND received >= ? ORDER BY received", (fleet, since)
            )
        return self.query(
            "SELECT * FROM telemetry WHERE fleet = ? AND device = ? AND received >= ? ORDER BY received",
            (fleet, device, since),
        )

    def recent_telemetry(self, fleet: str, device: str, version: str | None, limit: int) -> list[dict[str, Any]]:
        """The device's last ``limit`` telemetry messages reported on ``version`` (oldest first)."""
        rows = self.query(
            "SELECT * FROM telemetry WHERE fleet = ? AND device = ? AND package_version IS NOT DISTINCT FROM ? "
            "ORDER BY received DESC LIMIT ?",
            (fleet, device, version, limit),
        )
        return rows[::-1]

    def latest_telemetry(self, fleet: str) -> dict[str, dict[str, Any]]:
        rows = self.query(
            "SELECT t.* FROM telemetry t JOIN (SELECT device, MAX(received) AS m FROM telemetry WHERE fleet = ? "
            "GROUP BY device) last ON t.device = last.device AND t.received = last.m WHERE t.fleet = ?",
            (fleet, fleet),
        )
        return {r["device"]: r for r in rows}

    def events(self, fleet: str, device: str | None = None, since: float = 0.0, limit: int = 200) -> list[dict]:
        sql = "SELECT device, t, received, kind, body FROM events WHERE fleet = ? AND received >= ?"
        params: list[Any] = [fleet, since]
        if device:
            sql += " AND device = ?"
            params.append(device)
        rows = self.query(sql + " ORDER BY received DESC, t DESC LIMIT ?", (*params, limit))
        for row in rows:
            row["body"] = json.loads(row["body"])
        return rows[::-1]

    def counts(self) -> dict[str, int]:
        return {
            table: self.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]
            for table in ("devices", "telemetry", "events", "deployments", "rollouts")
        }

    # -- rollouts -------------------------------------------------------------------------------------
    def save_rollout(self, rollout: dict[str, Any]) -> None:
        now = time.time()
        with self.tx() as cur:
            cur.execute(
                "INSERT INTO rollouts (id, fleet, status, created, updated, body) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET status = excluded.status, updated = excluded.updated, "
                "body = excluded.body",
                (rollout["id"], rollout["fleet"], rollout["status"], now, now, json.dumps(rollout, sort_keys=True)),
            )

    def rollouts(self, fleet: str) -> list[dict[str, Any]]:
        rows = self.query("SELECT body FROM rollouts WHERE fleet = ? ORDER BY created", (fleet,))
        return [json.loads(r["body"]) for r in rows]


class _Cursor:
    """A DB-API cursor that speaks ``?`` placeholders on both engines."""

    def __init__(self, cur: Any, sql: Any) -> None:
        self._cur, self._sql = cur, sql

    def execute(self, sql: str, params: tuple = ()) -> None:
        self._cur.execute(self._sql(sql), params)

    def insert_many(self, sql: str, rows: list[tuple]) -> int:
        self._cur.executemany(self._sql(sql), rows)
        count = self._cur.rowcount  # both drivers sum the rows inserted over the batch
        return count if count is not None and count >= 0 else len(rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)


def _connect(url: str) -> tuple[str, Any]:
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        path = Path(url[len("sqlite:///") :] if url.startswith("sqlite:///") else parsed.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnreachable(f"cannot open the SQLite store {path} ({exc}); check --db") from None
        return "sqlite", conn
    if parsed.scheme in ("postgresql", "postgres"):
        import psycopg

        try:
            conn = psycopg.connect(url, connect_timeout=5)
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or ["no answer"])[0]
            raise StoreUnreachable(
                f"cannot reach PostgreSQL at {parsed.hostname}:{parsed.port or 5432} ({first}); start it or fix --db"
            ) from None
        return "postgresql", conn
    raise StoreUnreachable(f"--db {url!r} must be sqlite:///PATH or postgresql://USER@HOST:PORT/DB")


def default_db() -> str:
    import os

    return os.environ.get("EDGEKIT_DB", "sqlite:///fleet.db")
