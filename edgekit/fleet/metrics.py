"""``edgekit serve --metrics-port``: the fleet in Prometheus text format (exposition format 0.0.4).

Written with the standard library's HTTP server: one endpoint, a few gauges and counters, no need for a
client library. Values come from the serve process's counters and the store's latest telemetry per device.
"""

from __future__ import annotations

import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edgekit_agent.schema import TELEMETRY

from edgekit.errors import EdgekitError


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(server: Any, store: Any) -> str:
    lines = [
        "# HELP edgekit_chunks_served_total Package chunks answered by this serve process.",
        "# TYPE edgekit_chunks_served_total counter",
        f"edgekit_chunks_served_total {server.served}",
        "# HELP edgekit_chunk_requests_refused_total Malformed or unanswerable chunk requests.",
        "# TYPE edgekit_chunk_requests_refused_total counter",
        f"edgekit_chunk_requests_refused_total {server.refused}",
        "# HELP edgekit_serve_failures_total Unexpected errors in serve's workers (each logged; the workers go on).",
        "# TYPE edgekit_serve_failures_total counter",
        f"edgekit_serve_failures_total {server.failures}",
        "# HELP edgekit_serve_healthy 1 while every long-lived serve thread is running.",
        "# TYPE edgekit_serve_healthy gauge",
        f"edgekit_serve_healthy {int(server.healthy)}",
    ]
    reconciler = server.reconciler
    if reconciler is not None:
        lines += [
            "# HELP edgekit_reconciler_resends_total Desired states sent again to divergent devices.",
            "# TYPE edgekit_reconciler_resends_total counter",
            f"edgekit_reconciler_resends_total {reconciler.stats.resends}",
            "# HELP edgekit_reconciler_leader 1 while this serve worker holds the reconciler lease.",
            "# TYPE edgekit_reconciler_leader gauge",
            f"edgekit_reconciler_leader {int(reconciler.stats.leader)}",
        ]
    if server.ingest is not None:
        for name, value in server.ingest.stats.to_json().items():
            if isinstance(value, int):
                lines += [f"# TYPE edgekit_ingest_{name}_total counter", f"edgekit_ingest_{name}_total {value}"]
    gauges = {
        "device_online": ("1 when the device's retained state is online", lambda d, t: int(d["status"] == "online")),
        "device_last_seen_seconds": ("Unix time of the last message", lambda d, t: d["last_seen"]),
    }
    resends = store.reconcile_rows()
    gauges["device_desired_resends"] = (
        "times serve sent the desired state again (reconciler)",
        lambda d, t: (resends.get((d["fleet"], d["device"])) or {}).get("resends", 0),
    )
    gauges["device_stuck"] = (
        "1 when the device stays on another package after every resend",
        lambda d, t: (resends.get((d["fleet"], d["device"])) or {}).get("stuck", 0),
    )
    for f in TELEMETRY:  # every numeric telemetry field, under its one name (power_w carries its source)
        if f.numeric:
            gauges[f"device_{f.name}"] = (f"{f.help} (latest telemetry)", lambda d, t, name=f.name: t.get(name))
    fleets = sorted(r["fleet"] for r in store.query("SELECT DISTINCT fleet FROM devices"))
    per_fleet = [(f, store.devices(f), store.latest_telemetry(f)) for f in fleets]
    for name, (help_text, get) in gauges.items():
        lines += [f"# HELP edgekit_{name} {help_text}", f"# TYPE edgekit_{name} gauge"]
        for fleet, devices, latest in per_fleet:
            for d in devices:
                t = latest.get(d["device"], {})
                value = get(d, t)
                if value is None or not math.isfinite(float(value)):
                    continue  # Prometheus would take +Inf, but a device that reports it is broken, not infinite
                labels = f'fleet="{_escape(fleet)}",device="{_escape(d["device"])}"'
                if name == "device_power_w":
                    labels += f',source="{_escape(t.get("power_source") or "none")}"'
                lines.append(f"edgekit_{name}{{{labels}}} {float(value):g}")
    return "\n".join(lines) + "\n"


class MetricsUnavailable(EdgekitError):
    pass


class MetricsServer:
    def __init__(self, port: int, server: Any, db: str) -> None:
        from edgekit.fleet.store import Store

        store = Store(db)
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served")
                    return
                with lock:
                    body = render(server, store).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as exc:
            raise MetricsUnavailable(
                f"cannot serve metrics on 127.0.0.1:{port} ({exc.strerror or exc}); choose another --metrics-port"
            ) from None
        self.port = self.httpd.server_address[1]

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="edgekit-metrics").start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
