"""The fleet store: what devices reported (state, telemetry, events), what was deployed, rollout state.

One schema for SQLite (the default, a file next to you) and PostgreSQL (``postgresql://…``, for several
serve workers and large fleets). Plain DB-API through ``sqlite3`` / ``psycopg``: ten tables and a dozen
queries do not need an ORM, and the agent-facing code stays free of one. The schema is versioned
(``schema_version``) and changed only by the ordered ``MIGRATIONS``, applied when a store is opened, so a
user's ``fleet.db`` or PostgreSQL store survives an upgrade; a store newer than the code is refused.
Telemetry columns are the fields of ``edgekit_agent.schema.TELEMETRY`` under the same names.

Every device message is stored under the sha256 of its topic + payload: a QoS1 redelivery (same bytes)
hits the primary key and is ignored (``ON CONFLICT DO NOTHING``, both engines), so ingest is idempotent
and a serve restart or a second worker never double-counts.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edgekit_agent import schema
from edgekit_agent.protocol import ProtocolError, parse_topic

from edgekit.errors import EdgekitError


class StoreUnreachable(EdgekitError):
    pass


class UnknownDevice(EdgekitError):
    pass


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    statements: tuple[str, ...]


# Ordered and append-only: a released migration is never edited (stores in the field already ran it).
# Version 1 is the schema edgekit wrote before migrations existed, so an unversioned store is at version 1.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "devices, telemetry, events, deployments, rollouts", (
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
    )),
    Migration(2, "telemetry columns take the schema's one name per field; quarantine for refused messages", (
        "ALTER TABLE telemetry RENAME COLUMN throughput TO throughput_per_s",
        "ALTER TABLE telemetry RENAME COLUMN p50 TO p50_ms",
        "ALTER TABLE telemetry RENAME COLUMN p95 TO p95_ms",
        "ALTER TABLE telemetry RENAME COLUMN p99 TO p99_ms",
        "ALTER TABLE telemetry RENAME COLUMN energy_mj TO energy_per_inference_mj",
        "ALTER TABLE telemetry RENAME COLUMN dropped TO dropped_messages",
        """CREATE TABLE quarantine (
            digest TEXT PRIMARY KEY, received DOUBLE PRECISION NOT NULL, fleet TEXT, device TEXT,
            topic TEXT NOT NULL, payload TEXT NOT NULL, reason TEXT NOT NULL)""",
        "CREATE INDEX quarantine_by_time ON quarantine (received)",
    )),
    Migration(3, "the reconciler's lease and resends; the connection a device's state came from", (
        """CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE reconcile (
            fleet TEXT NOT NULL, device TEXT NOT NULL, counter BIGINT NOT NULL, divergent_since DOUBLE PRECISION,
            resends INTEGER NOT NULL DEFAULT 0, last_resend DOUBLE PRECISION, next_resend DOUBLE PRECISION,
            stuck INTEGER NOT NULL DEFAULT 0, reason TEXT, PRIMARY KEY (fleet, device))""",
        # which connection of which agent process the stored state came from: a late will of an older
        # connection (delivered after the online state of the next one, e.g. by another serve worker) is stale
        "ALTER TABLE devices ADD COLUMN state_instance TEXT",
        "ALTER TABLE devices ADD COLUMN state_connection BIGINT",
        # each serve worker's heartbeat: fleet status shows a worker whose threads died, or that went silent
        """CREATE TABLE workers (holder TEXT PRIMARY KEY, started DOUBLE PRECISION NOT NULL,
            updated DOUBLE PRECISION NOT NULL, healthy INTEGER NOT NULL, detail TEXT NOT NULL)""",
    )),
    Migration(4, "benches: a package timed on a device (edgekit fleet bench, edgekit package --measure-on)", (
        """CREATE TABLE benches (
            fleet TEXT NOT NULL, device TEXT NOT NULL, id TEXT NOT NULL, t DOUBLE PRECISION NOT NULL,
            name TEXT NOT NULL, version TEXT NOT NULL, sha256 TEXT NOT NULL, status TEXT NOT NULL,
            p50_ms DOUBLE PRECISION, body TEXT NOT NULL, PRIMARY KEY (fleet, device, id))""",
    )),
    Migration(5, "language-model telemetry: generations, tokens, time to first token, decode rate, energy per token", (
        "ALTER TABLE telemetry ADD COLUMN generations BIGINT",
        "ALTER TABLE telemetry ADD COLUMN tokens_generated BIGINT",
        "ALTER TABLE telemetry ADD COLUMN ttft_p50_ms DOUBLE PRECISION",
        "ALTER TABLE telemetry ADD COLUMN ttft_p95_ms DOUBLE PRECISION",
        "ALTER TABLE telemetry ADD COLUMN decode_tokens_per_s DOUBLE PRECISION",
        "ALTER TABLE telemetry ADD COLUMN energy_per_token_mj DOUBLE PRECISION",
        "ALTER TABLE telemetry ADD COLUMN peak_rss_bytes BIGINT",
    )),
)  # fmt: skip
SCHEMA_VERSION = MIGRATIONS[-1].version
# the row a telemetry message becomes: where it came from, then every schema field under its one name
TELEMETRY_COLUMNS = ("fleet", "device", "digest", "t", "received", "package_version", "runtime",
                     *(f.name for f in schema.TELEMETRY))  # fmt: skip
METRICS = schema.METRICS
TABLES = ("devices", "telemetry", "events", "deployments", "rollouts", "quarantine", "reconcile")


class StoreTooNew(EdgekitError):
    pass


def digest(topic: str, payload: bytes) -> str:
    return hashlib.sha256(topic.encode() + b"\0" + payload).hexdigest()[:32]


def parse_time(value: Any, default: float) -> float:
    """A device's ISO-8601 ``time`` as epoch seconds; its absence, garbage or an unset clock falls back to
    ``default`` (the arrival time)."""
    if not isinstance(value, str) or len(value) > 64:
        return default
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        return default
    # a clock that was never set (1970 on a board without an RTC) or runs years ahead is not a time to plot
    return t if math.isfinite(t) and _EPOCH_2000 <= t <= default + 366 * 86400 else default


_EPOCH_2000 = 946684800.0


@dataclass(frozen=True)
class Message:
    """One device message as received and checked against the schema: the ingest unit.

    ``record`` holds the checked values (see :func:`check`); the store writes only those, so a payload
    that passed the boundary cannot carry a wrongly typed value into a statement.
    """

    fleet: str
    device: str
    kind: str  # state | telemetry | events
    body: dict[str, Any]
    digest: str
    received: float
    record: dict[str, Any] = field(default_factory=dict)


def check(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The values of a ``kind`` message the store keeps, checked against the schema (ProtocolError if not)."""
    if kind == "telemetry":
        record = schema.read_telemetry(body)
        package = schema.read_package(body)
        record["package_version"] = package["version"] if package else None
        record["runtime"] = schema.check_value(body.get("runtime"), "str", "runtime")
    elif kind == "state":
        record = schema.read_state(body)
        record["capabilities"] = _bounded_json(record["capabilities"], "capabilities")
    elif kind == "events":
        event = schema.check_value(body.get("kind", "unknown"), "str", "kind")
        record = {"kind": (event or "unknown")[:64], "body": _bounded_json(body, "event")}
    else:
        raise ProtocolError(f"{kind} messages are not stored")
    return record


