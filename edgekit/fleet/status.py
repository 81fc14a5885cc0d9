"""The fleet's read model: each device joined with its latest telemetry, as ``fleet status``, ``fleet watch``,
the HTML report and the demo show it. It lives below the CLI so that every one of them reads the same rows.

Telemetry fields come from ``edgekit_agent.schema.TELEMETRY`` under their one name, so a field added there
appears here (and in ``fleet status --format json``) without another edit.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from edgekit_agent.schema import TELEMETRY

from edgekit.console import finite


def status_rows(store: Any, fleet: str) -> list[dict[str, Any]]:
    """One row per device that sent a valid state: online, package, runtime, its latest telemetry, labels."""
    latest = store.latest_telemetry(fleet)
    reconcile = {d: r for (_f, d), r in store.reconcile_rows(fleet).items()}
    rows = []
    for d in store.devices(fleet):
        t = latest.get(d["device"], {})
        caps = d["capabilities"] if isinstance(d["capabilities"], dict) else {}
        row = {
            "device": d["device"], "profile": d["profile"], "online": d["status"] == "online",
            "package": d["package_name"], "version": d["package_version"], "runtime": d["runtime"],
            "arch": _text(caps.get("arch")), "emulated": caps.get("emulated") is True,
        }  # fmt: skip
        row |= {f.name: bool(t.get(f.name)) if f.kind == "bool" else t.get(f.name) for f in TELEMETRY}
        r = reconcile.get(d["device"]) or {}
        row |= {"desired_resends": r.get("resends", 0), "stuck": bool(r.get("stuck")), "stuck_reason": r.get("reason")}
        row |= {"labels": d["labels"], "last_seen": d["last_seen"]}
        rows.append(finite(row))
    return rows


def _text(value: Any) -> str | None:
    """A short string a device reported, or None (a hostile device may send anything in capabilities)."""
    return value[:32] if isinstance(value, str) else None


def when(epoch: float | None) -> str:
    if not epoch:
        return "never"
    age = time.time() - epoch
    if age < 120:
        return f"{age:.0f} s ago"
    if age < 7200:
        return f"{age / 60:.0f} min ago"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def status_table(rows: list[dict[str, Any]], fleet: str) -> Any:
    from rich.table import Table

    def num(v: Any, spec: str) -> str:
        return "–" if v is None else format(v, spec)

    table = Table(title=f"fleet {fleet}: {sum(r['online'] for r in rows)}/{len(rows)} online", title_justify="left")
    for col in ("device", "profile", "arch", "online", "package", "runtime", "p50 ms", "p95 ms", "inf/s",
                "power W", "mJ/inf", "last seen"):  # fmt: skip
        table.add_column(col)
    # language-model devices (generate/request): their own figures, in columns only when one reported them
    generative = any(r["tokens_generated"] is not None or r["decode_tokens_per_s"] is not None for r in rows)
    if generative:
        for col in ("tok/s", "TTFT p50/p95 ms", "mJ/token", "peak RSS MB"):
            table.add_column(col)
    for r in rows:
        power = "unavailable" if r["power_w"] is None else f"{r['power_w']:.2f} ({r['power_source']})"
        estimated = r["energy_is_estimate"] and r["energy_per_inference_mj"] is not None
        energy = num(r["energy_per_inference_mj"], ".3f") + (" est." if estimated else "")
        package = (f"{r['package']}@{r['version']}" if r["package"] else "–") + (" [red]stuck[/]" if r["stuck"] else "")
        table.add_row(
            r["device"], r["profile"] or "?", (r["arch"] or "?") + (" (emulated)" if r["emulated"] else ""),
            "[green]yes[/]" if r["online"] else "[red]no[/]", package,
            r["runtime"] or "–",
            num(r["p50_ms"], ".3f"), num(r["p95_ms"], ".3f"), num(r["throughput_per_s"], ".1f"), power, energy,
            when(r["last_seen"]),
            *(_generation_cells(r) if generative else ()),
        )  # fmt: skip
    return table


def _generation_cells(r: dict[str, Any]) -> list[str]:
    def num(v: Any, spec: str) -> str:
        return "–" if v is None else format(v, spec)

    estimated = r["energy_is_estimate"] and r["energy_per_token_mj"] is not None
    ttft = "–" if r["ttft_p50_ms"] is None else f"{r['ttft_p50_ms']:.1f}/{r['ttft_p95_ms']:.1f}"
    rss = None if r["peak_rss_bytes"] is None else r["peak_rss_bytes"] / 2**20
    return [num(r["decode_tokens_per_s"], ".1f"), ttft, num(r["energy_per_token_mj"], ".2f") + (" est." if estimated
            else ""), num(rss, ".0f")]  # fmt: skip


def worker_lines(store: Any, *, within: float = 15.0) -> list[str]:
    """One line per serve worker that sent a heartbeat lately (rich markup): healthy or not, and why."""
    workers = store.workers(within)
    if not workers:
        return [f"[yellow]no edgekit serve worker has reported in the last {within:.0f} s[/] (is serve running "
                "on this --db?)"]  # fmt: skip
    return [
        (f"serve {w['holder']}: [green]healthy[/]" if w["healthy"] else f"serve {w['holder']}: [red]UNHEALTHY[/]")
        + f" ({w['detail']})"
        for w in workers
    ]
