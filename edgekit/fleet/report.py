"""``edgekit fleet report``: one self-contained HTML file (plots inlined as PNG data URIs, no scripts).

Plots: p95 latency over time per device (version changes marked), power and energy per inference per
device (estimates drawn dashed and labelled), devices per package version over time, and the rollout
timeline (waves as bars, coloured by outcome). The status table and the latest events complete it.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgekit.atomic import atomic_file

STALE_S = 60.0  # a device silent this long no longer counts in the versions plot


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _dates(values: list[float]) -> list[datetime]:
    return [datetime.fromtimestamp(v, UTC) for v in values]


def _by_device(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["device"], []).append(r)
    return out


def _ok(value: Any) -> bool:
    """A value a plot can take: a store written before values were checked may hold an infinity."""
    return value is not None and math.isfinite(value)


def _latency(rows: list[dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6))
    for device, series in sorted(_by_device(rows).items()):
        pts = [r for r in series if _ok(r["p95_ms"])]
        if not pts:
            continue
        (line,) = ax.plot(_dates([r["received"] for r in pts]), [r["p95_ms"] for r in pts], marker=".", label=device)
        for prev, cur in itertools.pairwise(pts):
            if cur["package_version"] != prev["package_version"]:
                ax.axvline(_dates([cur["received"]])[0], color=line.get_color(), alpha=0.3, linestyle=":")
    ax.set_ylabel("p95 latency (ms)")
    ax.set_title("Inference latency per device (dotted: version change)")
    if ax.lines:
        ax.legend(fontsize=7, ncol=4)
    fig.autofmt_xdate()
    return _png(fig)


def _power(rows: list[dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 5.2), sharex=True)
    for device, series in sorted(_by_device(rows).items()):
        pts = [r for r in series if _ok(r["power_w"])]
        if not pts:
            continue
        estimate = any(r["energy_is_estimate"] for r in pts)
        style = "--" if estimate else "-"
        source = pts[-1]["power_source"]
        when = _dates([r["received"] for r in pts])
        top.plot(when, [r["power_w"] for r in pts], style, label=f"{device} ({source})")
        energy = [
            (w, r["energy_per_inference_mj"])
            for w, r in zip(when, pts, strict=True)
            if _ok(r["energy_per_inference_mj"])
        ]
        if energy:
            bottom.plot([e[0] for e in energy], [e[1] for e in energy], style, label=device)
    top.set_ylabel("power (W)")
    top.set_title("Power and energy per inference (dashed: estimate from the profile's power model)")
    bottom.set_ylabel("mJ / inference (log)")
    if bottom.lines:
        bottom.set_yscale("log")  # the first interval after a start (few inferences) is orders of magnitude up
    for ax in (top, bottom):
        if ax.lines:
            ax.legend(fontsize=7, ncol=4)
    if not top.lines:
        top.text(0.5, 0.5, "no power readings (source: none)", ha="center", transform=top.transAxes)
    fig.autofmt_xdate()
    return _png(fig)


def _versions(rows: list[dict[str, Any]]) -> str:
    """Devices per version in time buckets, from the version each device's telemetry reported."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2))
    if rows:
        start, end = rows[0]["received"], rows[-1]["received"]
        width = max((end - start) / 40, 1.0)
        buckets = max(1, math.ceil((end - start) / width))
        versions = sorted({r["package_version"] or "none" for r in rows})
        counts = {v: [0] * buckets for v in versions}
        # a device counts in a bucket with the version it last reported, if that was within STALE_S
        last: dict[str, tuple[float, str]] = {}
        it = iter(rows)
        row = next(it, None)
        for b in range(buckets):
            edge = start + (b + 1) * width
            while row is not None and (row["received"] <= edge or b == buckets - 1):
                last[row["device"]] = (row["received"], row["package_version"] or "none")
                row = next(it, None)
            for t, v in last.values():
                if edge - t <= STALE_S:
                    counts[v][b] += 1
        x = _dates([start + (i + 0.5) * width for i in range(buckets)])
        ax.stackplot(x, *[counts[v] for v in versions], labels=versions, alpha=0.85)
        ax.legend(fontsize=7, loc="upper left")
    ax.set_ylabel("devices reporting")
    ax.set_title("Package versions across the fleet")
    fig.autofmt_xdate()
    return _png(fig)