def _bounded_json(value: Any, what: str, limit: int = 64 * 1024) -> str:
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what} cannot be stored as JSON ({exc})") from None
    if len(text) > limit:
        raise ProtocolError(f"{what} is over {limit} bytes of JSON")
    return text


def message(fleet: str, device: str, kind: str, body: dict[str, Any], dig: str, received: float) -> Message:
    """A checked :class:`Message`; ProtocolError names the first field that breaks the schema."""
    return Message(fleet, device, kind, body, dig, received, check(kind, body))


def _telemetry_row(m: Message) -> tuple:
    r = m.record
    fields = [int(r[f.name]) if f.kind == "bool" and r[f.name] is not None else r[f.name] for f in schema.TELEMETRY]
    return (m.fleet, m.device, m.digest, parse_time(m.body.get("time"), m.received), m.received,
            r["package_version"], r["runtime"], *fields)  # fmt: skip


class Store:
    """A connection to the fleet database. One per thread: the serve writer owns its own."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine, self._conn = _connect(url)
        self._lock = threading.Lock()
        self.applied: list[Migration] = self.migrate() if migrate else []

    # -- schema versions ------------------------------------------------------------------------------
    def version(self) -> int:
        """The store's schema version: 0 when empty, 1 for a store written before versions were recorded."""
        with self.tx() as cur:
            if self._has_table(cur, "schema_version"):
                cur.execute("SELECT MAX(version) FROM schema_version")
                return int(cur.fetchone()[0] or 0)
            return 1 if self._has_table(cur, "telemetry") else 0

    def _has_table(self, cur: Any, name: str) -> bool:
        if self.engine == "sqlite":
            cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        else:
            cur.execute("SELECT 1 FROM information_schema.tables WHERE table_name = ? AND "
                        "table_schema = current_schema()", (name,))  # fmt: skip
        return cur.fetchone() is not None

    def migrate(self) -> list[Migration]:
        """Apply the migrations this store lacks, each in its own transaction; returns those applied.

        Several serve workers may start at once against one PostgreSQL store: each migration runs under
        a transaction-scoped advisory lock and re-reads the version inside it, so exactly one applies it.
        SQLite's ``BEGIN IMMEDIATE`` takes the write lock for the same effect.
        """
        applied = []
        for migration in MIGRATIONS:
            with self.tx() as cur:
                cur.execute("BEGIN IMMEDIATE" if self.engine == "sqlite" else "SELECT pg_advisory_xact_lock(74657)")
                current = self._version_in(cur)
                if current > SCHEMA_VERSION:
                    raise StoreTooNew(
                        f"the store {_shown(self.url)} is at schema version {current}, newer than this edgekit "
                        f"knows ({SCHEMA_VERSION}); upgrade edgekit (pip install -U edgekit) or use another --db"
                    )
                if current < migration.version:
                    for statement in migration.statements:
                        cur.execute(statement)
                    cur.execute("INSERT INTO schema_version (version, applied, what) VALUES (?, ?, ?)",
                                (migration.version, time.time(), migration.what))  # fmt: skip
                    applied.append(migration)
        return applied

    def _version_in(self, cur: Any) -> int:
        cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, "
                    "applied DOUBLE PRECISION NOT NULL, what TEXT NOT NULL)")  # fmt: skip
        cur.execute("SELECT MAX(version) FROM schema_version")
        recorded = cur.fetchone()[0]
        if recorded is not None:
            return int(recorded)
        if self._has_table(cur, "telemetry"):  # written before versions were recorded: version 1
            cur.execute("INSERT INTO schema_version (version, applied, what) VALUES (?, ?, ?)",
                        (1, time.time(), MIGRATIONS[0].what + " (found, not recorded)"))  # fmt: skip
            return 1
        return 0

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
             m.record["kind"], m.record["body"])
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
        r = m.record
        # Arrival order is not publish order when several serve workers share the stream: a state from an
        # earlier connection of the same agent process than the stored one is stale and changes nothing.
        cur.execute(
            "INSERT INTO devices (fleet, device, profile, status, last_seen, state_instance, state_connection) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (fleet, device) DO UPDATE SET status = excluded.status, "
            "last_seen = excluded.last_seen, profile = COALESCE(excluded.profile, devices.profile), "
            "state_instance = excluded.state_instance, state_connection = excluded.state_connection "
            "WHERE devices.state_instance IS NULL OR excluded.state_instance IS NULL "
            "OR devices.state_instance <> excluded.state_instance OR devices.state_connection IS NULL "
            "OR excluded.state_connection IS NULL OR excluded.state_connection >= devices.state_connection",
            (m.fleet, m.device, r["profile"], r["status"], m.received, r["instance"], r["connection"]),
        )
        if cur.rowcount == 0:
            return  # stale
        if r["status"] != "online":
            return  # the last will is composed at connect time: its package field may be stale
        package = r["package"] or {}
        cur.execute(
            "UPDATE devices SET package_name = ?, package_version = ?, package_counter = ?, runtime = ?, "
            "capabilities = ? WHERE fleet = ? AND device = ?",
            (package.get("name"), package.get("version"), package.get("counter"), r["runtime"], r["capabilities"],
             m.fleet, m.device),
        )  # fmt: skip

    def quarantine(self, items: list[tuple[str, bytes, str, float]]) -> int:
        """Keep messages the store refused: (topic, payload, reason, received). The same bytes are kept once,
        so a retained poison message delivered again on every subscribe adds nothing; returns rows added."""
        rows = []
        for topic, payload, reason, received in items:
            try:
                fleet, device, _ = parse_topic(topic)
            except ProtocolError:
                fleet = device = None
            text = payload[:2048].decode("utf-8", "replace").replace("\0", "")
            clean_topic = topic[:512].replace("\0", "")
            rows.append((digest(topic, payload), received, fleet, device, clean_topic, text, reason[:500]))
        with self.tx() as cur:
            return cur.insert_many(
                "INSERT INTO quarantine (digest, received, fleet, device, topic, payload, reason) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                rows,
            )

    def quarantined(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.query("SELECT * FROM quarantine ORDER BY received DESC LIMIT ?", (limit,))

    def ping(self) -> bool:
        """True when the store answers a trivial query: tells a refused message from a store that is down."""
        try:
            self.query("SELECT 1 AS one")
        except Exception:
            return False
        return True

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

    # -- benches ------------------------------------------------------------------------------------------
    def record_bench(self, fleet: str, device: str, answer: dict[str, Any]) -> None:
        """A device's ``bench/response`` as it came (``body``), with what tables sort by pulled out."""

        def text(value: Any) -> str:  # a device's answer is untrusted: short strings only
            return str(value)[:200]

        package = answer.get("package") if isinstance(answer.get("package"), dict) else {}
        batches = answer.get("batches") if isinstance(answer.get("batches"), list) else []
        first = next((b for b in batches if isinstance(b, dict) and "p50_ms" in b), {})
        p50 = first.get("p50_ms")
        p50 = float(p50) if isinstance(p50, int | float) and not isinstance(p50, bool) and math.isfinite(p50) else None
        with self.tx() as cur:
            cur.execute(
                "INSERT INTO benches (fleet, device, id, t, name, version, sha256, status, p50_ms, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (fleet, device, text(answer.get("id")), time.time(), text(package.get("name")),
                 text(package.get("version")), text(package.get("sha256")), text(answer.get("status")), p50,
                 _bounded_json(answer, "bench answer")),
            )  # fmt: skip

    def benches(self, fleet: str) -> list[dict[str, Any]]:
        rows = self.query("SELECT * FROM benches WHERE fleet = ? ORDER BY t", (fleet,))
        for r in rows:
            r["body"] = json.loads(r["body"])
        return rows

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
        return {table: self.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"] for table in TABLES}

    # -- reconciler ---------------------------------------------------------------------------------------
    def take_lease(self, name: str, holder: str, ttl: float) -> bool:
        """Hold (or renew) lease ``name`` for ``ttl`` seconds; False while another holder's lease runs.

        A row, not a PostgreSQL advisory lock, so the same code works on SQLite, and a worker that dies
        (or loses its database) hands over once its lease expires: at most ``ttl`` later.
        """
        now = time.time()
        with self.tx() as cur:
            cur.execute(
                "INSERT INTO leases (name, holder, expires) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
                "holder = excluded.holder, expires = excluded.expires WHERE leases.holder = excluded.holder "
                "OR leases.expires < ?",
                (name, holder, now + ttl, now),
            )
            cur.execute("SELECT holder FROM leases WHERE name = ?", (name,))
            return cur.fetchone()[0] == holder

    def release_lease(self, name: str, holder: str) -> None:
        with self.tx() as cur:
            cur.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder))

    def heartbeat(self, holder: str, started: float, healthy: bool, detail: str) -> None:
        with self.tx() as cur:
            cur.execute(
                "INSERT INTO workers (holder, started, updated, healthy, detail) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (holder) DO UPDATE SET updated = excluded.updated, healthy = excluded.healthy, "
                "detail = excluded.detail",
                (holder, started, time.time(), int(healthy), detail[:500]),
            )

    def workers(self, within: float) -> list[dict[str, Any]]:
        """Serve workers that sent a heartbeat in the last ``within`` seconds."""
        return self.query("SELECT * FROM workers WHERE updated >= ? ORDER BY started", (time.time() - within,))

    def desired_now(self) -> list[dict[str, Any]]:
        """Each device's latest deployment (what it should run), over every fleet."""
        return self.query(
            "SELECT d.* FROM deployments d JOIN (SELECT fleet, device, MAX(t) AS m FROM deployments "
            "GROUP BY fleet, device) last ON d.fleet = last.fleet AND d.device = last.device AND d.t = last.m"
        )

    def reconcile_rows(self, fleet: str | None = None) -> dict[tuple[str, str], dict[str, Any]]:
        rows = self.query("SELECT * FROM reconcile" + (" WHERE fleet = ?" if fleet else ""), (fleet,) if fleet else ())
        return {(r["fleet"], r["device"]): r for r in rows}

    def save_reconcile(self, row: dict[str, Any]) -> None:
        cols = ("fleet", "device", "counter", "divergent_since", "resends", "last_resend", "next_resend", "stuck",
                "reason")  # fmt: skip
        with self.tx() as cur:
            cur.execute(
                f"INSERT INTO reconcile ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                "ON CONFLICT (fleet, device) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in cols[2:]),
                tuple(row.get(c) for c in cols),
            )

    def forget_reconcile(self, fleet: str, device: str) -> None:
        with self.tx() as cur:
            cur.execute("DELETE FROM reconcile WHERE fleet = ? AND device = ?", (fleet, device))

    def record_host_event(self, fleet: str, device: str, kind: str, body: dict[str, Any]) -> None:
        """An event the host itself observed about a device (``resent_desired``, ``stuck``), with its own."""
        now = time.time()
        text = json.dumps({"kind": kind, "source": "host", **body}, sort_keys=True)
        with self.tx() as cur:
            cur.execute(
                "INSERT INTO events (fleet, device, digest, t, received, kind, body) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (fleet, device, digest(f"host/{fleet}/{device}/{kind}", f"{now}{text}".encode()), now, now, kind,
                 text),
            )  # fmt: skip

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


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` store (None for another engine)."""
    if urlparse(url).scheme != "sqlite":
        return None
    return Path(url[len("sqlite:///") :] if url.startswith("sqlite:///") else urlparse(url).path)


def _connect(url: str) -> tuple[str, Any]:
    parsed = urlparse(url)
    path = sqlite_path(url)
    if path is not None:
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


def _shown(url: str) -> str:
    """``url`` without a password, for messages."""
    parsed = urlparse(url)
    return url if not parsed.password else url.replace(f":{parsed.password}@", ":***@")


def default_db() -> str:
    import os

    return os.environ.get("EDGEKIT_DB", "sqlite:///fleet.db")
