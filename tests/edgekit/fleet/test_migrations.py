"""Store migrations: a store written by an older edgekit opens, migrates, keeps every row and takes new data.

The fixtures under data/ were written by edgekit's store code as it was before migrations existed (schema
version 1, no schema_version table): ``fleet-v1.sqlite`` is that SQLite file, ``fleet-v1.postgresql.sql`` a
``pg_dump --inserts`` of the same data written to PostgreSQL.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import psycopg
import pytest
from stores import store_url

from edgekit.fleet.store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLES,
    TELEMETRY_COLUMNS,
    Store,
    StoreTooNew,
    digest,
    message,
)

DATA = Path(__file__).parent / "data"
V1_COUNTS = {"devices": 2, "telemetry": 6, "events": 2, "deployments": 1, "rollouts": 1}


def v1_store(engine: str, url: str, tmp_path: Path) -> None:
    if engine == "sqlite":
        shutil.copyfile(DATA / "fleet-v1.sqlite", url[len("sqlite:///") :])
        return
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute((DATA / "fleet-v1.postgresql.sql").read_text())


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_store_written_before_migrations_opens_migrates_and_keeps_every_row(engine, tmp_path):
    with store_url(engine, tmp_path) as url:
        v1_store(engine, url, tmp_path)
        assert Store(url, migrate=False).version() == 1
        store = Store(url)
        assert [m.version for m in store.applied] == [m.version for m in MIGRATIONS[1:]]
        assert store.version() == SCHEMA_VERSION
        assert store.counts() == {table: V1_COUNTS.get(table, 0) for table in TABLES}
        rows = store.telemetry("demo", "cam-2")
        assert [r["inferences"] for r in rows] == [200, 201, 202]  # the renamed columns kept their values
        assert rows[0]["p95_ms"] == 3.5 and rows[0]["throughput_per_s"] == 20.0
        assert rows[0]["energy_per_inference_mj"] == 160.0 and rows[0]["dropped_messages"] == 0
        assert set(TELEMETRY_COLUMNS) <= set(rows[0])
        cam1 = store.device("demo", "cam-1")
        assert cam1["labels"] == {"group": "lobby"} and cam1["package_version"] == "1.0.0"
        assert store.rollouts("demo")[0]["id"] == "r1" and len(store.deployments("demo")) == 1
        # new telemetry goes in under the new names
        body = {"inferences": 7, "latency_ms": {"p95": 9.0}, "throughput_per_s": 0.7, "package": {"version": "2"}}
        payload = repr(body).encode()
        store.ingest([message("demo", "cam-1", "telemetry", body, digest("t", payload), time.time())])
        assert store.telemetry("demo", "cam-1")[-1]["p95_ms"] == 9.0
        assert Store(url).applied == []  # opening again applies nothing
        store.close()


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_store_newer_than_this_edgekit_is_refused_untouched(engine, tmp_path):
    with store_url(engine, tmp_path) as url:
        store = Store(url)
        store.quarantine([("edgekit/v1/lab/a/telemetry", b"x", "test", time.time())])
        with store.tx() as cur:
            cur.execute("INSERT INTO schema_version (version, applied, what) VALUES (?, ?, ?)",
                        (SCHEMA_VERSION + 1, time.time(), "from a newer edgekit"))  # fmt: skip
        store.close()
        with pytest.raises(StoreTooNew, match=rf"schema version {SCHEMA_VERSION + 1}, newer.*upgrade edgekit"):
            Store(url)
        assert Store(url, migrate=False).counts()["quarantine"] == 1


def test_fleet_migrate_reports_the_versions(cli, tmp_path):
    db = tmp_path / "fleet.db"
    shutil.copyfile(DATA / "fleet-v1.sqlite", db)
    code, out, err = cli("fleet", "migrate", "--db", f"sqlite:///{db}", "--format", "json")
    assert code == 0, err
    import json

    done = json.loads(out)
    assert (
        done["from"] == 1
        and done["to"] == SCHEMA_VERSION
        and [m["version"] for m in done["applied"]] == [m.version for m in MIGRATIONS[1:]]
    )
    code, out, _ = cli("fleet", "migrate", "--db", f"sqlite:///{db}")
    assert code == 0 and f"already at schema version {SCHEMA_VERSION}" in out


def test_commands_that_read_a_store_refuse_a_sqlite_file_that_is_not_there(cli, tmp_path):
    """A typo in --db would otherwise create an empty store and report an empty fleet."""
    missing = tmp_path / "typo" / "fleet.db"
    for args in (("fleet", "status"), ("fleet", "migrate"), ("fleet", "events"), ("fleet", "label", "d", "a=b"),
                 ("fleet", "report", "--out", tmp_path / "r.html")):  # fmt: skip
        code, _, err = cli(*args, "--db", f"sqlite:///{missing}")
        assert code != 0 and "Traceback" not in err and f"no fleet store at {missing}" in " ".join(err.split()), err
    assert not missing.exists() and not missing.parent.exists()