def _rollouts(rollouts: list[dict[str, Any]]) -> str:
    import matplotlib.pyplot as plt

    colours = {"healthy": "tab:green", "breached": "tab:red", "installing": "tab:orange", "soaking": "tab:blue",
               "pending": "lightgrey"}  # fmt: skip
    fig, ax = plt.subplots(figsize=(9, 0.6 + 0.45 * max(1, sum(len(r["waves"]) for r in rollouts))))
    labels, y = [], 0
    for r in rollouts:
        for i, w in enumerate(r["waves"], 1):
            begin = w.get("started")
            if begin is None:
                continue
            end = w.get("finished") or w.get("installed") or (r["log"][-1]["t"] if r["log"] else begin + 1)
            ax.barh(y, max(end - begin, 1.0) / 60, left=_mins(begin, rollouts), color=colours.get(w["status"], "grey"))
            labels.append(f"{r['group']}: {r['package']['version']} w{i} ({len(w['devices'])}) {w['status']}")
            y += 1
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("minutes since the first rollout started")
    ax.set_title("Rollout timeline (green healthy, red breached → rolled back)")
    if not labels:
        ax.text(0.5, 0.5, "no rollouts", ha="center", transform=ax.transAxes)
    return _png(fig)


def _mins(t: float, rollouts: list[dict[str, Any]]) -> float:
    first = min(w["started"] for r in rollouts for w in r["waves"] if w.get("started"))
    return (t - first) / 60


def _benches(benches: list[dict[str, Any]]) -> str:
    """Packages benched on devices (``edgekit fleet bench``): the p50 at the first batch size asked for, per
    package and device (the latest bench of each pair), with its 95 % interval as an error bar."""
    import matplotlib.pyplot as plt

    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for b in benches:
        if b["status"] == "ok" and _ok(b["p50_ms"]):
            latest[(f"{b['name']} {b['version']}", b["device"])] = b
    packages = sorted({p for p, _ in latest})
    devices = sorted({d for _, d in latest})
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / max(len(devices), 1)
    for i, device in enumerate(devices):
        xs, ys, errs = [], [], [[], []]
        for j, package in enumerate(packages):
            b = latest.get((package, device))
            if b is None:
                continue
            first = next(x for x in b["body"]["batches"] if "p50_ms" in x)
            lo, hi = first["p50_interval_ms"]
            xs.append(j + i * width)
            ys.append(first["p50_ms"])
            errs[0].append(max(first["p50_ms"] - lo, 0.0))
            errs[1].append(max(hi - first["p50_ms"], 0.0))
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=device)
    ax.set_xticks([j + width * (len(devices) - 1) / 2 for j in range(len(packages))], packages, fontsize=8)
    ax.set_ylabel("p50 latency (ms), first batch size")
    ax.set_title("Packages benched on devices (bars: 95 % interval of the median)")
    if devices:
        ax.legend(fontsize=7, ncol=4)
    return _png(fig)


def _bench_rows(benches: list[dict[str, Any]]) -> str:
    e = html.escape
    rows = []
    for b in benches[-100:]:
        body = b["body"]
        first = next((x for x in body.get("batches") or [] if "p50_ms" in x), {})
        power = body.get("power") or {}
        energy = power.get("marginal_energy_per_inference_mj")
        said = "–" if energy is None else f"{energy:.3f}" + (" (estimate)" if power.get("is_estimate") else "")
        what = b["status"] if b["status"] == "ok" else f"{b['status']}: {body.get('reason', '')}"
        runtime = f"{body.get('engine')}:{body.get('device')}" if b["status"] == "ok" else "–"
        rows.append(f"<tr><td>{e(b['name'])} {e(b['version'])}</td><td>{e(b['device'])}</td><td>{e(what)}</td>"
                    f"<td>{e(runtime)}</td><td>{first.get('batch', '–')}</td><td>{first.get('p50_ms', '–')}</td>"
                    f"<td>{first.get('p95_ms', '–')}</td>"
                    f"<td>{e(said)}</td></tr>")  # fmt: skip
    return "".join(rows)


