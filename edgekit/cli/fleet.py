"""Fleet commands: serve, deploy, rollout, and ``edgekit fleet label|status|watch|history|events|report``."""

from __future__ import annotations

import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from edgekit.cli import _options as opt
from edgekit.console import err, out, print_json

app = typer.Typer(help="Look at and organise the fleet: status, live watch, history, events, labels, report.",
                  no_args_is_help=True)  # fmt: skip


def _store(db: str, *, existing: bool = False) -> Any:
    """``existing``: a command that only reads (or labels) a store refuses a SQLite file that is not there: a
    typo in --db would otherwise create an empty store and report an empty fleet."""
    from edgekit.fleet.store import Store, StoreUnreachable, sqlite_path

    path = sqlite_path(db)
    if existing and path is not None and not path.exists():
        raise StoreUnreachable(f"no fleet store at {path}; check --db (edgekit serve creates it when it starts)")
    return Store(db)


def _wait_for_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()


# -- serve ----------------------------------------------------------------------------------------------
def serve(
    packages: opt.Packages = opt.DEFAULT_PACKAGES,
    broker: opt.Broker = opt.DEFAULT_BROKER,
    db: opt.Db = opt.DEFAULT_DB,
    no_ingest: Annotated[bool, typer.Option("--no-ingest", help="only answer chunk requests")] = False,
    metrics_port: Annotated[int | None, typer.Option(help="serve Prometheus metrics on 127.0.0.1:PORT/metrics")] = None,
    session: Annotated[
        str | None,
        typer.Option(help="persistent MQTT session NAME: the broker keeps what devices report while serve is down"),
    ] = None,
    share: Annotated[
        str | None,
        typer.Option(help="shared-subscription GROUP ($share/GROUP/…): start several serve workers with the same one"),
    ] = None,
    reconcile_grace: Annotated[
        float,
        typer.Option(help="seconds a device may run other than its desired package before serve resends it (0: off)"),
    ] = 60.0,
    nats: Annotated[
        str | None,
        typer.Option(
            help="nats://HOST:PORT[,…] of a NATS cluster with MQTT enabled: take requests through a queue group and "
            "reports through a durable JetStream consumer (GROUP from --share, default edgekit-serve)"
        ),
    ] = None,
) -> None:
    """Answer devices' chunk requests and ingest their state, telemetry and events until Ctrl-C."""
    from edgekit.fleet.ingest import Ingest
    from edgekit.fleet.serve import PackageServer

    ingest = None if no_ingest else Ingest(_store(db))
    server = PackageServer(packages, broker, ingest=ingest, session=session, share=share, nats=nats,
                           reconcile_grace=reconcile_grace)  # fmt: skip
    metrics = None
    if metrics_port is not None:  # before anything starts: a busy port must not leave serve half up
        from edgekit.fleet.metrics import MetricsServer

        metrics = MetricsServer(metrics_port, server, db)
    index = server.rescan()
    server.start()
    if metrics is not None:
        metrics.start()
    err.print(f"serving {len(index)} package(s) from {packages} on {nats or broker}"
              + ("" if ingest is None else f"; ingesting into {db}")
              + ("" if metrics is None else f"; metrics on http://127.0.0.1:{metrics_port}/metrics"),
              highlight=False)  # fmt: skip
    for sha, path in sorted(index.items(), key=lambda kv: kv[1].name):
        err.print(f"  {path.name}  size {path.stat().st_size:,}  sha256 {sha}", highlight=False)
    _wait_for_signal()
    if metrics is not None:
        metrics.stop()
    server.stop()
    stats = "" if ingest is None else f"; ingest {ingest.stats.to_json()}"
    err.print(f"served {server.served} chunk(s), refused {server.refused}{stats}", highlight=False)


