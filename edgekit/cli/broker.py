"""``edgekit broker``: a local broker for a one-machine fleet, and production Mosquitto configs."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import _options as opt
from edgekit.console import err, out, print_json

app = typer.Typer(help="Run a local MQTT broker, or write a production Mosquitto config (broker config).")


@app.callback(invoke_without_command=True)
def broker(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="TCP port to listen on (a cluster: node i's MQTT port is PORT+i)")] = 1883,
    bind: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    engine: Annotated[str, typer.Option(help="mosquitto (one node) or nats (nats-server with JetStream + MQTT)")] = (
        "mosquitto"
    ),
    cluster: Annotated[int, typer.Option(help="nodes (--engine nats)")] = 1,
    nats_port: Annotated[
        int, typer.Option(help="--engine nats: node i's NATS port is NATS_PORT+i, its route port NATS_PORT+2000+i")
    ] = 4222,
    data: Annotated[
        Path, typer.Option(help="Mosquitto keeps sessions, queued and retained messages here across restarts")
    ] = Path("broker-data"),
    durable: Annotated[
        bool,
        typer.Option("--durable", help="save after every change: a kill -9 loses at most its last moment (slower)"),
    ] = False,
) -> None:
    """Run Mosquitto with edgekit's settings (or the embedded Python broker where Mosquitto is missing)
    until Ctrl-C; or, with --engine nats --cluster 3, a NATS cluster on this machine that speaks MQTT to
    devices and NATS to `edgekit serve --nats`. For a secured broker see `edgekit broker config`."""
    if ctx.invoked_subcommand is not None:
        return
    from edgekit.cli.fleet import _wait_for_signal

    if engine not in ("mosquitto", "nats"):
        raise opt.OptionInvalid(f"--engine {engine!r} is not one of mosquitto, nats")
    if cluster < 1:
        raise opt.OptionInvalid("--cluster must be 1 or more")
    if engine == "nats":
        _nats(port, nats_port, bind, cluster, _wait_for_signal)
        return
    if cluster > 1:
        raise opt.OptionInvalid("--cluster needs --engine nats (Mosquitto does not cluster)")
    from edgekit.fleet.broker import LocalBroker

    local = LocalBroker(data, port=port, bind=bind, persist=True, durable=durable)
    local.start()
    kept = f"state kept in {data}" + (", saved on every change" if durable else ", saved every second")
    err.print(f"{local.kind} listening on mqtt://{bind}:{port}; {kept} (Ctrl-C stops it)", highlight=False)
    try:
        _wait_for_signal()
    finally:
        local.stop()


def _nats(port: int, nats_port: int, bind: str, size: int, wait: Callable[[], None]) -> None:
    from edgekit.fleet.natscluster import ClusterFailed, NatsCluster, Node

    nodes = [Node(f"n{i}", nats_port + i, nats_port + 2000 + i, port + i, host=bind) for i in range(size)]
    with tempfile.TemporaryDirectory(prefix="edgekit-nats-") as tmp:
        cluster = NatsCluster(Path(tmp), size=size, nodes=nodes)
        err.print(f"starting {size} nats-server node(s) in {tmp} …", highlight=False)
        try:
            cluster.start()
        except ClusterFailed as exc:
            raise ClusterFailed(f"{exc}; pick free ports with --port and --nats-port") from None
        try:
            err.print(f"devices:  --broker {','.join(cluster.mqtt_urls)}", highlight=False, soft_wrap=True)
            err.print(f"serve:    edgekit serve --nats {','.join(cluster.nats_urls)}", highlight=False, soft_wrap=True)
            err.print("Ctrl-C stops the cluster", highlight=False)
            wait()
        finally:
            cluster.stop()


@app.command()
def config(
    fleet: opt.Fleet = opt.DEFAULT_FLEET,
    devices: Annotated[str, typer.Option(help="comma-separated device ids (each gets a user, a cert and ACLs)")] = "",
    out_dir: Annotated[Path, typer.Option("--out", help="new directory for the config, keys and certificates")] = Path(
        "broker-config"
    ),
    port: Annotated[int, typer.Option(help="TLS listener port")] = 8883,
    bind: Annotated[str, typer.Option(help="listener address")] = "0.0.0.0",
    hostname: Annotated[list[str], typer.Option(help="extra name or IP in the server certificate; repeatable")] = [],  # noqa: B006
    run_as: Annotated[
        str | None, typer.Option(help="user Mosquitto runs as (it must own the files; root drops to 'mosquitto')")
    ] = None,
    fmt: opt.Format = "table",
) -> None:
    """Write mosquitto.conf + passwd + per-device ACLs + a CA, server and client certificates."""
    from edgekit.fleet.brokerconf import generate

    opt.check_format(fmt)
    result = generate(out_dir, fleet=fleet, devices=[d for d in devices.split(",") if d], port=port, bind=bind,
                      hostnames=hostname, run_as=run_as)  # fmt: skip
    if fmt == "json":
        print_json(result)
        return
    out.print(f"wrote {result['config']} for {len(result['users']) - 1} device(s) of fleet {fleet}", highlight=False)
    out.print(f"run it with: mosquitto -c {result['config']}", highlight=False)
    out.print(f"passwords are in {result['credentials']} (mode 0600); hand each device its own", highlight=False)