def write_report(store: Any, fleet: str, out: Path, *, since: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from edgekit.fleet.status import status_rows

    telemetry = store.telemetry(fleet, since=since)
    rollouts = store.rollouts(fleet)
    status = status_rows(store, fleet)
    events = store.events(fleet, since=since, limit=100)
    benches = [b for b in store.benches(fleet) if b["t"] >= since]
    images = {
        "Latency": _latency(telemetry),
        "Power and energy": _power(telemetry),
        "Versions": _versions(telemetry),
        "Rollouts": _rollouts(rollouts),
        **({"Benches": _benches(benches)} if benches else {}),
    }
    e = html.escape

    def cell(v: Any) -> str:
        return e("–" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v)))

    cols = ("device", "profile", "arch", "online", "package", "version", "runtime", "p50_ms", "p95_ms",
            "throughput_per_s", "power_w", "power_source", "energy_per_inference_mj", "stuck",
            "stuck_reason")  # fmt: skip
    if any(r["tokens_generated"] is not None or r["decode_tokens_per_s"] is not None for r in status):
        cols += ("decode_tokens_per_s", "ttft_p50_ms", "ttft_p95_ms", "tokens_generated", "energy_per_token_mj",
                 "energy_is_estimate", "peak_rss_bytes")  # fmt: skip
    head = "".join(f"<th>{e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r[c])}</td>" for c in cols) + "</tr>" for r in status)

    def details(body: dict[str, Any]) -> str:
        return str({k: v for k, v in body.items() if k not in ("kind", "device", "time")})

    ev = "".join(
        f"<tr><td>{e(datetime.fromtimestamp(x['t'], UTC).strftime('%Y-%m-%d %H:%M:%S'))}</td><td>{e(x['device'])}"
        f"</td><td>{e(x['kind'])}</td><td>{e(details(x['body']))}</td></tr>"
        for x in events[-50:]
    )  # fmt: skip
    ro = "".join(
        f"<tr><td>{e(r['id'])}</td><td>{e(r['package']['name'])} {e(r['package']['version'])}</td>"
        f"<td>{e(r['group'])}</td><td>{e(r['status'])}</td><td>{e(r.get('reason', ''))}</td></tr>"
        for r in rollouts
    )
    figures = "".join(f"<h2>{e(t)}</h2><img alt='{e(t)}' src='{src}'>" for t, src in images.items())
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>edgekit fleet {e(fleet)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px}}img{{max-width:100%}}</style></head><body>
<h1>edgekit fleet <code>{e(fleet)}</code></h1>
<p>Generated {generated} from {len(telemetry)} telemetry messages and {len(events)} events since
{e(datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M:%SZ"))}. Power labelled <i>estimate</i> comes
from the profile's power model, not a sensor.</p>
<h2>Devices</h2><table><tr>{head}</tr>{body}</table>
<h2>Rollouts</h2><table><tr><th>id</th><th>package</th><th>group</th><th>status</th><th>reason</th></tr>{ro}</table>
<h2>Benches on devices</h2><table><tr><th>package</th><th>device</th><th>status</th><th>runtime</th>
<th>batch</th><th>p50 ms</th><th>p95 ms</th><th>marginal mJ/inference</th></tr>{_bench_rows(benches)}</table>
{figures}
<h2>Latest events</h2><table><tr><th>time (UTC)</th><th>device</th><th>kind</th><th>details</th></tr>{ev}</table>
</body></html>"""
    with atomic_file(out) as fh:
        fh.write(page.encode())
    return out