# -- deploy ---------------------------------------------------------------------------------------------
def deploy(
    package: Annotated[Path, typer.Argument(help="a signed .edgepkg")],
    device: Annotated[list[str], typer.Option(help="device id; repeatable")] = [],  # noqa: B006 (typer idiom)
    group: opt.Group = None,
    fleet: opt.Fleet = opt.DEFAULT_FLEET,
    broker: opt.Broker = opt.DEFAULT_BROKER,
    db: opt.Db = opt.DEFAULT_DB,
    packages: opt.Packages = opt.DEFAULT_PACKAGES,
    fmt: opt.Format = "table",
) -> None:
    """Publish the retained desired state: the devices download, verify, smoke-test and switch."""
    from edgekit.fleet.deploy import deploy_package

    opt.check_format(fmt)
    rel, names = deploy_package(_store(db), broker, fleet, package, packages, devices=device, group=group)
    if fmt == "json":
        print_json({"package": rel.to_json(), "devices": names})
        return
    d = rel.desired
    out.print(f"desired {d.name} {d.version} (counter {d.counter}) published to {len(names)} device(s): "
              f"{', '.join(names)}", highlight=False)  # fmt: skip


# -- rollout --------------------------------------------------------------------------------------------
def rollout(
    target: Annotated[str, typer.Argument(help="a .edgepkg to roll out, or status | resume | abort")],
    group: opt.Group = None,
    waves: Annotated[str, typer.Option(help="cumulative waves: counts or percentages")] = "1,10%,50%,100%",
    max_p95_regression: Annotated[str, typer.Option(help="stop when p95 grows more than this")] = "20%",
    min_p95_increase: Annotated[
        str, typer.Option(help="ignore p95 rises smaller than this (e.g. 2ms): noise on sub-ms models")
    ] = "0ms",
    max_error_rate: Annotated[str, typer.Option(help="stop when the error rate passes this")] = "1%",
    min_soak: Annotated[str, typer.Option(help="healthy telemetry needed per wave (e.g. 60s, 5m)")] = "60s",
    install_timeout: Annotated[str, typer.Option(help="time a wave has to install")] = "5m",
    rollout_id: Annotated[str | None, typer.Option("--id", help="rollout id (default: the latest)")] = None,
    key: opt.Key = None,
    fleet: opt.Fleet = opt.DEFAULT_FLEET,
    broker: opt.Broker = opt.DEFAULT_BROKER,
    db: opt.Db = opt.DEFAULT_DB,
    packages: opt.Packages = opt.DEFAULT_PACKAGES,
    fmt: opt.Format = "table",
) -> None:
    """Canary rollout in waves, compared with the same devices on the previous version; a breach rolls back.

    State lives in the store: `edgekit rollout status`, `resume` (after a restart) and `abort` work from any
    terminal. Rolling back re-issues the previous model under a new counter, so it needs --key.
    """
    from edgekit.fleet import rollout as ro

    opt.check_format(fmt)
    store = _store(db, existing=True)
    key = key or _default_key()

    def runner(doc: dict[str, Any]) -> ro.Runner:
        log = (lambda m: err.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {m}", highlight=False)) if fmt == "table" \
            else (lambda _m: None)  # fmt: skip
        return ro.Runner(store, broker, doc, key=key, repository=packages, on_log=log)

    if target == "status":
        doc = ro.find(store, fleet, rollout_id)
    elif target == "resume":
        doc = runner(ro.find(store, fleet, rollout_id)).run()
    elif target == "abort":
        doc = ro.abort(store, ro.find(store, fleet, rollout_id), runner)
    else:
        if group is None:
            raise opt.OptionInvalid("edgekit rollout PKG needs --group G (or use status | resume | abort)")
        policy = ro.Policy(
            max_p95_regression=opt.percent(max_p95_regression, "--max-p95-regression"),
            min_p95_increase_ms=opt.millis(min_p95_increase, "--min-p95-increase"),
            max_error_rate=opt.percent(max_error_rate, "--max-error-rate"),
            min_soak=opt.duration(min_soak, "--min-soak"),
            install_timeout=opt.duration(install_timeout, "--install-timeout"),
        )
        package = Path(target)
        if not package.is_file():
            raise opt.OptionInvalid(f"{target} is neither a package file nor status | resume | abort")
        doc = ro.plan(store, fleet, package, packages, group, waves.split(","), policy)
        if fmt == "table":
            err.print(f"rollout {doc['id']}: {len(doc['waves'])} wave(s) over "
                      f"{sum(len(w['devices']) for w in doc['waves'])} device(s)", highlight=False)  # fmt: skip
        doc = runner(doc).run()
    if fmt == "json":
        print_json(doc)
    else:
        _render_rollout(doc)
    if target != "status" and doc["status"] in ("rolled_back", "aborted"):
        raise typer.Exit(3)  # the rollout did not land: scripts must notice


def _default_key() -> Path | None:
    from edgekit.keys import DEFAULT_NAME, default_dir

    path = default_dir() / f"{DEFAULT_NAME}.key"
    return path if path.exists() else None


def _render_rollout(doc: dict[str, Any]) -> None:
    from rich.table import Table

    p = doc["package"]
    table = Table(title=f"rollout {doc['id']}: {p['name']} {p['version']} → group {doc['group']} "
                        f"({doc['status']})", title_justify="left")  # fmt: skip
    for col in ("wave", "devices", "status", "p95 before", "p95 after", "errors after", "note"):
        table.add_column(col)
    for i, w in enumerate(doc["waves"], 1):
        base, seen = w.get("baseline") or {}, w.get("observed") or {}
        ms = lambda v: "–" if v is None else f"{v:.3f} ms"  # noqa: E731
        table.add_row(
            f"{i} ({w['spec']})", str(len(w["devices"])), w["status"], ms(base.get("p95_ms")),
            ms(seen.get("p95_ms")), "–" if seen.get("error_rate") is None else f"{seen['error_rate']:.2%}",
            w.get("reason", ""),
        )  # fmt: skip
    out.print(table)
    if doc.get("reason"):
        out.print(f"reason: {doc['reason']}", highlight=False)


# -- fleet label / status / watch / history / events / report -------------------------------------------
@app.command()
def label(
    device: Annotated[str, typer.Argument(help="device id")],
    labels: Annotated[list[str], typer.Argument(help="key=value to set, key= to remove")],
    fleet: opt.Fleet = opt.DEFAULT_FLEET,
    db: opt.Db = opt.DEFAULT_DB,
    fmt: opt.Format = "table",
) -> None:
    """Label a device (groups for deploy and rollout: --group key=value, or a 'group' label's value)."""
    opt.check_format(fmt)
    changes: dict[str, str | None] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise opt.OptionInvalid(f"label {item!r} must be key=value (or key= to remove it)")
        changes[key] = value or None
    result = _store(db, existing=True).label(fleet, device, changes)
    if fmt == "json":
        print_json({"device": device, "labels": result})
    else:
        out.print(f"{device}: " + (", ".join(f"{k}={v}" for k, v in sorted(result.items())) or "no labels"))


@app.command()
def status(fleet: opt.Fleet = opt.DEFAULT_FLEET, db: opt.Db = opt.DEFAULT_DB, fmt: opt.Format = "table") -> None:
    """One row per device: online, package, runtime, latency, throughput, power, energy, last seen."""
    from edgekit.fleet.status import status_rows, status_table, worker_lines

    opt.check_format(fmt)
    store = _store(db, existing=True)
    rows = status_rows(store, fleet)
    if fmt == "json":
        print_json(rows)
        return
    if not rows:
        out.print(f"no device has reported in fleet {fleet!r} yet (is edgekit serve ingesting into this --db?)")
    else:
        out.print(status_table(rows, fleet))
    for line in worker_lines(store):
        out.print(line, highlight=False)


@app.command()
def watch(
    fleet: opt.Fleet = opt.DEFAULT_FLEET,
    db: opt.Db = opt.DEFAULT_DB,
    interval: Annotated[float, typer.Option(help="seconds between refreshes")] = 2.0,
    count: Annotated[int | None, typer.Option(help="stop after this many refreshes (default: Ctrl-C)")] = None,
) -> None:
    """The status table, refreshed live until Ctrl-C."""
    from rich.live import Live

    from edgekit.fleet.status import status_rows, status_table

    store = _store(db, existing=True)
    n = 0
    with Live(status_table(status_rows(store, fleet), fleet), console=out, auto_refresh=False) as live:
        while count is None or n < count:
            n += 1
            live.update(status_table(status_rows(store, fleet), fleet), refresh=True)
            if count is not None and n >= count:
                break
            time.sleep(interval)


@app.command()
def history(
    device: Annotated[str, typer.Argument(help="device id")],
    metric: Annotated[
        str, typer.Option(help="a telemetry field: p50_ms, p95_ms, p99_ms, throughput_per_s, power_w, …")
    ] = "p95_ms",
    since: opt.Since = "1h",
    fleet: opt.Fleet = opt.DEFAULT_FLEET,
    db: opt.Db = opt.DEFAULT_DB,
    fmt: opt.Format = "table",
) -> None:
    """A device's telemetry metric over time, with the package version that produced each value."""
    from rich.table import Table

    from edgekit.fleet.store import METRICS

    opt.check_format(fmt)
    if metric not in METRICS:
        raise opt.OptionInvalid(f"--metric {metric!r} is not one of {', '.join(METRICS)}")
    store = _store(db, existing=True)
    store.device(fleet, device)
    rows = store.telemetry(fleet, device, since=time.time() - opt.duration(since, "--since"))
    points = [{"time": r["t"], "version": r["package_version"], metric: r[metric]} for r in rows]
    if fmt == "json":
        print_json(points)
        return
    table = Table(title=f"{device} {metric} over the last {since}", title_justify="left")
    for col in ("time (UTC)", "version", metric):
        table.add_column(col)
    for p in points:
        stamp = datetime.fromtimestamp(p["time"], UTC).strftime("%H:%M:%S")
        table.add_row(stamp, p["version"] or "–", "–" if p[metric] is None else f"{p[metric]:.4g}")
    out.print(table if points else f"no telemetry from {device} in the last {since}")


@app.command()
def events(
    device: Annotated[str | None, typer.Option(help="only this device")] = None,
    since: opt.Since = "1d",
    limit: Annotated[int, typer.Option(help="at most this many (the newest)")] = 50,
    fleet: opt.Fleet = opt.DEFAULT_FLEET,
    db: opt.Db = opt.DEFAULT_DB,
    fmt: opt.Format = "table",
) -> None:
    """Updates, rollbacks, fallbacks and errors the devices reported."""
    from rich.table import Table

    opt.check_format(fmt)
    store = _store(db, existing=True)
    if device:
        store.device(fleet, device)
    rows = store.events(fleet, device, since=time.time() - opt.duration(since, "--since"), limit=limit)
    if fmt == "json":
        print_json(rows)
        return
    table = Table(title=f"events in fleet {fleet}", title_justify="left")
    for col in ("time (UTC)", "device", "kind", "details"):
        table.add_column(col)
    skip = {"kind", "device", "time"}
    for r in rows:
        details = ", ".join(f"{k}={v}" for k, v in sorted(r["body"].items()) if k not in skip)
        stamp = datetime.fromtimestamp(r["t"], UTC).strftime("%m-%d %H:%M:%S")
        table.add_row(stamp, r["device"], r["kind"], details[:160])
    out.print(table if rows else "no events")


@app.command()
def report(
    out_path: Annotated[Path, typer.Option("--out", help="the HTML file to write")] = Path("fleet-report.html"),
    since: opt.Since = "1d",
    fleet: opt.Fleet = opt.DEFAULT_FLEET,
    db: opt.Db = opt.DEFAULT_DB,
) -> None:
    """One self-contained HTML file: latency per device, power/energy, versions, rollout timeline."""
    from edgekit.fleet.report import write_report

    path = write_report(_store(db, existing=True), fleet, out_path, since=time.time() - opt.duration(since, "--since"))
    out.print(f"wrote {path} ({path.stat().st_size:,} bytes)", highlight=False)


@app.command()
def bench(
    package: Annotated[Path, typer.Argument(help="a signed .edgepkg (it is benched, never installed)")],
    device: Annotated[list[str], typer.Option(help="device id; repeatable")] = [],  # noqa: B006 (typer idiom)
    group: opt.Group = None,
    runs: Annotated[int, typer.Option("-n", "--runs", help="timed runs per batch size")] = 200,
    warmup: Annotated[int, typer.Option(help="untimed runs first")] = 20,
    batch: Annotated[list[int], typer.Option(help="batch size; repeatable (default 1)")] = [],  # noqa: B006
    max_seconds: Annotated[float, typer.Option(help="the device stops timing after this long")] = 120.0,
    timeout: Annotated[str, typer.Option(help="how long to wait for every answer, download included")] = "5m",
    fleet: opt.Fleet = opt.DEFAULT_FLEET,
    broker: opt.Broker = opt.DEFAULT_BROKER,
    db: opt.Db = opt.DEFAULT_DB,
    packages: opt.Packages = opt.DEFAULT_PACKAGES,
    fmt: opt.Format = "table",
) -> None:
    """Time a package on devices without deploying it: each fetches it from edgekit serve, verifies it as an
    install would, runs it and deletes it; the answers are kept in the store (fleet report shows them)."""
    from edgekit.fleet.bench import Options, bench_package, summary_rows

    opt.check_format(fmt)
    options = Options(runs=runs, warmup=warmup, batch_sizes=tuple(batch) or (1,), max_seconds=max_seconds,
                      timeout=opt.duration(timeout, "--timeout"))  # fmt: skip
    rel, answers = bench_package(_store(db), broker, fleet, package, packages, devices=device, group=group,
                                 options=options, progress=lambda m: err.print(f"· {m}", highlight=False))  # fmt: skip
    rows = summary_rows(answers.by_device)
    if fmt == "json":
        print_json({"package": rel.to_json(), "answers": answers.by_device, "rows": rows})
    else:
        out.print(_bench_table(rows, f"{rel.desired.name} {rel.desired.version} on the devices"))
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise typer.Exit(3)


def _bench_table(rows: list[dict[str, Any]], title: str) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in ("device", "status", "runtime", "batch", "p50 ms", "p95 ms", "items/s", "sample", "RSS added",
                "marginal mJ/inf", "serving p50 ms"):  # fmt: skip
        table.add_column(col)
    for r in rows:

        def num(v: Any, f: str = ".3f") -> str:
            return "-" if v is None else format(v, f)

        energy = num(r["marginal_energy_mj"]) + (" (est.)" if r["energy_is_estimate"] and r["marginal_energy_mj"]
                                                 is not None else "")  # fmt: skip
        table.add_row(r["device"], r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}",
                      r["runtime"] or "-", num(r["batch"], "d") if r["batch"] else "-", num(r["p50_ms"]),
                      num(r["p95_ms"]), num(r["items_per_s"], ".1f") if r["error"] is None else r["error"],
                      {True: "ok", False: "differs", None: "-"}[r["sample_ok"]],
                      "-" if r["rss_added_bytes"] is None else f"{r['rss_added_bytes'] / 2**20:.1f} MB", energy,
                      num(r["serving_p50_ms"]))  # fmt: skip
    return table


