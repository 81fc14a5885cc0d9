"""``edgekit sim agents N``: simulated devices on a real broker, for load tests and demos."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from edgekit.cli import _options as opt
from edgekit.console import err, print_json

app = typer.Typer(help="Simulated devices for load tests and demos.", no_args_is_help=True)


@app.command()
def agents(
    count: Annotated[int, typer.Argument(help="how many devices")],
    broker: opt.Broker = opt.DEFAULT_BROKER,
    fleet: opt.Fleet = opt.DEFAULT_FLEET,
    profile: Annotated[str, typer.Option(help="the profile the devices report")] = "x86-64-generic",
    prefix: Annotated[str, typer.Option(help="device ids are PREFIX-0000, PREFIX-0001, …")] = "sim",
    rate: Annotated[float, typer.Option(help="telemetry messages per second per device")] = 1.0,
    duration: Annotated[str, typer.Option(help="how long to run (e.g. 60s, 5m)")] = "60s",
    messages: Annotated[
        int | None, typer.Option(help="send exactly this many per device, as fast as possible (load tests)")
    ] = None,
    real: Annotated[bool, typer.Option("--real", help="real agents (download, verify, install, serve)")] = False,
    follow: Annotated[
        Path | None,
        typer.Option(help="simulated devices also download what deploy/rollout tell them (chunks, sha256) into DIR"),
    ] = None,
    trust: opt.Trust = [],  # noqa: B006
    data_dir: Annotated[Path, typer.Option(help="--real: where the agents keep their installs")] = Path("sim-data"),
    fmt: opt.Format = "table",
) -> None:
    """N devices, each a real MQTT client sending state and QoS1 telemetry (simulated values, labelled as
    such); with --real, real agents that install what they are told and serve it."""
    opt.check_format(fmt)
    if count < 1:
        raise opt.OptionInvalid("COUNT must be 1 or more")
    from edgekit.fleet.sim import MAX_PER_PROCESS  # lazy: `edgekit --help` stays instant

    if count > MAX_PER_PROCESS and not real:
        raise opt.OptionInvalid(
            f"COUNT {count} is over {MAX_PER_PROCESS} per process (paho's select() loop cannot watch sockets "
            "numbered above 1024); run several edgekit sim agents with different --prefix"
        )
    if rate <= 0:
        raise opt.OptionInvalid("--rate must be above 0")
    seconds = opt.duration(duration, "--duration")
    if real:
        result = _real(count, broker, fleet, profile, prefix, trust, data_dir, seconds)
    else:
        from edgekit.fleet.sim import Simulation

        sim = Simulation(broker, fleet, count, profile=profile, prefix=prefix, follow=follow)
        sim.start()
        err.print(f"{count} simulated device(s) online in fleet {fleet}; {rate:g} msg/s each for {seconds:g} s",
                  highlight=False)  # fmt: skip
        try:
            if messages is not None:
                took = sim.run(messages=messages, rate=None)
            else:
                took = sim.run(messages=max(1, int(seconds * rate)), rate=rate)
            acked = sim.wait_acked(30)
        except KeyboardInterrupt:
            took, acked = 0.0, False
        finally:
            sim.stop()
        result = {"devices": count, "sent": sim.sent, "seconds": round(took, 3), "all_acknowledged": acked}
    if fmt == "json":
        print_json(result)
    else:
        err.print(", ".join(f"{k} {v}" for k, v in result.items()), highlight=False)


def _real(count: int, broker: str, fleet: str, profile: str, prefix: str, trust: list[Path], data_dir: Path,
          seconds: float) -> dict:  # fmt: skip
    from edgekit_agent.agent import Agent, AgentConfig

    if not trust:
        raise opt.OptionInvalid("--real needs --trust KEY.pub (the agents verify what they install)")
    started = []
    try:
        for i in range(count):
            device = f"{prefix}-{i:04d}"
            cfg = AgentConfig(broker=broker, fleet=fleet, device_id=device, profile=profile,
                              data_dir=data_dir / device, trust=trust, telemetry_interval=5.0)  # fmt: skip
            agent = Agent(cfg)
            agent.start()
            started.append(agent)
        err.print(f"{count} real agent(s) running in fleet {fleet} for {seconds:g} s", highlight=False)
        time.sleep(seconds)
    except KeyboardInterrupt:
        pass
    finally:
        for agent in started:
            agent.stop()
    return {"devices": count, "real": True, "seconds": seconds}