def _store_unmigrated(db: str) -> int:
    from edgekit.fleet.store import Store, StoreUnreachable, sqlite_path

    path = sqlite_path(db)
    if path is not None and not path.exists():
        raise StoreUnreachable(f"no fleet store at {path}; nothing to migrate (check --db)")
    return Store(db, migrate=False).version()


@app.command()
def migrate(db: opt.Db = opt.DEFAULT_DB, fmt: opt.Format = "table") -> None:
    """Bring the fleet store's schema up to this edgekit's version (serve and every command also do this)."""
    from edgekit.fleet.store import Store

    opt.check_format(fmt)
    before = _store_unmigrated(db)
    store = Store(db)
    done = {"db": db, "from": before, "to": store.version(),
            "applied": [{"version": m.version, "what": m.what} for m in store.applied]}  # fmt: skip
    if fmt == "json":
        print_json(done)
    elif not store.applied:
        out.print(f"{db}: already at schema version {done['to']}", highlight=False)
    else:
        for m in done["applied"]:
            out.print(f"applied {m['version']}: {m['what']}", highlight=False)
        out.print(f"{db}: schema version {before} -> {done['to']}", highlight=False)


@app.command()
def generate(
    device: Annotated[str, typer.Argument(help="device id (it must serve a language-model package)")],
    prompt: Annotated[str, typer.Argument(help="the prompt; with --chat, the user's message")],
    chat: Annotated[bool, typer.Option("--chat", help="send as a chat message (the model's chat template)")] = False,
    system: Annotated[str | None, typer.Option(help="with --chat: a system message first")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="at most this many new tokens (the device has a limit)")] = 128,
    temperature: Annotated[float, typer.Option(help="0: greedy (the same answer every time)")] = 0.0,
    stop: Annotated[list[str], typer.Option(help="stop before this text; repeatable")] = [],  # noqa: B006
    seed: Annotated[int, typer.Option(help="sampling seed (temperature > 0)")] = 0,
    timeout: Annotated[str, typer.Option(help="give up after this long without an answer")] = "60s",
    fleet: opt.Fleet = opt.DEFAULT_FLEET,
    broker: opt.Broker = opt.DEFAULT_BROKER,
    fmt: opt.Format = "table",
) -> None:
    """Generate text on a device and print it as it streams in (Ctrl-C cancels on the device too)."""
    from edgekit.fleet.generate import GenerateFailed
    from edgekit.fleet.generate import generate as start

    opt.check_format(fmt)
    request: dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": temperature, "stop": stop,
                               "seed": seed}  # fmt: skip
    if chat:
        request["messages"] = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}]  # fmt: skip
    elif system:
        raise opt.OptionInvalid("--system needs --chat")
    else:
        request["prompt"] = prompt
    stream = start(broker, fleet, device, request, timeout=opt.duration(timeout, "--timeout"))
    messages: list[dict[str, Any]] = []
    try:
        for message in stream:
            messages.append(message)
            if fmt == "table" and message.get("text"):
                out.print(message["text"], end="", markup=False, highlight=False, soft_wrap=True)
    except KeyboardInterrupt:
        stream.cancel()
        err.print("\ncancelled", highlight=False)
        raise typer.Exit(130) from None
    finally:
        stream.close()
    final = messages[-1]
    if fmt == "json":
        print_json({"id": stream.id, "device": device, "messages": messages})
    if "error" in final:
        raise GenerateFailed(f"{device}: {final['error']}")
    if fmt == "table":
        out.print()
        rate = "–" if final.get("tokens_per_s") is None else f"{final['tokens_per_s']:.1f}"
        ttft = "–" if final.get("ttft_ms") is None else f"{final['ttft_ms']:.0f}"
        runtime = (final.get("model") or {}).get("runtime", "?")
        err.print(f"[dim]{final.get('completion_tokens')} tokens ({final.get('finish_reason')}), first token "
                  f"{ttft} ms, {rate} tok/s on {device} ({runtime})[/]")  # fmt: skip
